"""Encrypted video assets: upload, download (whole or a byte range), list, delete, gc.

This is the domain layer: synchronous, transport-free, frozen dataclasses in and out, only
``reelvault.errors`` raised. The gRPC servicer runs it in worker threads.

Consistency rules, in the order an upload meets them:

1. ``begin_upload`` validates the metadata, checks the path is free and records the upload
   (``uploads`` row: object key, start time) before anything is written to storage.
2. Each chunk is hashed, sealed into 64 KiB frames and fed to a multipart upload with a
   bounded number of parts in flight.
3. ``complete`` finishes the object, then inserts the asset row and deletes the upload row in
   one transaction. The asset is visible from that commit on, never before. If another
   upload took the path meanwhile, the unique index refuses the row, the object is deleted
   and the caller gets ``AlreadyExists``.
4. ``abort`` (any failure, cancellation, deadline) aborts the multipart upload, deletes the
   object if it had completed, then the upload row. Nothing is left behind; if the process
   dies first, ``gc`` finds the stale upload row later.

So every stored object has an asset row or an upload row, or (once its asset was deleted,
or its upload abandoned) a ``deleted_objects`` row until the store confirmed the delete:
``gc`` removes exactly those leftovers. An object with none of the three is unknown to this
catalog (a restored, older catalog sees every newer asset so): ``gc`` reports it and keeps
it unless told otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, cast

import structlog
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from reelvault import deadline
from reelvault.audit import Auditor, NullAuditSink, Resource
from reelvault.catalog import Database
from reelvault.catalog.tables import AssetRow, DeletedObjectRow, TenantRow, UploadRow
from reelvault.clock import Clock
from reelvault.crypto import (
    DEFAULT_FRAME_LENGTH,
    KIND_ASSET,
    EncryptedDataKey,
    EncryptionContext,
    MessageLayout,
    RandomAccessReader,
    Sealer,
    rechunk,
    rewrap_data_key,
)
from reelvault.crypto.format import Incomplete, Malformed, parse_header
from reelvault.crypto.message import open_header
from reelvault.errors import (
    AlreadyExists,
    DecryptionError,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from reelvault.keys.tenant import TenantKeys
from reelvault.storage import ObjectStore, Upload

__all__ = [
    "MAX_CHUNK",
    "MIN_GC_AGE",
    "UPLOAD_HEARTBEAT",
    "AssetInfo",
    "AssetUpload",
    "Assets",
    "Download",
    "GcReport",
    "UploadSpec",
]

MAX_CHUNK: Final = 1024 * 1024
UPLOAD_HEARTBEAT: Final = 30.0
"""Seconds between refreshes of a running upload's row (:meth:`Assets.refresh_uploads`)."""
MIN_GC_AGE: Final = 4 * UPLOAD_HEARTBEAT
"""The shortest age threshold ``gc`` accepts: a running upload's row is never older than
one heartbeat interval, so four of them leave room for a slow or briefly stalled beat."""
MAX_PATH_BYTES: Final = 1024
MAX_LABELS: Final = 64
MAX_PAGE_SIZE: Final = 1000
DEFAULT_PAGE_SIZE: Final = 100
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"

_log = structlog.get_logger("reelvault.assets")

DEFAULT_GRANT_LIFETIME: Final = 300
DEFAULT_GRANT_MAX_LIFETIME: Final = 3600

_ID = re.compile(r"[0-9a-f]{32}")
_LABEL_KEY = re.compile(r"[a-z0-9_.-]{1,63}")
_CONTENT_TYPE = re.compile(r"[\x21-\x7e]+/[\x21-\x7e]+(?:; ?[\x20-\x7e]+)?")


@dataclass(frozen=True, slots=True)
class AssetInfo:
    id: str
    tenant_id: str
    path: str
    content_type: str
    labels: Mapping[str, str]
    size: int
    sha256: bytes
    etag: str
    created_at: datetime
    kek_version: int
    """The tenant KEK version the data key is wrapped under now; a rewrap raises it."""


