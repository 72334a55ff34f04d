"""The sealed-object lifecycle that every kind of stored object shares.

Assets are one kind of sealed object and personalization payloads another
(docs/architecture.md, "Sealed objects"); what they share lives here, once:

- the object's identity: its encryption context (tenant, object id, kind) and, for what
  goes to the object store, an opaque key ``t/<tenant>/<random>``;
- the key that wraps its data key: the tenant's active KEK, or the key of the subject
  (viewer) the object belongs to (:mod:`reelvault.privacy.subjects`);
- upload rows: an object being written has a row from before its first byte is stored
  until its kind's row commits; a running upload refreshes it (the heartbeat), so ``gc``
  can tell it from a dead process's leftovers;
- deletion records: an object whose row is gone but which the store may still hold;
- ``gc``, which deletes only what the catalog knows to be garbage and asks every
  registered kind (:class:`ObjectKind`) whether it owns a stored key before calling it
  unknown;
- rewrap: moving every wrapped key of a tenant to its newest KEK version, kind by kind
  (:class:`KeySlots`), without rewriting stored bytes.

Consistency rules for uploads are in :mod:`reelvault.assets`, which is the kind that
streams; payloads are small and sealed in one piece.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from reelvault.audit import Auditor, NullAuditSink
from reelvault.catalog import Database
from reelvault.catalog.tables import DeletedObjectRow, UploadRow
from reelvault.clock import Clock
from reelvault.crypto import EncryptionContext, KeyResolver, WrappingKey
from reelvault.errors import InvalidArgument
from reelvault.storage import ObjectStore

__all__ = [
    "MIN_GC_AGE",
    "UPLOAD_HEARTBEAT",
    "GcReport",
    "KeySlots",
    "ObjectKind",
    "RewrapProgress",
    "SealedObjects",
    "SubjectKey",
    "SubjectKeyring",
    "object_context",
]

UPLOAD_HEARTBEAT: Final = 30.0
"""Seconds between refreshes of a running upload's row (:meth:`SealedObjects.refresh_uploads`)."""
MIN_GC_AGE: Final = 4 * UPLOAD_HEARTBEAT
"""The shortest age threshold ``gc`` accepts: a running upload's row is never older than
one heartbeat interval, so four of them leave room for a slow or briefly stalled beat."""

_log = structlog.get_logger("reelvault.objects")


def object_context(tenant_id: str, object_id: str, kind: str) -> EncryptionContext:
    """The encryption context every sealed object of ``kind`` is bound to."""
    return EncryptionContext.for_object(tenant_id=tenant_id, object_id=object_id, kind=kind)


class ObjectKind(Protocol):
    """A kind of sealed object that keeps objects in the store (assets)."""

    name: str

    def owns_stored_object(self, session: Session, object_key: str) -> bool:
        """Whether a committed object of this kind is stored under ``object_key``."""
        ...


class KeySlots(Protocol):
    """Something holding keys wrapped by a tenant KEK: assets' key slots, subject keys."""

    name: str

    def rewrap_batch(self, tenant_id: str, batch: int) -> int:
        """Move up to ``batch`` keys of the tenant wrapped by an older KEK version to the
        active one, without touching stored bytes; returns how many moved (0: none is
        left). Each key moves in its own transaction, so a failure loses nothing."""
        ...


@dataclass(frozen=True, slots=True)
class SubjectKey:
    """A subject's key, unwrapped, for sealing one of the subject's objects.

    Attributes:
        pseudonym: the subject as storage and the audit log know it.
        key: the key (name and bytes) that wraps the object's data key.
        kek_version: the tenant KEK version that wraps the subject key.
    """

    pseudonym: str
    key: WrappingKey
    kek_version: int


