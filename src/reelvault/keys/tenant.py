"""Tenant KEKs: versions, states, and the in-process cache of unwrapped keys.

Each tenant has a versioned AES-256 key-encryption key (KEK). Every version is generated
and wrapped by the root key provider, bound to the context
``{"reelvault:tenant": <tenant id>, "reelvault:kek-version": <version>}``, and only the
wrapped form is stored in the catalog. A wrapped KEK copied to another tenant's or
version's row therefore fails to unwrap.

Versions move through states as in HashiCorp Vault Transit and AWS KMS::

    operation           from                              to
    create_tenant       -                                 active (version 1)
    rotate              -                                 active (latest + 1)
                        active (the previous one)         decrypt-only
    disable             active, decrypt-only              disabled
    enable              disabled                          decrypt-only
    schedule_deletion   decrypt-only, disabled            pending-deletion (see TenantKeys
                                                          for when it is allowed)
    cancel_deletion     pending-deletion                  disabled
    destroy             pending-deletion, once due        destroyed (wrapped key erased)

    encrypt with        the active version
    decrypt with        active or decrypt-only, and version >= min_decryption_version

The states are enforced here, before the root provider is asked to unwrap anything: a root
provider (and moto's KMS mock) will happily unwrap a key that this module considers
disabled, so the provider's answer is never the permission check.
"""

from __future__ import annotations

import math
import re
import secrets
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from reelvault.audit import Auditor, NullAuditSink, Resource
from reelvault.catalog import Database, TenantKeyVersionRow, TenantRepository, TenantRow
from reelvault.catalog.tables import AuditSigningKeyRow, SubjectRow, UrlSigningKeyRow
from reelvault.clock import Clock
from reelvault.crypto.names import (
    MAX_KEK_VERSION,
    kek_key_name,
    parse_kek_key_name,
    valid_tenant_id,
)
from reelvault.errors import (
    ConfigurationError,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    KeyUnavailable,
    NotFound,
)
from reelvault.keys.provider import RootKeyProvider, WrappedKey

__all__ = [
    "Kek",
    "KekResolver",
    "KekState",
    "KekVersion",
    "MAX_TENANT_NAME_LENGTH",
    "Tenant",
    "TenantKeys",
    "TenantState",
    "pack_wrapped",
    "pseudonym_context",
    "unpack_wrapped",
]

MAX_TENANT_NAME_LENGTH: Final = 128

_CONTEXT_TENANT: Final = "reelvault:tenant"
_CONTEXT_VERSION: Final = "reelvault:kek-version"


class KekState(StrEnum):
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"
    DISABLED = "disabled"
    PENDING_DELETION = "pending-deletion"
    DESTROYED = "destroyed"


_DECRYPTABLE: Final = frozenset({KekState.ACTIVE, KekState.DECRYPT_ONLY})


class TenantState(StrEnum):
    """The tenant's own state: anything but active refuses every use of its keys, whatever
    the root key provider would do."""

    ACTIVE = "active"
    DISABLED = "disabled"
    PENDING_DELETION = "pending-deletion"
    DESTROYED = "destroyed"


MIN_DELETION_DAYS: Final = 7
MAX_DELETION_DAYS: Final = 30
_KMS_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]{1,128}")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime
    min_decryption_version: int
    direct_reads: bool = False
    """AssetService.OpenAsset may release read grants (off until a tenant admin enables it)."""
    state: str = TenantState.ACTIVE
    deletion_due_at: datetime | None = None
    kms_key_arn: str | None = None
    """Bring your own key: the tenant's own KMS key wraps its KEKs."""


@dataclass(frozen=True, slots=True)
class KekVersion:
    """What the catalog knows about one KEK version; never any key material.

    Attributes:
        root_key_id: the root key that wrapped it (kept after destruction, for the record).
        deletion_due_at: when a pending deletion may be carried out; kept once destroyed.
    """

    tenant_id: str
    version: int
    state: KekState
    root_key_id: str
    created_at: datetime
    state_changed_at: datetime
    deletion_due_at: datetime | None
    destroyed_at: datetime | None

    @property
    def name(self) -> str:
        """The key name written into encrypted data keys (see :mod:`reelvault.crypto.names`)."""
        return kek_key_name(self.tenant_id, self.version)


@dataclass(frozen=True, slots=True)
class Kek:
    """An unwrapped KEK version. ``key`` is left out of the repr so it never reaches a log."""

    name: str
    version: int
    key: bytes = field(repr=False)


class KekResolver:
    """Finds the KEK named in an encrypted data key, for one tenant only.

    The crypto layer calls :meth:`wrapping_key` with each key name found in a message. A
    name this tenant never wrote (another tenant's, a foreign provider's, a version that
    does not exist) gives None, so decryption fails with the same opaque
    ``DecryptionError`` as any other tampering.
    """

    __slots__ = ("_keys", "tenant_id")

    def __init__(self, keys: TenantKeys, tenant_id: str) -> None:
        self._keys = keys
        self.tenant_id = tenant_id

    def wrapping_key(self, key_name: str) -> bytes | None:
        """The KEK's bytes, or None if the name is not one of this tenant's versions.

        Raises:
            KeyUnavailable: the version exists but its state forbids decryption.
        """
        parsed = parse_kek_key_name(key_name)
        if parsed is None or parsed[0] != self.tenant_id:
            return None
        try:
            return self._keys.decryption_kek(self.tenant_id, parsed[1]).key
        except NotFound:
            return None

    def __repr__(self) -> str:
        return f"KekResolver(tenant_id={self.tenant_id!r})"


