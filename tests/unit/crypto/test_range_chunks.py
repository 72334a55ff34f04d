"""``rechunk`` of a streamed range: frames opened straight into the chunks.

A download serializes its range into 1 MiB messages with ``rechunk``; for the plaintext of
``RandomAccessReader.stream_range`` it decrypts each whole frame into its chunk instead of
joining per-frame buffers. These tests hold that path to the plain one (iterate the
frames, join them) on any range, chunking of the stored bytes, chunk size and prefix, and
to the rules of the download: no byte of a frame leaves before its tag is checked, and a
stream that ends early or runs on yields no last chunk.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelvault.crypto import (
    FRAME_OVERHEAD,
    EncryptionContext,
    RandomAccessReader,
    Sealer,
    rechunk,
)
from reelvault.crypto.names import kek_key_name
from reelvault.errors import DecryptionError

from .conftest import TENANT_ID, DictResolver, Kek, join

KEK = Kek(kek_key_name(TENANT_ID, 1), bytes(range(32)))
CONTEXT = EncryptionContext.for_object(tenant_id=TENANT_ID, object_id="chunks", kind="asset")
RESOLVER = DictResolver(KEK)


@functools.lru_cache(maxsize=32)
def sealed(frame: int, size: int) -> tuple[bytes, bytes, bytes]:
    """(plaintext, header, message), cached across examples."""
    plaintext = os.urandom(size)
    sealer = Sealer(KEK, CONTEXT, frame_length=frame)
    return plaintext, sealer.header, join(sealer.seal([plaintext]))


def reader(header: bytes, message: bytes) -> RandomAccessReader:
    return RandomAccessReader(
        lambda at, n: message[at : at + n],
        len(message),
        RESOLVER,
        CONTEXT,
        header=header,
        size_is_trusted=True,
    )


def stream_of(message: bytes, piece: int):  # type: ignore[no-untyped-def]
    """stream_at over ``message`` in pieces of ``piece`` bytes."""

    def stream_at(at: int, n: int) -> Iterator[bytes]:
        return iter([message[i : min(i + piece, at + n)] for i in range(at, at + n, piece)])

    return stream_at


def prefix(n: int) -> bytes:
    return b"<" + n.to_bytes(3, "big")


def unframe(chunks: list[bytes]) -> bytes:
    """The data of chunks made with ``prefix``, each checked to name its own length."""
    data = []
    for chunk in chunks:
        assert chunk[:1] == b"<"
        assert int.from_bytes(chunk[1:4], "big") == len(chunk) - 4
        data.append(chunk[4:])
    return join(data)


@settings(max_examples=300, deadline=None)
@given(
    frame=st.sampled_from([1, 7, 64, 100]),
    size=st.integers(1, 900),
    data=st.data(),
    chunk=st.integers(1, 300),
    piece=st.integers(1, 400),
    framed=st.booleans(),
)
def test_chunks_of_a_range_are_the_joined_frames(frame, size, data, chunk, piece, framed) -> None:
    plaintext, header, message = sealed(frame, size)
    start = data.draw(st.integers(0, size - 1))
    length = data.draw(st.integers(1, size - start))
    read = reader(header, message)
    head = prefix if framed else None
    fast = list(
        rechunk(read.stream_range(start, length, stream_of(message, piece)), chunk, prefix=head)
    )
    plain = list(
        rechunk(
            list(read.stream_range(start, length, stream_of(message, piece))), chunk, prefix=head
        )
    )
    assert fast == plain
    assert all(isinstance(c, bytes) for c in fast)
    body = unframe(fast) if framed else join(fast)
    assert body == plaintext[start : start + length]


def test_a_range_already_started_is_joined() -> None:
    plaintext, header, message = sealed(64, 1000)
    pieces = reader(header, message).stream_range(10, 900, stream_of(message, 150))
    first = next(pieces)
    assert first + join(rechunk(pieces, 128)) == plaintext[10:910]


def test_a_range_read_in_chunks_is_not_iterated_too() -> None:
    _, header, message = sealed(64, 1000)
    pieces = reader(header, message).stream_range(0, 1000, stream_of(message, 150))
    next(rechunk(pieces, 128))
    with pytest.raises(RuntimeError):
        next(pieces)


@pytest.mark.parametrize("piece", [1000, 97, 10_000])
@pytest.mark.parametrize("chunk", [64, 128, 100])
def test_no_chunk_holds_a_byte_of_a_frame_whose_tag_fails(piece: int, chunk: int) -> None:
    frame, size = 64, 64 * 12 + 5
    plaintext, header, message = sealed(frame, size)
    step = frame + FRAME_OVERHEAD
    for bad in range(1, 13):  # the regular frames; the final one is checked before any chunk
        tampered = bytearray(message)
        tampered[len(header) + (bad - 1) * step + FRAME_OVERHEAD + 3] ^= 0x20
        pieces = reader(header, bytes(tampered)).stream_range(0, size, stream_of(tampered, piece))
        out: list[bytes] = []
        with pytest.raises(DecryptionError):
            out.extend(rechunk(pieces, chunk))
        got = join(out)
        assert got == plaintext[: len(got)]
        assert len(got) <= (bad - 1) * frame


@pytest.mark.parametrize("chunk", [64, 100, 1000])
def test_a_stream_that_ends_early_or_runs_on_yields_no_last_chunk(chunk: int) -> None:
    plaintext, header, message = sealed(64, 64 * 10)

    def short(at: int, n: int) -> Iterator[bytes]:
        return iter([message[at : at + n - 10]])

    def long(at: int, n: int) -> Iterator[bytes]:
        return iter([message[at : at + n], b"trailing bytes"])

    for stream_at in (short, long):
        out: list[bytes] = []
        with pytest.raises(DecryptionError):
            out.extend(rechunk(reader(header, message).stream_range(0, 640, stream_at), chunk))
        assert join(out) == plaintext[: len(join(out))]
        assert len(join(out)) < 640


def test_closing_a_range_read_in_chunks_closes_the_stored_stream() -> None:
    _, header, message = sealed(64, 1000)
    closed: list[bool] = []

    def stream_at(at: int, n: int) -> Iterator[bytes]:
        try:
            yield message[at : at + n]
        finally:
            closed.append(True)

    pieces = reader(header, message).stream_range(0, 1000, stream_at)
    chunks = rechunk(pieces, 128)
    next(chunks)
    pieces.close()  # type: ignore[attr-defined]
    assert closed == [True]
