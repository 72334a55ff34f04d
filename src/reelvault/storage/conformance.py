"""The conformance suite every object store backend passes.

It is shipped in the package, not kept under ``tests/``, so a backend written outside
this repository is held to exactly the contract the built-in ones are. Subclass
:class:`ObjectStoreConformance` in a pytest module and provide a ``store`` fixture::

    from reelvault.storage.conformance import ObjectStoreConformance

    class TestMyStore(ObjectStoreConformance):
        @pytest.fixture
        def store(self) -> Iterator[ObjectStore]:
            yield MyStore(part_size=5 * 1024 * 1024, max_in_flight=2)

The suite sizes its objects from ``store.part_size``, so give the store a small part size
(5 MiB, S3's minimum) and ``max_in_flight`` of 2 or more. Tests write under a fresh random
prefix each, so one bucket can serve a whole session. Two hooks make the suite sharper
where a backend can support them: :meth:`ObjectStoreConformance.probe_parts_in_flight`
(observe concurrency) and :meth:`ObjectStoreConformance.failing_parts` (inject a part
failure). :class:`S3ObjectStoreConformance` implements both for any
:class:`~reelvault.storage.s3.S3ObjectStore` through botocore's event hooks.

Requires pytest (a development dependency); importing :mod:`reelvault.storage` does not
import this module.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

import pytest
from botocore.exceptions import EndpointConnectionError

from reelvault.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange, Unavailable
from reelvault.storage.base import STREAM_CHUNK_SIZE, ObjectStore
from reelvault.storage.s3 import S3ObjectStore

__all__ = ["ObjectStoreConformance", "S3ObjectStoreConformance", "payload"]

_MIB = 1024 * 1024

# Object sizes as functions of the part size: the edges of the single-PUT / multipart split.
_SIZES: dict[str, Callable[[int], int]] = {
    "empty": lambda p: 0,
    "one-byte": lambda p: 1,
    "part-minus-one": lambda p: p - 1,
    "one-part": lambda p: p,
    "part-plus-one": lambda p: p + 1,
    "several-parts": lambda p: 3 * p + 12_345,
}


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible bytes: a misplaced part shows up as a mismatch."""
    return random.Random(seed).randbytes(size)  # noqa: S311 - test data, not secrets


