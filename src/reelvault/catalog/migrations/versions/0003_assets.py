"""Assets and in-flight uploads.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("object_key", sa.String(128), nullable=False),
        sa.Column("header", sa.LargeBinary(), nullable=False),
        sa.Column("key_slot", sa.LargeBinary(), nullable=True),
        sa.Column("kek_version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_assets_tenant_id_tenants")
        ),
        sa.UniqueConstraint("tenant_id", "path", name=op.f("uq_assets_tenant_id_path")),
        sa.UniqueConstraint("object_key", name=op.f("uq_assets_object_key")),
        sa.CheckConstraint("size >= 0", name=op.f("ck_assets_size_not_negative")),
    )
    op.create_table(
        "uploads",
        sa.Column("object_key", sa.String(128), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("asset_id", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("object_key", name=op.f("pk_uploads")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_uploads_tenant_id_tenants")
        ),
    )


def downgrade() -> None:
    op.drop_table("uploads")
    op.drop_table("assets")