class SubjectKeyring(Protocol):
    """Subject keys, for the kinds that may belong to a subject (``privacy.Subjects``)."""

    def subject_key(self, tenant_id: str, subject_id: str) -> SubjectKey:
        """The key of the subject with the tenant's viewer id ``subject_id``, created on
        first use. Raises FailedPrecondition for an erased subject."""
        ...

    def resolver(self, tenant_id: str, pseudonym: str) -> KeyResolver:
        """What unwraps data keys wrapped by that subject's key."""
        ...

    def is_held(self, tenant_id: str, pseudonym: str) -> bool:
        """Whether the subject is under a legal hold (its objects may not be deleted)."""
        ...

    def hold_live(self, session: Session, tenant_id: str, pseudonym: str) -> int:
        """Inside the transaction that commits an object of the subject's: lock the
        subject's row against an erasure until it commits, and raise FailedPrecondition
        if the subject was erased since its key was read (the object must then not
        commit: the erasure already deleted the subject's objects). Returns the KEK
        version that wraps the subject key now."""
        ...


@dataclass(frozen=True, slots=True)
class RewrapProgress:
    """One step of :meth:`SealedObjects.rewrap_tenant`: ``moved`` keys of ``kind`` so
    far; ``done`` once that kind has nothing left under an older version."""

    kind: str
    moved: int
    done: bool


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one :meth:`SealedObjects.gc` run removed or, with ``dry_run``, would remove.

    Attributes:
        stale_upload_keys: object keys of the upload rows whose heartbeat had stopped.
        multipart_uploads: ``(object key, upload id)`` of the multipart uploads aborted.
        deleted_keys: the objects deleted: deleted assets', abandoned uploads', and with
            ``delete_unknown`` the unknown ones.
        unknown_keys: objects under ``t/`` the catalog has no record of, and the complete
            objects of stale upload rows (never committed here: a restored catalog's view of
            a later commit); kept unless ``delete_unknown`` (then also in ``deleted_keys``).
        unknown_multipart_uploads: multipart uploads older than the threshold that no
            upload row and no deletion record owns; kept unless ``delete_unknown`` (then
            also in ``multipart_uploads``).
        dry_run: nothing was changed.
        delete_unknown: unknown objects and multipart uploads were (or would be) removed.
    """

    stale_upload_keys: tuple[str, ...] = ()
    multipart_uploads: tuple[tuple[str, str], ...] = ()
    deleted_keys: tuple[str, ...] = ()
    unknown_keys: tuple[str, ...] = ()
    unknown_multipart_uploads: tuple[tuple[str, str], ...] = ()
    dry_run: bool = False
    delete_unknown: bool = False

    @property
    def stale_uploads(self) -> int:
        return len(self.stale_upload_keys)

    @property
    def aborted_multipart_uploads(self) -> int:
        return len(self.multipart_uploads)

    @property
    def deleted_objects(self) -> int:
        return len(self.deleted_keys)

    @property
    def unknown_objects(self) -> int:
        return len(self.unknown_keys)


class SealedObjects:
    """Upload rows, deletion records, gc and rewrap for every kind of sealed object.

    Args:
        database: the catalog.
        store: object storage.
        clock: time source for rows and gc thresholds.
        auditor: records gc runs.
    """

    def __init__(
        self,
        database: Database,
        store: ObjectStore,
        clock: Clock,
        *,
        auditor: Auditor | None = None,
    ) -> None:
        self._db = database
        self._store = store
        self._clock = clock
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)
        self._kinds: list[ObjectKind] = []
        self._key_slots: list[KeySlots] = []
        # object keys of the uploads running in this process, for their heartbeat
        self._live: dict[str, None] = {}

    def register(
        self, kind: ObjectKind | None = None, *, key_slots: KeySlots | None = None
    ) -> None:
        """Make ``gc`` ask ``kind`` before it calls a stored key unknown, and
        :meth:`rewrap_tenant` move ``key_slots``."""
        if kind is not None and kind not in self._kinds:
            self._kinds.append(kind)
        if key_slots is not None and key_slots not in self._key_slots:
            self._key_slots.append(key_slots)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind.name for kind in self._kinds)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    # --- uploads -------------------------------------------------------------------------

    def begin_upload(self, object_key: str, tenant_id: str, object_id: str) -> None:
        """Record an upload before anything of it is stored; its heartbeat starts."""
        now = self._now()
        with self._db.transaction() as session:
            session.add(
                UploadRow(
                    object_key=object_key,
                    tenant_id=tenant_id,
                    asset_id=object_id,
                    started_at=now,
                    refreshed_at=now,
                )
            )
        self._live[object_key] = None

    def claim_upload(self, session: Session, object_key: str) -> bool:
        """Inside the commit of the object's row: remove its upload row. False if gc took
        it (the heartbeat had stopped): the object must then not commit."""
        claimed = session.execute(delete(UploadRow).where(UploadRow.object_key == object_key))
        return claimed.rowcount == 1  # type: ignore[attr-defined, no-any-return]

    def end_upload(self, object_key: str) -> None:
        """The upload committed or is being aborted: no more heartbeats for it."""
        self._live.pop(object_key, None)

    @property
    def live_uploads(self) -> int:
        return len(self._live)

    def forget_upload(self, object_key: str) -> None:
        """Remove an upload row once storage holds nothing of it."""
        with self._db.transaction() as session:
            session.execute(delete(UploadRow).where(UploadRow.object_key == object_key))

    def retire_upload(self, object_key: str) -> None:
        """An aborted upload whose storage cleanup failed: its row becomes a deletion
        record in one transaction, so gc deletes the leftovers without waiting for the
        row to go stale."""
        with self._db.transaction() as session:
            gone = session.execute(delete(UploadRow).where(UploadRow.object_key == object_key))
            if gone.rowcount == 1 and session.get(DeletedObjectRow, object_key) is None:  # type: ignore[attr-defined]
                session.add(DeletedObjectRow(object_key=object_key, deleted_at=self._now()))

    def refresh_uploads(self) -> int:
        """Refresh the rows of every upload running in this process (their heartbeat),
        so that ``gc`` can tell them from a dead process's leftovers however long they
        run or idle. Returns how many rows were refreshed. :meth:`run_heartbeat` calls
        it every :data:`UPLOAD_HEARTBEAT` seconds."""
        keys = list(self._live)
        now = self._now()
        refreshed = 0
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            with self._db.transaction() as session:
                result = session.execute(
                    update(UploadRow)
                    .where(UploadRow.object_key.in_(batch))
                    .values(refreshed_at=now)
                    .execution_options(synchronize_session=False)
                )
                refreshed += result.rowcount  # type: ignore[attr-defined]
        return refreshed

    def run_heartbeat(self, stop: threading.Event, *, interval: float = UPLOAD_HEARTBEAT) -> None:
        """Call :meth:`refresh_uploads` every ``interval`` seconds until ``stop`` is set
        (a background thread of every service process). A failed beat is logged and the
        next one tried: gc's threshold leaves room for several."""
        while not stop.wait(interval):
            try:
                self.refresh_uploads()
            except Exception:
                _log.warning("upload heartbeat failed", exc_info=True)

    # --- deletion records ----------------------------------------------------------------

    def record_deleted(self, session: Session, object_key: str) -> None:
        """Inside the transaction that deletes an object's row: remember the key, so gc
        deletes the object if storage fails to."""
        session.add(DeletedObjectRow(object_key=object_key, deleted_at=self._now()))

    def delete_stored(self, object_key: str) -> None:
        """Delete a recorded object from storage, then its record."""
        self._store.delete(object_key)
        self._forget_deleted(object_key)

    # --- rewrap --------------------------------------------------------------------------

    def rewrap_tenant(
        self,
        tenant_id: str,
        *,
        batch: int = 500,
        progress: Callable[[RewrapProgress], None] | None = None,
    ) -> dict[str, int]:
        """Move every key of the tenant that a KEK wraps (each registered kind's) to the
        active version; stored bytes are never rewritten. Resumable: a rerun after a
        failure continues with what is left. Returns the keys moved, by kind."""
        moved: dict[str, int] = {}
        for slots in self._key_slots:
            total = 0
            while True:
                count = slots.rewrap_batch(tenant_id, batch)
                total += count
                if progress is not None:
                    progress(RewrapProgress(slots.name, total, count == 0))
                if count == 0:
                    break
            moved[slots.name] = total
        return moved

    # --- gc ------------------------------------------------------------------------------

    def gc(
        self,
        *,
        older_than_seconds: float = 3600.0,
        dry_run: bool = False,
        delete_unknown: bool = False,
    ) -> GcReport:
        """Remove what crashes and failed deletes left behind, and only what the catalog
        knows to be garbage:

        - upload rows whose heartbeat stopped longer ago than the threshold (their process
          died): each is moved to ``deleted_objects``, then handled as below. A stale row
          whose key holds a complete object is removed without a record instead: that is
          a restored catalog's view of an upload that committed after the backup (or a
          crash between completing the object and committing the row), so the object is
          reported as unknown and kept (unless ``delete_unknown``); only its multipart
          uploads are aborted;
        - the objects in ``deleted_objects`` (deleted assets, abandoned uploads): their
          multipart uploads are aborted whatever their age, the objects deleted, and each
          record cleared once it is older than the threshold: until then every run deletes
          the key again, so an object that lands late (a PUT that timed out but was
          applied) is still collected, not left unknown.

        Objects under ``t/`` and multipart uploads older than the threshold that the
        catalog has no record of (no asset, upload or deletion row) are reported, and
        removed only with ``delete_unknown``: a restored, older catalog sees every asset
        created after its backup so.

        A running upload refreshes its row every :data:`UPLOAD_HEARTBEAT` seconds, so it
        is never taken for a leftover, however long it runs.

        Args:
            older_than_seconds: age threshold of upload rows and multipart uploads.
            dry_run: change nothing (no claim, no delete, no audit event); the report
                lists what a run would remove.
            delete_unknown: also remove what the catalog has no record of.

        Raises:
            InvalidArgument: a threshold below :data:`MIN_GC_AGE`, which could catch a
                running upload between two heartbeats.
        """
        if older_than_seconds < MIN_GC_AGE:
            raise InvalidArgument(
                f"the age threshold must be at least {MIN_GC_AGE:.0f} seconds: running "
                f"uploads refresh their rows every {UPLOAD_HEARTBEAT:.0f} seconds"
            )
        cutoff = self._now() - timedelta(seconds=older_than_seconds)
        with self._db.transaction(readonly=True) as session:
            candidates = list(
                session.scalars(select(UploadRow.object_key).where(UploadRow.refreshed_at < cutoff))
            )
        # Claim each stale row before touching storage: taken only if still stale, so an
        # upload whose heartbeat came back meanwhile keeps it, and one whose row is claimed
        # can no longer commit (_commit needs its row), so gc never deletes the object of
        # an asset that committed while it ran.
        # A stale row whose key already holds a complete object never committed in this
        # catalog: either the catalog was restored from a backup taken while the upload
        # ran (and production committed it since) or the process died between completing
        # the object and committing. The object is not the catalog's to delete: it is
        # reported as unknown, and its row goes without a deletion record.
        complete = {key for key in candidates if self._store.head(key) is not None}
        if dry_run:
            stale = candidates
        else:
            stale = [
                key
                for key in candidates
                if self._claim_stale(key, cutoff, record=key not in complete)
            ]
        complete.intersection_update(stale)
        with self._db.transaction(readonly=True) as session:
            garbage = set(session.scalars(select(DeletedObjectRow.object_key)))
        garbage.update(key for key in stale if key not in complete)

        aborted: list[tuple[str, str]] = []
        unknown_uploads: list[tuple[str, str]] = []
        # Listed whatever their age: a recorded key's multipart upload is aborted however
        # young (its record is about to be cleared, or a later run must not find it
        # unknown); only unknown ones wait for the threshold.
        threshold = cutoff.timestamp()
        for upload in self._store.list_multipart_uploads():
            entry = (upload.key, upload.upload_id)
            if upload.key in garbage or upload.key in complete:
                aborted.append(entry)
            elif upload.initiated < threshold and self._owner(upload.key) is None:
                unknown_uploads.append(entry)
                if delete_unknown:
                    aborted.append(entry)
        deleted: list[str] = []
        unknown: list[str] = []
        for key in self._store.list_keys("t/"):
            if key in garbage:
                deleted.append(key)
            elif key in complete or self._owner(key) is None:
                unknown.append(key)
                if delete_unknown:
                    deleted.append(key)
        report = GcReport(
            stale_upload_keys=tuple(stale),
            multipart_uploads=tuple(aborted),
            deleted_keys=tuple(deleted),
            unknown_keys=tuple(unknown),
            unknown_multipart_uploads=tuple(unknown_uploads),
            dry_run=dry_run,
            delete_unknown=delete_unknown,
        )
        if dry_run:
            return report

        for key, upload_id in aborted:
            self._store.abort_multipart(key, upload_id)
        for key in deleted:
            self._store.delete(key)
        # Every recorded key is deleted, listed or not (idempotent, and removes any stray
        # versions), but its record is cleared only once older than the threshold: a
        # request sent before the record was written (a PUT that timed out, a multipart
        # upload begun) may still land, and the record makes the next run delete it
        # rather than report it unknown. Unknown keys had no record.
        for key in sorted(garbage):
            if key not in deleted:
                self._store.delete(key)
            self._forget_deleted(key, before=cutoff)
        self._audit.record(
            "asset.gc",
            tenant_id=None,
            detail={
                "stale_uploads": report.stale_uploads,
                "aborted_multipart_uploads": report.aborted_multipart_uploads,
                "deleted_objects": report.deleted_objects,
                "unknown_objects": report.unknown_objects,
                "unknown_multipart_uploads": len(report.unknown_multipart_uploads),
                "delete_unknown": delete_unknown,
            },
        )
        return report

    def _claim_stale(self, key: str, cutoff: datetime, *, record: bool = True) -> bool:
        """Move a dead upload's row to ``deleted_objects`` (or, without ``record``, only
        remove it), if it is still stale."""
        with self._db.transaction() as session:
            result = session.execute(
                delete(UploadRow).where(
                    UploadRow.object_key == key, UploadRow.refreshed_at < cutoff
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if record and session.get(DeletedObjectRow, key) is None:
                session.add(DeletedObjectRow(object_key=key, deleted_at=self._now()))
            return True

    def _forget_deleted(self, key: str, *, before: datetime | None = None) -> None:
        """Clear the deletion record of ``key`` (only if written before ``before``)."""
        statement = delete(DeletedObjectRow).where(DeletedObjectRow.object_key == key)
        if before is not None:
            statement = statement.where(DeletedObjectRow.deleted_at < before)
        with self._db.transaction() as session:
            session.execute(statement)

    def _owner(self, key: str) -> str | None:
        """Which catalog record owns a stored key: ``"upload"``, ``"deleted"``, the name
        of the object kind that holds it, or None (unknown to this catalog). Every
        registered kind is asked."""
        with self._db.transaction(readonly=True) as session:
            if session.get(UploadRow, key) is not None:
                return "upload"
            if session.get(DeletedObjectRow, key) is not None:
                return "deleted"  # recorded after gc read the list
            for kind in self._kinds:
                if kind.owns_stored_object(session, key):
                    return kind.name
        return None
