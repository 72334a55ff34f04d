"""Uploads keep their row fresh: ``refreshed_at``, the time of the row's last heartbeat.

Garbage collection judges an upload by it, never by when it started, so a long upload
that is still running is never taken for a crash's leftover.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE uploads SET refreshed_at = started_at")
    with op.batch_alter_table("uploads") as batch:
        batch.alter_column("refreshed_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.create_index("ix_uploads_refreshed_at", ["refreshed_at"])


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_index("ix_uploads_refreshed_at")
        batch.drop_column("refreshed_at")
