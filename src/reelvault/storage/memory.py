"""An in-memory object store with S3's semantics, for tests of the layers above.

It shares :class:`~reelvault.storage.base.BufferedUpload` with the S3 backend, so parts,
concurrency and aborts behave exactly as they do against a real store: a multipart
object becomes visible only at completion, an abort leaves nothing, and unfinished
uploads are listed until aborted. It passes the same conformance suite.

What it adds is observation. :attr:`MemoryObjectStore.stats` counts the reads and writes
a test can assert on ("one ranged GET per range read", "no more than four parts in
flight"), and :meth:`MemoryObjectStore.fail_parts` makes part uploads fail so tests can
prove that a failure mid-upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from reelvault.clock import Clock, SystemClock
from reelvault.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange, Unavailable
from reelvault.storage.base import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PART_SIZE,
    STREAM_CHUNK_SIZE,
    BufferedUpload,
    BytesLike,
    CompletedPart,
    MultipartUploadInfo,
    ObjectInfo,
    check_key,
    check_range,
    write_all,
)

__all__ = ["MemoryObjectStore", "MemoryStats", "RangeRead"]


@dataclass(frozen=True, slots=True)
class RangeRead:
    """One ranged read as the store saw it."""

    key: str
    offset: int
    length: int


@dataclass(slots=True)
class MemoryStats:
    """What the store has been asked to do since it was created or last reset.

    Attributes:
        range_reads: every :meth:`~MemoryObjectStore.get_range` call, in order.
        bytes_read: bytes returned by ``get_range`` plus bytes yielded by streams.
        streams_opened: :meth:`~MemoryObjectStore.open_stream` calls that found the object.
        single_puts: objects written with one request (at most one part).
        parts_started: part uploads that began (including ones that then failed).
        part_bytes_started: bytes in those parts.
        parts_in_flight: part uploads running right now.
        max_parts_in_flight: the most that ever ran at once.
    """

    range_reads: list[RangeRead] = field(default_factory=list)
    bytes_read: int = 0
    streams_opened: int = 0
    single_puts: int = 0
    parts_started: int = 0
    part_bytes_started: int = 0
    parts_in_flight: int = 0
    max_parts_in_flight: int = 0

    @property
    def get_range_calls(self) -> int:
        return len(self.range_reads)


@dataclass(slots=True)
class _PendingUpload:
    key: str
    initiated: float
    parts: dict[int, bytes] = field(default_factory=dict)


def _etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class MemoryObjectStore:
    """An :class:`~reelvault.storage.base.ObjectStore` held in a dict.

    Args:
        part_size: bytes per part. Any positive size is accepted (unlike S3's 5 MiB
            floor) so tests can exercise many parts with little data.
        max_in_flight: parts one upload may be sending at once.
        clock: stamps multipart uploads, so garbage-collection tests move time instead
            of sleeping.
    """

    def __init__(
        self,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        clock: Clock | None = None,
    ) -> None:
        if part_size < 1 or max_in_flight < 1:
            raise InvalidArgument("part size and parts in flight must be positive")
        self._part_size = part_size
        self._max_in_flight = max_in_flight
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Condition()
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._uploads: dict[str, _PendingUpload] = {}
        self._upload_ids = itertools.count(1)
        self._parts_until_failure: int | None = None
        self._failure: type[Exception] = Unavailable
        self._parts_held = False
        self.stats = MemoryStats()

    @property
    def part_size(self) -> int:
        return self._part_size

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    # -- test controls ------------------------------------------------------------------

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = MemoryStats()

    def fail_parts(self, *, after: int = 0, error: type[Exception] = Unavailable) -> None:
        """Let ``after`` more part uploads succeed, then fail every later one with a new
        ``error`` until :meth:`heal` is called."""
        with self._lock:
            self._parts_until_failure = after
            self._failure = error

    def heal(self) -> None:
        """Stop failing part uploads."""
        with self._lock:
            self._parts_until_failure = None

    def hold_parts(self) -> None:
        """Make part uploads wait, once started, until :meth:`release_parts`; tests use
        it to see how many parts an upload puts in flight without timing anything."""
        with self._lock:
            self._parts_held = True

    def release_parts(self) -> None:
        with self._lock:
            self._parts_held = False
            self._lock.notify_all()

    def wait_for_parts_in_flight(self, count: int, timeout: float = 10.0) -> bool:
        """Block until exactly ``count`` part uploads are running; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self.stats.parts_in_flight == count, timeout)

    def pending_uploads(self) -> int:
        """Unfinished multipart uploads (a test's shortcut for listing them)."""
        with self._lock:
            return len(self._uploads)

    # -- ObjectStore ----------------------------------------------------------------------

    def begin(self, key: str) -> BufferedUpload:
        return BufferedUpload(
            _MemorySink(self),
            key,
            part_size=self._part_size,
            max_in_flight=self._max_in_flight,
        )

    def put(self, key: str, chunks: Iterable[BytesLike]) -> ObjectInfo:
        return write_all(self.begin(key), chunks)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_key(key)
        check_range(offset, length)
        with self._lock:
            self.stats.range_reads.append(RangeRead(key, offset, length))
            data = self._data(key)
            if offset + length > len(data):
                raise OutOfRange()
            self.stats.bytes_read += length
            return data[offset : offset + length]

    def open_stream(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> Generator[bytes, None, None]:
        check_key(key)
        check_range(offset, length)
        with self._lock:
            data = self._data(key)
            end = len(data) if length is None else offset + length
            # As S3: "bytes=N-" from N == size is unsatisfiable, except a whole empty object.
            if end > len(data) or (offset >= len(data) and offset > 0):
                raise OutOfRange()
            self.stats.streams_opened += 1
        return self._chunks(data, offset, end)

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            return None
        return ObjectInfo(key=key, size=len(found[0]), etag=found[1])

    def presign_get(self, key: str, lifetime: int) -> str:
        check_key(key)
        raise FailedPrecondition("this object store cannot presign URLs")

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
        return iter(keys)

    def list_multipart_uploads(
        self, *, older_than: float | None = None
    ) -> Iterator[MultipartUploadInfo]:
        with self._lock:
            found = [
                MultipartUploadInfo(key=u.key, upload_id=upload_id, initiated=u.initiated)
                for upload_id, u in sorted(self._uploads.items())
                if older_than is None or u.initiated < older_than
            ]
        return iter(found)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is not None and upload.key == key:
                del self._uploads[upload_id]

    # -- internals ------------------------------------------------------------------------

    def _data(self, key: str) -> bytes:
        found = self._objects.get(key)
        if found is None:
            raise NotFound()
        return found[0]

    def _chunks(self, data: bytes, start: int, end: int) -> Generator[bytes, None, None]:
        for position in range(start, end, STREAM_CHUNK_SIZE):
            chunk = data[position : min(end, position + STREAM_CHUNK_SIZE)]
            with self._lock:
                self.stats.bytes_read += len(chunk)
            yield chunk


class _MemorySink:
    """The single requests of :class:`MemoryObjectStore`, as BufferedUpload drives them."""

    def __init__(self, store: MemoryObjectStore) -> None:
        self._store = store

    def put_object(self, key: str, data: bytes) -> ObjectInfo:
        store = self._store
        etag = _etag(data)
        with store._lock:
            store._objects[key] = (data, etag)
            store.stats.single_puts += 1
        return ObjectInfo(key=key, size=len(data), etag=etag)

    def create_multipart(self, key: str) -> str:
        store = self._store
        with store._lock:
            upload_id = f"upload-{next(store._upload_ids)}"
            store._uploads[upload_id] = _PendingUpload(key=key, initiated=store._clock.now())
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        store = self._store
        lock = store._lock
        with lock:
            stats = store.stats
            stats.parts_started += 1
            stats.part_bytes_started += len(data)
            stats.parts_in_flight += 1
            stats.max_parts_in_flight = max(stats.max_parts_in_flight, stats.parts_in_flight)
            lock.notify_all()
            try:
                lock.wait_for(lambda: not store._parts_held)
                if store._parts_until_failure is not None:
                    if store._parts_until_failure == 0:
                        raise store._failure()
                    store._parts_until_failure -= 1
                upload = store._uploads.get(upload_id)
                if upload is None or upload.key != key:
                    raise NotFound("no such upload")
                upload.parts[number] = data
            finally:
                stats.parts_in_flight -= 1
                lock.notify_all()
        return _etag(data)

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[CompletedPart]) -> str:
        store = self._store
        with store._lock:
            upload = store._uploads.get(upload_id)
            if upload is None or upload.key != key:
                raise NotFound("no such upload")
            if [p.number for p in parts] != sorted(upload.parts) or any(
                _etag(upload.parts[p.number]) != p.etag for p in parts
            ):
                raise InvalidArgument("parts do not match the upload")
            data = b"".join(upload.parts[p.number] for p in parts)
            digests = b"".join(bytes.fromhex(p.etag) for p in parts)
            etag = f"{_etag(digests)}-{len(parts)}"
            store._objects[key] = (data, etag)
            del store._uploads[upload_id]
        return etag

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._store.abort_multipart(key, upload_id)
