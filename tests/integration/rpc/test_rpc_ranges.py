"""Byte ranges through the real server over a real SeaweedFS, checked against Python slicing."""

from __future__ import annotations

import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rpc_harness import MiB, Stubs, Tenancy

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db

F = 64 * 1024
SIZE = 3 * MiB + 5 * F + 17  # several S3 parts, many frames, a short final frame


@pytest.fixture
def vault(database, root_provider, clock, seaweed_store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=seaweed_store, clock=clock)


@pytest.fixture
def stored(api: Stubs, acme: Tenancy) -> tuple[str, bytes]:
    data = os.urandom(SIZE)
    messages = [asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="r/seg.ts"))]
    messages += [asset_pb2.UploadRequest(chunk=data[i : i + MiB]) for i in range(0, len(data), MiB)]
    messages.append(asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()))
    asset = api.assets.Upload(iter(messages), metadata=acme.md(Role.INGEST))
    return asset.id, data


def fetch(api: Stubs, acme: Tenancy, request: asset_pb2.DownloadRequest) -> tuple[int, bytes]:
    responses = list(api.assets.Download(request, metadata=acme.md(Role.RENDERER)))
    header = responses[0].header
    body = b"".join(r.chunk for r in responses[1:])
    assert len(body) == header.length
    assert all(len(r.chunk) <= MiB for r in responses[1:])
    return header.offset, body


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    start=st.one_of(
        st.integers(0, SIZE - 1),
        st.sampled_from([0, F - 1, F, F + 1, SIZE - F - 17, SIZE - 17, SIZE - 1]),
    ),
    want=st.integers(1, 2 * MiB),
)
def test_byte_ranges_match_python_slicing(api, acme, stored, start, want):
    asset_id, data = stored
    length = min(want, SIZE - start)
    request = asset_pb2.DownloadRequest(
        asset_id=asset_id, byte_range=asset_pb2.ByteRange(offset=start, length=length)
    )
    offset, body = fetch(api, acme, request)
    assert offset == start
    assert body == data[start : start + length]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(suffix=st.integers(1, SIZE + 1000))
def test_suffix_ranges_match_python_slicing(api, acme, stored, suffix):
    asset_id, data = stored
    offset, body = fetch(
        api, acme, asset_pb2.DownloadRequest(asset_id=asset_id, suffix_length=suffix)
    )
    assert body == data[-suffix:]
    assert offset == SIZE - len(body)


@pytest.mark.parametrize(
    ("offset", "length", "code"),
    [
        (-1, 10, grpc.StatusCode.INVALID_ARGUMENT),
        (0, 0, grpc.StatusCode.INVALID_ARGUMENT),
        (0, -1, grpc.StatusCode.INVALID_ARGUMENT),
        (SIZE, 1, grpc.StatusCode.OUT_OF_RANGE),
        (SIZE - 1, 2, grpc.StatusCode.OUT_OF_RANGE),
    ],
)
def test_bad_ranges_get_the_right_status(api, acme, stored, offset, length, code):
    asset_id, _ = stored
    request = asset_pb2.DownloadRequest(
        asset_id=asset_id, byte_range=asset_pb2.ByteRange(offset=offset, length=length)
    )
    with pytest.raises(grpc.RpcError) as caught:
        fetch(api, acme, request)
    assert caught.value.code() == code
