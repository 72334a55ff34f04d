"""The catalog's tables, as SQLAlchemy typed declarative classes.

The ORM classes are named ``...Row`` so they are never confused with the frozen domain
objects (``Tenant``, ``KekVersion``) that callers outside a transaction see.

Invariants live in the schema as well as in the code, so a bug or a hand-written SQL fix
cannot break them silently:

* at most one ``active`` KEK version per tenant (a partial unique index);
* a version's state is one of :data:`KEK_STATES` (a CHECK constraint);
* a wrapped key is present exactly when the version is not ``destroyed``: destroying a
  version erases its key material, and nothing else may;
* a ``pending-deletion`` version always has a ``deletion_due_at``.

Changing anything here needs a new migration in ``migrations/versions``; the migration
test compares the migrated schema with this metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "API_KEY_ROLES",
    "ApiKeyRow",
    "AssetRow",
    "AuditCheckpointRow",
    "AuditEventRow",
    "AuditNodeRow",
    "AuditSigningKeyRow",
    "AuditTreeRow",
    "Base",
    "ConsentRow",
    "DeletedObjectRow",
    "KEK_STATES",
    "KeyExportRow",
    "NAMING_CONVENTION",
    "PayloadRow",
    "SCRUB_RESULTS",
    "ScrubFindingRow",
    "ScrubPassRow",
    "SubjectRow",
    "TENANT_STATES",
    "TenantKeyVersionRow",
    "TenantRow",
    "URL_KEY_ALGORITHMS",
    "URL_KEY_STATES",
    "URL_REVOCATION_KINDS",
    "UploadRow",
    "UrlRevocationRow",
    "UrlSigningKeyRow",
    "UtcDateTime",
]

KEK_STATES: Final = ("active", "decrypt-only", "disabled", "pending-deletion", "destroyed")
"""Stored values of ``tenant_key_versions.state``; ``keys.tenant.KekState`` mirrors them.

