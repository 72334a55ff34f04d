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
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, cast

import structlog
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from reelvault import deadline
from reelvault.audit import Auditor, NullAuditSink, Resource
from reelvault.catalog import Database
from reelvault.catalog.tables import AssetRow, TenantRow
from reelvault.clock import Clock
from reelvault.crypto import (
    DEFAULT_FRAME_LENGTH,
    KIND_ASSET,
    EncryptedDataKey,
    EncryptionContext,
    KeyResolver,
    MessageLayout,
    RandomAccessReader,
    Sealer,
    WrappingKey,
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
    KeyUnavailable,
    NotFound,
    OutOfRange,
    Unavailable,
)
from reelvault.keys.tenant import TenantKeys
from reelvault.objects import SealedObjects, SubjectKeyring
from reelvault.storage import ObjectStore, Upload

__all__ = [
    "MAX_CHUNK",
    "AssetInfo",
    "AssetUpload",
    "Assets",
    "Download",
    "UploadSpec",
    "check_content_type",
    "check_labels",
]

MAX_CHUNK: Final = 1024 * 1024
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
    subject: str | None = None
    """A personalized rendition's subject (pseudonym): its key wraps the data key."""


@dataclass(frozen=True, slots=True)
class UploadSpec:
    """What the first message of an upload says about the asset."""

    path: str
    content_type: str = DEFAULT_CONTENT_TYPE
    labels: Mapping[str, str] = field(default_factory=dict)
    expected_size: int | None = None
    expected_sha256: bytes | None = None
    subject_id: str | None = None
    """The viewer a personalized rendition belongs to (the tenant's own viewer id; stored
    only as its pseudonym): its data key is then wrapped by that subject's key."""


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
        subject=row.subject,
    )


def asset_context(tenant_id: str, asset_id: str) -> EncryptionContext:
    return EncryptionContext.for_object(tenant_id=tenant_id, object_id=asset_id, kind=KIND_ASSET)


def check_asset_id(asset_id: str) -> None:
    if not isinstance(asset_id, str) or _ID.fullmatch(asset_id) is None:
        raise InvalidArgument("asset id must be 32 lowercase hex digits")


