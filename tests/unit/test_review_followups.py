"""Follow-ups of an adversarial review of the changes since 7581509: hand-made protobuf on
both ends, BufferedUpload's kept references and growing parts, trusted catalog sizes,
exact listing prefixes, page tokens, and the malloc tuning.

Each finding of that review became a test here and was fixed; the other tests pin what
held, as behaviour users depend on.
"""

from __future__ import annotations

import array
import threading
from collections.abc import Sequence

import pytest
from asset_helpers import get, listed, put
from google.protobuf.internal.encoder import _VarintBytes
from sqlalchemy import select, update

from reelvault import allocator, errors
from reelvault.catalog.tables import AssetRow
from reelvault.client import decode_download_response
from reelvault.config import Settings
from reelvault.rpc.convert import _varint, download_chunk_messages
from reelvault.storage import (
    BufferedUpload,
    CompletedPart,
    MemoryObjectStore,
    ObjectInfo,
    max_object_size,
    part_size_for,
)
from reelvault.v1 import asset_pb2

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB

# -- hand-serialized Download chunks ----------------------------------------------------

VARINT_EDGES = sorted(
    {0, 1, 127, 128, 255, 256, 16_383, 16_384}
    | {(1 << k) + d for k in (21, 28, 35, 42, 49, 56, 63) for d in (-1, 0, 1)}
    | {(1 << 64) - 1}
)


@pytest.mark.parametrize("value", VARINT_EDGES)
def test_the_length_varint_is_protobufs_encoding_at_every_width(value):
    assert _varint(value) == _VarintBytes(value)


@pytest.mark.parametrize("size", [(1 << 21) - 1, 1 << 21, (1 << 21) + 1])
def test_chunks_of_two_mebibytes_and_more_serialize_exactly_as_protobuf(size):
    data = bytes(range(256)) * ((2 * size + 300) // 256)
    pieces = [data[:7], data[7 : size + 5], data[size + 5 :]]
    messages = list(download_chunk_messages(pieces, size))
    expected = [
        asset_pb2.DownloadResponse(chunk=data[i : i + size]).SerializeToString()
        for i in range(0, len(data), size)
    ]
    assert messages == expected
    assert b"".join(decode_download_response(m) for m in messages) == data


def test_empty_pieces_make_no_message_and_no_empty_chunk():
    assert list(download_chunk_messages([], 4)) == []
    assert list(download_chunk_messages([b"", b"", b""], 4)) == []
    assert list(download_chunk_messages([b"", b"abcd", b""], 4)) == [b"\x12\x04abcd"]


def _as_protobuf(data: bytes) -> tuple[str | None, bytes] | type[Exception]:
    try:
        message = asset_pb2.DownloadResponse.FromString(data)
    except Exception:
        return Exception
    which = message.WhichOneof("payload")
    return which, (message.chunk if which == "chunk" else message.SerializeToString())


def _as_client(data: bytes) -> tuple[str | None, bytes] | type[Exception]:
    try:
        decoded = decode_download_response(data)
    except Exception:
        return Exception
    if isinstance(decoded, bytes):
        return "chunk", decoded
    which = decoded.WhichOneof("payload")
    return which, (decoded.chunk if which == "chunk" else decoded.SerializeToString())


def _padded(value: int, width: int) -> bytes:
    """``value`` as a varint of exactly ``width`` bytes (non-minimal when padded)."""
    out = bytearray()
    for i in range(width):
        byte = (value >> (7 * i)) & 0x7F
        out.append(byte | (0x80 if i < width - 1 else 0))
    return bytes(out)


HEADER = asset_pb2.DownloadResponse(
    header=asset_pb2.DownloadHeader(offset=1, length=2)
).SerializeToString()

WIRE_CASES = {
    "empty message": b"",
    "key only": b"\x12",
    "empty chunk": b"\x12\x00",
    "minimal": b"\x12\x03abc",
    "two-byte length for 3": b"\x12" + _padded(3, 2) + b"abc",
    "five-byte length for 3": b"\x12" + _padded(3, 5) + b"abc",
    "eleven-byte length": b"\x12" + _padded(3, 11) + b"abc",
    "length past 2**64": b"\x12" + b"\x83" + b"\x80" * 8 + b"\x02" + b"abc",
    "length short by one": b"\x12\x04abc",
    "length long by one": b"\x12\x02abc",
    "trailing unknown varint field": b"\x12\x03abc\x18\x05",
    "trailing unknown bytes field": b"\x12\x03abc\x22\x01z",
    "leading unknown field": b"\x18\x05\x12\x03abc",
    "chunk twice": b"\x12\x01a\x12\x02bc",
    "chunk then header": b"\x12\x01a" + HEADER,
    "header then chunk": HEADER + b"\x12\x01a",
    "chunk as wrong wire type": b"\x10\x03",
    "header": HEADER,
}


@pytest.mark.parametrize("data", list(WIRE_CASES.values()), ids=list(WIRE_CASES))
def test_the_client_decoder_never_disagrees_with_protobuf(data):
    assert _as_client(data) == _as_protobuf(data)


def test_the_client_decoder_agrees_for_every_length_width_and_a_large_chunk():
    big = bytes(range(256)) * ((1 << 21) // 256 + 1)  # over 2**21 bytes: a 4-byte length
    for payload in (b"", b"x", b"y" * 127, b"z" * 128, big):
        for width in range(len(_VarintBytes(len(payload))), 6):  # protobuf takes up to 5
            data = b"\x12" + _padded(len(payload), width) + payload
            assert _as_client(data) == _as_protobuf(data) == ("chunk", payload)


@pytest.mark.parametrize("width", range(6, 11))
def test_an_overlong_length_varint_is_refused_like_protobuf_does(width):
    data = b"\x12" + _padded(3, width) + b"abc"
    assert _as_protobuf(data) is Exception
    assert _as_client(data) is Exception


# -- BufferedUpload: references, copies, boundaries -------------------------------------


class Sink:
    """A PartSink that records parts and single puts."""

    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}
        self.single: bytes | None = None
        self.aborted = False
        self._lock = threading.Lock()

    def put_object(self, key: str, data: bytes) -> ObjectInfo:
        self.single = bytes(data)
        return ObjectInfo(key=key, size=len(data), etag="single")

    def create_multipart(self, key: str) -> str:
        return "u"

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        with self._lock:
            self.parts[number] = bytes(data)
        return f"e{number}"

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[CompletedPart]) -> str:
        return "multi"

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.aborted = True

    def data(self) -> bytes:
        return (
            self.single
            if self.single is not None
            else b"".join(self.parts[n] for n in sorted(self.parts))
        )