They are spelled out here rather than imported because the catalog sits below the key
layer, and the migrations must keep the values they were written with."""

# Deterministic constraint names: SQLite batch migrations recreate tables and can only
# find a constraint again by name, and PostgreSQL would otherwise invent its own.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite has no time zone type and hands back naive values; PostgreSQL hands back the
    session's zone. Normalizing here means no caller ever compares a naive time with an
    aware one, and refusing naive input catches local-time bugs at the first write.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError("timestamps stored in the catalog must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every catalog table; its metadata is the migrations' target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


TENANT_STATES: Final = ("active", "disabled", "pending-deletion", "destroyed")
"""Stored values of ``tenants.state`` (``keys.tenant.TenantState``)."""
_TENANT_STATE_IN = "state IN ({})".format(", ".join(f"'{s}'" for s in TENANT_STATES))


class TenantRow(Base):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("min_decryption_version >= 1", name="min_decryption_version_positive"),
        CheckConstraint(_TENANT_STATE_IN, name="state"),
        CheckConstraint(
            "state <> 'pending-deletion' OR deletion_due_at IS NOT NULL", name="deletion_due"
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    min_decryption_version: Mapped[int] = mapped_column(
        BigInteger, default=1, server_default=text("1")
    )
    # Audit event bodies older than this are purged (leaf hashes stay); NULL keeps them.
    audit_retention_days: Mapped[int | None] = mapped_column(Integer)
    # A legal hold blocks every purge of the tenant's audit log.
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # AssetService.OpenAsset may release read grants (direct reads from the store).
    direct_reads: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # The tenant's own lifecycle (TENANT_STATES): disabled and pending-deletion refuse every
    # use of its keys; destroyed means every key was shredded.
    state: Mapped[str] = mapped_column(
        String(16), default="active", server_default=text("'active'")
    )
    deletion_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The secret of the tenant's subject pseudonyms (HMAC key), wrapped by the root key
    # provider; created on first use.
    pseudonym_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Bring your own key: the tenant's own AWS KMS key that wraps its KEKs (NULL: the
    # service's root key provider).
    root_key_arn: Mapped[str | None] = mapped_column(String(512))


_STATE_IN = "state IN ({})".format(", ".join(f"'{state}'" for state in KEK_STATES))


class TenantKeyVersionRow(Base):
    """One version of a tenant's KEK, wrapped by the root key provider.

    ``wrapped_key`` is NULL once the version is destroyed; ``root_key_id`` stays so
    operators can still see which root key it was under.
    """

    __tablename__ = "tenant_key_versions"
    __table_args__ = (
        CheckConstraint(_STATE_IN, name="state"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint(
            "(state = 'destroyed' AND wrapped_key IS NULL)"
            " OR (state <> 'destroyed' AND wrapped_key IS NOT NULL)",
            name="material",
        ),
        CheckConstraint(
            "state <> 'pending-deletion' OR deletion_due_at IS NOT NULL",
            name="deletion_due",
        ),
        Index(
            "uq_tenant_key_versions_one_active",
            "tenant_id",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
    )

    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16))
    root_key_id: Mapped[str] = mapped_column(String(512))
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    state_changed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deletion_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    destroyed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


API_KEY_ROLES: Final = (
    "platform-admin",
    "admin",
    "ingest",
    "renderer",
    "distributor",
    "auditor",
    "privacy",
    "platform-auditor",
)
"""Stored values of ``api_keys.role``; ``auth.Role`` mirrors them (spelled out for the same
reason as :data:`KEK_STATES`)."""

_PLATFORM_ROLES = "'platform-admin', 'platform-auditor'"
_ROLE_IN = "role IN ({})".format(", ".join(f"'{role}'" for role in API_KEY_ROLES))


class ApiKeyRow(Base):
    """One bearer API key. Only the SHA-256 of its secret is stored (see ``auth``).

    A platform key (admin, auditor) belongs to no tenant and every other key to exactly one; the
    ``tenant_scope`` CHECK keeps a tenant key from being turned into a platform key (or the
    reverse) by a stray UPDATE.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(_ROLE_IN, name="role"),
        CheckConstraint(
            f"(role IN ({_PLATFORM_ROLES}) AND tenant_id IS NULL)"
            f" OR (role NOT IN ({_PLATFORM_ROLES}) AND tenant_id IS NOT NULL)",
            name="tenant_scope",
        ),
        CheckConstraint("length(secret_hash) = 32", name="secret_hash_length"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("tenants.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    description: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # The last successful authentication, written at most once a minute (auth.ApiKeys).
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class AssetRow(Base):
    """A committed asset. It exists only once its stored object is complete.

    ``header`` is the message header as stored (kept here so a read needs no extra GET and
    so the stored header is checked against it); ``key_slot`` is the data key rewrapped
    under a newer KEK version by rotation (``crypto.rewrap_data_key``), NULL until then;
    ``kek_version`` names the version that wraps the key readers use (slot, else header).
    """

    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "path"),
        UniqueConstraint("object_key"),
        CheckConstraint("size >= 0", name="size_not_negative"),
        Index("ix_assets_tenant_id_subject", "tenant_id", "subject"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"))
    path: Mapped[str] = mapped_column(String(1024))
    content_type: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    object_key: Mapped[str] = mapped_column(String(128))
    header: Mapped[bytes] = mapped_column(LargeBinary)
    key_slot: Mapped[bytes | None] = mapped_column(LargeBinary)
    kek_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # A personalized rendition's subject (pseudonym): its data key is wrapped by that
    # subject's key, and erasing the subject deletes it. NULL: wrapped by the tenant KEK.
    subject: Mapped[str | None] = mapped_column(String(32))


class UploadRow(Base):
    """An upload in flight: the object key it writes, so garbage collection can tell an
    object still being written (or committed a moment ago) from one a crash left behind.
    A running upload refreshes ``refreshed_at`` (its heartbeat); gc only removes rows
    whose heartbeat stopped."""

    __tablename__ = "uploads"

    object_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"))
    asset_id: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    refreshed_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


# -- the access audit log (reelvault.audit; docs/audit.md) ----------------------------

_AUDIT_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite: the rowid itself


class AuditEventRow(Base):
    """One durable audit event. ``seq`` and ``leaf_hash`` are NULL until the sequencer
    integrates the event into its log's Merkle tree; ``body`` is the rendered OCSF JSON,
    replaced at integration by the sealed leaf bytes, and NULL once purged (the leaf hash
    stays in ``audit_nodes``, so proofs keep verifying). The other columns copy fields
    of the body for filtering."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("log_id", "seq"),
        Index("ix_audit_events_log_id_time_us_id", "log_id", "time_us", "id"),
        # Each filter a security team pages through by time: the filtered column, then the
        # page order (time, id), so that a page is one index range.
        Index(
            "ix_audit_events_log_id_actor_key_id_time_us_id",
            "log_id",
            "actor_key_id",
            "time_us",
            "id",
        ),
        Index(
            "ix_audit_events_log_id_resource_id_time_us_id",
            "log_id",
            "resource_id",
            "time_us",
            "id",
        ),
        Index("ix_audit_events_log_id_action_time_us_id", "log_id", "action", "time_us", "id"),
        Index(
            "ix_audit_events_pending",
            "log_id",
            "id",
            sqlite_where=text("seq IS NULL"),
            postgresql_where=text("seq IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(_AUDIT_ID, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    log_id: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int | None] = mapped_column(BigInteger)
    time_us: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(48))
    outcome: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(128))
    actor_key_id: Mapped[str | None] = mapped_column(String(16))
    resource_type: Mapped[str | None] = mapped_column(String(16))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[str | None] = mapped_column(Text)
    leaf_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class AuditTreeRow(Base):
    """The integrated state of one log: its size, root, and the last leaf's hash (which
    the next leaf records, see ``audit.events.seal_record``). Locked by the sequencer."""

    __tablename__ = "audit_trees"

    log_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    last_leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditNodeRow(Base):
    """The hash of a complete, aligned subtree: leaves [index * 2^level, (index+1) * 2^level)."""

    __tablename__ = "audit_nodes"

    log_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpointRow(Base):
    """A signed checkpoint (C2SP signed note) of one log at one size."""

    __tablename__ = "audit_checkpoints"

    log_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditSigningKeyRow(Base):
    """The Ed25519 key that signs checkpoints; its private half wrapped by the root key
    provider (32 random bytes from ``generate_key`` are the Ed25519 seed)."""

    __tablename__ = "audit_signing_keys"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    root_key_id: Mapped[str] = mapped_column(String(512))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- the integrity scrub (reelvault.scrub; docs/operations.md) --------------------------

SCRUB_RESULTS: Final = ("damaged", "skipped", "unchecked")
"""Stored values of ``scrub_findings.result``: the object failed a check; it could not be
checked because its KEK may not decrypt (crypto-shredded, disabled); the store did not
answer for it."""

_RESULT_IN = "result IN ({})".format(", ".join(f"'{result}'" for result in SCRUB_RESULTS))


class ScrubPassRow(Base):
    """One pass of the integrity scrub over every asset (``scope`` ``all``) or one
    tenant's (``scope`` = the tenant id), in asset id order; ``number`` counts the scope's
    passes.

    ``last_asset_id`` is the cursor: every asset up to it has been checked, so an
    interrupted pass resumes after it. ``completed_at`` is NULL while the pass is open; at
    most one pass per scope is open (a partial unique index), so replicas that start one
    at the same moment cannot both succeed. ``claimed_by`` and ``claimed_until`` are the
    lease of the scrubber working on the pass, renewed as it goes; another scrubber may take
    the pass over only once the lease has run out.
    """

    __tablename__ = "scrub_passes"
    __table_args__ = (
        UniqueConstraint("scope", "number"),
        Index(
            "uq_scrub_passes_one_open",
            "scope",
            unique=True,
            sqlite_where=text("completed_at IS NULL"),
            postgresql_where=text("completed_at IS NULL"),
        ),
        CheckConstraint(
            "assets_checked >= 0 AND bytes_checked >= 0 AND damaged >= 0 AND skipped >= 0"
            " AND unchecked >= 0",
            name="counts_not_negative",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(32))
    number: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_asset_id: Mapped[str | None] = mapped_column(String(32))
    assets_checked: Mapped[int] = mapped_column(BigInteger)
    bytes_checked: Mapped[int] = mapped_column(BigInteger)
    damaged: Mapped[int] = mapped_column(BigInteger)
    skipped: Mapped[int] = mapped_column(BigInteger)
    unchecked: Mapped[int] = mapped_column(BigInteger)
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ScrubFindingRow(Base):
    """One problem the scrub found with one asset in one pass (an asset can have several:
    a stored header that differs from the catalog's copy and a damaged frame).

    ``frame`` is the sequence number of the first frame that failed, ``byte_offset`` where
    the problem sits in the stored object (that frame's offset, or the first byte where the
    stored header differs), ``frames`` how many frames failed. ``detail`` is one line for
    operators, never key material or plaintext. No foreign key to ``assets``: a finding
    outlives the asset it names (deleting a damaged asset must not erase the report).
    """

    __tablename__ = "scrub_findings"
    __table_args__ = (CheckConstraint(_RESULT_IN, name="result"),)

    pass_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("scrub_passes.id"), primary_key=True
    )
    asset_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    problem: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    object_key: Mapped[str] = mapped_column(String(128))
    result: Mapped[str] = mapped_column(String(16))
    frame: Mapped[int | None] = mapped_column(BigInteger)
    byte_offset: Mapped[int | None] = mapped_column(BigInteger)
    frames: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(String(256))
    found_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DeletedObjectRow(Base):
    """An object whose asset (or dead upload) is gone from the catalog but which the store
    may still hold: written with the row's delete, removed once the store confirmed it.
    ``gc`` deletes these objects; an object with no row in any table is unknown to the
    catalog (a restored, older catalog sees every newer asset so) and ``gc`` keeps it."""

    __tablename__ = "deleted_objects"

    object_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- signed distribution URLs (reelvault.distribution; docs/urls.md) -------------------

URL_KEY_ALGORITHMS: Final = ("ed25519", "hmac-sha256")
"""Stored values of ``url_signing_keys.algorithm`` (``distribution.tokens.ALGORITHMS``)."""
URL_KEY_STATES: Final = ("signing", "verify", "retired")
"""Stored values of ``url_signing_keys.state``: signs new tokens (one per tenant and
algorithm); only verifies tokens issued before it left ``signing``; verifies nothing."""
URL_REVOCATION_KINDS: Final = ("session", "asset")

_URL_ALGORITHM_IN = "algorithm IN ({})".format(", ".join(f"'{a}'" for a in URL_KEY_ALGORITHMS))
_URL_STATE_IN = "state IN ({})".format(", ".join(f"'{s}'" for s in URL_KEY_STATES))
_URL_KIND_IN = "kind IN ({})".format(", ".join(f"'{k}'" for k in URL_REVOCATION_KINDS))


class UrlSigningKeyRow(Base):
    """A tenant's key for distribution tokens. ``secret`` (the Ed25519 seed, or the HMAC
    secret) is wrapped by the root key provider and dropped (NULL) when the key retires;
    ``public_key`` is the Ed25519 public key (NULL for HMAC). ``verify_until`` is when a
    verify-only key retires: its last token has expired by then (the overlap)."""

    __tablename__ = "url_signing_keys"
    __table_args__ = (
        CheckConstraint(_URL_ALGORITHM_IN, name="algorithm"),
        CheckConstraint(_URL_STATE_IN, name="state"),
        CheckConstraint(
            "(state = 'retired' AND wrapped_secret IS NULL)"
            " OR (state <> 'retired' AND wrapped_secret IS NOT NULL)",
            name="material",
        ),
        CheckConstraint("state <> 'verify' OR verify_until IS NOT NULL", name="verify_until"),
        Index(
            "uq_url_signing_keys_one_signing",
            "tenant_id",
            "algorithm",
            unique=True,
            sqlite_where=text("state = 'signing'"),
            postgresql_where=text("state = 'signing'"),
        ),
    )

    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"), index=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    root_key_id: Mapped[str] = mapped_column(String(512))
    wrapped_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    state_changed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    verify_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class UrlRevocationRow(Base):
    """A revocation cut-off: tokens of the tenant for this session (``kind`` session) or
    reaching this asset (``kind`` asset, ``subject`` the asset id) issued at or before
    ``cutoff`` are refused. One row per subject; a later revocation moves the cut-off."""

    __tablename__ = "url_revocations"
    __table_args__ = (CheckConstraint(_URL_KIND_IN, name="kind"),)

    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    cutoff: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime] = mapped_column(UtcDateTime())


# -- subjects, consent and payloads (reelvault.privacy; docs/privacy.md) --------------


class SubjectRow(Base):
    """A viewer of one tenant, known only by a keyed pseudonym of the tenant's viewer id.

    ``wrapped_key`` is the subject key (which wraps the data keys of the subject's payloads
    and personalized renditions), wrapped by the tenant KEK version ``kek_version`` in the
    Raw AES keyring format; NULL once the subject was erased (crypto-shredding). The row
    stays, so the pseudonyms in the audit log keep meaning the same subject."""

    __tablename__ = "subjects"
    __table_args__ = (
        CheckConstraint(
            "(erased_at IS NULL AND wrapped_key IS NOT NULL AND kek_version IS NOT NULL)"
            " OR (erased_at IS NOT NULL AND wrapped_key IS NULL)",
            name="material",
        ),
        Index("ix_subjects_tenant_id_kek_version", "tenant_id", "kek_version"),
    )

    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(32), primary_key=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    kek_version: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    erased_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # A legal hold blocks the subject's erasure and the purge of its expired payloads.
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class ConsentRow(Base):
    """One consent decision, kept for the history: the current state of a purpose is the
    decision with the latest ``effective_at`` (then the latest ``id``)."""

    __tablename__ = "consents"
    __table_args__ = (
        Index(
            "ix_consents_tenant_id_pseudonym_purpose_effective_at",
            "tenant_id",
            "pseudonym",
            "purpose",
            "effective_at",
        ),
    )

    id: Mapped[int] = mapped_column(_AUDIT_ID, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"))
    pseudonym: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(64))
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(128))
    effective_at: Mapped[datetime] = mapped_column(UtcDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PayloadRow(Base):
    """A personalization payload, sealed in the object format (kind ``payload``) under a
    data key wrapped by its subject's key; ``message`` is the whole sealed message
    (docs/privacy.md says why payloads live in the catalog, not the object store)."""

    __tablename__ = "payloads"
    __table_args__ = (
        Index("ix_payloads_tenant_id_pseudonym_id", "tenant_id", "pseudonym", "id"),
        Index("ix_payloads_expires_at", "expires_at"),
        CheckConstraint("size >= 0", name="size_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"))
    pseudonym: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(BigInteger)
    message: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class KeyExportRow(Base):
    """A tenant's request to export its keys (ExportTenantKeys): made by a tenant admin
    with the recipient public key, approved by a platform admin, then collected once."""

    __tablename__ = "key_exports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"), index=True)
    recipient_key: Mapped[bytes] = mapped_column(LargeBinary)
    requested_by: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime())
    approved_by: Mapped[str | None] = mapped_column(String(16))
    approved_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    collected_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