def check_content_type(content_type: str) -> str:
    """A media type (``type/subtype[; parameters]``), returned as given."""
    if len(content_type) > 255 or _CONTENT_TYPE.fullmatch(content_type) is None:
        raise InvalidArgument("content type must look like type/subtype")
    return content_type


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """At most 64 labels, keys of [a-z0-9_.-], printable values; returned as given."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if _LABEL_KEY.fullmatch(key) is None:
            raise InvalidArgument("label keys must be 1-63 characters of [a-z0-9_.-]")
        if len(value) > 256 or not value.isprintable():
            raise InvalidArgument("label values must be at most 256 printable characters")
    return labels


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
    content_type = check_content_type(spec.content_type or DEFAULT_CONTENT_TYPE)
    check_labels(spec.labels)
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
        subject_id=spec.subject_id,
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
        objects: SealedObjects | None = None,
        subjects: SubjectKeyring | None = None,
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
        self.objects = (
            objects
            if objects is not None
            else SealedObjects(database, store, clock, auditor=self._audit)
        )
        self.objects.register(self, key_slots=self)
        self._subjects = subjects

    # --- as a kind of sealed object ------------------------------------------------------

    name = KIND_ASSET

    def owns_stored_object(self, session: Session, object_key: str) -> bool:
        owner = session.scalar(select(AssetRow.id).where(AssetRow.object_key == object_key))
        return owner is not None

    def _resolver(self, tenant_id: str, subject: str | None) -> KeyResolver:
        """What unwraps an asset's data key: the subject's key for a personalized
        rendition, the tenant's KEK versions otherwise."""
        if subject is None:
            return self._keys.resolver(tenant_id)
        if self._subjects is None:
            raise KeyUnavailable("subject keys are not available in this process")
        return self._subjects.resolver(tenant_id, subject)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    # --- upload --------------------------------------------------------------------------

    def begin_upload(self, tenant_id: str, spec: UploadSpec) -> AssetUpload:
        """Validate the metadata and start an upload.

        Raises:
            InvalidArgument: bad path, content type, labels or expectations.
            AlreadyExists: the tenant has an asset at this path.
            KeyUnavailable: the tenant has no active KEK version.
            FailedPrecondition: the subject was erased.
        """
        self._audit.note(tenant_id=tenant_id)
        spec = _check_spec(spec)
        subject: str | None = None
        with self._db.transaction(readonly=True) as session:
            taken = session.scalar(
                select(AssetRow.id).where(
                    AssetRow.tenant_id == tenant_id, AssetRow.path == spec.path
                )
            )
        if taken is not None:
            raise AlreadyExists("an asset with this path already exists")
        wrapping: WrappingKey
        if spec.subject_id is None:
            kek = self._keys.encryption_kek(tenant_id)
            wrapping, kek_version = kek, kek.version
        else:
            # A personalized rendition: its data key is wrapped by the subject's key, so
            # erasing the subject shreds it with the subject's payloads.
            if self._subjects is None:
                raise FailedPrecondition("subject-bound uploads are not available here")
            bound = self._subjects.subject_key(tenant_id, spec.subject_id)
            subject, wrapping, kek_version = bound.pseudonym, bound.key, bound.kek_version
            self._audit.note(resource=Resource("subject", subject))
        asset_id = secrets.token_hex(16)
        object_key = f"t/{tenant_id}/{secrets.token_hex(16)}"
        self.objects.begin_upload(object_key, tenant_id, asset_id)
        try:
            sealer = Sealer(
                wrapping, asset_context(tenant_id, asset_id), frame_length=self._frame_length
            )
            target = self._store.begin(object_key)
        except BaseException:
            self.objects.end_upload(object_key)
            with deadline.bound(None):  # cleanup runs after a deadline, as abort() does
                self.objects.forget_upload(object_key)
            raise
        return AssetUpload(
            self,
            tenant_id=tenant_id,
            asset_id=asset_id,
            object_key=object_key,
            spec=spec,
            kek_version=kek_version,
            sealer=sealer,
            target=target,
            subject=subject,
        )

    def _commit(self, upload: AssetUpload, size: int, sha256: bytes) -> AssetInfo:
        # An upload that straddled a KEK rotation commits under the version active now,
        # through a key slot: otherwise it would pin a version the operator is retiring.
        # If that version can no longer decrypt, the upload fails (and is aborted) rather
        # than commit an asset nobody may read.
        key_slot, kek_version = None, upload.kek_version
        active = self._keys.encryption_kek(upload.tenant_id)
        # (A subject-bound asset's key moves with its subject's key: nothing to do here.)
        if upload.subject is None and active.version != upload.kek_version:
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
            subject=upload.subject,
        )
        try:
            with self._db.transaction() as session:
                if not self.objects.claim_upload(session, upload.object_key):
                    # gc took the row for a dead upload's (its heartbeat had stopped) and
                    # may be deleting the object: this upload must not commit.
                    raise Unavailable("the upload expired (its heartbeat stopped); retry it")
                if upload.subject is not None and self._subjects is not None:
                    # an erasure that committed since the upload began wins: the rendition
                    # must not outlive it (the subject's row is locked until this commit);
                    # and a rewrap since then moved the subject key, so its version is now
                    row.kek_version = self._subjects.hold_live(
                        session, upload.tenant_id, upload.subject
                    )
                session.add(row)
                session.flush()
                info = _info(row)
        except SqlIntegrityError:
            raise AlreadyExists("an asset with this path already exists") from None
        self.objects.end_upload(upload.object_key)
        return info

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
            self._resolver(tenant_id, row.subject),
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
            self._resolver(tenant_id, row.subject),
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

        Run after ``TenantKeys.rotate`` (``SealedObjects.rewrap_tenant`` moves every kind);
        afterwards the old version can be retired.
        """
        moved = 0
        while True:
            count = self.rewrap_batch(tenant_id, batch)
            if count == 0:
                return moved
            moved += count

    def rewrap_batch(self, tenant_id: str, batch: int) -> int:
        """:meth:`rewrap_keys`, at most ``batch`` assets; 0 once none is left. Subject-bound
        assets are the subject's key's to move (``privacy.Subjects``)."""
        kek = self._keys.encryption_kek(tenant_id)
        resolver = self._keys.resolver(tenant_id)
        with self._db.transaction(readonly=True) as session:
            rows = list(
                session.scalars(
                    select(AssetRow)
                    .where(
                        AssetRow.tenant_id == tenant_id,
                        AssetRow.kek_version < kek.version,
                        AssetRow.subject.is_(None),
                    )
                    .order_by(AssetRow.id)
                    .limit(batch)
                )
            )
            for row in rows:
                session.expunge(row)
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
        return len(rows)

    # --- delete and gc -------------------------------------------------------------------

    def delete(self, tenant_id: str, asset_id: str) -> None:
        """Delete the asset: its row at once, then its stored object and every version of
        it. Idempotent. The row's delete records the object key in ``deleted_objects``
        (one transaction), cleared once storage confirmed: if storage fails, ``gc``
        finishes the job, knowing the object for garbage."""
        self._audit.note(tenant_id=tenant_id)
        check_asset_id(asset_id)
        with self._db.transaction(readonly=True) as session:
            found = session.execute(
                select(AssetRow.path, AssetRow.subject).where(
                    AssetRow.id == asset_id, AssetRow.tenant_id == tenant_id
                )
            ).one_or_none()
        path, subject = found if found is not None else (None, None)
        self._audit.note(resource=Resource("asset", asset_id, path))
        if subject is not None and self._subjects is not None:
            self._audit.note(resource=Resource("subject", subject))
            if self._subjects.is_held(tenant_id, subject):
                raise FailedPrecondition("the subject is under a legal hold; release it first")
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
            self.objects.record_deleted(session, object_key)
        self.objects.delete_stored(object_key)


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
        subject: str | None = None,
    ) -> None:
        self._assets = assets
        self.subject = subject
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
        objects = self._assets.objects
        objects.end_upload(self.object_key)
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
                objects.retire_upload(self.object_key)
                raise
            if uncertain:
                objects.retire_upload(self.object_key)
            else:
                # Only once storage is clean: if a crash comes first, gc sees the row.
                objects.forget_upload(self.object_key)

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
