"""Authentication and authorization: bearer API keys, roles and the permission table.

Every call carries ``authorization: Bearer <token>``. A token names its key and carries
the key's secret::

    rvk_<key id>_<secret>

    rvk_            fixed prefix, so a leaked token is easy to recognize (secret scanners)
    key id          16 lowercase hex digits (64 random bits); the primary key of the row
    _               separator
    secret          43 characters: 32 random bytes, base64url without padding

The catalog stores ``SHA-256(secret)`` only, never the secret: anyone reading the
database or a backup cannot call the vault. A slow password hash (bcrypt, Argon2) is not
needed because the secret is 256 uniformly random bits, not something a person chose:
there is no dictionary to try, and brute force against a SHA-256 preimage of a 256-bit
secret is out of reach. A fast hash also keeps authentication cheap on every request.

Authentication fails with one :class:`~reelvault.errors.Unauthenticated` message whatever
went wrong (malformed token, unknown key, wrong secret, revoked key), so responses are no
oracle for which key ids exist or which are revoked. Hashes are compared in constant time,
and a lookup that finds no key still compares against a dummy hash, so the work done does
not depend on whether the id exists either.

Each key is bound to one role, and to one tenant unless the role is a platform role
(``platform-admin``, ``platform-auditor``). What each role may do is :data:`PERMISSIONS`,
keyed by domain :class:`Action`, not by transport: each edge maps its methods or routes to
actions (the gRPC edge in ``reelvault.rpc.actions``), so the gRPC service and the HTTP
origin are authorized by one table. An action missing from it is denied to everyone.
Tenant scope is the caller's job at the transport edge, through
:func:`require_tenant_access` and :func:`require_can_create_key`: another tenant's
resources look missing (``NotFound``), as everywhere in reelvault.

The platform admin creates tenants and manages keys, and deliberately cannot read, write
or list any tenant's assets: running the platform must not imply access to customers'
video (separation of duties). To reach assets it has to create a tenant key, which is a
visible, listable and revocable act.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import structlog
from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from reelvault.audit import Auditor, NullAuditSink, Resource
from reelvault.catalog import ApiKeyRow, Database, TenantRepository
from reelvault.catalog.db import describe_failure
from reelvault.clock import Clock
from reelvault.crypto.names import valid_tenant_id
from reelvault.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

__all__ = [
    "Action",
    "ApiKeyInfo",
    "ApiKeys",
    "LAST_USE_INTERVAL",
    "MAX_DESCRIPTION_LENGTH",
    "PERMISSIONS",
    "PLATFORM_ROLES",
    "Principal",
    "Role",
    "TOKEN_PREFIX",
    "authorize",
    "check_description",
    "require_can_create_key",
    "require_tenant_access",
    "valid_key_id",
]

TOKEN_PREFIX: Final = "rvk_"  # noqa: S105 (a public marker, not a secret)
MAX_DESCRIPTION_LENGTH: Final = 256

_KEY_ID_BYTES: Final = 8
_SECRET_BYTES: Final = 32
# 32 bytes in unpadded base64url: 42 characters of 6 bits and a last one carrying the final
# 4 bits and two zero bits. Only the canonical last characters are accepted, so one secret
# has exactly one spelling.
_TOKEN: Final = re.compile(r"rvk_([0-9a-f]{16})_([A-Za-z0-9_-]{42}[AEIMQUYcgkosw048])")
_SECRET_LENGTH: Final = 43  # ceil(32 * 8 / 6)
_TOKEN_LENGTH: Final = len(TOKEN_PREFIX) + 2 * _KEY_ID_BYTES + 1 + _SECRET_LENGTH
_KEY_ID: Final = re.compile(r"[0-9a-f]{16}")
# Compared against when the key id is unknown, so that case costs what a wrong secret does.
_DUMMY_HASH: Final = hashlib.sha256(b"reelvault: no such API key").digest()
_UNAUTHENTICATED: Final = "invalid API key"
LAST_USE_INTERVAL: Final = 60.0
"""Seconds: a key's last use is written at most this often, by each process and (through
a conditional UPDATE) by all replicas together."""
# Seconds the last-use writer thread stays idle before it exits (a new use restarts it).
_WRITER_IDLE: Final = 30.0

_log = structlog.get_logger("reelvault.auth")


class Role(StrEnum):
    """What a key may do; values are stored in ``api_keys.role`` (``API_KEY_ROLES``)."""

    PLATFORM_ADMIN = "platform-admin"
    ADMIN = "admin"
    INGEST = "ingest"
    RENDERER = "renderer"
    DISTRIBUTOR = "distributor"
    AUDITOR = "auditor"
    PRIVACY = "privacy"
    PLATFORM_AUDITOR = "platform-auditor"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: which key, for which tenant, in which role.

    Attributes:
        tenant_id: None exactly for platform keys (admin, auditor).
    """

    key_id: str
    tenant_id: str | None
    role: Role

    @property
    def is_platform_admin(self) -> bool:
        return self.role is Role.PLATFORM_ADMIN

    @property
    def is_platform(self) -> bool:
        """Bound to the platform (admin or auditor), not to one tenant."""
        return self.tenant_id is None


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What may be shown about a key: never its secret, nor the secret's hash.

    Attributes:
        tenant_id: None for platform keys.
        revoked_at: None while the key is valid.
        last_used_at: the last successful authentication, to within
            :data:`LAST_USE_INTERVAL`; None if the key was never used.
    """

    id: str
    tenant_id: str | None
    role: Role
    description: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def check_description(description: str) -> None:
    """Refuse a key description that :meth:`ApiKeys.create` would refuse, for callers that
    must know before they touch anything else.

    Raises:
        InvalidArgument: longer than 256 characters, or anything but printable characters.
    """
    if not (
        isinstance(description, str)
        and len(description) <= MAX_DESCRIPTION_LENGTH
        and description.isprintable()
    ):
        raise InvalidArgument(
            f"a key description is at most {MAX_DESCRIPTION_LENGTH} printable characters"
        )


class ApiKeys:
    """Creates, lists, revokes and authenticates API keys.

    Tenant scope is not checked here: these methods act on whatever tenant they are given,
    and the transport edge first calls :func:`require_tenant_access` or
    :func:`require_can_create_key` with the caller's :class:`Principal`.

    Revocation is read from the catalog on every :meth:`authenticate` (nothing is cached),
    so it takes effect on every replica with the commit. Safe to share between threads.

    A key's last use is not written on the call's path (a read-only or locked catalog must
    not fail or stall authentication): :meth:`authenticate` only notes it in memory, and
    :meth:`flush_last_use` writes what was noted, from a daemon thread started on the
    first use (``background_writes=False``: only when called, as tests do).
    """

    def __init__(
        self,
        database: Database,
        clock: Clock,
        *,
        auditor: Auditor | None = None,
        background_writes: bool = True,
    ) -> None:
        self._db = database
        self._clock = clock
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)
        # key id -> when this process last noted its last use (written or not).
        self._use_written: dict[str, float] = {}
        # key id -> the use noted and not yet written.
        self._use_pending: dict[str, float] = {}
        self._use_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time
        self._flush_failing = False  # the last flush failed (warned once per streak)
        self._background_writes = background_writes
        self._writer: threading.Thread | None = None
        self._wake = threading.Event()

    def create(
        self, *, tenant_id: str | None, role: Role, description: str = ""
    ) -> tuple[ApiKeyInfo, str]:
        """Create a key and return it with its token, which cannot be shown again.

        Raises:
            InvalidArgument: unknown role; a tenant for a platform key or none for
                any other; a description longer than 256 characters or with anything but
                printable characters.
            NotFound: the tenant does not exist.
        """
        try:
            role = Role(role)
        except ValueError:
            raise InvalidArgument("unknown role") from None
        if role in PLATFORM_ROLES and tenant_id is not None:
            raise InvalidArgument(f"{role} keys belong to no tenant")
        if role not in PLATFORM_ROLES and tenant_id is None:
            raise InvalidArgument(f"{role} keys need a tenant")
        check_description(description)
        if tenant_id is not None:
            _check_tenant_id(tenant_id)
        key_id = secrets.token_hex(_KEY_ID_BYTES)
        self._audit.note(tenant_id=tenant_id, resource=Resource("apikey", key_id))
        # A key is a release: recorded before it exists, so none exists unaudited.
        self._audit.release()
        secret = _encode_secret(secrets.token_bytes(_SECRET_BYTES))
        with self._db.transaction() as session:
            if tenant_id is not None:
                TenantRepository(session).tenant(tenant_id)
            row = ApiKeyRow(
                id=key_id,
                tenant_id=tenant_id,
                role=role.value,
                secret_hash=_hash(secret),
                description=description,
                created_at=self._now(),
            )
            session.add(row)
            session.flush()
            info = _info(row)
        return info, f"{TOKEN_PREFIX}{key_id}_{secret}"

    def get(self, key_id: str) -> ApiKeyInfo:
        """Raises NotFound for an unknown key."""
        with self._db.transaction(readonly=True) as session:
            return _info(_key_row(session, key_id))

    def list(self, tenant_id: str | None) -> builtins.list[ApiKeyInfo]:
        """A tenant's keys (None: the platform keys), revoked ones included, oldest
        first. Raises NotFound for an unknown tenant."""
        if tenant_id is not None:
            _check_tenant_id(tenant_id)
        self._audit.note(tenant_id=tenant_id)
        with self._db.transaction(readonly=True) as session:
            scope: ColumnElement[bool]
            if tenant_id is None:
                scope = ApiKeyRow.tenant_id.is_(None)
            else:
                TenantRepository(session).tenant(tenant_id)
                scope = ApiKeyRow.tenant_id == tenant_id
            query = select(ApiKeyRow).where(scope).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
            return [_info(row) for row in session.scalars(query)]

    def revoke(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key for good. Idempotent: a revoked key keeps its first revocation time.

        Raises:
            NotFound: unknown key.
        """
        with self._db.transaction(readonly=True) as session:
            owner = _key_row(session, key_id).tenant_id
        # Noted only here, after the edge checked the caller's scope: an attempt on another
        # tenant's key stays in the caller's log (and so tells nothing about that tenant).
        self._audit.note(tenant_id=owner, resource=Resource("apikey", key_id))
        with self._db.transaction() as session:
            row = _key_row(session, key_id, lock=True)
            if row.revoked_at is None:
                row.revoked_at = self._now()
            return _info(row)

    def authenticate(self, token: str) -> Principal:
        """The caller a bearer token stands for.

        Raises:
            Unauthenticated: the token is malformed, names no key, has the wrong secret or
                a revoked key; one message for all (see the module docstring).
            Unavailable: the catalog cannot be reached (not an authentication failure).
        """
        match = (
            _TOKEN.fullmatch(token)
            if isinstance(token, str) and len(token) == _TOKEN_LENGTH
            else None
        )
        if match is None:
            raise Unauthenticated(_UNAUTHENTICATED)
        key_id, secret = match.groups()
        presented = _hash(secret)
        with self._db.transaction(readonly=True) as session:
            row = session.get(ApiKeyRow, key_id)
            stored = _DUMMY_HASH if row is None else row.secret_hash
            # Compare first, whatever else is wrong, so the work done is the same each time.
            matches = hmac.compare_digest(presented, stored)
            if not matches or row is None or row.revoked_at is not None:
                raise Unauthenticated(_UNAUTHENTICATED)
            principal = Principal(key_id=row.id, tenant_id=row.tenant_id, role=Role(row.role))
        self._note_use(principal.key_id)
        return principal

    def flush_last_use(self) -> None:
        """Write the last uses noted since the previous flush, in one transaction.

        The UPDATE's condition skips a key whose stored last use is recent (another replica
        wrote it). Never raises: a database that refuses the write (read-only, a standby,
        locked, unreachable) is logged, as a warning the first time in a row, and the uses
        are dropped (the next use after :data:`LAST_USE_INTERVAL` notes the key again).
        """
        with self._flush_lock:
            with self._use_lock:
                pending, self._use_pending = self._use_pending, {}
            if not pending:
                return
            try:
                with self._db.transaction() as session:
                    for key_id, now in sorted(pending.items()):
                        moment = datetime.fromtimestamp(now, UTC)
                        stale = moment - timedelta(seconds=LAST_USE_INTERVAL)
                        session.execute(
                            update(ApiKeyRow)
                            .where(
                                ApiKeyRow.id == key_id,
                                or_(
                                    ApiKeyRow.last_used_at.is_(None),
                                    ApiKeyRow.last_used_at <= stale,
                                ),
                            )
                            .values(last_used_at=moment)
                        )
            except Exception as exc:  # a last-use time is never worth failing anything for
                log = _log.debug if self._flush_failing else _log.warning
                self._flush_failing = True
                log(
                    "api key last use not recorded",
                    keys=len(pending),
                    error=type(exc).__name__,
                    cause=_failure(exc),
                )
            else:
                self._flush_failing = False

    def _note_use(self, key_id: str) -> None:
        """Note a successful use of the key for :meth:`flush_last_use`, at most once per
        :data:`LAST_USE_INTERVAL` in this process. Touches no database."""
        now = self._clock.now()
        with self._use_lock:
            written = self._use_written.get(key_id)
            if written is not None and now - written < LAST_USE_INTERVAL:
                return
            self._use_written[key_id] = now
            self._use_pending[key_id] = now
            if not self._background_writes:
                return
            self._wake.set()
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_uses, name="reelvault-api-key-last-use", daemon=True
                )
                self._writer.start()

    def _write_uses(self) -> None:
        """The writer thread: flush whenever a use is noted; exit once idle a while."""
        while True:
            if not self._wake.wait(_WRITER_IDLE):
                with self._use_lock:
                    if not self._wake.is_set():
                        self._writer = None
                        return
            self._wake.clear()
            self.flush_last_use()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)