class Bytes(bytes):
    """A bytes subclass: still immutable, so keeping a reference is safe."""


def test_every_mutable_buffer_is_captured_at_write_whatever_its_size():
    sink = Sink()
    up = BufferedUpload(sink, "k", part_size=64 * 1024, max_in_flight=2)
    expected = b""
    mutables = []
    for size in (10, 20_000, 100_000):  # below, above the coalescing size, above a part
        for make in (bytearray, lambda b: memoryview(bytearray(b)), Bytes):
            original = bytes((i * 7 + size) % 256 for i in range(size))
            buffer = make(original)
            up.write(buffer)
            expected += original
            mutables.append(buffer)
        numbers = array.array("B", range(200))
        up.write(numbers)
        expected += numbers.tobytes()
        mutables.append(numbers)
    for buffer in mutables:  # the caller reuses every buffer it may
        if isinstance(buffer, bytearray | memoryview):
            buffer[:] = b"\xee" * len(buffer)
        elif isinstance(buffer, array.array):
            buffer[:] = array.array("B", [0xEE] * len(buffer))
    up.complete()
    assert sink.data() == expected


def test_a_bytes_object_passed_as_the_chunk_iterable_is_refused_not_stored_as_zeros():
    store = MemoryObjectStore(part_size=5 * MiB, max_in_flight=1)
    with pytest.raises(TypeError):
        store.put("k", b"abc")  # type: ignore[arg-type]  # iterating bytes yields ints


def test_one_write_across_every_growth_step_cuts_exactly_the_growing_parts():
    sink = Sink()
    up = BufferedUpload(sink, "k", part_size=2, max_in_flight=4)
    data = bytes(i % 253 for i in range(max_object_size(2)))
    up.write(data[:1999])  # the first thousand parts end inside this write ...
    up.write(data[1999:])  # ... and this one crosses all nine later steps
    up.complete()
    assert sorted(sink.parts) == list(range(1, 10_001))
    assert all(len(sink.parts[n]) == part_size_for(2, n) for n in sink.parts)
    assert sink.data() == data


# -- trusted sizes: a range reaching the end authenticates the final frame first --------


