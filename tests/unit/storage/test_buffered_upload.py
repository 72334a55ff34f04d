"""BufferedUpload against a recording sink: how writes become requests."""

from __future__ import annotations

import array
import threading
from collections.abc import Sequence

import pytest

from reelvault.errors import FailedPrecondition, InvalidArgument, Unavailable
from reelvault.storage import (
    BufferedUpload,
    CompletedPart,
    ObjectInfo,
    max_object_size,
    part_size_for,
)

MIB = 1024 * 1024


class RecordingSink:
    """A PartSink that keeps every request, optionally failing one kind of them."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, object]] = []
        self.parts: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def _record(self, name: str, detail: object) -> None:
        with self._lock:
            self.calls.append((name, detail))
        if name == self.fail:
            raise Unavailable()

    def put_object(self, key: str, data: bytes) -> ObjectInfo:
        self._record("put_object", data)
        return ObjectInfo(key=key, size=len(data), etag="single")

    def create_multipart(self, key: str) -> str:
        self._record("create_multipart", key)
        return "upload-1"

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self._record("upload_part", number)
        with self._lock:
            self.parts[number] = data
        return f"etag-{number}"

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[CompletedPart]) -> str:
        self._record("complete_multipart", [(p.number, p.etag, p.size) for p in parts])
        return "multi"

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._record("abort_multipart", upload_id)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def upload(sink: RecordingSink, part_size: int = 10, max_in_flight: int = 2) -> BufferedUpload:
    return BufferedUpload(sink, "key", part_size=part_size, max_in_flight=max_in_flight)


@pytest.mark.parametrize("size", [0, 1, 9, 10])
def test_at_most_one_part_is_a_single_put(size):
    sink = RecordingSink()
    up = upload(sink)
    up.write(b"x" * size)
    info = up.complete()
    assert sink.calls == [("put_object", b"x" * size)]
    assert (info.size, info.etag) == (size, "single")
    assert up.upload_id is None


def test_parts_are_full_except_a_non_empty_last_one():
    sink = RecordingSink()
    up = upload(sink)
    data = bytes(range(35))
    for start in range(0, 35, 3):  # chunks never aligned with parts
        up.write(data[start : start + 3])
    info = up.complete()
    assert sink.names()[0] == "create_multipart"
    assert sink.calls[-1] == (
        "complete_multipart",
        [(1, "etag-1", 10), (2, "etag-2", 10), (3, "etag-3", 10), (4, "etag-4", 5)],
    )
    assert b"".join(sink.parts[n] for n in sorted(sink.parts)) == data
    assert (info.size, info.etag) == (35, "multi")


def test_an_exact_multiple_of_the_part_size_has_no_empty_part():
    sink = RecordingSink()
    up = upload(sink)
    up.write(b"x" * 30)
    up.complete()
    assert sorted(sink.parts) == [1, 2, 3]
    assert all(len(p) == 10 for p in sink.parts.values())


def test_a_large_write_is_cut_without_waiting_for_more():
    sink = RecordingSink()
    up = upload(sink)
    up.write(b"x" * 95)
    assert up.upload_id == "upload-1"  # parts went out before any further write
    up.complete()
    assert [len(sink.parts[n]) for n in range(1, 11)] == [10] * 9 + [5]


def test_abort_drops_parts_not_yet_started():
    sink = RecordingSink()
    up = upload(sink, max_in_flight=2)
    up.write(b"x" * 95)
    up.abort()
    assert sink.names()[-1] == "abort_multipart"
    assert "complete_multipart" not in sink.names()


def test_any_buffer_type_is_copied_at_write():
    sink = RecordingSink()
    up = upload(sink, part_size=8)
    mutable = bytearray(b"abcd")
    up.write(mutable)
    mutable[:] = b"zzzz"
    up.write(memoryview(array.array("i", [1, 2])))  # 8 bytes, not a byte-format view
    up.complete()
    assert sink.parts[1] == b"abcd" + array.array("i", [1]).tobytes()


def test_a_failed_completion_aborts():
    sink = RecordingSink(fail="complete_multipart")
    up = upload(sink)
    up.write(b"x" * 25)
    with pytest.raises(Unavailable):
        up.complete()
    assert sink.names()[-1] == "abort_multipart"
    with pytest.raises(FailedPrecondition):
        up.write(b"x")


def test_a_failed_abort_does_not_hide_the_cause():
    sink = RecordingSink(fail="abort_multipart")

    class ProducerError(Exception):
        pass

    with pytest.raises(ProducerError) as caught, upload(sink) as up:
        up.write(b"x" * 25)
        raise ProducerError
    assert any("aborting the upload also failed" in note for note in caught.value.__notes__)


def test_an_explicit_abort_reports_its_own_failure():
    sink = RecordingSink(fail="abort_multipart")
    up = upload(sink)
    up.write(b"x" * 25)
    with pytest.raises(Unavailable):
        up.abort()


def test_a_single_put_failure_needs_no_abort():
    sink = RecordingSink(fail="put_object")
    up = upload(sink)
    up.write(b"x")
    with pytest.raises(Unavailable):
        up.complete()
    assert sink.names() == ["put_object"]


def test_bad_settings_and_keys_are_refused():
    with pytest.raises(InvalidArgument):
        upload(RecordingSink(), part_size=0)
    with pytest.raises(InvalidArgument):
        upload(RecordingSink(), max_in_flight=0)
    with pytest.raises(InvalidArgument):
        BufferedUpload(RecordingSink(), "", part_size=1, max_in_flight=1)


def test_parts_grow_every_thousand_so_ten_thousand_parts_hold_55000_base_sizes():
    assert [part_size_for(8, n) for n in (1, 1000, 1001, 2000, 2001, 10_000)] == [
        8,
        8,
        16,
        16,
        24,
        80,
    ]
    assert max_object_size(8 * MIB) == 55_000 * 8 * MIB  # 430 GiB with the default

    sink = RecordingSink()
    up = upload(sink, part_size=1, max_in_flight=4)
    up.write(b"x" * 3001)
    up.write(b"y" * 3000)
    up.complete()
    sizes = [len(sink.parts[n]) for n in sorted(sink.parts)]
    assert sizes == [1] * 1000 + [2] * 1000 + [3] * 1000 + [1]
    assert b"".join(sink.parts[n] for n in sorted(sink.parts)) == b"x" * 3001 + b"y" * 3000


def test_an_object_larger_than_the_largest_allowed_is_refused_and_aborted():
    sink = RecordingSink()
    up = upload(sink, part_size=1, max_in_flight=4)
    up.write(b"x" * max_object_size(1))  # exactly the limit fits
    with pytest.raises(InvalidArgument, match="at most 55000 bytes"):
        up.write(b"x" * 2)
        up.complete()  # the 10,001st part is cut here at the latest
    assert max(sink.parts) <= 10_000
    assert sink.names()[-1] == "abort_multipart"


def test_small_writes_are_coalesced_and_large_bytes_are_not_copied_before_the_part():
    sink = RecordingSink()
    up = upload(sink, part_size=64 * 1024)
    for _ in range(100):
        up.write(b"ab")  # 100 small writes ...
    big = bytes(range(256)) * 512  # ... then 128 KiB at once
    up.write(big)
    up.complete()
    assert b"".join(sink.parts[n] for n in sorted(sink.parts)) == b"ab" * 100 + big