@dataclass(frozen=True, slots=True)
class UploadSpec:
    """What the first message of an upload says about the asset."""

    path: str
    content_type: str = DEFAULT_CONTENT_TYPE
    labels: Mapping[str, str] = field(default_factory=dict)
    expected_size: int | None = None
    expected_sha256: bytes | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """An asset opened for reading: the range is valid and the object authenticated so
    far (the header; the final frame too if the range reaches it); the rest is fetched
    lazily. The size comes from the catalog, which recorded it at commit.

    ``pieces`` yields the range's plaintext, one authenticated (and trimmed) frame at a
    time; :attr:`chunks` joins the same pieces into chunks of :data:`MAX_CHUNK`. Either is
    consumed once; closing ``pieces`` releases the object store's response body.
    """

    asset: AssetInfo
    offset: int
    length: int
    pieces: Iterator[bytes]

    @property
    def chunks(self) -> Iterator[bytes]:
        return rechunk(self.pieces, MAX_CHUNK)


@dataclass(frozen=True, slots=True)
class ReadGrant:
    """What a client needs to read one stored object itself (docs/direct-reads.md).

    Attributes:
        header: the stored message header, byte for byte.
        frame_key: the content key of this object's frames (HKDF of its data key and
            message id): it opens this object and unwraps nothing. Secret.
        object_size: the stored object's size, from the catalog.
        url: a presigned GET of the stored object, valid until ``expires_at``. A bearer
            credential for the ciphertext: never logged.
        offset, length: the plaintext range the audit event records (the intent; the
            key and URL serve the whole object).
    """

    asset: AssetInfo
    header: bytes
    frame_key: bytes = field(repr=False)
    object_size: int
    url: str = field(repr=False)
    expires_at: datetime
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one :meth:`Assets.gc` run removed or, with ``dry_run``, would remove.

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


# The hot reads, built once: a statement built per call costs more in SQLAlchemy's
# coercions than the query costs SQLite (bench/origin_bench.py, "where the time goes").
_BY_ID: Final = select(*AssetRow.__table__.columns).where(
    AssetRow.id == bindparam("asset_id"), AssetRow.tenant_id == bindparam("tenant_id")
)
_BY_PATH: Final = select(*AssetRow.__table__.columns).where(
    AssetRow.tenant_id == bindparam("tenant_id"), AssetRow.path == bindparam("path")
)


def _etag(sha256: bytes) -> str:
    # Derived from the plaintext: the same on every replica and across re-encryption.
    return '"' + sha256.hex()[:32] + '"'


def _info(row: AssetRow) -> AssetInfo:
    return AssetInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        path=row.path,
        content_type=row.content_type,
        labels=MappingProxyType(dict(row.labels)),
        size=row.size,
        sha256=row.sha256,
        etag=_etag(row.sha256),
        created_at=row.created_at,
        kek_version=row.kek_version,
    )


def asset_context(tenant_id: str, asset_id: str) -> EncryptionContext:
    return EncryptionContext.for_object(tenant_id=tenant_id, object_id=asset_id, kind=KIND_ASSET)


def check_asset_id(asset_id: str) -> None:
    if not isinstance(asset_id, str) or _ID.fullmatch(asset_id) is None:
        raise InvalidArgument("asset id must be 32 lowercase hex digits")


