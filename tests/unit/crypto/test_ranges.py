"""Range maths and streaming, as properties.

Random access is where an off-by-one leaks or loses a byte, so every claim in
``crypto.format``'s docstring is checked over many sizes with small frame lengths (many
boundaries, cheaply) and the real 64 KiB one: reads return exactly the slice asked for, a
range costs one ranged read of exactly the frames it touches, the size-to-layout mapping is
a bijection onto the valid sizes, and streaming neither depends on chunking nor holds more
than a frame or two in memory.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import tracemalloc
from collections.abc import Iterator

import aws_encryption_sdk
import pytest
from aws_encryption_sdk.identifiers import Algorithm
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reelvault.crypto import (
    DEFAULT_FRAME_LENGTH,
    FINAL_FRAME_OVERHEAD,
    FRAME_OVERHEAD,
    EncryptionContext,
    MessageLayout,
    RandomAccessReader,
    Sealer,
    decrypt_stream,
    rechunk,
)
from reelvault.crypto.format import Malformed, parse_header
from reelvault.crypto.names import kek_key_name
from reelvault.errors import DecryptionError, OutOfRange

from .conftest import TENANT_ID, DictResolver, Kek, join, make_sdk_provider, pattern

F = DEFAULT_FRAME_LENGTH
MiB = 1024 * 1024
KEK = Kek(kek_key_name(TENANT_ID, 1), bytes(range(32)))
CONTEXT = EncryptionContext.for_object(tenant_id=TENANT_ID, object_id="ranges", kind="asset")
RESOLVER = DictResolver(KEK)
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=64)
def sealed(frame: int, size: int) -> tuple[bytes, bytes]:
    """(plaintext, message) for reelvault's writer; cached across examples."""
    plaintext = os.urandom(size)
    return plaintext, join(Sealer(KEK, CONTEXT, frame_length=frame).seal([plaintext]))


@functools.lru_cache(maxsize=16)
def sealed_by_sdk(frame: int, size: int) -> tuple[bytes, bytes]:
    """(plaintext, message) for the official SDK, which ends whole frames with an empty one."""
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=aws_encryption_sdk.CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    plaintext = os.urandom(size)
    message, _ = client.encrypt(
        source=plaintext,
        key_provider=make_sdk_provider(KEK),
        encryption_context=dict(CONTEXT),
        algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
        frame_length=frame,
    )
    return plaintext, message


