"""Privacy and the tenant lifecycle: subjects with their wrapped keys (``subjects``),
consent decisions (``consents``), payloads (``payloads``), key export requests
(``key_exports``); tenants get a state, a deletion date, a pseudonym key and an optional
KMS key of their own; assets may belong to a subject.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

# Spelled out: a migration keeps the values it was written with.
_TENANT_STATES = ("active", "disabled", "pending-deletion", "destroyed")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    return "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in values))


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("state", sa.String(16), nullable=False, server_default=sa.text("'active'"))
        )
        batch.add_column(sa.Column("deletion_due_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("pseudonym_key", sa.LargeBinary()))
        batch.add_column(sa.Column("root_key_arn", sa.String(512)))
        batch.create_check_constraint("state", _in("state", _TENANT_STATES))
        batch.create_check_constraint(
            "deletion_due", "state <> 'pending-deletion' OR deletion_due_at IS NOT NULL"
        )
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("subject", sa.String(32)))
        batch.create_index("ix_assets_tenant_id_subject", ["tenant_id", "subject"])
    op.create_table(
        "subjects",
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("pseudonym", sa.String(32), primary_key=True),
        sa.Column("wrapped_key", sa.LargeBinary()),
        sa.Column("kek_version", sa.BigInteger()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True)),
        sa.Column("legal_hold", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.CheckConstraint(
            "(erased_at IS NULL AND wrapped_key IS NOT NULL AND kek_version IS NOT NULL)"
            " OR (erased_at IS NOT NULL AND wrapped_key IS NULL)",
            name="material",
        ),
    )
    op.create_index("ix_subjects_tenant_id_kek_version", "subjects", ["tenant_id", "kek_version"])
    op.create_table(
        "consents",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("pseudonym", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consents")),
    )
    op.create_index(
        "ix_consents_tenant_id_pseudonym_purpose_effective_at",
        "consents",
        ["tenant_id", "pseudonym", "purpose", "effective_at"],
    )
    op.create_table(
        "payloads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("pseudonym", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("message", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("size >= 0", name="size_not_negative"),
    )
    op.create_index(
        "ix_payloads_tenant_id_pseudonym_id", "payloads", ["tenant_id", "pseudonym", "id"]
    )
    op.create_index("ix_payloads_expires_at", "payloads", ["expires_at"])
    op.create_table(
        "key_exports",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("recipient_key", sa.LargeBinary(), nullable=False),
        sa.Column("requested_by", sa.String(16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(16)),
        sa.Column("approved_at", sa.DateTime(timezone=True)),
        sa.Column("collected_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_key_exports_tenant_id", "key_exports", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_key_exports_tenant_id", table_name="key_exports")
    op.drop_table("key_exports")
    op.drop_index("ix_payloads_expires_at", table_name="payloads")
    op.drop_index("ix_payloads_tenant_id_pseudonym_id", table_name="payloads")
    op.drop_table("payloads")
    op.drop_index("ix_consents_tenant_id_pseudonym_purpose_effective_at", table_name="consents")
    op.drop_table("consents")
    op.drop_index("ix_subjects_tenant_id_kek_version", table_name="subjects")
    op.drop_table("subjects")
    with op.batch_alter_table("assets") as batch:
        batch.drop_index("ix_assets_tenant_id_subject")
        batch.drop_column("subject")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_constraint("deletion_due", type_="check")
        batch.drop_constraint("state", type_="check")
        batch.drop_column("root_key_arn")
        batch.drop_column("pseudonym_key")
        batch.drop_column("deletion_due_at")
        batch.drop_column("state")
