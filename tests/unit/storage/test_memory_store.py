"""The in-memory fake: the shared suite, plus what only a fake can show."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from reelvault.clock import FakeClock
from reelvault.errors import InvalidArgument, NotFound, Unavailable
from reelvault.storage import MemoryObjectStore, ObjectStore, RangeRead
from reelvault.storage.conformance import ObjectStoreConformance, payload

MIB = 1024 * 1024


class MemoryHooks(ObjectStoreConformance):
    @contextmanager
    def probe_parts_in_flight(self, store: ObjectStore) -> Iterator[Callable[[], int | None]]:
        assert isinstance(store, MemoryObjectStore)
        store.reset_stats()
        yield lambda: store.stats.max_parts_in_flight

    def failing_parts(
        self, store: ObjectStore, *, after: int
    ) -> AbstractContextManager[None] | None:
        assert isinstance(store, MemoryObjectStore)

        @contextmanager
        def failing() -> Iterator[None]:
            store.fail_parts(after=after)
            try:
                yield
            finally:
                store.heal()

        return failing()


class TestMemoryConformance(MemoryHooks):
    @pytest.fixture
    def store(self) -> MemoryObjectStore:
        return MemoryObjectStore(part_size=5 * MIB, max_in_flight=3)


class TestMemoryConformanceOddParts(MemoryHooks):
    """Many small parts of an odd size: part, chunk and stream boundaries never align."""

    @pytest.fixture
    def store(self) -> MemoryObjectStore:
        return MemoryObjectStore(part_size=100_003, max_in_flight=2)


def test_each_get_range_is_one_read_and_is_recorded():
    store = MemoryObjectStore(part_size=1000)
    data = payload(5000)
    store.put("k", [data])
    assert store.get_range("k", 10, 20) == data[10:30]
    assert store.get_range("k", 4000, 1000) == data[4000:]
    assert store.stats.get_range_calls == 2
    assert store.stats.range_reads == [RangeRead("k", 10, 20), RangeRead("k", 4000, 1000)]
    assert store.stats.bytes_read == 1020
    store.reset_stats()
    assert store.stats.get_range_calls == 0


def test_streams_count_the_bytes_actually_taken():
    store = MemoryObjectStore(part_size=1000)
    store.put("k", [payload(3 * MIB)])
    stream = store.open_stream("k")
    next(stream)
    stream.close()
    assert store.stats.streams_opened == 1
    assert store.stats.bytes_read == MIB


def test_small_objects_are_one_put_and_no_multipart_upload():
    store = MemoryObjectStore(part_size=1000)
    store.put("k", [b"a" * 600, b"b" * 400])  # exactly one part
    assert store.stats.single_puts == 1
    assert store.stats.parts_started == 0
    store.put("k", [b"a" * 1001])
    assert store.stats.parts_started == 2
    assert store.stats.part_bytes_started == 1001


def test_parts_in_flight_never_exceed_the_bound_and_the_writer_waits():
    part = 1000
    store = MemoryObjectStore(part_size=part, max_in_flight=2)
    produced = 0
    fourth_chunk_taken = threading.Event()

    def producer() -> Iterator[bytes]:
        nonlocal produced
        for i in range(10):
            produced += 1
            if produced == 4:
                fourth_chunk_taken.set()
            yield payload(part, seed=i)

    store.hold_parts()
    writer = threading.Thread(target=store.put, args=("k", producer()))
    writer.start()
    try:
        assert store.wait_for_parts_in_flight(2)
        assert fourth_chunk_taken.wait(10)
        # Chunks 2 and 3 sent parts 1 and 2; chunk 4 would send part 3 and waits for a slot,
        # so the producer is not asked for chunk 5: memory stays at a few parts.
        assert produced == 4
        assert store.stats.max_parts_in_flight == 2
    finally:
        store.release_parts()
        writer.join()
    assert store.stats.max_parts_in_flight == 2
    assert store.stats.parts_started == 10
    assert store.get_range("k", 0, 10 * part) == b"".join(payload(part, seed=i) for i in range(10))


def test_a_failed_part_stops_the_writer_and_aborts():
    store = MemoryObjectStore(part_size=1000, max_in_flight=1)
    store.fail_parts(after=2)
    upload = store.begin("k")
    with pytest.raises(Unavailable):
        for i in range(100):
            upload.write(payload(1000, seed=i))
    assert store.stats.parts_started < 10  # it stopped soon after the failure
    assert store.pending_uploads() == 0
    assert store.head("k") is None


def test_a_failure_of_any_type_propagates_unchanged():
    store = MemoryObjectStore(part_size=1000)
    store.fail_parts(after=1, error=RuntimeError)
    with pytest.raises(RuntimeError):
        store.put("k", [payload(5000)])
    assert store.pending_uploads() == 0
    with pytest.raises(NotFound):
        store.get_range("k", 0, 1)


def test_garbage_collection_sees_upload_age_on_the_injected_clock():
    clock = FakeClock(start=1_000.0)
    store = MemoryObjectStore(part_size=10, clock=clock)
    old = store.begin("old")
    old.write(b"x" * 11)
    clock.advance(3600)
    new = store.begin("new")
    new.write(b"y" * 11)
    stale = list(store.list_multipart_uploads(older_than=clock.now() - 1800))
    assert [(u.key, u.initiated) for u in stale] == [("old", 1_000.0)]
    for upload in stale:
        store.abort_multipart(upload.key, upload.upload_id)
    assert [u.key for u in store.list_multipart_uploads()] == ["new"]
    with pytest.raises(NotFound):
        old.complete()  # its parts went with the upload
    assert store.head("old") is None
    new.complete()
    assert store.get_range("new", 0, 11) == b"y" * 11


def test_settings_are_checked():
    with pytest.raises(InvalidArgument):
        MemoryObjectStore(part_size=0)
    with pytest.raises(InvalidArgument):
        MemoryObjectStore(max_in_flight=0)