class CountingStore:
    """A stored object behind a read_at that records every call."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def read_at(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset : offset + length]


def open_reader(
    message: bytes, *, with_header: bool = False
) -> tuple[RandomAccessReader, CountingStore]:
    store = CountingStore(message)
    header = message[: parse_header(message).length] if with_header else None
    reader = RandomAccessReader(store.read_at, len(message), RESOLVER, CONTEXT, header=header)
    return reader, store


@st.composite
def plaintext_ranges(draw: st.DrawFn, size: int, frame: int) -> tuple[int, int]:
    """A (start, length) inside [0, size], biased toward frame boundaries and the ends."""
    edges = {0, size, max(size - 1, 0)}
    for k in range(1, size // frame + 2):
        edges |= {k * frame - 1, k * frame, k * frame + 1}
    edges = sorted(e for e in edges if 0 <= e <= size)
    start = draw(st.sampled_from(edges) | st.integers(0, size))
    room = size - start
    lengths = sorted({x for x in (0, 1, frame - 1, frame, frame + 1, room) if 0 <= x <= room})
    length = draw(st.sampled_from(lengths) | st.integers(0, room))
    return start, length


def check_range(
    reader: RandomAccessReader, store: CountingStore, plaintext: bytes, start: int, length: int
) -> None:
    layout = reader.layout
    step = layout.frame_length + FRAME_OVERHEAD
    store.calls.clear()
    assert reader.read(start, length) == plaintext[start : start + length]
    if length == 0:
        assert store.calls == []
        return
    plan = layout.plan(start, length)
    first = start // layout.frame_length + 1
    last = (start + length - 1) // layout.frame_length + 1
    touched_end = (
        layout.ciphertext_size if last == layout.final_sequence else layout.frame_offset(last + 1)
    )
    # the plan covers exactly the frames the range touches, starting on a frame boundary
    assert plan.first_sequence == first
    assert (plan.offset - layout.header_length) % step == 0
    assert plan.offset == layout.frame_offset(first)
    assert plan.offset + plan.length == touched_end
    assert plan.skip == start - (first - 1) * layout.frame_length
    assert plan.take == length
    # and costs one read of those frames, or none if only the (already opened) final frame
    if first == layout.final_sequence:
        assert store.calls == []
    else:
        assert store.calls == [
            (plan.offset, min(touched_end, layout.final_frame_offset) - plan.offset)
        ]


# --- random access ---------------------------------------------------------------------


@settings(RELAXED, max_examples=120)
@given(data=st.data(), frame=st.sampled_from([1, 3, 64, 100]), frames=st.integers(0, 6))
def test_any_range_reads_exactly_its_slice_with_one_read(data, frame: int, frames: int) -> None:
    size = data.draw(st.integers(max(0, (frames - 1) * frame), frames * frame + frame - 1))
    plaintext, message = sealed(frame, size)
    reader, store = open_reader(message)
    assert reader.plaintext_size == size
    assert len(store.calls) == 2  # the header, then the final frame
    for _ in range(8):
        check_range(reader, store, plaintext, *data.draw(plaintext_ranges(size, frame)))


@settings(RELAXED, max_examples=25)
@given(data=st.data(), size=st.sampled_from([0, 1, F - 1, F, F + 1, 2 * F, 3 * F + 7]))
def test_ranges_at_64KiB_frames(data, size: int) -> None:
    plaintext, message = sealed(F, size)
    reader, store = open_reader(message)
    for _ in range(6):
        check_range(reader, store, plaintext, *data.draw(plaintext_ranges(size, F)))


@settings(RELAXED, max_examples=40)
@given(data=st.data(), frame=st.sampled_from([128, 256]), frames=st.integers(0, 4))
def test_ranges_over_an_sdk_message_ending_in_an_empty_final_frame(
    data, frame: int, frames: int
) -> None:
    exact = data.draw(st.booleans())
    size = frames * frame if exact else data.draw(st.integers(0, frames * frame + frame - 1))
    plaintext, message = sealed_by_sdk(frame, size)
    reader, store = open_reader(message)
    if exact:
        assert reader.layout.final_length == 0
    for _ in range(8):
        check_range(reader, store, plaintext, *data.draw(plaintext_ranges(size, frame)))


@pytest.mark.parametrize(
    ("writer", "frame", "size"),
    [("reelvault", 16, 3 * 16 + 5), ("reelvault", 16, 4 * 16), ("sdk", 128, 2 * 128)],
)
def test_every_range_of_a_small_message(writer: str, frame: int, size: int) -> None:
    plaintext, message = (sealed if writer == "reelvault" else sealed_by_sdk)(frame, size)
    reader, store = open_reader(message)
    step = 1 if size < 100 else 3  # every pair for the small ones; every third start for 256 B
    for start in range(0, size + 1, step):
        for length in range(size - start + 1):
            check_range(reader, store, plaintext, start, length)
    assert reader.read(size - 1, 1) == plaintext[-1:]


def test_construction_reads_header_and_final_frame_only() -> None:
    _, message = sealed(100, 1000)
    _, store = open_reader(message)
    layout = MessageLayout.for_plaintext(parse_header(message).length, 100, 1000)
    assert store.calls[-1] == (
        layout.final_frame_offset,
        layout.ciphertext_size - layout.final_frame_offset,
    )
    assert len(store.calls) == 2
    _, store = open_reader(message, with_header=True)
    assert store.calls == [(layout.final_frame_offset, FINAL_FRAME_OVERHEAD + 100)]


@settings(RELAXED, max_examples=120)
@given(data=st.data(), frame=st.sampled_from([1, 3, 64, 100]), frames=st.integers(0, 6))
def test_with_a_trusted_size_a_range_reads_its_frames_and_the_final_one_only_if_reached(
    data, frame: int, frames: int
) -> None:
    size = data.draw(st.integers(max(0, (frames - 1) * frame), frames * frame + frame - 1))
    plaintext, message = sealed(frame, size)
    store = CountingStore(message)
    header = message[: parse_header(message).length]
    reader = RandomAccessReader(
        store.read_at, len(message), RESOLVER, CONTEXT, header=header, size_is_trusted=True
    )
    assert store.calls == []  # nothing fetched up front
    start, length = data.draw(plaintext_ranges(size, frame))
    assert reader.read(start, length) == plaintext[start : start + length]
    layout = reader.layout
    if length == 0:
        assert store.calls == []
        return
    plan = layout.plan(start, length)
    final = (layout.final_frame_offset, layout.ciphertext_size - layout.final_frame_offset)
    if plan.offset + plan.length > layout.final_frame_offset:
        assert store.calls[0] == final  # authenticated before the range's iterator exists
        assert final not in store.calls[1:]
    else:
        assert final not in store.calls
        assert sum(n for _, n in store.calls) == plan.length


@pytest.mark.parametrize("frames_off", [-3, -1, 1, 2])
def test_a_wrong_trusted_size_makes_reads_fail_never_return_wrong_bytes(frames_off: int) -> None:
    """A catalog whose size was altered by whole frames still lines every frame up with a
    valid layout: ranges must then be the true bytes or an error, nothing else."""
    frame = 64
    plaintext, message = sealed(frame, 10 * frame + 17)
    header = message[: parse_header(message).length]
    stored = CountingStore(message)
    reader = RandomAccessReader(
        stored.read_at,
        len(message) + frames_off * (frame + FRAME_OVERHEAD),
        RESOLVER,
        CONTEXT,
        header=header,
        size_is_trusted=True,
    )
    size = reader.plaintext_size
    failures = 0
    for start in range(0, size, 7):
        for length in {1, min(frame, size - start), size - start}:
            try:
                got = reader.read(start, length)
            except DecryptionError:
                failures += 1
                continue
            assert got == plaintext[start : start + length]
    assert failures > 0  # every range that reaches the claimed end fails


@pytest.mark.parametrize(("frame", "size"), [(64, 0), (64, 1), (64, 64), (64, 200), (F, F + 1)])
def test_out_of_range_requests(frame: int, size: int) -> None:
    _, message = sealed(frame, size)
    reader, store = open_reader(message)
    store.calls.clear()
    bad = [
        (-1, 1),
        (-1, 0),
        (0, -1),
        (0, size + 1),
        (size, 1),
        (size + 1, 0),
        (1, size),
        (2**63, 1),
    ]
    for start, length in bad:
        with pytest.raises(OutOfRange) as info:
            reader.read(start, length)
        assert type(info.value) is OutOfRange, (start, length)
    assert reader.read(size, 0) == b""
    assert store.calls == []  # nothing fetched for a refused range


def test_iter_range_refuses_a_bad_range_when_called() -> None:
    """The HTTP origin maps OutOfRange to 416 before it commits to a 206 and streams.

    A refusal that surfaces only on the first ``next()`` arrives after the status line.
    """
    _, message = sealed(64, 200)
    reader, _ = open_reader(message)
    with pytest.raises(OutOfRange):
        reader.iter_range(150, 100)


# --- layout arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize("frame", [1, 7, 64, 100])
def test_size_to_layout_is_a_bijection_onto_the_valid_sizes(frame: int) -> None:
    header = 337
    step = frame + FRAME_OVERHEAD
    produced = {}
    for size in range(7 * frame + 1):
        layout = MessageLayout.for_plaintext(header, frame, size)
        assert layout.plaintext_size == size
        assert 0 <= layout.final_length <= frame
        assert (layout.final_length == 0) == (size == 0)
        assert MessageLayout.from_ciphertext_size(header, frame, layout.ciphertext_size) == layout
        produced[layout.ciphertext_size] = layout
    for c in range(header + 6 * step + FINAL_FRAME_OVERHEAD + frame + 1):
        body = c - header - FINAL_FRAME_OVERHEAD
        valid = body >= 0 and body % step <= frame
        if not valid:
            with pytest.raises(Malformed):
                MessageLayout.from_ciphertext_size(header, frame, c)
            continue
        layout = MessageLayout.from_ciphertext_size(header, frame, c)
        assert layout.ciphertext_size == c
        assert (layout.regular_frames, layout.final_length) == divmod(body, step)
        # every valid size is either our writer's or another writer's (empty final frame)
        assert c in produced or layout.final_length == 0


@settings(max_examples=300, deadline=None)
@given(
    header=st.integers(40, 300_000),
    frame=st.sampled_from([1, 64, 100, 4096, F, 1024 * 1024]),
    size=st.integers(0, 2**40),
)
def test_layouts_agree_at_any_scale(header: int, frame: int, size: int) -> None:
    layout = MessageLayout.for_plaintext(header, frame, size)
    assume(layout.regular_frames + 1 <= 0xFFFFFFFE)
    assert MessageLayout.from_ciphertext_size(header, frame, layout.ciphertext_size) == layout
    if size:
        last = layout.plan(size - 1, 1)
        assert last.first_sequence == layout.final_sequence
        assert last.offset + last.length == layout.ciphertext_size


def test_layout_refuses_impossible_sizes() -> None:
    with pytest.raises(Malformed):
        MessageLayout.from_ciphertext_size(100, 64, 100 + FINAL_FRAME_OVERHEAD - 1)
    with pytest.raises(Malformed):
        MessageLayout.from_ciphertext_size(100, 64, 0)
    with pytest.raises(Malformed):  # more frames than sequence numbers
        MessageLayout.from_ciphertext_size(0, 1, 0xFFFFFFFE * 33 + FINAL_FRAME_OVERHEAD)
    with pytest.raises(ValueError):
        MessageLayout.for_plaintext(100, 64, -1)


# --- streaming -------------------------------------------------------------------------


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates make empty pieces)."""
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=150, deadline=None)
@given(
    frame=st.sampled_from([1, 7, 64, 100]),
    plaintext=st.binary(max_size=700),
    plain_cuts=st.lists(st.integers(0, 10_000), max_size=12),
    cipher_cuts=st.lists(st.integers(0, 10_000), max_size=25),
)
def test_stream_round_trip_for_any_chunking(frame, plaintext, plain_cuts, cipher_cuts) -> None:
    sealer = Sealer(KEK, CONTEXT, frame_length=frame)
    pieces = list(sealer.seal(cut(plaintext, plain_cuts)))
    message = join(pieces)
    assert sealer.plaintext_length == len(plaintext)
    assert sealer.ciphertext_length == len(message)
    expected = MessageLayout.for_plaintext(sealer.header_length, frame, len(plaintext))
    assert len(message) == expected.ciphertext_size
    for chunks in (pieces, cut(message, cipher_cuts), [memoryview(message)]):
        out = list(decrypt_stream(chunks, RESOLVER, CONTEXT))
        assert join(out) == plaintext
        assert all(0 < len(p) <= frame for p in out)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.binary(max_size=40), max_size=30), size=st.integers(1, 50))
