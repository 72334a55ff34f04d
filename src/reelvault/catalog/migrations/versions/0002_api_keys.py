"""Bearer API keys, stored as SHA-256 hashes of their secrets.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# Spelled out rather than imported from tables.py: a migration must keep meaning what it
# meant when it was written, whatever the models say later.
_ROLES = "'platform-admin', 'admin', 'ingest', 'renderer', 'distributor', 'auditor', 'privacy'"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
        ),
        sa.CheckConstraint(f"role IN ({_ROLES})", name=op.f("ck_api_keys_role")),
        # Platform-admin keys, and only they, belong to no tenant.
        sa.CheckConstraint(
            "(role = 'platform-admin' AND tenant_id IS NULL)"
            " OR (role <> 'platform-admin' AND tenant_id IS NOT NULL)",
            name=op.f("ck_api_keys_tenant_scope"),
        ),
        sa.CheckConstraint("length(secret_hash) = 32", name=op.f("ck_api_keys_secret_hash_length")),
    )
    # Listing a tenant's keys; PostgreSQL does not index foreign keys by itself.
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