def _chunks(data: bytes, size: int = _MIB + 17) -> Iterator[memoryview]:
    """An odd chunk size, so chunk and part boundaries never line up."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield view[start : start + size]


class _InjectedError(Exception):
    """Raised by a producer in the middle of an upload."""


class ObjectStoreConformance:
    """The shared suite. Subclasses provide the ``store`` fixture (see module docs)."""

    @pytest.fixture
    def store(self) -> ObjectStore:
        raise NotImplementedError("subclasses provide a `store` fixture")

    @pytest.fixture
    def prefix(self) -> str:
        """A key prefix of this test's own."""
        return f"conformance/{uuid.uuid4().hex}/"

    # -- hooks ----------------------------------------------------------------------------

    @contextmanager
    def probe_parts_in_flight(self, store: ObjectStore) -> Iterator[Callable[[], int | None]]:
        """Yield a callable returning the most part uploads seen running at once while
        the block ran, or ``None`` if the backend cannot be observed."""
        yield lambda: None

    def failing_parts(
        self, store: ObjectStore, *, after: int
    ) -> AbstractContextManager[None] | None:
        """A context in which part uploads after the first ``after`` fail as an
        unreachable store would (``Unavailable``), or ``None`` if the backend cannot
        inject failures (the test is then skipped)."""
        return None

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def assert_absent(store: ObjectStore, key: str) -> None:
        """Neither an object nor an unfinished multipart upload under ``key``."""
        assert store.head(key) is None
        with pytest.raises(NotFound):
            store.get_range(key, 0, 1)
        assert [u for u in store.list_multipart_uploads() if u.key == key] == []

    @staticmethod
    def read_all(store: ObjectStore, key: str) -> bytes:
        return b"".join(store.open_stream(key))

    # -- writes ---------------------------------------------------------------------------

    @pytest.mark.parametrize("size_of", list(_SIZES.values()), ids=list(_SIZES))
    def test_round_trip(
        self, store: ObjectStore, prefix: str, size_of: Callable[[int], int]
    ) -> None:
        key = prefix + "object"
        data = payload(size_of(store.part_size), seed=len(prefix))
        info = store.put(key, _chunks(data))
        assert (info.key, info.size) == (key, len(data))
        head = store.head(key)
        assert head is not None
        assert (head.size, head.etag) == (len(data), info.etag)
        assert self.read_all(store, key) == data
        if data:
            assert store.get_range(key, 0, len(data)) == data
        assert [u for u in store.list_multipart_uploads() if u.key == key] == []

    def test_object_is_visible_only_at_complete(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        data = payload(2 * store.part_size + 1)
        with store.begin(key) as upload:
            assert upload.key == key
            for chunk in _chunks(data):
                upload.write(chunk)
            assert store.head(key) is None
            assert key not in set(store.list_keys(prefix))
            info = upload.complete()
        assert info.size == len(data)
        assert self.read_all(store, key) == data
        assert list(store.list_keys(prefix)) == [key]

    def test_unfinished_upload_is_listed_and_can_be_aborted(
        self, store: ObjectStore, prefix: str
    ) -> None:
        key = prefix + "object"
        upload = store.begin(key)
        upload.write(payload(store.part_size + 1))  # more than a part: multipart has begun
        try:
            found = [u for u in store.list_multipart_uploads() if u.key == key]
            assert len(found) == 1
            # Relative to the store's own timestamp: its clock need not agree with ours.
            initiated = found[0].initiated
            older = [u.key for u in store.list_multipart_uploads(older_than=initiated + 1)]
            not_older = [u.key for u in store.list_multipart_uploads(older_than=initiated)]
            assert key in older
            assert key not in not_older
            # What garbage collection does for a writer that died: abort by id.
            store.abort_multipart(key, found[0].upload_id)
            store.abort_multipart(key, found[0].upload_id)  # idempotent
        finally:
            # A part still in flight may land after the abort; the writer's own abort
            # (which waits for its parts) settles that, as a later collection would.
            upload.abort()
        self.assert_absent(store, key)

    def test_abort_leaves_nothing(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        upload = store.begin(key)
        for chunk in _chunks(payload(2 * store.part_size + store.part_size // 2)):
            upload.write(chunk)
        upload.abort()
        upload.abort()  # idempotent
        self.assert_absent(store, key)
        with pytest.raises(FailedPrecondition):
            upload.write(b"more")
        with pytest.raises(FailedPrecondition):
            upload.complete()

    def test_abort_before_any_part_leaves_nothing(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        upload = store.begin(key)
        upload.write(b"small")
        upload.abort()
        self.assert_absent(store, key)

    def test_leaving_the_block_without_complete_aborts(
        self, store: ObjectStore, prefix: str
    ) -> None:
        key = prefix + "object"
        with store.begin(key) as upload:
            upload.write(payload(store.part_size + 1))
        self.assert_absent(store, key)

    def test_completed_upload_is_closed(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        with store.begin(key) as upload:
            upload.write(b"data")
            upload.complete()
        with pytest.raises(FailedPrecondition):
            upload.complete()
        with pytest.raises(FailedPrecondition):
            upload.abort()
        assert self.read_all(store, key) == b"data"

    def test_producer_failure_mid_upload_leaves_nothing(
        self, store: ObjectStore, prefix: str
    ) -> None:
        key = prefix + "object"
        part = payload(store.part_size)

        def producer() -> Iterator[bytes]:
            yield part
            yield part
            yield b"x"  # two whole parts are now on their way
            raise _InjectedError

        with pytest.raises(_InjectedError):
            store.put(key, producer())
        self.assert_absent(store, key)

    def test_part_failure_mid_upload_leaves_nothing(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        failing = self.failing_parts(store, after=1)
        if failing is None:
            pytest.skip("this backend offers no failure injection")
        with failing, pytest.raises(Unavailable):
            store.put(key, _chunks(payload(4 * store.part_size)))
        self.assert_absent(store, key)

    def test_overwrite_replaces_the_object(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        first = payload(store.part_size + 10, seed=1)
        second = payload(100, seed=2)
        store.put(key, [first])
        store.put(key, [second])
        assert self.read_all(store, key) == second
        head = store.head(key)
        assert head is not None and head.size == len(second)
        store.put(key, _chunks(first))
        assert self.read_all(store, key) == first

    def test_unfinished_overwrite_keeps_the_old_object(
        self, store: ObjectStore, prefix: str
    ) -> None:
        key = prefix + "object"
        old = payload(1000, seed=1)
        store.put(key, [old])
        with store.begin(key) as upload:
            upload.write(payload(2 * store.part_size, seed=2))
            assert self.read_all(store, key) == old
            upload.abort()
        assert self.read_all(store, key) == old

    def test_parts_in_flight_are_bounded(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        data = payload((store.max_in_flight + 2) * store.part_size + 1)
        with self.probe_parts_in_flight(store) as most_seen:
            store.put(key, _chunks(data))
        seen = most_seen()
        if seen is not None:
            assert 1 <= seen <= store.max_in_flight
        assert store.get_range(key, len(data) - 3, 3) == data[-3:]

    def test_concurrent_uploads(self, store: ObjectStore, prefix: str) -> None:
        objects = {prefix + f"object-{i}": payload(store.part_size + i, seed=i) for i in range(3)}
        errors: list[BaseException] = []

        def upload(key: str, data: bytes) -> None:
            try:
                store.put(key, _chunks(data))
            except BaseException as exc:  # reported to the test thread below
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=item) for item in objects.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for key, data in objects.items():
            assert self.read_all(store, key) == data

    def test_invalid_keys_are_refused(self, store: ObjectStore) -> None:
        for key in ["", "k" * 1025]:
            with pytest.raises(InvalidArgument):
                store.put(key, [b"x"])
            with pytest.raises(InvalidArgument):
                store.get_range(key, 0, 1)

    # -- reads ----------------------------------------------------------------------------

    def test_ranged_reads_at_boundaries(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        p = store.part_size
        data = payload(2 * p + 123)
        store.put(key, _chunks(data))
        for offset, length in [
            (0, 1),
            (1, 10),
            (p - 1, 1),
            (p - 1, 2),  # across the first part boundary
            (p, 1),
            (2 * p - 5, 10),
            (len(data) - 1, 1),  # the last byte
            (len(data) - 200, 200),
            (0, len(data)),
        ]:
            assert store.get_range(key, offset, length) == data[offset : offset + length], (
                offset,
                length,
            )

    def test_out_of_range(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        data = payload(1000)
        store.put(key, [data])
        for offset, length in [(1000, 1), (999, 2), (0, 1001), (5000, 10), (-1, 1), (0, 0)]:
            with pytest.raises(OutOfRange):
                store.get_range(key, offset, length)
        for start, count in [(1000, None), (990, 11), (2000, None), (0, 0)]:
            with pytest.raises(OutOfRange):
                store.open_stream(key, start, count)

    def test_empty_object_has_no_bytes_to_range(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "empty"
        store.put(key, [])
        assert self.read_all(store, key) == b""
        with pytest.raises(OutOfRange):
            store.get_range(key, 0, 1)

    def test_streams_in_bounded_chunks(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        data = payload(3 * STREAM_CHUNK_SIZE + 5)
        store.put(key, _chunks(data))
        chunks = list(store.open_stream(key))
        assert all(0 < len(c) <= STREAM_CHUNK_SIZE for c in chunks)
        assert b"".join(chunks) == data
        assert b"".join(store.open_stream(key, 10)) == data[10:]
        assert (
            b"".join(store.open_stream(key, 7, 2 * STREAM_CHUNK_SIZE))
            == data[7 : 7 + 2 * STREAM_CHUNK_SIZE]
        )
        assert b"".join(store.open_stream(key, len(data) - 1)) == data[-1:]

    def test_abandoned_stream_can_be_closed(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        data = payload(2 * STREAM_CHUNK_SIZE)
        store.put(key, _chunks(data))
        stream = store.open_stream(key)
        assert next(stream) == data[:STREAM_CHUNK_SIZE]
        stream.close()
        assert store.get_range(key, 0, 4) == data[:4]

    def test_missing_key(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "missing"
        assert store.head(key) is None
        with pytest.raises(NotFound):
            store.get_range(key, 0, 1)
        with pytest.raises(NotFound):
            store.open_stream(key)
        with pytest.raises(NotFound):
            store.open_stream(key, 5, 5)

    # -- delete and list ------------------------------------------------------------------

    def test_delete_is_idempotent(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        store.delete(key)  # never existed
        store.put(key, [b"ciphertext"])
        store.delete(key)
        store.delete(key)
        self.assert_absent(store, key)
        assert list(store.list_keys(prefix)) == []

    def test_delete_of_a_multipart_object(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "object"
        store.put(key, _chunks(payload(store.part_size + 1)))
        store.delete(key)
        self.assert_absent(store, key)

    def test_list_with_prefix(self, store: ObjectStore, prefix: str) -> None:
        keys = [prefix + k for k in ["a/1", "a/2", "ab", "b", "b/a/1"]]
        for key in keys:
            store.put(key, [key.encode()])
        assert list(store.list_keys(prefix)) == sorted(keys)
        assert list(store.list_keys(prefix + "a")) == [prefix + k for k in ["a/1", "a/2", "ab"]]
        assert list(store.list_keys(prefix + "a/")) == [prefix + k for k in ["a/1", "a/2"]]
        assert list(store.list_keys(prefix + "c")) == []
        store.delete(prefix + "a/1")
        assert list(store.list_keys(prefix + "a/")) == [prefix + "a/2"]


class S3ObjectStoreConformance(ObjectStoreConformance):
    """The suite for :class:`~reelvault.storage.s3.S3ObjectStore` against any endpoint
    (moto, SeaweedFS, MinIO, AWS), observing and failing parts through botocore events."""

    upload_part_event: ClassVar[str] = "s3.UploadPart"

    @contextmanager
    def probe_parts_in_flight(self, store: ObjectStore) -> Iterator[Callable[[], int | None]]:
        assert isinstance(store, S3ObjectStore)
        events = store.client.meta.events
        lock = threading.Lock()
        running = [0, 0]  # now, most

        def started(**_: Any) -> None:
            with lock:
                running[0] += 1
                running[1] = max(running)

        def ended(**_: Any) -> None:
            with lock:
                running[0] -= 1

        hooks = [
            ("before-call." + self.upload_part_event, started, "conformance-probe-start"),
            ("after-call." + self.upload_part_event, ended, "conformance-probe-end"),
            ("after-call-error." + self.upload_part_event, ended, "conformance-probe-error"),
        ]
        for event, handler, unique_id in hooks:
            events.register(event, handler, unique_id=unique_id)
        try:
            yield lambda: running[1]
        finally:
            for event, _, unique_id in hooks:
                events.unregister(event, unique_id=unique_id)

    def failing_parts(
        self, store: ObjectStore, *, after: int
    ) -> AbstractContextManager[None] | None:
        return self._failing_parts(store, after=after)

    @contextmanager
    def _failing_parts(self, store: ObjectStore, *, after: int) -> Iterator[None]:
        assert isinstance(store, S3ObjectStore)
        events = store.client.meta.events
        lock = threading.Lock()
        allowed = [after]

        def maybe_fail(**_: Any) -> None:
            with lock:
                allowed[0] -= 1
                fail = allowed[0] < 0
            if fail:
                # Raised before botocore's retry loop, so it fails at once.
                raise EndpointConnectionError(endpoint_url="http://injected.invalid")

        event = "provide-client-params." + self.upload_part_event
        events.register(event, maybe_fail, unique_id="conformance-fail-parts")
        try:
            yield
        finally:
            events.unregister(event, unique_id="conformance-fail-parts")