# -- authorization -------------------------------------------------------------------


class Action(StrEnum):
    """What a caller asks to do, whatever the transport: authorization and the audit log
    speak these, and each edge maps its own methods or routes to one of them (the gRPC
    edge: ``reelvault.rpc.actions.METHOD_ACTIONS``)."""

    TENANT_CREATE = "tenant.create"
    TENANT_READ = "tenant.read"
    TENANT_LIST = "tenant.list"
    TENANT_POLICY = "tenant.policy"
    APIKEY_CREATE = "apikey.create"
    APIKEY_LIST = "apikey.list"
    APIKEY_REVOKE = "apikey.revoke"
    ASSET_WRITE = "asset.write"
    ASSET_READ = "asset.read"
    ASSET_STAT = "asset.stat"
    ASSET_LIST = "asset.list"
    ASSET_DELETE = "asset.delete"
    ASSET_GRANT = "asset.grant"
    """A read grant: the asset's frame key and a presigned URL (a key release)."""
    AUDIT_READ = "audit.read"
    AUDIT_POLICY = "audit.policy"
    URL_ISSUE = "url.issue"
    """A signed distribution URL or cookie (docs/urls.md)."""
    URL_REVOKE = "url.revoke"
    URL_KEY_LIST = "url.key-list"
    URL_KEY_ROTATE = "url.key-rotate"
    ASSET_FETCH = "asset.fetch"
    """A fetch through the HTTP origin with a signed URL: the URL speaks with the
    authority of the role that issued it, limited to this action."""
    PAYLOAD_WRITE = "payload.write"
    PAYLOAD_READ = "payload.read"
    """A payload's data, for a purpose the subject consented to (docs/privacy.md)."""
    PAYLOAD_LIST = "payload.list"
    PAYLOAD_DELETE = "payload.delete"
    CONSENT_WRITE = "consent.write"
    CONSENT_READ = "consent.read"
    SUBJECT_HASH = "subject.hash"
    """A viewer id's pseudonym, to query the audit log with."""
    SUBJECT_ERASE = "subject.erase"
    SUBJECT_EXPORT = "subject.export"
    SUBJECT_HOLD = "subject.hold"
    KEY_READ = "key.read"
    KEY_MANAGE = "key.manage"
    """Rotate, rewrap, disable or enable a KEK version, set the minimum decryption version."""
    KEY_ROOT = "key.root"
    """Rewrap every tenant's KEKs under a rotated root key."""
    TENANT_LIFECYCLE = "tenant.lifecycle"
    """Disable, enable, schedule or cancel the deletion of a whole tenant."""
    KEY_EXPORT = "key.export"
    """Request and collect an export of the tenant's keys (a key release)."""
    KEY_EXPORT_APPROVE = "key.export-approve"