class TenantKeys:
    """Tenants, their KEK versions and state changes, with a cache of unwrapped KEKs.

    Every operation is one catalog transaction and reads the time from ``clock``. The root
    provider is called outside transactions (bar a contended :meth:`rotate`), so a slow
    provider does not hold database locks.

    Unwrapped KEKs are cached in process memory for ``cache_ttl`` seconds (measured on
    ``clock.monotonic()`` from the start of the catalog read that loaded them; 0 disables
    the cache). Any state change made through this object drops the tenant's cached KEKs at
    once, so on this replica a disable, a deletion or a raised minimum version takes effect
    immediately. **Other replicas keep using a KEK they have cached until their entry
    expires**: a state change is fully in force everywhere only ``cache_ttl`` seconds after
    it commits. Keep the TTL short for that reason.

    In particular, after a :meth:`rotate` another replica may keep *encrypting* new objects
    under the previous version for up to ``cache_ttl``. So that such objects are never
    born unreadable or shredded, retiring a version waits for every cache to forget it was
    active:

    * :meth:`set_min_decryption_version` refuses to raise the minimum above a version that
      stopped being active (was demoted by a rotation, or disabled) less than ``cache_ttl``
      ago; lowering it is always allowed.
    * :meth:`schedule_deletion` refuses such a version too, and requires a waiting period of
      at least ``cache_ttl``: when the deletion is due, every replica's cached copy (for
      decryption, say) has expired, so :meth:`destroy` really leaves no usable copy.

    Both refusals are ``FailedPrecondition`` saying when the operation becomes allowed.
    They rely on every replica using the same ``cache_ttl`` (or none a longer one than the
    replica making the change) and on the replicas' wall clocks agreeing (NTP): when a
    version stopped being active is read from the catalog's timestamps. A plain
    :meth:`disable` is not held back: it is the reversible emergency stop, and takes effect
    on other replicas within the TTL, as any state change.

    Python cannot wipe ``bytes``; an expired or dropped KEK stays in freed memory until it
    is overwritten. The cache bounds how long a live reference exists, nothing more.

    Safe to share between threads.
    """

    def __init__(
        self,
        database: Database,
        root: RootKeyProvider,
        clock: Clock,
        cache_ttl: float = 60.0,
        *,
        auditor: Auditor | None = None,
        byok: Callable[[str], RootKeyProvider] | None = None,
    ) -> None:
        if not (cache_ttl >= 0 and math.isfinite(cache_ttl)):
            raise ConfigurationError("the KEK cache TTL must be a finite number of seconds >= 0")
        self._db = database
        self._root = root
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._cache = _KekCache(clock, cache_ttl)
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)
        # bring your own key: a provider over the tenant's own KMS key, by ARN
        self._byok = byok
        self._arns: dict[str, str | None] = {}

    def root_for(self, tenant_id: str) -> RootKeyProvider:
        """The root key provider of the tenant's keys (its own KMS key for BYOK tenants)."""
        return self._provider(tenant_id)

    def _provider(self, tenant_id: str) -> RootKeyProvider:
        """The root key provider of the tenant's KEKs: the service's, or the tenant's own
        KMS key (its ARN never changes after creation, so it is cached)."""
        if tenant_id not in self._arns:
            with self._db.transaction(readonly=True) as session:
                arn = session.scalar(
                    select(TenantRow.root_key_arn).where(TenantRow.id == tenant_id)
                )
            self._arns[tenant_id] = arn
        arn = self._arns[tenant_id]
        if arn is None:
            return self._root
        if self._byok is None:
            raise KeyUnavailable(
                "the tenant's KEKs are wrapped by its own KMS key, and this process has no "
                "AWS KMS settings (REELVAULT_KMS_REGION)"
            )
        return self._byok(arn)

    # -- tenants ---------------------------------------------------------------------

    def create_tenant(self, name: str, *, kms_key_arn: str | None = None) -> Tenant:
        """Create a tenant with KEK version 1 active, both in one transaction.

        ``kms_key_arn`` (bring your own key): the tenant's own AWS KMS key, which then
        wraps every KEK version of the tenant instead of the service's root key.

        Raises:
            InvalidArgument: the name is empty, longer than 128 characters, or contains
                anything but printable characters (no control, format or separator
                characters other than the plain space).
            AlreadyExists: a tenant has this name already.
            Unavailable: the root key provider or the catalog cannot be reached.
        """
        if not (
            isinstance(name, str)
            and 1 <= len(name) <= MAX_TENANT_NAME_LENGTH
            and name.isprintable()
        ):
            raise InvalidArgument(
                f"a tenant name is 1 to {MAX_TENANT_NAME_LENGTH} printable characters"
            )
        tenant_id = secrets.token_hex(16)
        if kms_key_arn:
            if _KMS_ARN.fullmatch(kms_key_arn) is None:
                raise InvalidArgument("a KMS key ARN looks like arn:aws:kms:REGION:ACCOUNT:key/ID")
            if self._byok is None:
                raise FailedPrecondition(
                    "bring your own key needs the service's AWS KMS settings (REELVAULT_KMS_REGION)"
                )
            provider = self._byok(kms_key_arn)
        else:
            kms_key_arn, provider = None, self._root
        key, wrapped = provider.generate_key(_wrapping_context(tenant_id, 1))
        now = self._now()
        ticket = self._cache.ticket()
        with self._db.transaction() as session:
            repository = TenantRepository(session)
            row = TenantRow(
                id=tenant_id,
                name=name,
                created_at=now,
                min_decryption_version=1,
                state=TenantState.ACTIVE.value,
                root_key_arn=kms_key_arn,
            )
            repository.add_tenant(row)
            repository.add_key_version(_new_version_row(tenant_id, 1, wrapped, now))
            tenant = _tenant(row)
        self._cache.replace(tenant_id, Kek(kek_key_name(tenant_id, 1), 1, key), ticket=ticket)
        self._audit.note(resource=Resource("tenant", tenant_id, name))
        self._key_event("key.create", tenant_id, 1)
        return tenant

    def get_tenant(self, tenant_id: str) -> Tenant:
        """Raises NotFound for an unknown tenant."""
        _check_tenant_id(tenant_id)
        with self._db.transaction(readonly=True) as session:
            tenant = _tenant(TenantRepository(session).tenant(tenant_id))
        # Noted once found: a tenant that does not exist gets no log.
        self._audit.note(tenant_id=tenant_id, resource=Resource("tenant", tenant_id))
        return tenant

    def set_policy(self, tenant_id: str, *, direct_reads: bool | None = None) -> Tenant:
        """Change the tenant's policies (None: unchanged). The change is recorded before
        it takes effect.

        Raises:
            NotFound: no such tenant.
        """
        _check_tenant_id(tenant_id)
        with self._db.transaction(readonly=True) as session:
            TenantRepository(session).tenant(tenant_id)
        detail: dict[str, str | int] = {}
        if direct_reads is not None:
            detail["direct_reads"] = int(direct_reads)
        self._audit.note(tenant_id=tenant_id, resource=Resource("tenant", tenant_id), detail=detail)
        self._audit.release()
        with self._db.transaction() as session:
            row = TenantRepository(session).tenant(tenant_id, lock=True)
            if direct_reads is not None:
                row.direct_reads = direct_reads
            return _tenant(row)

    def list_tenants(self) -> list[Tenant]:
        """All tenants, by name."""
        with self._db.transaction(readonly=True) as session:
            return [_tenant(row) for row in TenantRepository(session).tenants()]

    def list_versions(self, tenant_id: str) -> list[KekVersion]:
        """The tenant's KEK versions, oldest first. Raises NotFound for an unknown tenant."""
        _check_tenant_id(tenant_id)
        with self._db.transaction(readonly=True) as session:
            repository = TenantRepository(session)
            repository.tenant(tenant_id)
            return [_version(row) for row in repository.key_versions(tenant_id)]

    # -- state changes ---------------------------------------------------------------

    def rotate(self, tenant_id: str) -> int:
        """Make a new version (latest + 1) active; the previous active one becomes
        decrypt-only. Works when no version is active, too (after a disable).

        Data keys wrapped under older versions are not touched: rewrapping them is the
        caller's next step, and they stay readable meanwhile.

        The new key is generated before the tenant's lock is taken, so a slow root
        provider holds no lock. Only if another rotation commits in between is the key
        generated again, for the next free number, while holding the lock: that guarantees
        progress without retries.

        Returns:
            The new version number.

        Raises:
            NotFound: unknown tenant.
            FailedPrecondition: the version numbers are exhausted, or the tenant was
                destroyed.
            Unavailable: the root provider or the catalog cannot be reached.
        """
        _check_tenant_id(tenant_id)
        with self._db.transaction(readonly=True) as session:
            repository = TenantRepository(session)
            _require_not_destroyed(repository.tenant(tenant_id))
            version = repository.latest_key_version(tenant_id) + 1
        key, wrapped = self._generate(tenant_id, version)
        # Taken before the commit: a state change of the new version committed by another
        # thread before the cache is updated then keeps the new key out of the cache.
        ticket = self._cache.ticket()
        with self._db.transaction() as session:
            repository = TenantRepository(session)
            # under the lock: a destruction that committed meanwhile wins
            _require_not_destroyed(repository.tenant(tenant_id, lock=True))
            latest = repository.latest_key_version(tenant_id)
            if latest + 1 != version:  # another rotation committed first
                version = latest + 1
                key, wrapped = self._generate(tenant_id, version)
            now = self._now()
            previous = repository.active_key_version(tenant_id)
            if previous is not None:
                _set_state(previous, KekState.DECRYPT_ONLY, now)
                session.flush()  # before the insert: never two active rows
            repository.add_key_version(_new_version_row(tenant_id, version, wrapped, now))
        kek = Kek(kek_key_name(tenant_id, version), version, key)
        self._cache.replace(tenant_id, kek, ticket=ticket)
        self._key_event("key.rotate", tenant_id, version)
        return version

    def disable(self, tenant_id: str, version: int) -> KekVersion:
        """Stop all use of a version, reversibly (:meth:`enable`).

        Disabling the active version leaves the tenant unable to encrypt until
        :meth:`rotate`.

        Raises:
            NotFound: unknown tenant or version.
            FailedPrecondition: the version is not active or decrypt-only.
        """
        with self._locked_version(tenant_id, version) as (_, row, now):
            _require(row, {KekState.ACTIVE, KekState.DECRYPT_ONLY})
            _set_state(row, KekState.DISABLED, now)
            result = _version(row)
        self._key_event("key.disable", tenant_id, version)
        return result

    def enable(self, tenant_id: str, version: int) -> KekVersion:
        """Re-allow decryption with a disabled version. It never becomes active again:
        encryption moves forward only, by :meth:`rotate`.

        Raises:
            NotFound: unknown tenant or version.
            FailedPrecondition: the version is not disabled.
        """
        with self._locked_version(tenant_id, version) as (_, row, now):
            _require(row, {KekState.DISABLED})
            _set_state(row, KekState.DECRYPT_ONLY, now)
            result = _version(row)
        self._key_event("key.enable", tenant_id, version)
        return result

    def schedule_deletion(
        self, tenant_id: str, version: int, waiting_period_seconds: float
    ) -> KekVersion:
        """Mark a version for destruction after a waiting period, during which it cannot
        be used and :meth:`cancel_deletion` can still save it.

        Refused while the version may still be active in another replica's cache, and with
        a waiting period shorter than the cache TTL (see the class docstring).

        Raises:
            InvalidArgument: the waiting period is not a number of seconds >= the cache TTL,
                or puts the due date out of range.
            NotFound: unknown tenant or version.
            FailedPrecondition: the version is active (rotate first), is not decrypt-only
                or disabled, or stopped being active less than the cache TTL ago.
        """
        waiting_period = self._waiting_period(waiting_period_seconds)
        with self._locked_version(tenant_id, version) as (repository, row, now):
            if row.state == KekState.ACTIVE:
                raise FailedPrecondition("the active KEK version cannot be deleted; rotate first")
            _require(row, {KekState.DECRYPT_ONLY, KekState.DISABLED})
            self._require_retired_everywhere(
                repository, tenant_id, [version], now, "scheduling it for deletion"
            )
            _set_state(row, KekState.PENDING_DELETION, now)
            row.deletion_due_at = now + waiting_period
            result = _version(row)
        self._key_event("key.schedule-deletion", tenant_id, version)
        return result

    def cancel_deletion(self, tenant_id: str, version: int) -> KekVersion:
        """Take a version out of pending deletion; it comes back disabled, not usable.

        Raises:
            NotFound: unknown tenant or version.
            FailedPrecondition: the version is not pending deletion.
        """
        with self._locked_version(tenant_id, version) as (_, row, now):
            _require(row, {KekState.PENDING_DELETION})
            _set_state(row, KekState.DISABLED, now)
            row.deletion_due_at = None
            result = _version(row)
        self._key_event("key.cancel-deletion", tenant_id, version)
        return result

    def destroy(self, tenant_id: str, version: int) -> KekVersion:
        """Erase a version's key material for good (crypto-shredding): every data key
        wrapped under it becomes unrecoverable.

        Raises:
            NotFound: unknown tenant or version.
            FailedPrecondition: the version is not pending deletion, or its waiting period
                has not ended.
        """
        with self._locked_version(tenant_id, version) as (_, row, now):
            _require(row, {KekState.PENDING_DELETION})
            if row.deletion_due_at is None or now < row.deletion_due_at:
                raise FailedPrecondition("the KEK version's deletion waiting period has not ended")
            _set_state(row, KekState.DESTROYED, now)
            row.wrapped_key = None
            row.destroyed_at = now
            result = _version(row)
        self._key_event("key.destroy", tenant_id, version)
        return result

    def set_min_decryption_version(self, tenant_id: str, version: int) -> Tenant:
        """Refuse decryption with versions below ``version`` (which may also be lowered
        again, as in Vault; lowering is never refused).

        Raising it is refused while a version it would newly exclude may still be active in
        another replica's cache (see the class docstring).

        Raises:
            InvalidArgument: ``version`` is below 1.
            NotFound: unknown tenant.
            FailedPrecondition: ``version`` is above the active version (or above the
                latest version when none is active), or a version from the current minimum
                up to ``version - 1`` stopped being active less than the cache TTL ago.
        """
        if version < 1:
            raise InvalidArgument("the minimum decryption version is at least 1")
        _check_tenant_id(tenant_id)
        with self._db.transaction() as session:
            repository = TenantRepository(session)
            tenant_row = repository.tenant(tenant_id, lock=True)
            active = repository.active_key_version(tenant_id)
            ceiling = (
                active.version if active is not None else repository.latest_key_version(tenant_id)
            )
            if version > ceiling:
                raise FailedPrecondition(
                    "the minimum decryption version cannot exceed the current KEK version"
                )
            self._require_retired_everywhere(
                repository,
                tenant_id,
                range(tenant_row.min_decryption_version, version),
                self._now(),
                f"raising the minimum decryption version to {version}",
            )
            tenant_row.min_decryption_version = version
            tenant = _tenant(tenant_row)
        self._cache.drop(tenant_id)
        self._key_event("key.set-min-decryption-version", tenant_id, version)
        return tenant

    def _key_event(self, action: str, tenant_id: str, version: int) -> None:
        """Record a key operation in the tenant's log, after it committed: the record
        names the version, never key material."""
        self._audit.record(
            action,
            tenant_id=tenant_id,
            resources=[Resource("kek", f"{tenant_id}/v{version}")],
            kek_version=version,
        )

    # -- the tenant's own state ------------------------------------------------------

    def _tenant_state(
        self, tenant_id: str, allowed: set[TenantState], to: TenantState, *, due: datetime | None
    ) -> Tenant:
        _check_tenant_id(tenant_id)
        with self._db.transaction() as session:
            row = TenantRepository(session).tenant(tenant_id, lock=True)
            if TenantState(row.state) not in allowed:
                raise FailedPrecondition(f"the tenant is {row.state}")
            if to == TenantState.PENDING_DELETION and _held(session, tenant_id):
                raise FailedPrecondition(
                    "the tenant or one of its subjects is under a legal hold; release it first"
                )
            row.state = to.value
            row.deletion_due_at = due
            tenant = _tenant(row)
        self._cache.drop(tenant_id)
        return tenant

    def disable_tenant(self, tenant_id: str) -> Tenant:
        """Refuse every use of the tenant's keys (reversible: :meth:`enable_tenant`)."""
        tenant = self._tenant_state(tenant_id, {TenantState.ACTIVE}, TenantState.DISABLED, due=None)
        self._audit.record("tenant.disable", tenant_id=tenant_id, resources=[_res(tenant_id)])
        return tenant

    def enable_tenant(self, tenant_id: str) -> Tenant:
        tenant = self._tenant_state(tenant_id, {TenantState.DISABLED}, TenantState.ACTIVE, due=None)
        self._audit.record("tenant.enable", tenant_id=tenant_id, resources=[_res(tenant_id)])
        return tenant

    def schedule_tenant_deletion(self, tenant_id: str, waiting_days: int) -> Tenant:
        """Disable the tenant at once and make it due for destruction after
        ``waiting_days`` (7 to 30); :meth:`cancel_tenant_deletion` until then.

        Raises:
            InvalidArgument: the waiting period is outside 7 to 30 days.
            FailedPrecondition: a legal hold on the tenant or one of its subjects, or the
                tenant is already pending deletion or destroyed.
        """
        if not MIN_DELETION_DAYS <= waiting_days <= MAX_DELETION_DAYS:
            raise InvalidArgument(
                f"the waiting period is {MIN_DELETION_DAYS} to {MAX_DELETION_DAYS} days"
            )
        due = self._now() + timedelta(days=waiting_days)
        tenant = self._tenant_state(
            tenant_id,
            {TenantState.ACTIVE, TenantState.DISABLED},
            TenantState.PENDING_DELETION,
            due=due,
        )
        self._audit.record(
            "tenant.schedule-deletion",
            tenant_id=tenant_id,
            resources=[_res(tenant_id)],
            detail={"waiting_days": waiting_days},
        )
        return tenant

    def cancel_tenant_deletion(self, tenant_id: str) -> Tenant:
        """Take the tenant out of pending deletion; it comes back disabled (enable it)."""
        tenant = self._tenant_state(
            tenant_id, {TenantState.PENDING_DELETION}, TenantState.DISABLED, due=None
        )
        self._audit.record(
            "tenant.cancel-deletion", tenant_id=tenant_id, resources=[_res(tenant_id)]
        )
        return tenant

    def due_deletions(self) -> list[str]:
        """Tenants pending deletion whose waiting period has ended."""
        now = self._now()
        with self._db.transaction(readonly=True) as session:
            return list(
                session.scalars(
                    select(TenantRow.id).where(
                        TenantRow.state == TenantState.PENDING_DELETION.value,
                        TenantRow.deletion_due_at <= now,
                    )
                )
            )

    def destroy_tenant_keys(self, session: Session, tenant_id: str) -> int:
        """Inside the destruction's transaction: erase every KEK version's material and the
        pseudonym key, and mark the tenant destroyed (crypto-shredding). Returns the
        versions destroyed.

        Raises:
            FailedPrecondition: the tenant is not pending deletion, or not due yet, or a
                legal hold appeared meanwhile.
        """
        now = self._now()
        row = TenantRepository(session).tenant(tenant_id, lock=True)
        if row.state != TenantState.PENDING_DELETION.value or (
            row.deletion_due_at is None or now < row.deletion_due_at
        ):
            raise FailedPrecondition("the tenant is not due for deletion")
        if _held(session, tenant_id):
            raise FailedPrecondition("the tenant or one of its subjects is under a legal hold")
        destroyed = 0
        for version in TenantRepository(session).key_versions(tenant_id):
            if version.state != KekState.DESTROYED.value:
                _set_state(version, KekState.DESTROYED, now)
                version.wrapped_key = None
                version.deletion_due_at = version.deletion_due_at or now
                version.destroyed_at = now
                destroyed += 1
        row.pseudonym_key = None
        row.state = TenantState.DESTROYED.value
        self._cache.drop(tenant_id)
        return destroyed

    def rewrap_root(self) -> tuple[int, int]:
        """Rewrap every KEK version (and pseudonym key) wrapped by the service's root key
        under its current root key (after a root key rotation: the local keyring's newest
        version, or KMS ReEncrypt to the configured key). Tenants with their own KMS key
        are skipped (their keys never were under the service's root). Each key in its own
        transaction, so a rerun after a failure finishes the job. Returns (KEK versions,
        pseudonym keys) rewrapped.

        The service's other root-wrapped keys move too, whatever their tenant: the audit
        checkpoint signing key and every URL signing key that still holds its secret
        (counted in the audit record). Otherwise the old root version could not be
        dropped once every KEK shows the new one: checkpoints would no longer be signed,
        nor URLs issued."""
        with self._db.transaction(readonly=True) as session:
            versions = [
                (row.tenant_id, row.version, row.root_key_id, row.wrapped_key)
                for row in session.scalars(
                    select(TenantKeyVersionRow)
                    .join(TenantRow, TenantRow.id == TenantKeyVersionRow.tenant_id)
                    .where(
                        TenantKeyVersionRow.wrapped_key.is_not(None),
                        TenantRow.root_key_arn.is_(None),
                    )
                )
            ]
            pseudonym_keys = [
                (row.id, row.pseudonym_key)
                for row in session.scalars(
                    select(TenantRow).where(
                        TenantRow.pseudonym_key.is_not(None), TenantRow.root_key_arn.is_(None)
                    )
                )
            ]
        kek_count = 0
        for tenant_id, version, root_key_id, material in versions:
            if material is None:
                continue
            rewrapped = self._root.rewrap(
                WrappedKey(root_key_id, material), _wrapping_context(tenant_id, version)
            )
            with self._db.transaction() as session:
                session.execute(
                    update(TenantKeyVersionRow)
                    .where(
                        TenantKeyVersionRow.tenant_id == tenant_id,
                        TenantKeyVersionRow.version == version,
                        TenantKeyVersionRow.wrapped_key == material,
                    )
                    .values(wrapped_key=rewrapped.ciphertext, root_key_id=rewrapped.root_key_id)
                )
            kek_count += 1
        pseudonym_count = 0
        for tenant_id, packed in pseudonym_keys:
            if packed is None:
                continue
            rewrapped = self._root.rewrap(unpack_wrapped(packed), pseudonym_context(tenant_id))
            with self._db.transaction() as session:
                session.execute(
                    update(TenantRow)
                    .where(TenantRow.id == tenant_id, TenantRow.pseudonym_key == packed)
                    .values(pseudonym_key=pack_wrapped(rewrapped))
                )
            pseudonym_count += 1
        audit_count, url_count = self._rewrap_service_keys()
        self._cache.clear()
        self._audit.record(
            "key.rewrap-root",
            tenant_id=None,
            detail={
                "kek_versions": kek_count,
                "pseudonym_keys": pseudonym_count,
                "audit_signing_keys": audit_count,
                "url_signing_keys": url_count,
            },
        )
        return kek_count, pseudonym_count

    def _rewrap_service_keys(self) -> tuple[int, int]:
        """:meth:`rewrap_root` of the audit signing keys and URL signing secrets, which the
        service's root key wraps for every tenant (BYOK ones included), each in its own
        transaction and only if unchanged meanwhile."""
        # imported here: both modules import reelvault.keys (a cycle at import time)
        from reelvault.audit.log import _SIGNING_CONTEXT  # noqa: PLC0415
        from reelvault.distribution.keys import _CONTEXT as _URL_CONTEXT  # noqa: PLC0415

        with self._db.transaction(readonly=True) as session:
            audit_keys = [
                (row.name, row.root_key_id, row.wrapped_key)
                for row in session.scalars(select(AuditSigningKeyRow))
            ]
            url_keys = [
                (row.kid, row.tenant_id, row.root_key_id, row.wrapped_secret)
                for row in session.scalars(
                    select(UrlSigningKeyRow).where(UrlSigningKeyRow.wrapped_secret.is_not(None))
                )
            ]
        for name, root_key_id, material in audit_keys:
            rewrapped = self._root.rewrap(
                WrappedKey(root_key_id, material), _SIGNING_CONTEXT | {"name": name}
            )
            with self._db.transaction() as session:
                session.execute(
                    update(AuditSigningKeyRow)
                    .where(
                        AuditSigningKeyRow.name == name, AuditSigningKeyRow.wrapped_key == material
                    )
                    .values(wrapped_key=rewrapped.ciphertext, root_key_id=rewrapped.root_key_id)
                )
        for kid, tenant_id, root_key_id, secret in url_keys:
            if secret is None:
                continue
            rewrapped = self._root.rewrap(
                WrappedKey(root_key_id, secret), _URL_CONTEXT | {"tenant": tenant_id, "kid": kid}
            )
            with self._db.transaction() as session:
                session.execute(
                    update(UrlSigningKeyRow)
                    .where(UrlSigningKeyRow.kid == kid, UrlSigningKeyRow.wrapped_secret == secret)
                    .values(wrapped_secret=rewrapped.ciphertext, root_key_id=rewrapped.root_key_id)
                )
        return len(audit_keys), len(url_keys)

    def export_material(self, tenant_id: str) -> list[tuple[KekVersion, bytes]]:
        """Every KEK version that still has key material, unwrapped, whatever its state
        (for an approved key export only: the caller audits it as a key release).

        Raises:
            FailedPrecondition: the tenant was destroyed.
        """
        _check_tenant_id(tenant_id)
        with self._db.transaction(readonly=True) as session:
            repository = TenantRepository(session)
            if repository.tenant(tenant_id).state == TenantState.DESTROYED.value:
                raise FailedPrecondition("the tenant was destroyed")
            rows = [
                (_version(row), _wrapped(row))
                for row in repository.key_versions(tenant_id)
                if row.wrapped_key is not None
            ]
        return [
            (version, self._unwrap(tenant_id, version.version, wrapped).key)
            for version, wrapped in rows
        ]

    # -- keys ------------------------------------------------------------------------

    def encryption_kek(self, tenant_id: str) -> Kek:
        """The active version, for wrapping new data keys.

        Raises:
            NotFound: unknown tenant.
            KeyUnavailable: no version is active.
            Unavailable: the root provider or the catalog cannot be reached.
        """
        cached = self._cache.active(tenant_id)
        if cached is not None:
            return cached
        _check_tenant_id(tenant_id)
        ticket = self._cache.ticket()
        with self._db.transaction(readonly=True) as session:
            repository = TenantRepository(session)
            _require_usable(repository.tenant(tenant_id))
            row = repository.active_key_version(tenant_id)
            if row is None:
                raise KeyUnavailable("the tenant has no active KEK version")
            version, wrapped = row.version, _wrapped(row)
        kek = self._unwrap(tenant_id, version, wrapped)
        self._cache.put(tenant_id, kek, active=True, ticket=ticket)
        return kek

    def decryption_kek(self, tenant_id: str, version: int) -> Kek:
        """A version for unwrapping data keys, if its state and the tenant's minimum
        decryption version allow it.

        Raises:
            NotFound: unknown tenant or version.
            KeyUnavailable: the version is disabled, pending deletion, destroyed, or below
                the minimum decryption version.
            DecryptionError: the stored wrapped key does not unwrap for this tenant and
                version (it was tampered with or copied from another row).
            Unavailable: the root provider or the catalog cannot be reached.
        """
        cached = self._cache.get(tenant_id, version)
        if cached is not None:
            return cached
        _check_tenant_id(tenant_id)
        _check_version(version)
        ticket = self._cache.ticket()
        with self._db.transaction(readonly=True) as session:
            repository = TenantRepository(session)
            tenant_row = repository.tenant(tenant_id)
            _require_usable(tenant_row)
            row = repository.key_version(tenant_id, version)
            if row.state not in _DECRYPTABLE:
                raise KeyUnavailable(f"KEK version {version} is {row.state}")
            if version < tenant_row.min_decryption_version:
                raise KeyUnavailable(
                    f"KEK version {version} is below the tenant's minimum decryption version"
                )
            active, wrapped = row.state == KekState.ACTIVE, _wrapped(row)
        kek = self._unwrap(tenant_id, version, wrapped)
        self._cache.put(tenant_id, kek, active=active, ticket=ticket)
        return kek

    def resolver(self, tenant_id: str) -> KekResolver:
        """What the crypto layer asks for the KEK named in a message of this tenant."""
        return KekResolver(self, tenant_id)

    def clear_cache(self) -> None:
        """Forget every cached KEK (at shutdown, or after changing keys behind our back)."""
        self._cache.clear()

    # -- helpers ---------------------------------------------------------------------

    @contextmanager
    def _locked_version(
        self, tenant_id: str, version: int
    ) -> Iterator[tuple[TenantRepository, TenantKeyVersionRow, datetime]]:
        """A write transaction holding the tenant's lock, for one version's state change.

        The tenant's cached KEKs are dropped after the commit, not before: a reader that
        loaded the old state concurrently then fails to cache it (see ``_KekCache.put``).
        """
        _check_tenant_id(tenant_id)
        _check_version(version)
        with self._db.transaction() as session:
            repository = TenantRepository(session)
            repository.tenant(tenant_id, lock=True)
            yield repository, repository.key_version(tenant_id, version), self._now()
        self._cache.drop(tenant_id)

    def _require_retired_everywhere(
        self,
        repository: TenantRepository,
        tenant_id: str,
        versions: Iterable[int],
        now: datetime,
        action: str,
    ) -> None:
        """Refuse ``action`` while one of ``versions`` may still be the active KEK in some
        replica's cache: until ``cache_ttl`` after it stopped being active.

        When it stopped is bounded from above by its ``state_changed_at`` (every later
        change moves that on) and by its successor's ``created_at`` (a version is demoted
        at the latest by the rotation that creates the next one). The smaller bound is
        used, so a later disable, enable or deletion schedule of a version rotated out long
        ago does not hold anything up. The catalog keeps no demotion time of its own, so a
        version disabled while active and changed again after its successor was created
        counts from that creation: later than needed, never earlier.

        Raises:
            FailedPrecondition: naming the version and when ``action`` becomes allowed.
        """
        if self._cache_ttl == 0:
            return
        rows = {row.version: row for row in repository.key_versions(tenant_id)}
        ttl = timedelta(seconds=self._cache_ttl)
        for version in versions:
            row = rows.get(version)
            if row is None:
                continue
            if row.state == KekState.ACTIVE:  # callers exclude it; never let it through
                raise FailedPrecondition(
                    f"{action} is not allowed: KEK version {version} is active"
                )
            successor = rows.get(version + 1)
            if successor is None:
                inactive_since = row.state_changed_at
            else:
                inactive_since = min(row.state_changed_at, successor.created_at)
            allowed_at = inactive_since + ttl
            if now < allowed_at:
                wait = math.ceil((allowed_at - now).total_seconds())
                raise FailedPrecondition(
                    f"{action} is not allowed yet: KEK version {version} was the active "
                    f"version until {_rfc3339(inactive_since)}, and other replicas may keep "
                    f"encrypting under it until their KEK cache ({self._cache_ttl:g} s) "
                    f"expires; allowed from {_rfc3339(allowed_at, ceil=True)} (in {wait} s)"
                )

    def _waiting_period(self, seconds: float) -> timedelta:
        """A deletion waiting period, at least the cache TTL: when the deletion is due,
        every copy cached before it was scheduled has expired, on every replica."""
        ttl = self._cache_ttl
        message = f"the waiting period must be a number of seconds >= the KEK cache TTL ({ttl:g})"
        if not seconds >= ttl:  # too short, negative, or NaN
            raise InvalidArgument(message)
        try:
            period = timedelta(seconds=seconds)
            self._now() + period  # the due date must be a representable time
        except OverflowError:
            raise InvalidArgument(
                "the waiting period puts the deletion date out of range"
            ) from None
        return period

    def _generate(self, tenant_id: str, version: int) -> tuple[bytes, WrappedKey]:
        if version > MAX_KEK_VERSION:
            raise FailedPrecondition("the tenant has used every KEK version number")
        return self._provider(tenant_id).generate_key(_wrapping_context(tenant_id, version))

    def _unwrap(self, tenant_id: str, version: int, wrapped: WrappedKey) -> Kek:
        key = self._provider(tenant_id).unwrap(wrapped, _wrapping_context(tenant_id, version))
        return Kek(kek_key_name(tenant_id, version), version, key)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)


