"""Signed distribution URLs: each tenant's token signing keys (``url_signing_keys``) and
the revocation cut-offs by session and by asset (``url_revocations``).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

# Spelled out: a migration keeps the values it was written with.
_ALGORITHMS = ("ed25519", "hmac-sha256")
_STATES = ("signing", "verify", "retired")
_KINDS = ("session", "asset")


def _in(column: str, values: tuple[str, ...]) -> str:
    return "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in values))


def upgrade() -> None:
    op.create_table(
        "url_signing_keys",
        sa.Column("kid", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32)),
        sa.Column("root_key_id", sa.String(512), nullable=False),
        sa.Column("wrapped_secret", sa.LargeBinary()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verify_until", sa.DateTime(timezone=True)),
        sa.CheckConstraint(_in("algorithm", _ALGORITHMS), name="algorithm"),
        sa.CheckConstraint(_in("state", _STATES), name="state"),
        sa.CheckConstraint(
            "(state = 'retired' AND wrapped_secret IS NULL)"
            " OR (state <> 'retired' AND wrapped_secret IS NOT NULL)",
            name="material",
        ),
        sa.CheckConstraint("state <> 'verify' OR verify_until IS NOT NULL", name="verify_until"),
    )
    op.create_index("ix_url_signing_keys_tenant_id", "url_signing_keys", ["tenant_id"])
    op.create_index(
        "uq_url_signing_keys_one_signing",
        "url_signing_keys",
        ["tenant_id", "algorithm"],
        unique=True,
        sqlite_where=sa.text("state = 'signing'"),
        postgresql_where=sa.text("state = 'signing'"),
    )
    op.create_table(
        "url_revocations",
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("subject", sa.String(128), primary_key=True),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_in("kind", _KINDS), name="kind"),
    )


def downgrade() -> None:
    op.drop_table("url_revocations")
    op.drop_index("uq_url_signing_keys_one_signing", table_name="url_signing_keys")
    op.drop_index("ix_url_signing_keys_tenant_id", table_name="url_signing_keys")
    op.drop_table("url_signing_keys")
