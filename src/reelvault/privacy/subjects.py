"""Subjects: a tenant's viewers, known to storage and the audit log only by pseudonym.

A tenant names a viewer by its own id (an email, a CRM id). reelvault never stores that
id: it keeps ``pseudonym = HMAC-SHA256(tenant pseudonym key, viewer id)``, truncated to
128 bits (32 hex digits), where the pseudonym key is a per-tenant secret wrapped by the
root key provider. The same viewer id always gives the same pseudonym within a tenant, so
consent, payloads and audit events about one viewer meet; without the tenant's key a
pseudonym cannot be linked back to a viewer id, nor across tenants.

Each subject has its own AES-256 key, wrapped by the tenant's KEK (Raw AES keyring format,
bound to tenant and pseudonym), which wraps the data keys of the subject's payloads and
personalized renditions. Erasure destroys the wrapped subject key (crypto-shredding): from
that commit on, no replica can unwrap it, whatever copies of ciphertext exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from reelvault.catalog import Database
from reelvault.catalog.tables import AssetRow, SubjectRow, TenantRow
from reelvault.clock import Clock
from reelvault.crypto import EncryptedDataKey, EncryptionContext, unwrap_key, wrap_key
from reelvault.crypto.names import subject_key_name, valid_pseudonym, valid_tenant_id
from reelvault.errors import (
    DecryptionError,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    KeyUnavailable,
    NotFound,
)
from reelvault.keys.tenant import TenantKeys, pack_wrapped, pseudonym_context, unpack_wrapped
from reelvault.objects import SubjectKey

__all__ = [
    "MAX_SUBJECT_ID_LENGTH",
    "SubjectInfo",
    "Subjects",
    "check_subject_id",
]

MAX_SUBJECT_ID_LENGTH: Final = 256
_PSEUDONYM_LABEL: Final = b"reelvault subject pseudonym v1\x00"
_KEY_KIND: Final = "subject-key"


@dataclass(frozen=True, slots=True)
class SubjectInfo:
    tenant_id: str
    pseudonym: str
    created_at: datetime
    erased_at: datetime | None
    legal_hold: bool
    kek_version: int | None


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    key: bytes


def check_subject_id(subject_id: str) -> None:
    """A viewer id: 1 to 256 printable characters (it is never stored)."""
    if not (
        isinstance(subject_id, str)
        and 1 <= len(subject_id) <= MAX_SUBJECT_ID_LENGTH
        and subject_id.isprintable()
    ):
        raise InvalidArgument(f"a subject id is 1 to {MAX_SUBJECT_ID_LENGTH} printable characters")


def _key_context(tenant_id: str, pseudonym: str) -> EncryptionContext:
    return EncryptionContext(
        {
            "reelvault:tenant": tenant_id,
            "reelvault:subject": pseudonym,
            "reelvault:kind": _KEY_KIND,
        }
    )


class _SubjectResolver:
    """Unwraps data keys wrapped by one subject's key, and nothing else."""

    __slots__ = ("_name", "_pseudonym", "_subjects", "_tenant_id")

    def __init__(self, subjects: Subjects, tenant_id: str, pseudonym: str) -> None:
        self._subjects = subjects
        self._tenant_id = tenant_id
        self._pseudonym = pseudonym
        self._name = subject_key_name(tenant_id, pseudonym)

    def wrapping_key(self, key_name: str) -> bytes | None:
        if not hmac.compare_digest(key_name.encode(), self._name.encode()):
            return None
        return self._subjects._unwrapped(self._tenant_id, self._pseudonym)

    def __repr__(self) -> str:
        return f"SubjectResolver(tenant_id={self._tenant_id!r}, pseudonym={self._pseudonym!r})"


class _FixedResolver:
    """Serves one subject key, already unwrapped, for its name only."""

    __slots__ = ("_key", "_name")

    def __init__(self, name: str, key: bytes | None) -> None:
        self._name = name
        self._key = key

    def wrapping_key(self, key_name: str) -> bytes | None:
        if not hmac.compare_digest(key_name.encode(), self._name.encode()):
            return None
        return self._key

    def __repr__(self) -> str:
        return f"FixedResolver(name={self._name!r})"


