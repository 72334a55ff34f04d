"""Tenants and their versioned KEKs.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Spelled out rather than imported from tables.py: a migration must keep meaning what it
# meant when it was written, whatever the models say later.
_STATES = "'active', 'decrypt-only', 'disabled', 'pending-deletion', 'destroyed'"


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "min_decryption_version", sa.BigInteger(), server_default=sa.text("1"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
        sa.CheckConstraint(
            "min_decryption_version >= 1",
            name=op.f("ck_tenants_min_decryption_version_positive"),
        ),
    )
    op.create_table(
        "tenant_key_versions",
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("root_key_id", sa.String(512), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deletion_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "version", name=op.f("pk_tenant_key_versions")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_key_versions_tenant_id_tenants"),
        ),
        sa.CheckConstraint(f"state IN ({_STATES})", name=op.f("ck_tenant_key_versions_state")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_tenant_key_versions_version_positive")),
        sa.CheckConstraint(
            "(state = 'destroyed' AND wrapped_key IS NULL)"
            " OR (state <> 'destroyed' AND wrapped_key IS NOT NULL)",
            name=op.f("ck_tenant_key_versions_material"),
        ),
        sa.CheckConstraint(
            "state <> 'pending-deletion' OR deletion_due_at IS NOT NULL",
            name=op.f("ck_tenant_key_versions_deletion_due"),
        ),
    )
    # At most one active version per tenant. Partial indexes exist on both backends.
    op.create_index(
        "uq_tenant_key_versions_one_active",
        "tenant_key_versions",
        ["tenant_id"],
        unique=True,
        sqlite_where=sa.text("state = 'active'"),
        postgresql_where=sa.text("state = 'active'"),
    )


def downgrade() -> None:
    op.drop_index("uq_tenant_key_versions_one_active", table_name="tenant_key_versions")
    op.drop_table("tenant_key_versions")
    op.drop_table("tenants")
