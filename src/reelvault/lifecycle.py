"""The tenant key lifecycle beyond one KEK version: rewrap, status, destruction of a whole
tenant after its waiting period, and the export of its keys when it leaves.

``TenantKeys`` owns the states (of versions and of the tenant); this module joins them with
what the keys protect: every kind of sealed object (``SealedObjects``), subjects, payloads
and URL signing keys. docs/keys.md describes the lifecycle; docs/key-export.md the export.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from reelvault.assets import Assets
from reelvault.audit import Auditor, NullAuditSink, Resource
from reelvault.catalog import Database, TenantRepository
from reelvault.catalog.tables import (
    ApiKeyRow,
    AssetRow,
    KeyExportRow,
    PayloadRow,
    SubjectRow,
    UrlSigningKeyRow,
)
from reelvault.clock import Clock
from reelvault.crypto import PROVIDER_ID, EncryptedDataKey, unwrap_key
from reelvault.crypto.names import kek_key_name, subject_key_name
from reelvault.crypto.recipient import parse_recipient_key, seal_to_recipient
from reelvault.errors import DecryptionError, FailedPrecondition, InvalidArgument, NotFound
from reelvault.keys.tenant import KekVersion, Tenant, TenantKeys
from reelvault.objects import RewrapProgress
from reelvault.privacy.subjects import Subjects
from reelvault.privacy.subjects import _key_context as subject_key_context

__all__ = ["KeyExport", "KeyStatus", "TenantLifecycle"]

EXPORT_REQUEST_LIFETIME: Final = timedelta(days=7)
EXPORT_KEY_MIN_AGE: Final = timedelta(days=7)
_EXPORT_FORMAT: Final = "reelvault.key-export.v1"
_log = structlog.get_logger("reelvault.lifecycle")


@dataclass(frozen=True, slots=True)
class KeyStatus:
    tenant: Tenant
    versions: list[KekVersion]
    keys_to_rewrap: dict[str, int]


@dataclass(frozen=True, slots=True)
class KeyExport:
    id: str
    tenant_id: str
    algorithm: str
    fingerprint: str
    requested_at: datetime
    approved_at: datetime | None
    collected_at: datetime | None


def export_aad(tenant_id: str, export_id: str) -> bytes:
    """What the export envelope is bound to (the tenant checks it when opening)."""
    return f"reelvault key export {tenant_id} {export_id}".encode()


class TenantLifecycle:
    def __init__(
        self,
        database: Database,
        tenant_keys: TenantKeys,
        subjects: Subjects,
        assets: Assets,
        clock: Clock,
        *,
        auditor: Auditor | None = None,
    ) -> None:
        self._db = database
        self._keys = tenant_keys
        self._subjects = subjects
        self._assets = assets
        self._clock = clock
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    def _note(self, tenant_id: str) -> None:
        self._audit.note(tenant_id=tenant_id, resource=Resource("tenant", tenant_id))

    # --- status and rewrap -----------------------------------------------------------

    def status(self, tenant_id: str) -> KeyStatus:
        """The tenant, its versions, and how many keys each kind still has under an older
        version than the active one (what RewrapTenant would move)."""
        self._note(tenant_id)
        tenant = self._keys.get_tenant(tenant_id)
        versions = self._keys.list_versions(tenant_id)
        active = max((v.version for v in versions if v.state == "active"), default=None)
        pending: dict[str, int] = {"asset": 0, "subject": 0}
        if active is not None:
            with self._db.transaction(readonly=True) as session:
                pending["asset"] = (
                    session.scalar(
                        select(func.count())
                        .select_from(AssetRow)
                        .where(
                            AssetRow.tenant_id == tenant_id,
                            AssetRow.kek_version < active,
                            AssetRow.subject.is_(None),
                        )
                    )
                    or 0
                )
                pending["subject"] = (
                    session.scalar(
                        select(func.count())
                        .select_from(SubjectRow)
                        .where(
                            SubjectRow.tenant_id == tenant_id,
                            SubjectRow.erased_at.is_(None),
                            SubjectRow.kek_version < active,
                        )
                    )
                    or 0
                )
        self._audit.release()
        return KeyStatus(tenant, versions, pending)

    def rewrap(
        self, tenant_id: str, progress: Callable[[RewrapProgress], None] | None = None
    ) -> dict[str, int]:
        """Every data key and subject key of the tenant to the active KEK version; only
        catalog key slots change. Recorded before it starts and when it ends."""
        self._note(tenant_id)
        self._keys.get_tenant(tenant_id)
        self._audit.release()
        moved = self._assets.objects.rewrap_tenant(tenant_id, progress=progress)
        self._audit.record(
            "key.rewrap",
            tenant_id=tenant_id,
            resources=[Resource("tenant", tenant_id)],
            detail={f"{kind}_keys": count for kind, count in moved.items()},
        )
        return moved

    # --- destruction -----------------------------------------------------------------

    def destroy_due(self) -> list[str]:
        """Destroy every tenant whose deletion waiting period has ended: crypto-shred its
        KEK versions, pseudonym key, subject keys and URL signing secrets in one
        transaction, then delete its payloads and its stored objects (deletion records
        first, so gc finishes what the store refuses). Returns the tenants destroyed."""
        destroyed: list[str] = []
        for tenant_id in self._keys.due_deletions():
            try:
                self._destroy(tenant_id)
            except FailedPrecondition as exc:  # a hold or a cancellation came first
                _log.info("tenant deletion postponed", tenant_id=tenant_id, reason=str(exc))
                continue
            destroyed.append(tenant_id)
        return destroyed

    def _destroy(self, tenant_id: str) -> None:
        now = self._now()
        with self._db.transaction() as session:
            versions = self._keys.destroy_tenant_keys(session, tenant_id)
            session.execute(
                update(SubjectRow)
                .where(SubjectRow.tenant_id == tenant_id, SubjectRow.erased_at.is_(None))
                .values(wrapped_key=None, kek_version=None, erased_at=now)
            )
            session.execute(
                update(UrlSigningKeyRow)
                .where(UrlSigningKeyRow.tenant_id == tenant_id)
                .values(state="retired", wrapped_secret=None, state_changed_at=now)
            )
            payloads = session.execute(
                delete(PayloadRow).where(PayloadRow.tenant_id == tenant_id)
            ).rowcount  # type: ignore[attr-defined]
            keys = list(
                session.scalars(select(AssetRow.object_key).where(AssetRow.tenant_id == tenant_id))
            )
            for key in keys:
                self._assets.objects.record_deleted(session, key)
            session.execute(delete(AssetRow).where(AssetRow.tenant_id == tenant_id))
        self._subjects.forget(tenant_id)
        self._audit.record(
            "tenant.destroy",
            tenant_id=tenant_id,
            resources=[Resource("tenant", tenant_id)],
            detail={"kek_versions": versions, "payloads": int(payloads), "assets": len(keys)},
        )
        for key in keys:
            try:
                self._assets.objects.delete_stored(key)
            except Exception:
                _log.warning("a destroyed tenant's object is left for gc", object_key=key)

    def run_deletions(self, stop: threading.Event, *, interval: float = 3600.0) -> None:
        """:meth:`destroy_due` every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(interval):
            try:
                self.destroy_due()
            except Exception:
                _log.warning("tenant deletion round failed", exc_info=True)

    # --- export ----------------------------------------------------------------------

    def request_export(self, tenant_id: str, recipient_pem: bytes, requested_by: str) -> KeyExport:
        """A tenant admin's request to export the tenant's keys to ``recipient_pem``.

        The requesting API key must be one of the tenant's and at least
        :data:`EXPORT_KEY_MIN_AGE` old: a platform admin can mint tenant admin keys, so
        without this one person could both request and approve; with it, a key minted for
        the purpose shows in the tenant's audit log (``apikey.create``) for a week first,
        and the tenant can revoke it.

        Raises:
            InvalidArgument: the recipient key is not an accepted public key.
            FailedPrecondition: the requesting key is too young or not the tenant's.
        """
        self._note(tenant_id)
        recipient = parse_recipient_key(recipient_pem)
        self._keys.get_tenant(tenant_id)
        with self._db.transaction(readonly=True) as session:
            key = session.get(ApiKeyRow, requested_by)
        if key is None or key.tenant_id != tenant_id or key.revoked_at is not None:
            raise FailedPrecondition("a key export is requested with one of the tenant's keys")
        if self._now() - key.created_at < EXPORT_KEY_MIN_AGE:
            raise FailedPrecondition(
                f"the requesting API key must be at least {EXPORT_KEY_MIN_AGE.days} days old "
                "(a key minted for an export shows in the tenant's audit log that long first)"
            )
        row = KeyExportRow(
            id=secrets.token_hex(16),
            tenant_id=tenant_id,
            recipient_key=recipient_pem,
            requested_by=requested_by,
            requested_at=self._now(),
        )
        self._audit.note(
            resource=Resource("key-export", row.id),
            detail={"algorithm": recipient.algorithm, "recipient": recipient.fingerprint[:16]},
        )
        self._audit.release()
        with self._db.transaction() as session:
            session.add(row)
            session.flush()
            return _export(row)

    def approve_export(self, tenant_id: str, export_id: str, approved_by: str) -> KeyExport:
        """A platform admin's approval; the request must be pending and recent."""
        self._note(tenant_id)
        self._audit.note(resource=Resource("key-export", export_id))
        self._audit.release()
        with self._db.transaction() as session:
            row = self._export_row(session, tenant_id, export_id)
            if row.approved_at is not None:
                raise FailedPrecondition("the key export is approved already")
            if row.requested_by == approved_by:
                raise FailedPrecondition("the requester cannot approve its own key export")
            row.approved_by = approved_by
            row.approved_at = self._now()
            return _export(row)

    def collect_export(self, tenant_id: str, export_id: str) -> tuple[KeyExport, bytes]:
        """The approved export, sealed to the recipient key; collected once. The export is
        claimed first (so concurrent collections record one release), then recorded as a
        key release, durably, before it is returned; if sealing or the record fails, the
        claim is undone and the export can be collected again.

        Raises:
            FailedPrecondition: not approved, collected already, expired, or the tenant is
                disabled (a platform admin's emergency stop holds exports too) or destroyed.
        """
        self._note(tenant_id)
        self._audit.note(resource=Resource("key-export", export_id))
        with self._db.transaction(readonly=True) as session:
            row = self._export_row(session, tenant_id, export_id)
            if row.approved_at is None:
                raise FailedPrecondition("the key export waits for a platform admin's approval")
            if row.collected_at is not None:
                raise FailedPrecondition("the key export was collected already")
            recipient_pem = row.recipient_key
        if self._keys.get_tenant(tenant_id).state == "disabled":
            raise FailedPrecondition("the tenant is disabled")
        recipient = parse_recipient_key(recipient_pem)
        claimed_at = self._now()
        with self._db.transaction() as session:
            claimed = session.execute(
                update(KeyExportRow)
                .where(KeyExportRow.id == export_id, KeyExportRow.collected_at.is_(None))
                .values(collected_at=claimed_at)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise FailedPrecondition("the key export was collected already")
        try:
            keks = self._keys.export_material(tenant_id)
            document = {
                "format": _EXPORT_FORMAT,
                "tenant_id": tenant_id,
                "export_id": export_id,
                "provider_id": PROVIDER_ID,
                "kek_versions": [
                    {
                        "version": version.version,
                        "state": version.state,
                        "key_name": kek_key_name(tenant_id, version.version),
                        "key": base64.b64encode(key).decode("ascii"),
                    }
                    for version, key in keks
                ],
                "subject_keys": [
                    {
                        "subject": pseudonym,
                        "key_name": subject_key_name(tenant_id, pseudonym),
                        "key": base64.b64encode(key).decode("ascii"),
                    }
                    for pseudonym, key in self._subject_keys(tenant_id, keks)
                ],
            }
            envelope = seal_to_recipient(
                recipient, json.dumps(document).encode(), export_aad(tenant_id, export_id)
            )
            self._audit.note(detail={"key_release": "tenant-keys"})
            self._audit.release()
        except BaseException:
            with self._db.transaction() as session:  # nothing left: collectable again
                session.execute(
                    update(KeyExportRow)
                    .where(KeyExportRow.id == export_id, KeyExportRow.collected_at == claimed_at)
                    .values(collected_at=None)
                )
            raise
        with self._db.transaction(readonly=True) as session:
            collected = session.get(KeyExportRow, export_id)
            if collected is None:  # pragma: no cover - claimed just above
                raise NotFound("key export not found")
            return _export(collected), envelope

    def _subject_keys(
        self, tenant_id: str, keks: list[tuple[KekVersion, bytes]]
    ) -> list[tuple[str, bytes]]:
        """Every live subject key of the tenant, unwrapped with the exported KEK versions
        themselves: like them, whatever the state of its version or of the tenant (a
        disabled version, a tenant disabled or pending deletion, leaving with its keys).
        A subject key under a destroyed version is shredded already and left out."""
        exported = {kek_key_name(tenant_id, version.version): key for version, key in keks}
        with self._db.transaction(readonly=True) as session:
            rows = [
                (row.pseudonym, row.wrapped_key, row.kek_version)
                for row in session.scalars(
                    select(SubjectRow)
                    .where(SubjectRow.tenant_id == tenant_id, SubjectRow.erased_at.is_(None))
                    .order_by(SubjectRow.pseudonym)
                )
            ]
        resolver = _ExportedKeks(exported)
        out: list[tuple[str, bytes]] = []
        for pseudonym, wrapped, version in rows:
            if wrapped is None or version is None:
                continue
            if kek_key_name(tenant_id, version) not in exported:
                continue
            try:
                edk = EncryptedDataKey.parse(wrapped)
            except ValueError:
                raise DecryptionError("a stored subject key is malformed") from None
            out.append(
                (pseudonym, unwrap_key(edk, resolver, subject_key_context(tenant_id, pseudonym)))
            )
        return out

    def _export_row(self, session: Session, tenant_id: str, export_id: str) -> KeyExportRow:
        if not (isinstance(export_id, str) and len(export_id) == 32):
            raise InvalidArgument("an export id is 32 lowercase hex digits")
        row = session.get(KeyExportRow, export_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFound("key export not found")
        if self._now() - row.requested_at > EXPORT_REQUEST_LIFETIME:
            raise FailedPrecondition("the key export request expired; request it again")
        TenantRepository(session).tenant(tenant_id)
        return row


class _ExportedKeks:
    """A KeyResolver over the KEK versions of an export, by key name."""

    __slots__ = ("_keys",)

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = keys

    def wrapping_key(self, key_name: str) -> bytes | None:
        return self._keys.get(key_name)


def _export(row: KeyExportRow) -> KeyExport:
    recipient = parse_recipient_key(row.recipient_key)
    return KeyExport(
        id=row.id,
        tenant_id=row.tenant_id,
        algorithm=recipient.algorithm,
        fingerprint=recipient.fingerprint,
        requested_at=row.requested_at,
        approved_at=row.approved_at,
        collected_at=row.collected_at,
    )