def _check_spec(spec: UploadSpec) -> UploadSpec:
    path = spec.path
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidArgument("path must be 1 to 1024 bytes of UTF-8")
    if not all(_visible(c) for c in path):
        # C0/C1 controls, bidi overrides, zero-width and line separators: a path is shown
        # in terminals and UIs, where these would hide or disguise what it says
        raise InvalidArgument("path must not contain control or invisible characters")
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        raise InvalidArgument("path segments must not be empty, '.' or '..'")
    content_type = spec.content_type or DEFAULT_CONTENT_TYPE
    if len(content_type) > 255 or _CONTENT_TYPE.fullmatch(content_type) is None:
        raise InvalidArgument("content type must look like type/subtype")
    if len(spec.labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels")
    for key, value in spec.labels.items():
        if _LABEL_KEY.fullmatch(key) is None:
            raise InvalidArgument("label keys must be 1-63 characters of [a-z0-9_.-]")
        if len(value) > 256 or not value.isprintable():
            raise InvalidArgument("label values must be at most 256 printable characters")
    if spec.expected_size is not None and spec.expected_size < 0:
        raise InvalidArgument("expected size must not be negative")
    if spec.expected_sha256 is not None and len(spec.expected_sha256) != 32:
        raise InvalidArgument("expected SHA-256 must be 32 bytes")
    return UploadSpec(
        path=path,
        content_type=content_type,
        labels=dict(spec.labels),
        expected_size=spec.expected_size,
        expected_sha256=spec.expected_sha256,
    )


class Assets:
    """The asset service's domain logic.

    Args:
        database: the catalog.
        tenant_keys: KEK versions; the active one seals new assets.
        store: object storage (untrusted: ciphertext only, opaque keys).
        clock: time source for timestamps and garbage collection.
        auditor: records every access; each read or write is recorded, durably, before
            its first byte is released or its asset committed (None: nothing recorded,
            for unit tests of other behaviour; ``Vault`` always passes one).
        frame_length: F for new assets; reelvault writes 64 KiB.
        grant_lifetime, grant_max_lifetime: seconds a read grant's URL lives when the
            caller names no lifetime, and the most a caller may ask for.
    """

    def __init__(
        self,
        database: Database,
        tenant_keys: TenantKeys,
        store: ObjectStore,
        clock: Clock,
        *,
        auditor: Auditor | None = None,
        frame_length: int = DEFAULT_FRAME_LENGTH,
        grant_lifetime: int = DEFAULT_GRANT_LIFETIME,
        grant_max_lifetime: int = DEFAULT_GRANT_MAX_LIFETIME,
    ) -> None:
        if not 1 <= grant_lifetime <= grant_max_lifetime:
            raise ValueError("the default grant lifetime must be 1 to the maximum")
        self._grant_lifetime = grant_lifetime
        self._grant_max_lifetime = grant_max_lifetime
        self._db = database
        self._keys = tenant_keys
        self._store = store
        self._clock = clock
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)
        self._frame_length = frame_length
        # object keys of the uploads running in this process, for their heartbeat
        self._live: dict[str, None] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    # --- upload --------------------------------------------------------------------------

    def begin_upload(self, tenant_id: str, spec: UploadSpec) -> AssetUpload:
        """Validate the metadata and start an upload.

        Raises:
            InvalidArgument: bad path, content type, labels or expectations.
            AlreadyExists: the tenant has an asset at this path.
            KeyUnavailable: the tenant has no active KEK version.
        """
        self._audit.note(tenant_id=tenant_id)
        spec = _check_spec(spec)
        with self._db.transaction(readonly=True) as session:
            taken = session.scalar(
                select(AssetRow.id).where(
                    AssetRow.tenant_id == tenant_id, AssetRow.path == spec.path
                )
            )
        if taken is not None:
            raise AlreadyExists("an asset with this path already exists")
        kek = self._keys.encryption_kek(tenant_id)
        asset_id = secrets.token_hex(16)
        object_key = f"t/{tenant_id}/{secrets.token_hex(16)}"
        now = self._now()
        with self._db.transaction() as session:
            session.add(
                UploadRow(
                    object_key=object_key,
                    tenant_id=tenant_id,
                    asset_id=asset_id,
                    started_at=now,
                    refreshed_at=now,
                )
            )
        self._live[object_key] = None
        try:
            sealer = Sealer(
                kek, asset_context(tenant_id, asset_id), frame_length=self._frame_length
            )
            target = self._store.begin(object_key)
        except BaseException:
            self._live.pop(object_key, None)
            self._forget_upload(object_key)
            raise
        return AssetUpload(
            self,
            tenant_id=tenant_id,
            asset_id=asset_id,
            object_key=object_key,
            spec=spec,
            kek_version=kek.version,
            sealer=sealer,
            target=target,
        )

    def _forget_upload(self, object_key: str) -> None:
        with self._db.transaction() as session:
            session.execute(delete(UploadRow).where(UploadRow.object_key == object_key))

    def _retire_upload(self, object_key: str) -> None:
        """An aborted upload whose storage cleanup failed: its row becomes a deletion
        record in one transaction, so gc deletes the leftovers without waiting for the
        row to go stale."""
        with self._db.transaction() as session:
            gone = session.execute(delete(UploadRow).where(UploadRow.object_key == object_key))
            if gone.rowcount == 1 and session.get(DeletedObjectRow, object_key) is None:  # type: ignore[attr-defined]
                session.add(DeletedObjectRow(object_key=object_key, deleted_at=self._now()))

    def _commit(self, upload: AssetUpload, size: int, sha256: bytes) -> AssetInfo:
        # An upload that straddled a KEK rotation commits under the version active now,
        # through a key slot: otherwise it would pin a version the operator is retiring.
        # If that version can no longer decrypt, the upload fails (and is aborted) rather
        # than commit an asset nobody may read.
        key_slot, kek_version = None, upload.kek_version
        active = self._keys.encryption_kek(upload.tenant_id)
        if active.version != upload.kek_version:
            slot = rewrap_data_key(
                upload.header,
                self._keys.resolver(upload.tenant_id),
                asset_context(upload.tenant_id, upload.asset_id),
                active,
            )
            key_slot, kek_version = slot.serialize(), active.version
        # Recorded before the commit: an asset nobody can see was written unaudited.
        self._audit.note(
            resource=Resource("asset", upload.asset_id, upload.spec.path, 0, size),
            kek_version=kek_version,
        )
        self._audit.release()
        row = AssetRow(
            id=upload.asset_id,
            tenant_id=upload.tenant_id,
            path=upload.spec.path,
            content_type=upload.spec.content_type,
            labels=dict(upload.spec.labels),
            size=size,
            sha256=sha256,
            object_key=upload.object_key,
            header=upload.header,
            key_slot=key_slot,
            kek_version=kek_version,
            created_at=self._now(),
        )
        try:
            with self._db.transaction() as session:
                claimed = session.execute(
                    delete(UploadRow).where(UploadRow.object_key == upload.object_key)
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    # gc took the row for a dead upload's (its heartbeat had stopped) and
                    # may be deleting the object: this upload must not commit.
                    raise Unavailable("the upload expired (its heartbeat stopped); retry it")
                session.add(row)
                session.flush()
                info = _info(row)
        except SqlIntegrityError:
            raise AlreadyExists("an asset with this path already exists") from None
        self._live.pop(upload.object_key, None)
        return info

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

    # --- reads ---------------------------------------------------------------------------

    def _row(self, tenant_id: str, asset_id: str) -> AssetRow:
        self._audit.note(tenant_id=tenant_id)
        check_asset_id(asset_id)
        row = self._read_row(_BY_ID, {"asset_id": asset_id, "tenant_id": tenant_id})
        self._audit.note(resource=Resource("asset", row.id, row.path))
        return row

    def _read_row(self, statement: Any, parameters: dict[str, str]) -> AssetRow:
        """The asset row of a prepared SELECT (:data:`_BY_ID`, :data:`_BY_PATH`), read
        without an ORM session: the hot path of every download and origin fetch. The
        result has the row's attributes, read-only."""
        row = self._db.read_row(statement, parameters)
        if row is None:
            # Another tenant's asset and a missing one are the same answer.
            raise NotFound("asset not found")
        return cast(AssetRow, row)

    def lookup(self, tenant_id: str, asset_id: str) -> AssetInfo:
        """The asset, noted on the current access but not recorded: for callers whose own
        action records it (issuing a distribution URL names the asset it covers)."""
        return _info(self._row(tenant_id, asset_id))

    def _row_by_path(self, tenant_id: str, path: str) -> AssetRow:
        self._audit.note(tenant_id=tenant_id)
        if not _plausible_path(path):
            raise NotFound("asset not found")
        row = self._read_row(_BY_PATH, {"tenant_id": tenant_id, "path": path})
        self._audit.note(resource=Resource("asset", row.id, row.path))
        return row

    def open_by_path(
        self,
        tenant_id: str,
        path: str,
        select_range: Callable[[AssetInfo], tuple[int, int] | None],
    ) -> tuple[AssetInfo, Download | None]:
        """Look up the tenant's asset at ``path`` once and open the range
        ``select_range`` picks from it, as :meth:`open_download` does (the HTTP origin,
        which addresses assets by path and resolves ranges by HTTP's rules).

        Args:
            select_range: given the asset, ``(start, count)`` to open, or None to open
                nothing (a HEAD: the caller records the access itself). It may raise, for a
                range the asset cannot satisfy.

        Raises:
            NotFound, KeyUnavailable, IntegrityError: as :meth:`open_download`, and
            whatever ``select_range`` raises.
        """
        row = self._row_by_path(tenant_id, path)
        info = _info(row)
        chosen = select_range(info)
        if chosen is None:
            return info, None
        start, count = chosen
        if start < 0 or count < 0 or start + count > row.size:
            raise ValueError("select_range chose bytes outside the asset")
        return info, self._open_row(row, start, count)

    def stat(self, tenant_id: str, asset_id: str) -> AssetInfo:
        info = _info(self._row(tenant_id, asset_id))
        self._audit.release()
        return info

    def list(
        self, tenant_id: str, *, prefix: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[AssetInfo], str]:
        """One page of the tenant's assets in path order, and the next page's token."""
        self._audit.note(tenant_id=tenant_id)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page size must be 0 to {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        if not _plausible_path(prefix):
            raise InvalidArgument("prefix must be at most 1024 bytes of UTF-8 without controls")
        # Noted once checked: a refused prefix must not reach the audit record.
        self._audit.note(resource=Resource("asset-list", None, prefix or None))
        after = _decode_token(page_token, prefix) if page_token else None
        query = select(AssetRow).where(AssetRow.tenant_id == tenant_id)
        if prefix:
            # LIKE narrows the scan (index-friendly); SQLite's LIKE ignores ASCII case, so
            # the exact comparison of the leading characters decides
            query = query.where(
                AssetRow.path.startswith(prefix, autoescape=True),
                func.substr(AssetRow.path, 1, len(prefix)) == prefix,
            )
        if after is not None:
            query = query.where(AssetRow.path > after)
        query = query.order_by(AssetRow.path).limit(size + 1)
        with self._db.transaction(readonly=True) as session:
            rows = list(session.scalars(query))
            infos = [_info(row) for row in rows[:size]]
        token = _encode_token(infos[-1].path, prefix) if len(rows) > size else ""
        self._audit.release()
        return infos, token

    def open_download(
        self,
        tenant_id: str,
        asset_id: str,
        *,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
    ) -> Download:
        """Open the whole asset, ``[offset, offset + length)``, or its last ``suffix`` bytes.

        Everything that can be refused is refused here, before the caller sends anything:
        a bad range, a missing asset, a KEK whose state forbids reading, and a stored object
        whose header fails authentication (DATA_LOSS), or whose final frame does when the
        range reaches it (a range that ends earlier does not depend on it).

        The frames are opened with the catalog's copy of the header. A whole-asset read
        also fetches the stored header and refuses the object (DATA_LOSS) unless it is the
        same: a stored header damaged on its own would leave the vault's reads working
        while making the object unreadable by the official SDK, the format's promise of no
        lock-in. An empty asset is read too: its object (header and empty final frame) is
        fetched and authenticated before the (empty) answer.

        Raises:
            InvalidArgument, OutOfRange, NotFound, KeyUnavailable, IntegrityError.
        """
        row = self._row(tenant_id, asset_id)
        start, count = _resolve_range(row.size, offset, length, suffix)
        return self._open_row(row, start, count)

    def _open_row(self, row: AssetRow, start: int, count: int) -> Download:
        """:meth:`open_download`'s work once the row and the range are known."""
        tenant_id, asset_id = row.tenant_id, row.id
        store, key = self._store, row.object_key
        layout = MessageLayout.for_plaintext(len(row.header), self._frame_length_of(row), row.size)

        def read_at(at: int, n: int) -> bytes:
            try:
                return store.get_range(key, at, n)
            except (NotFound, OutOfRange):
                raise IntegrityError("the stored object is missing or truncated") from None

        def stream_at(at: int, n: int) -> Iterator[bytes]:
            try:
                yield from store.open_stream(key, at, n)
            except (NotFound, OutOfRange):
                raise IntegrityError("the stored object is missing or truncated") from None

        slots = [EncryptedDataKey.parse(row.key_slot)] if row.key_slot else []
        reader = RandomAccessReader(
            read_at,
            layout.ciphertext_size,
            self._keys.resolver(tenant_id),
            asset_context(tenant_id, asset_id),
            header=row.header,
            data_keys=slots,
            size_is_trusted=True,  # the catalog recorded the size when the upload committed
        )
        if start == 0 and count == row.size:
            stored = read_at(0, len(row.header))
            if not secrets.compare_digest(stored, row.header):
                # as opaque to the caller as every other integrity failure; the reason
                # reaches the server log (the interceptor logs it)
                raise DecryptionError("stored header differs from the catalog's")
        if row.size == 0 and reader.open_final_frame() != b"":
            raise DecryptionError("an empty asset's final frame is not empty")
        frames = reader.stream_range(start, count, stream_at)
        # Everything is checked: the read is recorded, durably, before any byte leaves.
        self._audit.note(
            resource=Resource("asset", row.id, row.path, start, count), kek_version=row.kek_version
        )
        self._audit.release()
        return Download(_info(row), start, count, frames)

    def grant_read(
        self,
        tenant_id: str,
        asset_id: str,
        *,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
        lifetime: int | None = None,
    ) -> ReadGrant:
        """A read grant for one asset: its header, its frame key and a presigned URL of
        its stored object (docs/direct-reads.md), for tenants whose policy enables direct
        reads. The grant is recorded as a key release, durably, before it is returned.

        The key is derived here, from the data key the tenant KEK unwraps, and the key
        commitment and header tag are checked first: a grant is never issued for an
        object the vault itself would refuse to open. The store is not read.

        Raises:
            InvalidArgument: a bad range or a lifetime outside 1 to the maximum.
            OutOfRange, NotFound: as :meth:`open_download`.
            FailedPrecondition: the tenant's policy does not enable direct reads, or the
                object store cannot presign URLs.
            KeyUnavailable: the KEK's state forbids reading.
            IntegrityError: the catalog's header fails authentication.
        """
        if lifetime is None:
            lifetime = self._grant_lifetime
        if not 1 <= lifetime <= self._grant_max_lifetime:
            raise InvalidArgument(
                f"a grant's lifetime must be 1 to {self._grant_max_lifetime} seconds"
            )
        row = self._row(tenant_id, asset_id)
        start, count = _resolve_range(row.size, offset, length, suffix)
        with self._db.transaction(readonly=True) as session:
            direct = session.scalar(select(TenantRow.direct_reads).where(TenantRow.id == tenant_id))
        if not direct:
            raise FailedPrecondition(
                "direct reads are off for this tenant (a tenant admin enables them with "
                "SetTenantPolicy); read through Download"
            )
        url = self._store.presign_get(row.object_key, lifetime)  # local: nothing is sent
        try:
            header = parse_header(row.header)
        except (Incomplete, Malformed):
            raise IntegrityError("the catalog's header is malformed") from None
        slots = [EncryptedDataKey.parse(row.key_slot)] if row.key_slot else []
        opened = open_header(
            header,
            self._keys.resolver(tenant_id),
            asset_context(tenant_id, asset_id),
            data_keys=slots,
        )
        expires_at = self._now() + timedelta(seconds=lifetime)
        layout = MessageLayout.for_plaintext(len(row.header), header.frame_length, row.size)
        # Recorded, durably, before the key leaves: a grant is a key release.
        self._audit.note(
            resource=Resource("asset", row.id, row.path, start, count),
            kek_version=row.kek_version,
            detail={"key_release": "frame_key", "grant_lifetime_s": lifetime},
        )
        self._audit.release()
        return ReadGrant(
            asset=_info(row),
            header=row.header,
            frame_key=opened.content_key,
            object_size=layout.ciphertext_size,
            url=url,
            expires_at=expires_at,
            offset=start,
            length=count,
        )

    @staticmethod
    def _frame_length_of(row: AssetRow) -> int:
        # The frame length is in the header (authenticated when the reader opens it);
        # reading it from there keeps assets written with another F readable.
        try:
            return parse_header(row.header).frame_length
        except (Incomplete, Malformed):
            raise IntegrityError("the catalog's header is malformed") from None

    # --- rotation ------------------------------------------------------------------------

    def rewrap_keys(self, tenant_id: str, *, batch: int = 500) -> int:
        """Move every asset of the tenant whose data key is wrapped by an older KEK version
        to the active version, by rewriting its key slot in the catalog. Stored objects are
        not touched (format.md explains why). Returns how many assets moved.

        Run after ``TenantKeys.rotate``; afterwards the old version can be retired.
        """
        kek = self._keys.encryption_kek(tenant_id)
        resolver = self._keys.resolver(tenant_id)
        moved = 0
        while True:
            with self._db.transaction(readonly=True) as session:
                rows = list(
                    session.scalars(
                        select(AssetRow)
                        .where(AssetRow.tenant_id == tenant_id, AssetRow.kek_version < kek.version)
                        .order_by(AssetRow.id)
                        .limit(batch)
                    )
                )
                for row in rows:
                    session.expunge(row)
            if not rows:
                return moved
            for row in rows:
                slots = [EncryptedDataKey.parse(row.key_slot)] if row.key_slot else []
                slot = rewrap_data_key(
                    row.header,
                    resolver,
                    asset_context(tenant_id, row.id),
                    kek,
                    data_keys=slots,
                )
                with self._db.transaction() as session:
                    session.execute(
                        update(AssetRow)
                        .where(AssetRow.id == row.id, AssetRow.kek_version == row.kek_version)
                        .values(key_slot=slot.serialize(), kek_version=kek.version)
                    )
                moved += 1

    # --- delete and gc -------------------------------------------------------------------

    def delete(self, tenant_id: str, asset_id: str) -> None:
        """Delete the asset: its row at once, then its stored object and every version of
        it. Idempotent. The row's delete records the object key in ``deleted_objects``
        (one transaction), cleared once storage confirmed: if storage fails, ``gc``
        finishes the job, knowing the object for garbage."""
        self._audit.note(tenant_id=tenant_id)
        check_asset_id(asset_id)
        with self._db.transaction(readonly=True) as session:
            path = session.scalar(
                select(AssetRow.path).where(
                    AssetRow.id == asset_id, AssetRow.tenant_id == tenant_id
                )
            )
        self._audit.note(resource=Resource("asset", asset_id, path))
        # Recorded before the delete commits: a deletion is never unaudited. (Not inside
        # the write transaction: on SQLite the audit commit needs the same write lock.)
        self._audit.release()
        with self._db.transaction() as session:
            row = session.scalar(
                select(AssetRow).where(AssetRow.id == asset_id, AssetRow.tenant_id == tenant_id)
            )
            if row is None:
                return
            object_key = row.object_key
            session.delete(row)
            session.add(DeletedObjectRow(object_key=object_key, deleted_at=self._now()))
        self._store.delete(object_key)
        self._forget_deleted(object_key)

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
        """Which catalog record owns a stored key: ``"upload"``, ``"asset"``,
        ``"deleted"``, or None (unknown to this catalog)."""
        with self._db.transaction(readonly=True) as session:
            if session.get(UploadRow, key) is not None:
                return "upload"
            if session.get(DeletedObjectRow, key) is not None:
                return "deleted"  # recorded after gc read the list
            owner = session.scalar(select(AssetRow.id).where(AssetRow.object_key == key))
            return None if owner is None else "asset"


class AssetUpload:
    """One upload in progress. Not thread-safe: one caller feeds it, in order."""

    def __init__(
        self,
        assets: Assets,
        *,
        tenant_id: str,
        asset_id: str,
        object_key: str,
        spec: UploadSpec,
        kek_version: int,
        sealer: Sealer,
        target: Upload,
    ) -> None:
        self._assets = assets
        self.tenant_id = tenant_id
        self.asset_id = asset_id
        self.object_key = object_key
        self.spec = spec
        self.kek_version = kek_version
        self._sealer = sealer
        self._target = target
        self._sha = hashlib.sha256()
        self._size = 0
        self._state = "open"
        self._object_completed = False
        self._completing = False  # the object's last request (a PUT or the completion) sent
        try:
            target.write(sealer.header)
        except BaseException:
            self.abort()
            raise

    @property
    def header(self) -> bytes:
        return self._sealer.header

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        """Hash, seal and store one chunk of at most :data:`MAX_CHUNK` bytes.

        Raises:
            InvalidArgument: the chunk is too large or the upload outgrew its expected size
                (the upload is aborted).
        """
        self._check_open()
        try:
            if len(chunk) > MAX_CHUNK:
                raise InvalidArgument("chunks must be at most 1 MiB")
            self._size += len(chunk)
            expected = self.spec.expected_size
            if expected is not None and self._size > expected:
                raise InvalidArgument("more bytes than the expected size")
            self._sha.update(chunk)
            for piece in self._sealer.update(chunk):
                self._target.write(piece)
        except BaseException:
            self.abort()
            raise

    def complete(self) -> AssetInfo:
        """Finish the object, then commit the asset row; the asset is visible from here.

        Raises:
            InvalidArgument: size or SHA-256 differ from what the metadata promised.
            AlreadyExists: another upload took the path first.
        """
        self._check_open()
        try:
            digest = self._sha.digest()
            spec = self.spec
            if spec.expected_size is not None and self._size != spec.expected_size:
                raise InvalidArgument("fewer bytes than the expected size")
            if spec.expected_sha256 is not None and not secrets.compare_digest(
                digest, spec.expected_sha256
            ):
                raise InvalidArgument("SHA-256 of the uploaded bytes differs from the expected")
            for piece in self._sealer.finish():
                self._target.write(piece)
            self._completing = True
            self._target.complete()
            self._object_completed = True
            info = self._assets._commit(self, self._size, digest)
        except BaseException:
            self.abort()
            raise
        self._state = "completed"
        return info

    def abort(self) -> None:
        """Leave nothing behind. Idempotent; safe to call from any failure path. Not bound
        by the caller's deadline (:mod:`reelvault.deadline`): it is what runs after one."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._assets._live.pop(self.object_key, None)
        store = self._assets._store
        # Whether storage may hold something of this upload that the cleanup below cannot
        # be sure to remove: a multipart upload was begun (its abort may run on in the
        # background after a failure), or the object's last request was sent (a PUT that
        # timed out may still land). Such a key becomes a deletion record, for gc. (Every
        # store's upload, the instrumented wrapper included, exposes ``upload_id``.)
        uncertain = (
            self._object_completed
            or self._completing
            or getattr(self._target, "upload_id", None) is not None
        )
        with deadline.bound(None):
            try:
                if self._object_completed:
                    store.delete(self.object_key)
                else:
                    self._target.abort()
            except BaseException:
                # Storage may still hold it: the key moves to deleted_objects, for gc.
                self._assets._retire_upload(self.object_key)
                raise
            if uncertain:
                self._assets._retire_upload(self.object_key)
            else:
                # Only once storage is clean: if a crash comes first, gc sees the row.
                self._assets._forget_upload(self.object_key)

    def _check_open(self) -> None:
        if self._state != "open":
            raise FailedPrecondition(f"upload is {self._state}")


def _resolve_range(
    size: int, offset: int | None, length: int | None, suffix: int | None
) -> tuple[int, int]:
    if suffix is not None:
        if offset is not None or length is not None:
            raise InvalidArgument("give either a byte range or a suffix length, not both")
        if suffix <= 0:
            raise InvalidArgument("suffix length must be positive")
        count = min(suffix, size)
        if count == 0:
            raise OutOfRange("range not satisfiable for an empty asset")
        return size - count, count
    if offset is None and length is None:
        return 0, size
    start = offset or 0
    if length is None:
        raise InvalidArgument("a byte range needs a length")
    if start < 0 or length <= 0:
        raise InvalidArgument("offset must not be negative and length must be positive")
    if start + length > size:
        raise OutOfRange("range outside the asset")
    return start, length


def _encode_token(after: str, prefix: str) -> str:
    raw = json.dumps({"a": after, "p": prefix}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _visible(char: str) -> bool:
    """Whether a path may hold ``char``: not a control (Cc), format (Cf: bidi overrides,
    zero-width characters) or surrogate (Cs) character, nor a line or paragraph separator.
    Spaces of every script (U+00A0, U+3000) are allowed."""
    return unicodedata.category(char) not in _INVISIBLE


_INVISIBLE: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _plausible_path(text: str) -> bool:
    """What a prefix or a page position may be: no longer than a path, valid UTF-8, and
    free of C0 controls (a NUL is not even storable in PostgreSQL text). Deliberately
    looser than :func:`_check_spec`: paths stored before it was tightened must still be
    listable and pageable."""
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return len(encoded) <= MAX_PATH_BYTES and not any(b < 0x20 or b == 0x7F for b in encoded)


# two paths, JSON-escaped (at most 3 characters per byte, as \u escapes), in base64: < 8.3 K
_MAX_TOKEN_CHARS: Final = 16 * 1024


def _decode_token(token: str, prefix: str) -> str:
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument("malformed page token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after, bound = data["a"], data["p"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidArgument("malformed page token") from None
    if not isinstance(after, str) or not _plausible_path(after) or bound != prefix:
        raise InvalidArgument("page token does not belong to this listing")
    return after
