"""Download chunk messages serialized by hand must be exactly what protobuf would make."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelvault.client import decode_download_response
from reelvault.rpc.convert import download_chunk_messages, download_response_bytes
from reelvault.v1 import asset_pb2


def reference(data: bytes, size: int) -> list[bytes]:
    return [
        asset_pb2.DownloadResponse(chunk=data[i : i + size]).SerializeToString()
        for i in range(0, len(data), size)
    ]


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=700), max_size=12),
    size=st.sampled_from([1, 127, 128, 129, 300, 16_384, 16_385]),
)
def test_messages_equal_protobuf_serialization_for_any_piece_boundaries(lengths, size):
    data = bytes(i % 251 for i in range(sum(lengths)))
    pieces, at = [], 0
    for n in lengths:
        pieces.append(data[at : at + n])
        at += n
    messages = list(download_chunk_messages(pieces, size))
    assert messages == reference(data, size)
    assert b"".join(asset_pb2.DownloadResponse.FromString(m).chunk for m in messages) == data


def test_a_one_mebibyte_chunk_has_a_three_byte_length():
    (message,) = download_chunk_messages([b"\x00" * (1 << 20)], 1 << 20)
    assert message[:4] == b"\x12\x80\x80\x40"  # field 2; varint 1048576
    assert asset_pb2.DownloadResponse.FromString(message).chunk == b"\x00" * (1 << 20)


def test_the_serializer_passes_bytes_and_serializes_messages():
    header = asset_pb2.DownloadResponse(header=asset_pb2.DownloadHeader(offset=5, length=9))
    assert download_response_bytes(header) == header.SerializeToString()
    assert download_response_bytes(b"\x12\x01x") == b"\x12\x01x"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), size=st.sampled_from([1, 127, 128, 300, 16_384]))
def test_the_client_decodes_chunk_messages_to_the_chunk(data, size):
    for message in download_chunk_messages([data], size):
        assert (
            decode_download_response(message)
            == asset_pb2.DownloadResponse.FromString(message).chunk
        )


@given(junk=st.binary(max_size=40))
def test_the_client_decodes_anything_else_through_protobuf(junk):
    header = asset_pb2.DownloadResponse(
        header=asset_pb2.DownloadHeader(offset=1, length=2)
    ).SerializeToString()
    assert decode_download_response(header).header.length == 2
    # a chunk followed by another field, or a length that does not match, is not the fast path
    chunk = asset_pb2.DownloadResponse(chunk=b"abc").SerializeToString()
    for data in (chunk + header, chunk[:-1], b"\x12\x05ab", junk):
        try:
            expected = asset_pb2.DownloadResponse.FromString(data)
        except Exception:
            with pytest.raises(Exception):  # noqa: B017 - the same refusal
                decode_download_response(data)
            continue
        assert decode_download_response(data) == expected
