"""The access audit log; tenant retention and legal hold; the platform-auditor role.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# Spelled out: a migration keeps meaning what it meant when it was written.
_OLD_ROLES = "'platform-admin', 'admin', 'ingest', 'renderer', 'distributor', 'auditor', 'privacy'"
_ROLES = _OLD_ROLES + ", 'platform-auditor'"
_PLATFORM_ROLES = "'platform-admin', 'platform-auditor'"
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("audit_retention_days", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("legal_hold", sa.Boolean(), nullable=False, server_default=sa.text("false"))
        )
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_role"), type_="check")
        batch.drop_constraint(op.f("ck_api_keys_tenant_scope"), type_="check")
        batch.create_check_constraint(op.f("ck_api_keys_role"), f"role IN ({_ROLES})")
        batch.create_check_constraint(
            op.f("ck_api_keys_tenant_scope"),
            f"(role IN ({_PLATFORM_ROLES}) AND tenant_id IS NULL)"
            f" OR (role NOT IN ({_PLATFORM_ROLES}) AND tenant_id IS NOT NULL)",
        )

    op.create_table(
        "audit_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(48), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("method", sa.String(128), nullable=False),
        sa.Column("actor_key_id", sa.String(16), nullable=True),
        sa.Column("resource_type", sa.String(16), nullable=True),
        sa.Column("resource_id", sa.String(64), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_audit_events_event_id")),
        sa.UniqueConstraint("log_id", "seq", name=op.f("uq_audit_events_log_id_seq")),
    )
    op.create_index(
        "ix_audit_events_log_id_time_us_id", "audit_events", ["log_id", "time_us", "id"]
    )
    for column in ("actor_key_id", "resource_id", "action"):
        op.create_index(
            f"ix_audit_events_log_id_{column}_time_us_id",
            "audit_events",
            ["log_id", column, "time_us", "id"],
        )
    op.create_index(
        "ix_audit_events_pending",
        "audit_events",
        ["log_id", "id"],
        sqlite_where=sa.text("seq IS NULL"),
        postgresql_where=sa.text("seq IS NULL"),
    )
    op.create_table(
        "audit_trees",
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("last_leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("log_id", name=op.f("pk_audit_trees")),
    )
    op.create_table(
        "audit_nodes",
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("log_id", "level", "index", name=op.f("pk_audit_nodes")),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("log_id", "size", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_signing_keys",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("root_key_id", sa.String(512), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_signing_keys")),
    )


def downgrade() -> None:
    # The old role checks cannot hold platform-auditor keys: revoke and delete those first.
    op.drop_table("audit_signing_keys")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_nodes")
    op.drop_table("audit_trees")
    op.drop_index("ix_audit_events_pending", table_name="audit_events")
    for column in ("action", "resource_id", "actor_key_id"):
        op.drop_index(f"ix_audit_events_log_id_{column}_time_us_id", table_name="audit_events")
    op.drop_index("ix_audit_events_log_id_time_us_id", table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_tenant_scope"), type_="check")
        batch.drop_constraint(op.f("ck_api_keys_role"), type_="check")
        batch.create_check_constraint(op.f("ck_api_keys_role"), f"role IN ({_OLD_ROLES})")
        batch.create_check_constraint(
            op.f("ck_api_keys_tenant_scope"),
            "(role = 'platform-admin' AND tenant_id IS NULL)"
            " OR (role <> 'platform-admin' AND tenant_id IS NOT NULL)",
        )
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("legal_hold")
        batch.drop_column("audit_retention_days")
