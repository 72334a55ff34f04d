"""Follow-ups of an adversarial review, over the wire: Download chunk messages serialized by
hand and parsed by hand by the Python client, and client-streaming requests parsed by the
interceptor after authentication."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest
from rpc_harness import MiB, Stubs, Tenancy, leftovers, wait_for

from reelvault import errors
from reelvault.auth import Role
from reelvault.client import Client
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db

SIZE = 2 * MiB + 17  # three chunk messages, the last one short


def _raw(channel: grpc.Channel, method: str, kind: str) -> Any:
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    return getattr(channel, kind)(method, **identity)


def _meta(path: str) -> bytes:
    return asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path)).SerializeToString()


def _settled(vault, tenant: Tenancy) -> tuple[int, int, int]:
    found = wait_for(lambda: [1] if leftovers(vault, tenant) == (0, 0, 0) else [], count=1)
    return (0, 0, 0) if found else leftovers(vault, tenant)


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def client(server, acme: Tenancy):
    with Client(server.address, acme.tokens[Role.INGEST]) as vault_client:
        yield vault_client


def test_download_messages_on_the_wire_are_protobufs_own_bytes(channel, client, acme, data):
    asset = client.upload(data, path="wire/one")
    call = _raw(channel, "/reelvault.v1.AssetService/Download", "unary_stream")
    for request, expected in [
        (asset_pb2.DownloadRequest(asset_id=asset.id), data),
        (asset_pb2.DownloadRequest(asset_id=asset.id, suffix_length=MiB + 1), data[-MiB - 1 :]),
    ]:
        raw = list(call(request.SerializeToString(), metadata=acme.md(Role.INGEST)))
        assert asset_pb2.DownloadResponse.FromString(raw[0]).WhichOneof("payload") == "header"
        chunks = [expected[i : i + MiB] for i in range(0, len(expected), MiB)]
        assert raw[1:] == [asset_pb2.DownloadResponse(chunk=c).SerializeToString() for c in chunks]


def test_the_client_reads_every_range_exactly(client, data):
    asset = client.upload(data, path="wire/two")
    assert b"".join(client.download(asset.id)) == data
    for offset, length in [(0, 1), (MiB - 1, 2), (MiB, MiB), (1, SIZE - 1), (SIZE - 1, 1)]:
        stream = client.download(asset.id, offset=offset, length=length)
        assert (stream.offset, stream.length) == (offset, length)
        assert b"".join(stream) == data[offset : offset + length]
    assert b"".join(client.download(asset.id, suffix=MiB + 3)) == data[-MiB - 3 :]
    assert b"".join(client.download(asset.id, suffix=10 * SIZE)) == data


def test_the_client_gets_integrity_error_and_no_byte_for_a_truncated_end(client, vault, acme, data):
    asset = client.upload(data, path="wire/three")
    (key,) = list(vault.store.list_keys(f"t/{acme.id}/"))
    stored = vault.store.get_range(key, 0, vault.store.head(key).size)
    vault.store.put(key, [stored[:-1]])
    received: list[bytes] = []
    with pytest.raises(errors.IntegrityError):
        received.extend(client.download(asset.id, suffix=5))
    assert received == []
    assert b"".join(client.download(asset.id, offset=3, length=MiB)) == data[3 : 3 + MiB]


def test_garbage_upload_without_a_key_is_unauthenticated(channel):
    call = _raw(channel, "/reelvault.v1.AssetService/Upload", "stream_unary")
    with pytest.raises(grpc.RpcError) as caught:
        call(iter([b"\xff\xff\xff", b"\x0a\x20abc"]))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_corrupt_first_upload_message_is_invalid_argument_and_leaves_nothing(
    channel, vault, acme
):
    call = _raw(channel, "/reelvault.v1.AssetService/Upload", "stream_unary")
    for messages in ([b"\xff\xff\xff"], [b"\x0a\x02\xff\xfe", _meta("x")]):
        with pytest.raises(grpc.RpcError) as caught:
            call(iter(messages), metadata=acme.md(Role.INGEST))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request message" in caught.value.details()
    assert _settled(vault, acme) == (0, 0, 0)


def test_uploads_after_refused_streams_still_work(api: Stubs, channel, vault, acme, data):
    """The interceptor's request wrapper is per call: a refused stream leaves no state."""
    call = _raw(channel, "/reelvault.v1.AssetService/Upload", "stream_unary")
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            call(iter([_meta("y"), b"\xff"]), metadata=acme.md(Role.INGEST))
    messages = [asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="y"))]
    messages += [asset_pb2.UploadRequest(chunk=data[i : i + MiB]) for i in range(0, SIZE, MiB)]
    messages.append(asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()))
    asset = api.assets.Upload(iter(messages), metadata=acme.md(Role.INGEST))
    assert asset.size == SIZE
