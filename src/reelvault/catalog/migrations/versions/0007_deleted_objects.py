"""Deleted assets leave their object key behind: ``deleted_objects``.

Written in the transaction that removes an asset row (or claims a dead upload's row), and
removed once the object store confirms the delete. So ``gc`` can tell an object the catalog
knows to be garbage from one it has never heard of, which is what a restored, older catalog
sees for every asset created after its backup, and must not delete.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "deleted_objects",
        sa.Column("object_key", sa.String(128), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("object_key", name=op.f("pk_deleted_objects")),
    )


def downgrade() -> None:
    op.drop_table("deleted_objects")