@pytest.mark.db
@pytest.mark.parametrize("damage", ["truncate", "extend", "swap final frame"])
def test_a_damaged_end_is_refused_before_any_byte_and_the_middle_stays_exact(
    assets, tenant, store, database, damage
):
    data = bytes(i % 249 for i in range(3 * 64 * 1024 + 1000))
    other = bytes(255 - (i % 249) for i in range(len(data)))
    info = put(assets, tenant, data, "a/one")
    donor = put(assets, tenant, other, "a/two")
    with database.transaction(readonly=True) as session:
        keys = {r.id: r.object_key for r in session.scalars(select(AssetRow))}
    stored = store.get_range(keys[info.id], 0, store.head(keys[info.id]).size)
    if damage == "truncate":
        damaged = stored[:-1]
    elif damage == "extend":
        damaged = stored + b"\0" * 100
    else:
        theirs = store.get_range(keys[donor.id], 0, store.head(keys[donor.id]).size)
        damaged = stored[:-1040] + theirs[-1040:]
    store.put(keys[info.id], [damaged])
    for rng in ({}, {"suffix": 1}, {"offset": len(data) - 1001, "length": 1001}):
        if damage == "extend":
            assert get(assets, tenant, info.id, **rng) == data[len(data) - _len(rng, data) :]
        else:
            with pytest.raises(errors.IntegrityError):
                assets.open_download(tenant, info.id, **rng)  # refused before any chunk
    assert get(assets, tenant, info.id, offset=5, length=100_000) == data[5:100_005]


def _len(rng: dict[str, int], data: bytes) -> int:
    if not rng:
        return len(data)
    return rng.get("suffix", rng.get("length", 0))


# -- listing: exact prefixes beyond ASCII, page tokens ----------------------------------

UNICODE_PATHS = [
    "\U0001f3ac/a",
    "\U0001f3ac/b",
    "\U0001f3acx",
    "\U0001f3ad/a",
    "a\U0001f3ac/z",
    "é/a",
    "É/a",
    "e\u0301/a",  # e + combining acute: a different string from "é"
    "e/a",
    "ß/a",
    "SS/a",
    "ǅ/a",
    "日本/映像",
    "日本語/x",
]


@pytest.mark.db
def test_prefixes_with_non_ascii_and_astral_characters_match_exactly(assets, tenant):
    for path in UNICODE_PATHS:
        put(assets, tenant, b"x", path)
    prefixes = {p[:i] for p in UNICODE_PATHS for i in range(1, len(p) + 1)}
    prefixes |= {"\U0001f3ac\U0001f3ac", "E", "s", "SS", "ss", "Dž", "日", "e\u0301"}
    for prefix in sorted(prefixes):
        expected = sorted(p for p in UNICODE_PATHS if p.startswith(prefix))
        assert sorted(listed(assets, tenant, prefix, page_size=1)) == expected, prefix


@pytest.mark.db
def test_a_listing_pages_past_a_path_stored_before_paths_had_to_be_printable(
    assets, tenant, database
):
    for path in ("a/1", "a/2", "a/3"):
        put(assets, tenant, b"x", path)
    with database.transaction() as session:  # as an older version accepted it
        session.execute(update(AssetRow).where(AssetRow.path == "a/2").values(path="a/2\u00a0"))
    assert listed(assets, tenant, "a/", page_size=1) == ["a/1", "a/2\u00a0", "a/3"]


# -- limits that S3 sets -----------------------------------------------------------------


def test_the_promised_limits_stay_within_s3s_caps_for_every_accepted_part_size():
    for base in (8 * MiB, 128 * MiB, 512 * MiB):
        assert Settings(s3_part_size=base).s3_part_size == base  # accepted
        assert max_object_size(base) <= 5 * TiB
        assert all(part_size_for(base, n) <= 5 * GiB for n in (1, 1001, 10_000))
    for base in (512 * MiB + 1, 3 * GiB):
        with pytest.raises(errors.ConfigurationError, match="S3_PART_SIZE"):
            Settings(s3_part_size=base)


# -- malloc tuning -----------------------------------------------------------------------


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        outer = self

        class _Mallopt:
            argtypes: object = None
            restype: object = None

            def __call__(self, parameter: int, value: int) -> int:
                outer.calls.append((parameter, value))
                return 1

        self.mallopt = _Mallopt()


@pytest.fixture
def fake_libc(monkeypatch) -> _FakeLibc:
    libc = _FakeLibc()
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda path: libc)
    for name in allocator.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    return libc


def test_tuning_without_mallopt_does_nothing(monkeypatch, fake_libc):
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda path: object())
    assert allocator.tune() == {}
    assert fake_libc.calls == []


def test_a_setting_glibc_refuses_is_not_reported_as_applied(monkeypatch, fake_libc):
    monkeypatch.setattr(type(fake_libc.mallopt), "__call__", lambda self, p, v: 0)
    assert allocator.tune() == {}
    assert allocator.applied() == {}
