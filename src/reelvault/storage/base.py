"""The object store role: what reelvault needs from S3 or anything shaped like it.

The store is outside the trust boundary. It is only ever handed ciphertext, under keys
that reelvault generates (opaque ids, never user paths or titles), so a store that leaks,
lists or tampers with objects learns nothing and can change nothing unnoticed: the crypto
layer authenticates every byte it reads back. That is why this interface is small and
byte-oriented: no metadata, no content types, no server-side encryption options.

Three properties matter to the layers above and every backend must keep them (the shared
suite in :mod:`reelvault.storage.conformance` checks them):

* **Visibility at completion only.** An object written through :meth:`ObjectStore.begin`
  appears, whole, when :meth:`Upload.complete` returns, and never partly. Any failure, or
  leaving an upload without completing it, aborts it and leaves neither an object nor a
  multipart upload behind. The catalog commits an asset's row only after that.
* **Bounded memory.** Writes are cut into parts of ``part_size`` bytes, and at most
  ``max_in_flight`` parts are being sent at once; a writer that outpaces the store blocks.
  One upload therefore holds at most ``(max_in_flight + 1) * part_size`` bytes plus the
  chunk being written, whatever the object's size.
* **One request per range read.** :meth:`ObjectStore.get_range` is exactly one ranged GET,
  so a plaintext range maps to one round trip (the crypto layer's random access relies on
  it), and a short answer is an error, never silently fewer bytes.

:class:`BufferedUpload` implements the first two once, over a backend's :class:`PartSink`,
so backends only translate single requests.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol, Self

from reelvault import deadline
from reelvault.errors import FailedPrecondition, InvalidArgument, OutOfRange

__all__ = [
    "BufferedUpload",
    "BytesLike",
    "CompletedPart",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_PART_SIZE",
    "MAX_KEY_BYTES",
    "MAX_OBJECT_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "PART_GROWTH_EVERY",
    "MultipartUploadInfo",
    "ObjectInfo",
    "ObjectStore",
    "PartSink",
    "STREAM_CHUNK_SIZE",
    "Upload",
    "check_key",
    "check_range",
    "max_object_size",
    "part_size_for",
    "write_all",
]

MIB: Final = 1024 * 1024

DEFAULT_PART_SIZE: Final = 8 * MIB
"""8 MiB parts: 4 in flight plus the one being filled cost 40 MiB per upload, and parts
grow past the 1,000th (:func:`part_size_for`), so the largest object is 430 GiB."""

DEFAULT_MAX_IN_FLIGHT: Final = 4
FAILURE_ABORT_BUDGET: Final = 5.0
"""Seconds a failing upload waits for its multipart abort before reporting the failure."""

MIN_PART_SIZE: Final = 5 * MIB
"""S3's floor for every part but the last; S3-compatible stores inherit it."""

MAX_PARTS: Final = 10_000
"""S3's cap on parts per upload."""

PART_GROWTH_EVERY: Final = 1_000
"""Parts per step of :func:`part_size_for`."""

MAX_PART_SIZE: Final = 5 * 1024 * MIB
"""S3's cap on one part."""

MAX_OBJECT_SIZE: Final = 5 * 1024 * 1024 * MIB
"""S3's cap on one object (5 TiB)."""

_SMALL_WRITE: Final = 16 * 1024
"""Writes shorter than this are copied into a shared tail instead of kept as references."""