PLATFORM_ROLES: Final = frozenset({Role.PLATFORM_ADMIN, Role.PLATFORM_AUDITOR})
"""Roles bound to the platform rather than to one tenant."""

_TENANT_ROLES: Final = frozenset(Role) - PLATFORM_ROLES
_ASSET_WRITERS: Final = frozenset({Role.ADMIN, Role.INGEST})
_ASSET_READERS: Final = _ASSET_WRITERS | {Role.RENDERER}
_ASSET_METADATA_READERS: Final = _ASSET_READERS | {Role.DISTRIBUTOR}
_KEY_MANAGERS: Final = frozenset({Role.PLATFORM_ADMIN, Role.ADMIN})
_PLATFORM: Final = frozenset({Role.PLATFORM_ADMIN})
_AUDITORS: Final = frozenset({Role.AUDITOR, Role.PLATFORM_AUDITOR})
_DISTRIBUTORS: Final = frozenset({Role.DISTRIBUTOR, Role.ADMIN})
_DATA_WRITERS: Final = frozenset({Role.ADMIN, Role.INGEST})
_PRIVACY: Final = frozenset({Role.PRIVACY})

PERMISSIONS: Final[Mapping[Action, frozenset[Role]]] = MappingProxyType(
    {
        Action.TENANT_CREATE: _PLATFORM,
        # Tenant roles: their own tenant only (require_tenant_access).
        Action.TENANT_READ: _PLATFORM | _TENANT_ROLES,
        Action.TENANT_LIST: _PLATFORM,
        # Tenant admins: their own tenant only.
        Action.TENANT_POLICY: _KEY_MANAGERS,
        # Tenant admins: their own tenant's keys only, never platform keys.
        Action.APIKEY_CREATE: _KEY_MANAGERS,
        Action.APIKEY_LIST: _KEY_MANAGERS,
        Action.APIKEY_REVOKE: _KEY_MANAGERS,
        # No platform admin here: separation of duties (module docstring).
        Action.ASSET_WRITE: _ASSET_WRITERS,
        Action.ASSET_READ: _ASSET_READERS,
        Action.ASSET_STAT: _ASSET_METADATA_READERS,
        Action.ASSET_LIST: _ASSET_METADATA_READERS,
        Action.ASSET_DELETE: _ASSET_WRITERS,
        # Whoever may read the bytes through the vault may read them from the store.
        Action.ASSET_GRANT: _ASSET_READERS,
        # Auditors read the log and nothing else; nobody else reads the log.
        Action.AUDIT_READ: _AUDITORS,
        Action.AUDIT_POLICY: _KEY_MANAGERS,
        # Distribution: distributors and tenant admins issue and revoke URLs; a URL is
        # the issuer's authority to fetch, and nothing else (the origin's one action).
        Action.URL_ISSUE: _DISTRIBUTORS,
        Action.URL_REVOKE: _DISTRIBUTORS,
        Action.URL_KEY_LIST: _DISTRIBUTORS,
        Action.URL_KEY_ROTATE: _DISTRIBUTORS,
        Action.ASSET_FETCH: _DISTRIBUTORS,
        # Viewer data: written by ingest and tenant admins, read by renderers only, for a
        # consented purpose; the privacy team erases and exports; nobody on the platform.
        Action.PAYLOAD_WRITE: _DATA_WRITERS,
        Action.PAYLOAD_READ: frozenset({Role.RENDERER}),
        Action.PAYLOAD_LIST: _DATA_WRITERS | {Role.RENDERER, Role.PRIVACY},
        Action.PAYLOAD_DELETE: _DATA_WRITERS | _PRIVACY,
        Action.CONSENT_WRITE: _DATA_WRITERS | _PRIVACY,
        Action.CONSENT_READ: _DATA_WRITERS | {Role.RENDERER, Role.PRIVACY},
        # Auditors need pseudonyms to query the log about a viewer.
        Action.SUBJECT_HASH: _PRIVACY | {Role.AUDITOR, Role.ADMIN},
        Action.SUBJECT_ERASE: _PRIVACY,
        Action.SUBJECT_EXPORT: _PRIVACY,
        Action.SUBJECT_HOLD: _PRIVACY,
        # Keys: tenant admins (their own tenant) and platform admins.
        Action.KEY_READ: _KEY_MANAGERS,
        Action.KEY_MANAGE: _KEY_MANAGERS,
        Action.KEY_ROOT: _PLATFORM,
        Action.TENANT_LIFECYCLE: _KEY_MANAGERS,
        # Leaving with the keys takes two parties: the tenant's admin asks and collects,
        # a platform admin approves.
        Action.KEY_EXPORT: frozenset({Role.ADMIN}),
        Action.KEY_EXPORT_APPROVE: _PLATFORM,
    }
)
"""Action -> the roles that may do it. An action missing here is denied to all.
docs/api.md shows this table; a test keeps the two equal."""