def test_rechunk_joins_pieces_into_fixed_size_chunks(pieces: list[bytes], size: int) -> None:
    out = list(rechunk(pieces, size))
    assert join(out) == join(pieces)
    assert all(len(c) == size for c in out[:-1])
    assert all(0 < len(c) <= size for c in out)
    assert all(isinstance(c, bytes) for c in out)


def test_rechunk_of_sealed_pieces_decrypts() -> None:
    plaintext = pattern(3 * F + 7)
    pieces = Sealer(KEK, CONTEXT).seal([plaintext])
    chunks = list(rechunk(pieces, 5 * 1024 * 1024 // 3))
    assert join(decrypt_stream(chunks, RESOLVER, CONTEXT)) == plaintext


def pipeline_peak(chunks: int, through: str) -> int:
    """Seal ``chunks`` MiB from a reused 1 MiB buffer and decrypt it; return the peak.

    tracemalloc counts Python allocations (every bytes object the pipeline makes), so the
    peak is what the pipeline holds, whatever the machine's speed.
    """
    buffer = bytearray(pattern(MiB))
    digest_in, digest_out = hashlib.sha256(), hashlib.sha256()

    def source() -> Iterator[bytearray]:
        for i in range(chunks):
            buffer[:8] = i.to_bytes(8, "big")  # each chunk differs; the buffer is reused
            digest_in.update(buffer)
            yield buffer

    total = 0
    tracemalloc.start()
    try:
        stream = Sealer(KEK, CONTEXT).seal(source())
        pieces = stream if through == "pieces" else rechunk(stream, MiB)
        for piece in decrypt_stream(pieces, RESOLVER, CONTEXT):
            digest_out.update(piece)
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == chunks * MiB
    assert digest_out.digest() == digest_in.digest()
    return peak


@pytest.mark.parametrize(
    ("through", "bound"),
    # the sealer's pieces go straight in: the pieces of one 1 MiB input chunk are held
    # together; rechunked to 1 MiB chunks on the way (what an S3 multipart upload sees):
    # a few chunk-sized buffers
    [("pieces", 2 * MiB), ("1MiB-chunks", 8 * MiB)],
)
def test_memory_stays_flat_for_a_64MiB_stream(through: str, bound: int) -> None:
    small, large = pipeline_peak(8, through), pipeline_peak(64, through)
    assert large < bound, f"peak {large / MiB:.2f} MiB"
    assert large - small < 256 * 1024, f"peak grew from {small} to {large} bytes with length"


def test_a_message_passed_as_one_chunk_is_not_copied() -> None:
    """decrypt_stream opens frames inside the caller's buffer (its docstring's promise).

    A caller holding the whole object (a small S3 GET, a test, a catalog payload) passes
    it as one chunk; the reader must not make copies of it, let alone several.
    """
    plaintext = bytes(16 * MiB)
    message = join(Sealer(KEK, CONTEXT).seal([plaintext]))
    total = 0
    tracemalloc.start()
    try:
        for piece in decrypt_stream([message], RESOLVER, CONTEXT):
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(plaintext)
    assert peak < 1 * MiB, f"peak {peak / MiB:.1f} MiB for a 16 MiB message"