def part_size_for(base: int, number: int) -> int:
    """The size of part ``number`` (1-based) of an upload configured for ``base``-byte parts.

    Parts 1 to 1,000 have the base size, 1,001 to 2,000 twice that, and so on up to ten
    times for the last thousand. S3 allows parts of different sizes (all but the last at
    least 5 MiB), and the size of an upload is unknown when it starts: this keeps memory
    per upload at the base size for everything up to ``1000 * base`` bytes (8 GiB with the
    default) while still reaching :func:`max_object_size`.
    """
    return min(base * (1 + (number - 1) // PART_GROWTH_EVERY), MAX_PART_SIZE)


def max_object_size(base: int) -> int:
    """The largest object an upload with ``base``-byte parts can write: 55,000 x base,
    within S3's limits on parts and objects."""
    steps = MAX_PARTS // PART_GROWTH_EVERY
    parts = sum(part_size_for(base, 1 + step * PART_GROWTH_EVERY) for step in range(steps))
    return min(parts * PART_GROWTH_EVERY, MAX_OBJECT_SIZE)


STREAM_CHUNK_SIZE: Final = 1 * MIB
"""Size of the pieces :meth:`ObjectStore.open_stream` yields; matches the gRPC message size."""

MAX_KEY_BYTES: Final = 1024
"""S3's limit on the UTF-8 length of an object key."""

BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store says about a complete object.

    Attributes:
        key: the object key.
        size: length in bytes. The crypto layer verifies it against the final frame before
            trusting it; the store's word alone is not proof.
        etag: the store's entity tag, unquoted. Opaque and backend-specific (a multipart
            ETag is not a digest of the content), so it is only ever compared for equality.
    """

    key: str
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class MultipartUploadInfo:
    """A multipart upload the store still holds: the input to garbage collection.

    Attributes:
        key: the object key the upload would create.
        upload_id: the store's id for the upload.
        initiated: when it began, in seconds since the Unix epoch.
    """

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True, slots=True)
class CompletedPart:
    """One uploaded part, as the completing request needs to name it."""

    number: int
    etag: str
    size: int


class Upload(Protocol):
    """A streaming write of one object. Obtain one from :meth:`ObjectStore.begin`.

    Use it as a context manager: leaving the block without :meth:`complete` having
    returned aborts the upload, so an exception anywhere in the producer cannot leave a
    half-written object or an orphaned multipart upload behind. One thread drives an
    upload; its parts are sent from others.
    """

    @property
    def key(self) -> str:
        """The key the object will have."""
        ...

    def write(self, data: BytesLike) -> None:
        """Append ``data`` (any length). May block while ``max_in_flight`` parts are
        being sent, which is what bounds memory. Raises the store's error, after
        aborting, if an earlier part failed."""
        ...

    def complete(self) -> ObjectInfo:
        """Send what is buffered, wait for every part and make the object visible.
        On failure the upload is aborted before the error propagates."""
        ...

    def abort(self) -> None:
        """Discard everything written. Idempotent; refused after :meth:`complete`."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class ObjectStore(Protocol):
    """Ciphertext blobs under opaque keys (see the module docstring for the contract).

    The API is synchronous and thread-safe: the gRPC layer calls it from worker threads.

    Errors: a missing object raises ``NotFound``; an unsatisfiable range raises
    ``OutOfRange``; an unreachable, timing-out or failing (5xx) store raises
    ``Unavailable``. Messages never carry the backend's own error text.
    """

    @property
    def part_size(self) -> int:
        """Bytes per multipart part (every part but the last)."""
        ...

    @property
    def max_in_flight(self) -> int:
        """Parts one upload may be sending at once."""
        ...

    def begin(self, key: str) -> Upload:
        """Start a streaming write. Cheap: nothing is sent until the first part fills,
        and an object smaller than one part is sent as a single PUT at completion."""
        ...

    def put(self, key: str, chunks: Iterable[BytesLike]) -> ObjectInfo:
        """Write an object from an iterable of chunks; the convenience form of
        :meth:`begin`. If the iterable raises, the upload is aborted and the iterable's
        exception propagates unchanged."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return exactly ``length`` (>= 1) bytes at ``offset`` with one ranged GET.
        A range reaching past the end of the object raises ``OutOfRange``."""
        ...

    def open_stream(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> Generator[bytes, None, None]:
        """Stream ``length`` bytes from ``offset`` (to the end when ``None``) in chunks
        of at most :data:`STREAM_CHUNK_SIZE`.

        The GET is sent before this returns, so ``NotFound`` and ``OutOfRange`` surface
        here, before a caller has started a response; errors while reading the body
        surface from the iterator. Close the iterator (or exhaust it) to release the
        connection."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Size and ETag of the object, or ``None`` when there is none."""
        ...

    def presign_get(self, key: str, lifetime: int) -> str:
        """A URL that serves GETs of the object (any Range) to whoever holds it, for
        ``lifetime`` seconds; computed locally, no request is sent. The URL is a bearer
        credential for the stored bytes (ciphertext): never log it.

        Raises:
            FailedPrecondition: this store cannot presign URLs (the in-memory one).
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the object and, in a versioned bucket, every version of it (erasure
        must not leave old ciphertext behind). Deleting a missing key is not an error."""
        ...

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, in the store's order (lexicographic for S3)."""
        ...

    def list_multipart_uploads(
        self, *, older_than: float | None = None
    ) -> Iterator[MultipartUploadInfo]:
        """Unfinished multipart uploads, for garbage collection.

        Args:
            older_than: only uploads initiated before this time (seconds since the Unix
                epoch). A parameter rather than a duration so the collector, not the
                store, owns the clock.
        """
        ...

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort an unfinished upload found by :meth:`list_multipart_uploads`.
        Idempotent: an upload that is already gone is not an error."""
        ...


class PartSink(Protocol):
    """The single requests a backend translates so :class:`BufferedUpload` can drive it.

    Implementations raise errors from :mod:`reelvault.errors` (already mapped) and must
    be safe to call from several threads at once: parts are uploaded concurrently.
    """

    def put_object(self, key: str, data: bytes) -> ObjectInfo:
        """Write a whole object in one request (objects of at most one part)."""
        ...

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload and return its id."""
        ...

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Upload part ``number`` (1-based) and return its ETag."""
        ...

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[CompletedPart]) -> str:
        """Make the object visible from ``parts`` (in order) and return its ETag."""
        ...

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Discard the upload and its parts."""
        ...


def check_key(key: str) -> None:
    """Refuse keys no S3-compatible store accepts, before any request is made.

    Raises:
        InvalidArgument: the key is empty or longer than :data:`MAX_KEY_BYTES` in UTF-8.
    """
    if not key or len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidArgument("invalid object key")


def check_range(offset: int, length: int | None) -> None:
    """Refuse ranges that cannot be expressed as an HTTP byte range.

    A zero-length range has no ``bytes=a-b`` form, so it is refused rather than answered
    with an empty read that would not have checked the object exists.

    Raises:
        OutOfRange: ``offset`` is negative or ``length`` is given and below 1.
    """
    if offset < 0 or (length is not None and length < 1):
        raise OutOfRange()


def write_all(upload: Upload, chunks: Iterable[BytesLike]) -> ObjectInfo:
    """Write every chunk to ``upload`` and complete it, aborting on any failure.

    The shared body of every backend's ``put``: chunks are consumed one at a time, so
    the iterable may be a generator over a file or a network stream of any size.
    """
    with upload:
        for chunk in chunks:
            upload.write(chunk)
        return upload.complete()


class BufferedUpload:
    """An :class:`Upload` that cuts writes into parts and sends them concurrently, bounded.

    Writes accumulate in a buffer; whenever it holds *more* than one part, one part is
    handed to a thread pool. Deferring the flush until the part size is exceeded means an
    object of at most one part is sent by a single PUT at completion, with no multipart
    upload at all, and the last part of a multipart object is never empty.

    A semaphore with ``max_in_flight`` slots is taken before a part is submitted and
    released when its request ends, so a fast producer blocks in :meth:`write` instead of
    queuing parts in memory. The pool is created at the first part and shut down at
    completion or abort.

    Any failure (a part, the completing request, the producer) aborts: in-flight parts
    are waited for first, because S3 may keep a part whose upload was still running when
    the abort arrived.
    """

    def __init__(self, sink: PartSink, key: str, *, part_size: int, max_in_flight: int) -> None:
        check_key(key)
        if part_size < 1 or max_in_flight < 1:
            raise InvalidArgument("part size and parts in flight must be positive")
        self._sink = sink
        self._key = key
        self._part_size = part_size
        self._max_in_flight = max_in_flight
        self._pieces: list[memoryview | bytearray] = []
        self._held = 0
        self._size = 0
        self._upload_id: str | None = None
        self._next_part = 1
        self._futures: list[Future[CompletedPart]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._failure: BaseException | None = None
        self._state = "open"

    @property
    def key(self) -> str:
        return self._key

    @property
    def upload_id(self) -> str | None:
        """The multipart upload's id, or ``None`` while everything fits in one part."""
        return self._upload_id

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            self._abort_after(exc)

    def write(self, data: BytesLike) -> None:
        self._check_open()
        # bytes are immutable, so the buffer keeps a reference (the sealer's frames arrive
        # as bytes); anything else may be reused by the caller and is copied now.
        view = memoryview(data)  # refuses what is not a buffer (an int, a list)
        if not isinstance(data, bytes):
            view = memoryview(view.tobytes())
        view = view.cast("B")
        self._size += len(view)
        if self._size > MAX_OBJECT_SIZE:
            self._abort_after(None)
            raise InvalidArgument(f"object too large: at most {MAX_OBJECT_SIZE} bytes (S3)")
        try:
            # Flush only while more than a part is held, so the final part is never empty.
            while self._held + len(view) > self._part_size_now():
                take = self._part_size_now() - self._held
                self._hold(view[:take])
                part = b"".join(self._pieces)  # the one copy a part costs
                self._pieces, self._held = [], 0
                view = view[take:]
                self._submit(part)
            self._hold(view)
        except BaseException as exc:
            self._abort_after(exc)
            raise

    def _hold(self, view: memoryview) -> None:
        if not view:
            return
        pieces = self._pieces
        if len(view) < _SMALL_WRITE:
            # coalesce small writes: a list entry per byte would cost more than the data
            if pieces and isinstance(pieces[-1], bytearray):
                pieces[-1] += view
            else:
                pieces.append(bytearray(view))
        else:
            pieces.append(view)
        self._held += len(view)

    def _part_size_now(self) -> int:
        return part_size_for(self._part_size, self._next_part)

    def complete(self) -> ObjectInfo:
        self._check_open()
        try:
            if self._upload_id is None:
                info = self._sink.put_object(self._key, b"".join(self._pieces))
            else:
                if self._held:
                    self._submit(b"".join(self._pieces))
                parts = [future.result() for future in self._futures]
                etag = self._sink.complete_multipart(self._key, self._upload_id, parts)
                info = ObjectInfo(key=self._key, size=self._size, etag=etag)
        except BaseException as exc:
            self._abort_after(exc)
            raise
        self._state = "completed"
        self._release()
        return info

    def abort(self) -> None:
        """Abort the multipart upload. Cleanup, so not bound by the caller's deadline
        (:mod:`reelvault.deadline`): it runs after one has passed."""
        self._abort(None)

    def _abort(self, budget: float | None) -> None:
        if self._state == "completed":
            raise FailedPrecondition("upload already completed")
        if self._state == "aborted":
            return
        self._state = "aborted"
        self._release()
        if self._upload_id is None:
            return
        key, upload_id = self._key, self._upload_id
        if budget is None:
            with deadline.bound(None):
                self._sink.abort_multipart(key, upload_id)
            return
        # Sent from a thread of its own and waited for at most ``budget`` seconds: a
        # stalled store must not hold the failing call for another round of timeouts.
        # A late abort still completes in the background; one that fails is gc's.
        failures: list[BaseException] = []

        def send() -> None:
            try:
                with deadline.bound(None):
                    self._sink.abort_multipart(key, upload_id)
            except BaseException as exc:
                failures.append(exc)

        sender = threading.Thread(target=send, name="reelvault-abort", daemon=True)
        sender.start()
        sender.join(budget)
        if sender.is_alive():
            raise TimeoutError("the multipart abort is still running")
        if failures:
            raise failures[0]

    def _check_open(self) -> None:
        if self._state != "open":
            raise FailedPrecondition(f"upload is {self._state}")

    def _submit(self, part: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._sink.create_multipart(self._key)
            self._pool = ThreadPoolExecutor(
                max_workers=self._max_in_flight, thread_name_prefix="reelvault-upload"
            )
        assert self._pool is not None
        if self._next_part > MAX_PARTS:
            raise InvalidArgument(
                f"object too large: at most {max_object_size(self._part_size)} bytes "
                f"with {self._part_size}-byte parts"
            )
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        number = self._next_part
        self._next_part += 1
        try:
            future = self._pool.submit(self._send_part, self._upload_id, number, part)
        except BaseException:
            self._slots.release()
            raise
        self._futures.append(future)

    def _send_part(self, upload_id: str, number: int, data: bytes) -> CompletedPart:
        try:
            etag = self._sink.upload_part(self._key, upload_id, number, data)
        except BaseException as exc:
            if self._failure is None:
                self._failure = exc
            raise
        finally:
            self._slots.release()
        return CompletedPart(number=number, etag=etag, size=len(data))

    def _release(self) -> None:
        self._pieces, self._held = [], 0
        if self._pool is not None:
            # Waits for parts still being sent; none are queued (the semaphore saw to it).
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._futures = []

    def _abort_after(self, cause: BaseException | None) -> None:
        """Abort because of ``cause``; an abort failure must not hide the cause. The abort
        gets at most :data:`FAILURE_ABORT_BUDGET` seconds: after a failure the store is
        often the problem, and the caller must hear of the failure within the store's
        timeouts, not after another round of them (gc aborts what is left)."""
        try:
            self._abort(FAILURE_ABORT_BUDGET)
        except Exception as abort_error:
            if cause is None:
                raise
            # The multipart upload is left for garbage collection
            # (list_multipart_uploads / abort_multipart).
            cause.add_note(f"aborting the upload also failed: {type(abort_error).__name__}")