def authorize(principal: Principal, action: Action) -> None:
    """Raises PermissionDenied unless the principal's role may do ``action``."""
    if principal.role not in PERMISSIONS.get(action, frozenset()):
        raise PermissionDenied(f"the {principal.role} role may not do {action}")


def require_tenant_access(principal: Principal, tenant_id: str | None) -> None:
    """Check that the principal may act within ``tenant_id`` (None: the platform scope,
    that is platform keys).

    Platform keys (admin, auditor) may act anywhere, within what :data:`PERMISSIONS`
    lets their role do at all; everyone else only within their own tenant.

    Raises:
        NotFound: anything else, so another tenant (or a platform key) is
            indistinguishable from one that does not exist.
    """
    if not principal.is_platform and tenant_id != principal.tenant_id:
        raise NotFound("not found")


def require_can_create_key(principal: Principal, *, tenant_id: str | None, role: Role) -> None:
    """Check that the principal may create a ``role`` key for ``tenant_id``.

    Only platform admins create platform keys (admin, auditor); a tenant admin creates keys of the
    tenant roles, for its own tenant. (Which roles reach CreateApiKey at all is
    :data:`PERMISSIONS`.)

    Raises:
        PermissionDenied: a platform key requested by anyone but a platform admin.
        NotFound: another tenant (see :func:`require_tenant_access`).
    """
    if role in PLATFORM_ROLES and not principal.is_platform_admin:
        raise PermissionDenied("only platform admins create platform keys")
    require_tenant_access(principal, tenant_id)


# -- helpers -------------------------------------------------------------------------


def _failure(exc: BaseException) -> str:
    """One line on why a catalog write failed, without a password or the statement."""
    described = describe_failure(exc)
    if described is not None:
        return described
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__


def _encode_secret(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def valid_key_id(key_id: object) -> bool:
    """Whether ``key_id`` has the form of an API key id (16 lowercase hex digits)."""
    return isinstance(key_id, str) and _KEY_ID.fullmatch(key_id) is not None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _check_tenant_id(tenant_id: str) -> None:
    # Ids are ours (32 hex digits); anything else cannot exist, so it need not reach SQL.
    if not (isinstance(tenant_id, str) and valid_tenant_id(tenant_id)):
        raise InvalidArgument("tenant id must be 32 lowercase hex digits")


def _key_row(session: Session, key_id: str, *, lock: bool = False) -> ApiKeyRow:
    if not valid_key_id(key_id):
        raise InvalidArgument("API key id must be 16 lowercase hex digits")
    query = select(ApiKeyRow).where(ApiKeyRow.id == key_id)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).one_or_none()
    if row is None:
        raise NotFound("API key not found")
    return row


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        role=Role(row.role),
        description=row.description,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )
