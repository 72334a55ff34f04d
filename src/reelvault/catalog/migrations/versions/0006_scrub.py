"""The integrity scrub's progress and findings: ``scrub_passes`` and ``scrub_findings``.

A pass keeps its cursor in the catalog so that an interrupted pass resumes where it
stopped, and its findings so that a report outlives the process that found them.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# Spelled out: a migration keeps meaning what it meant when it was written.
_RESULTS = "'damaged', 'skipped', 'unchecked'"


def upgrade() -> None:
    op.create_table(
        "scrub_passes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_asset_id", sa.String(32), nullable=True),
        sa.Column("assets_checked", sa.BigInteger(), nullable=False),
        sa.Column("bytes_checked", sa.BigInteger(), nullable=False),
        sa.Column("damaged", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("unchecked", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "assets_checked >= 0 AND bytes_checked >= 0 AND damaged >= 0 AND skipped >= 0"
            " AND unchecked >= 0",
            name=op.f("ck_scrub_passes_counts_not_negative"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scrub_passes")),
        sa.UniqueConstraint("scope", "number", name=op.f("uq_scrub_passes_scope_number")),
    )
    # At most one open pass per scope. Partial indexes exist on both backends.
    op.create_index(
        "uq_scrub_passes_one_open",
        "scrub_passes",
        ["scope"],
        unique=True,
        sqlite_where=sa.text("completed_at IS NULL"),
        postgresql_where=sa.text("completed_at IS NULL"),
    )
    op.create_table(
        "scrub_findings",
        sa.Column("pass_id", sa.String(32), nullable=False),
        sa.Column("asset_id", sa.String(32), nullable=False),
        sa.Column("problem", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("object_key", sa.String(128), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("frame", sa.BigInteger(), nullable=True),
        sa.Column("byte_offset", sa.BigInteger(), nullable=True),
        sa.Column("frames", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(256), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"result IN ({_RESULTS})", name=op.f("ck_scrub_findings_result")),
        sa.ForeignKeyConstraint(
            ["pass_id"],
            ["scrub_passes.id"],
            name=op.f("fk_scrub_findings_pass_id_scrub_passes"),
        ),
        sa.PrimaryKeyConstraint("pass_id", "asset_id", "problem", name=op.f("pk_scrub_findings")),
    )


def downgrade() -> None:
    op.drop_table("scrub_findings")
    op.drop_index("uq_scrub_passes_one_open", table_name="scrub_passes")
    op.drop_table("scrub_passes")