class Subjects:
    """Pseudonyms, subject keys and legal holds (:class:`reelvault.objects.SubjectKeyring`).

    Subject keys are never cached: each use reads the subject's row, so an erasure is in
    force on every replica from its commit (the tenant KEK that unwraps them is cached as
    usual, see ``TenantKeys``). Pseudonym keys never change and are cached.
    """

    name = "subject"

    def __init__(
        self,
        database: Database,
        tenant_keys: TenantKeys,
        clock: Clock,
        *,
        cache_ttl: float = 60.0,
    ) -> None:
        self._db = database
        self._keys = tenant_keys
        self._clock = clock
        # pseudonym keys are cached like KEKs: for the KEK cache's TTL, so a destroyed
        # tenant's key is gone from every replica within the same bound
        self._cache_ttl = cache_ttl
        self._pseudonym_keys: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    # --- pseudonyms ------------------------------------------------------------------

    def pseudonym(self, tenant_id: str, subject_id: str) -> str:
        """The subject's pseudonym within the tenant (the same on every call).

        Raises:
            InvalidArgument: a malformed subject id.
            NotFound: no such tenant.
        """
        check_subject_id(subject_id)
        key = self._pseudonym_key(tenant_id)
        # NFC first: one name typed in two Unicode forms is one viewer (erasing one
        # spelling must not miss the other)
        canonical = unicodedata.normalize("NFC", subject_id)
        digest = hmac.new(key, _PSEUDONYM_LABEL + canonical.encode("utf-8"), hashlib.sha256)
        return digest.hexdigest()[:32]

    def _pseudonym_key(self, tenant_id: str) -> bytes:
        if not valid_tenant_id(tenant_id):
            raise InvalidArgument("tenant id must be 32 lowercase hex digits")
        cached = self._pseudonym_keys.get(tenant_id)
        if cached is not None and self._clock.monotonic() < cached[1]:
            return cached[0]
        with self._db.transaction(readonly=True) as session:
            found = session.execute(
                select(TenantRow.pseudonym_key, TenantRow.state).where(TenantRow.id == tenant_id)
            ).one_or_none()
        if found is None:
            raise NotFound("tenant not found")
        stored, state = found
        if state == "destroyed":  # its pseudonym key was shredded with it: never a new one
            raise FailedPrecondition("the tenant was destroyed")
        # a BYOK tenant's pseudonym key is under its own KMS key, like its KEKs
        root = self._keys.root_for(tenant_id)
        if stored is None:
            if state not in (None, "active"):  # no new key material for a stopped tenant
                raise KeyUnavailable(f"the tenant is {state}")
            key, wrapped = root.generate_key(pseudonym_context(tenant_id))
            with self._db.transaction() as session:
                # only if no other process set it first; then use theirs
                session.execute(
                    update(TenantRow)
                    .where(TenantRow.id == tenant_id, TenantRow.pseudonym_key.is_(None))
                    .values(pseudonym_key=pack_wrapped(wrapped))
                )
            with self._db.transaction(readonly=True) as session:
                stored = session.scalar(
                    select(TenantRow.pseudonym_key).where(TenantRow.id == tenant_id)
                )
        if stored is None:  # pragma: no cover - set just above
            raise IntegrityError("the tenant has no pseudonym key")
        key = root.unwrap(unpack_wrapped(stored), pseudonym_context(tenant_id))
        if self._cache_ttl > 0:
            with self._lock:
                self._pseudonym_keys[tenant_id] = (key, self._clock.monotonic() + self._cache_ttl)
        return key

    def forget(self, tenant_id: str) -> None:
        """Drop the tenant's cached pseudonym key (its tenant was destroyed here)."""
        with self._lock:
            self._pseudonym_keys.pop(tenant_id, None)

    # --- subject keys ----------------------------------------------------------------

    def subject_key(self, tenant_id: str, subject_id: str) -> SubjectKey:
        """The subject's key, created (wrapped by the active KEK) on first use.

        Raises:
            FailedPrecondition: the subject was erased.
            KeyUnavailable: the KEK that wraps it may not be used.
        """
        pseudonym = self.pseudonym(tenant_id, subject_id)
        row = self._row(tenant_id, pseudonym)
        if row is None:
            self._create(tenant_id, pseudonym)
            row = self._row(tenant_id, pseudonym)
            if row is None:  # pragma: no cover - created just above
                raise IntegrityError("the subject's row is missing")
        if row.erased_at is not None or row.wrapped_key is None or row.kek_version is None:
            raise FailedPrecondition("the subject was erased")
        key = self._unwrap_row(tenant_id, pseudonym, row.wrapped_key)
        return SubjectKey(
            pseudonym, _Key(subject_key_name(tenant_id, pseudonym), key), row.kek_version
        )

    def resolver(self, tenant_id: str, pseudonym: str) -> _SubjectResolver:
        return _SubjectResolver(self, tenant_id, pseudonym)

    def hold_live(self, session: Session, tenant_id: str, pseudonym: str) -> int:
        """Inside the transaction that commits a payload or a personalized rendition:
        the subject must still be live. Its key was read before (outside this
        transaction), so an erasure may have committed since; the object would then
        outlive the erasure (a row under a shredded key, listed and exported). The row
        is locked (shared) until the commit, so an erasure (``shred`` locks it for update)
        either commits first and is seen here, or waits and then deletes the object too.
        Returns the KEK version that wraps the subject key now (a rewrap may have moved
        it since it was read).

        Raises:
            FailedPrecondition: the subject was erased.
        """
        found = session.execute(
            select(SubjectRow.erased_at, SubjectRow.wrapped_key, SubjectRow.kek_version)
            .where(SubjectRow.tenant_id == tenant_id, SubjectRow.pseudonym == pseudonym)
            .with_for_update(read=True)
        ).one_or_none()
        if (
            found is None
            or found.erased_at is not None
            or found.wrapped_key is None
            or found.kek_version is None
        ):
            raise FailedPrecondition("the subject was erased")
        return int(found.kek_version)

    def resolver_with(
        self, tenant_id: str, pseudonym: str, wrapped: bytes | None
    ) -> _FixedResolver:
        """A resolver for the subject's key from a wrapped key the caller read in its own
        statement (no second catalog read); opaque failure if there is none (erased)."""
        key = None
        if wrapped is not None:
            try:
                key = self._unwrap_row(tenant_id, pseudonym, wrapped)
            except DecryptionError:
                key = None
        return _FixedResolver(subject_key_name(tenant_id, pseudonym), key)

    def _unwrapped(self, tenant_id: str, pseudonym: str) -> bytes | None:
        """The subject key for a resolver; None once erased (decryption then fails)."""
        row = self._row(tenant_id, pseudonym)
        if row is None or row.wrapped_key is None:
            return None
        try:
            return self._unwrap_row(tenant_id, pseudonym, row.wrapped_key)
        except DecryptionError:
            return None

    def _unwrap_row(self, tenant_id: str, pseudonym: str, wrapped: bytes) -> bytes:
        try:
            edk = EncryptedDataKey.parse(wrapped)
        except ValueError:
            raise DecryptionError("the stored subject key is malformed") from None
        return unwrap_key(edk, self._keys.resolver(tenant_id), _key_context(tenant_id, pseudonym))

    def _create(self, tenant_id: str, pseudonym: str) -> None:
        kek = self._keys.encryption_kek(tenant_id)
        wrapped = wrap_key(kek, secrets.token_bytes(32), _key_context(tenant_id, pseudonym))
        try:
            with self._db.transaction() as session:
                session.add(
                    SubjectRow(
                        tenant_id=tenant_id,
                        pseudonym=pseudonym,
                        wrapped_key=wrapped.serialize(),
                        kek_version=kek.version,
                        created_at=self._now(),
                        legal_hold=False,
                    )
                )
        except SqlIntegrityError:
            pass  # another call created it first: use that one

    def _row(self, tenant_id: str, pseudonym: str) -> SubjectRow | None:
        with self._db.transaction(readonly=True) as session:
            row = session.get(SubjectRow, (tenant_id, pseudonym))
            if row is not None:
                session.expunge(row)
            return row

    def is_held(self, tenant_id: str, pseudonym: str) -> bool:
        row = self._row(tenant_id, pseudonym)
        return row is not None and bool(row.legal_hold)

    def info(self, tenant_id: str, pseudonym: str) -> SubjectInfo | None:
        row = self._row(tenant_id, pseudonym)
        return None if row is None else _info(row)

    # --- erasure and holds -----------------------------------------------------------

    def shred(self, session: Session, tenant_id: str, pseudonym: str) -> bool:
        """Inside the erasure's transaction: destroy the subject key. False if there was
        no key to destroy (unknown or already erased).

        Raises:
            FailedPrecondition: the subject is under a legal hold.
        """
        row = session.get(SubjectRow, (tenant_id, pseudonym), with_for_update=True)
        if row is None:
            return False
        if row.legal_hold:
            raise FailedPrecondition("the subject is under a legal hold; release it first")
        if row.erased_at is not None:
            return False
        row.wrapped_key = None
        row.kek_version = None
        row.erased_at = self._now()
        return True

    def set_legal_hold(self, tenant_id: str, subject_id: str, hold: bool) -> SubjectInfo:
        """Set or release a legal hold (creating the subject if it is new)."""
        pseudonym = self.pseudonym(tenant_id, subject_id)
        if self._row(tenant_id, pseudonym) is None:
            self._create(tenant_id, pseudonym)
        with self._db.transaction() as session:
            row = session.get(SubjectRow, (tenant_id, pseudonym), with_for_update=True)
            if row is None:  # pragma: no cover - created above
                raise NotFound("subject not found")
            row.legal_hold = hold
            return _info(row)

    def export_material(self, tenant_id: str) -> list[tuple[str, bytes]]:
        """Every live subject key of the tenant, unwrapped (for an approved key export)."""
        with self._db.transaction(readonly=True) as session:
            rows = [
                (row.pseudonym, row.wrapped_key)
                for row in session.scalars(
                    select(SubjectRow)
                    .where(SubjectRow.tenant_id == tenant_id, SubjectRow.erased_at.is_(None))
                    .order_by(SubjectRow.pseudonym)
                )
            ]
        return [
            (pseudonym, self._unwrap_row(tenant_id, pseudonym, wrapped))
            for pseudonym, wrapped in rows
            if wrapped is not None
        ]

    # --- rewrap (reelvault.objects.KeySlots) -----------------------------------------

    def rewrap_batch(self, tenant_id: str, batch: int) -> int:
        """Move up to ``batch`` subject keys of the tenant to the active KEK version (and
        record that version on the subject's assets, whose data keys the subject key
        wraps); 0 once none is left."""
        kek = self._keys.encryption_kek(tenant_id)
        resolver = self._keys.resolver(tenant_id)
        with self._db.transaction(readonly=True) as session:
            rows = [
                (row.pseudonym, row.wrapped_key, row.kek_version)
                for row in session.scalars(
                    select(SubjectRow)
                    .where(
                        SubjectRow.tenant_id == tenant_id,
                        SubjectRow.erased_at.is_(None),
                        SubjectRow.kek_version < kek.version,
                    )
                    .order_by(SubjectRow.pseudonym)
                    .limit(batch)
                )
            ]
        for pseudonym, wrapped, version in rows:
            if wrapped is None:
                continue
            context = _key_context(tenant_id, pseudonym)
            key = unwrap_key(EncryptedDataKey.parse(wrapped), resolver, context)
            rewrapped = wrap_key(kek, key, context)
            with self._db.transaction() as session:
                moved = session.execute(
                    update(SubjectRow)
                    .where(
                        SubjectRow.tenant_id == tenant_id,
                        SubjectRow.pseudonym == pseudonym,
                        SubjectRow.kek_version == version,
                        SubjectRow.erased_at.is_(None),
                    )
                    .values(wrapped_key=rewrapped.serialize(), kek_version=kek.version)
                )
                if moved.rowcount == 1:  # type: ignore[attr-defined]
                    session.execute(
                        update(AssetRow)
                        .where(AssetRow.tenant_id == tenant_id, AssetRow.subject == pseudonym)
                        .values(kek_version=kek.version)
                    )
        return len(rows)


def _info(row: SubjectRow) -> SubjectInfo:
    return SubjectInfo(
        tenant_id=row.tenant_id,
        pseudonym=row.pseudonym,
        created_at=row.created_at,
        erased_at=row.erased_at,
        legal_hold=row.legal_hold,
        kek_version=row.kek_version,
    )


def check_pseudonym(pseudonym: str) -> None:
    if not valid_pseudonym(pseudonym):
        raise InvalidArgument("a pseudonym is 32 lowercase hex digits")