@dataclass(slots=True)
class _Entry:
    kek: Kek
    active: bool
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Ticket:
    """Taken before reading (or writing) the catalog: the cache's epoch then, and the
    monotonic time, from which an entry's TTL counts."""

    epoch: int
    taken_at: float


class _KekCache:
    """Unwrapped KEKs by tenant and version, expiring on the monotonic clock.

    ``epoch`` counts invalidations. A reader takes a :meth:`ticket` before reading the
    catalog and passes it to :meth:`put`; if a state change was dropped in between, the read
    may be stale and is not cached. An entry expires ``ttl`` seconds after its ticket was
    taken, not after the (possibly slow) unwrap: so an entry loaded from a catalog read that
    began before a state change committed is gone ``ttl`` seconds after that commit, at the
    latest, which is what :class:`TenantKeys`' retirement rules count on. Unwrapping
    happens outside the lock, so two threads missing at once may both unwrap; that costs
    one extra provider call and nothing else.

    At most one entry per tenant is marked active, and it is the highest version cached as
    active: the active version only ever moves up (by :meth:`TenantKeys.rotate`), so a
    lower one arriving later comes from an older read.
    """

    def __init__(self, clock: Clock, ttl: float) -> None:
        self._clock = clock
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, dict[int, _Entry]] = {}
        self._epoch = 0

    def ticket(self) -> _Ticket:
        now = self._clock.monotonic()
        with self._lock:
            return _Ticket(self._epoch, now)

    def get(self, tenant_id: str, version: int) -> Kek | None:
        now = self._clock.monotonic()
        with self._lock:
            entry = self._entries.get(tenant_id, {}).get(version)
            return entry.kek if entry is not None and now < entry.expires_at else None

    def active(self, tenant_id: str) -> Kek | None:
        now = self._clock.monotonic()
        with self._lock:
            live = [
                entry
                for entry in self._entries.get(tenant_id, {}).values()
                if entry.active and now < entry.expires_at
            ]
            return max(live, key=lambda entry: entry.kek.version).kek if live else None

    def put(self, tenant_id: str, kek: Kek, *, active: bool, ticket: _Ticket) -> None:
        """Cache ``kek`` unless the cache was invalidated since ``ticket`` was taken."""
        now = self._clock.monotonic()
        with self._lock:
            if ticket.epoch == self._epoch:
                self._purge(now)
                self._insert(tenant_id, kek, active, ticket.taken_at + self._ttl, now)

    def replace(self, tenant_id: str, kek: Kek, *, ticket: _Ticket) -> None:
        """After a rotation committed: drop the tenant's entries (so no reader caches the
        previous active version from a read that began earlier) and cache ``kek`` as
        active, unless the cache was invalidated since ``ticket`` was taken (a state
        change of ``kek`` may have committed meanwhile), atomically."""
        now = self._clock.monotonic()
        with self._lock:
            fresh = ticket.epoch == self._epoch
            self._epoch += 1
            self._entries.pop(tenant_id, None)
            if fresh:
                self._purge(now)
                self._insert(tenant_id, kek, True, ticket.taken_at + self._ttl, now)

    def drop(self, tenant_id: str) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.pop(tenant_id, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()

    def _insert(
        self, tenant_id: str, kek: Kek, active: bool, expires_at: float, now: float
    ) -> None:
        if now >= expires_at:  # also when the TTL is 0
            return
        versions = self._entries.setdefault(tenant_id, {})
        if active:
            if any(e.active and e.kek.version > kek.version for e in versions.values()):
                active = False  # a newer version is active already: this read is older
            else:
                for entry in versions.values():
                    entry.active = False
        versions[kek.version] = _Entry(kek, active, expires_at)

    def _purge(self, now: float) -> None:
        # On insert only: misses are rare, and it keeps idle tenants' keys from lingering.
        for tenant_id in list(self._entries):
            versions = self._entries[tenant_id]
            for version in [v for v, entry in versions.items() if now >= entry.expires_at]:
                del versions[version]
            if not versions:
                del self._entries[tenant_id]


def _wrapping_context(tenant_id: str, version: int) -> dict[str, str]:
    return {_CONTEXT_TENANT: tenant_id, _CONTEXT_VERSION: str(version)}


def _check_tenant_id(tenant_id: str) -> None:
    # Ids are ours (32 hex digits); anything else cannot exist, so it need not reach SQL.
    if not (isinstance(tenant_id, str) and valid_tenant_id(tenant_id)):
        raise InvalidArgument("tenant id must be 32 lowercase hex digits")


def _rfc3339(moment: datetime, *, ceil: bool = False) -> str:
    """``moment`` in UTC to the second; ``ceil`` rounds up (for "allowed from")."""
    moment = moment.astimezone(UTC)
    if ceil and moment.microsecond:
        moment += timedelta(seconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_version(version: int) -> None:
    if not 1 <= version <= MAX_KEK_VERSION:
        raise NotFound("KEK version not found")


def _require(row: TenantKeyVersionRow, allowed: set[KekState]) -> None:
    if row.state not in allowed:
        raise FailedPrecondition(f"not allowed while KEK version {row.version} is {row.state}")


def _set_state(row: TenantKeyVersionRow, state: KekState, now: datetime) -> None:
    row.state = state.value
    row.state_changed_at = now


def _new_version_row(
    tenant_id: str, version: int, wrapped: WrappedKey, now: datetime
) -> TenantKeyVersionRow:
    return TenantKeyVersionRow(
        tenant_id=tenant_id,
        version=version,
        state=KekState.ACTIVE.value,
        root_key_id=wrapped.root_key_id,
        wrapped_key=wrapped.ciphertext,
        created_at=now,
        state_changed_at=now,
    )


def _wrapped(row: TenantKeyVersionRow) -> WrappedKey:
    # Callers check the state first; the material CHECK constraint ties NULL to 'destroyed'.
    if row.wrapped_key is None:
        raise IntegrityError(f"KEK version {row.version} has no key material")
    return WrappedKey(row.root_key_id, row.wrapped_key)


def _tenant(row: TenantRow) -> Tenant:
    return Tenant(
        row.id,
        row.name,
        row.created_at,
        row.min_decryption_version,
        bool(row.direct_reads),
        state=row.state or TenantState.ACTIVE.value,
        deletion_due_at=row.deletion_due_at,
        kms_key_arn=row.root_key_arn,
    )


def _require_not_destroyed(row: TenantRow) -> None:
    """A destroyed tenant's keys were shredded for good: it never gets new key material."""
    if row.state == TenantState.DESTROYED.value:
        raise FailedPrecondition("the tenant was destroyed")


def _require_usable(row: TenantRow) -> None:
    """Refuse any key of a tenant that is not active, before the provider is asked."""
    if row.state and row.state != TenantState.ACTIVE.value:
        raise KeyUnavailable(f"the tenant is {row.state}")


def _held(session: Session, tenant_id: str) -> bool:
    """A legal hold on the tenant (its audit log) or on any of its subjects."""
    tenant_hold = session.scalar(select(TenantRow.legal_hold).where(TenantRow.id == tenant_id))
    if tenant_hold:
        return True
    subject = session.scalar(
        select(SubjectRow.pseudonym)
        .where(SubjectRow.tenant_id == tenant_id, SubjectRow.legal_hold.is_(True))
        .limit(1)
    )
    return subject is not None


def _res(tenant_id: str) -> Resource:
    return Resource("tenant", tenant_id)


def pseudonym_context(tenant_id: str) -> dict[str, str]:
    """The root key context of a tenant's pseudonym key."""
    return {"reelvault:tenant": tenant_id, "reelvault:purpose": "subject-pseudonyms"}


def pack_wrapped(wrapped: WrappedKey) -> bytes:
    """A root-wrapped key as one column: uint16 length of the root key id, the id, the
    ciphertext."""
    root = wrapped.root_key_id.encode("utf-8")
    return struct.pack(">H", len(root)) + root + wrapped.ciphertext


def unpack_wrapped(data: bytes) -> WrappedKey:
    if len(data) < 2:
        raise IntegrityError("a stored wrapped key is malformed")
    (n,) = struct.unpack_from(">H", data)
    if len(data) < 2 + n:
        raise IntegrityError("a stored wrapped key is malformed")
    return WrappedKey(data[2 : 2 + n].decode("utf-8", "replace"), data[2 + n :])


def _version(row: TenantKeyVersionRow) -> KekVersion:
    return KekVersion(
        tenant_id=row.tenant_id,
        version=row.version,
        state=KekState(row.state),
        root_key_id=row.root_key_id,
        created_at=row.created_at,
        state_changed_at=row.state_changed_at,
        deletion_due_at=row.deletion_due_at,
        destroyed_at=row.destroyed_at,
    )
