"""Uploads end explicitly: metadata, chunks, then one ``end`` message before the client
closes its stream, and nothing commits without it.

grpc.aio ends the request stream of a cancelled call exactly as it ends one the client
closed, so only the end message tells the server that the client finished. The sweep at
the bottom cancels an upload at every point of its stream and shows that it leaves nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from rpc_harness import ServerThread, Stubs, Tenancy, leftovers, wait_for

from reelvault.app import Vault
from reelvault.assets import Assets, AssetUpload, UploadSpec
from reelvault.auth import Role
from reelvault.client import Client
from reelvault.rpc import servicers
from reelvault.rpc.interceptors import check_deadline
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db

PATH = "end/upload.ts"
CHUNK = 300 * 1024  # over the memory store's 256 KiB parts: each chunk stores a part
CHUNKS = 3


def meta(path: str = PATH, **kwargs: object) -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path, **kwargs))


def chunk(data: bytes) -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(chunk=data)


def end(**kwargs: object) -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(end=asset_pb2.UploadEnd(**kwargs))


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def nothing_left(vault: Vault, tenant: Tenancy) -> bool:
    """No asset, no stored object, no multipart upload and no upload row: waited for, as the
    server may still be cleaning up when the client hears the status. An upload's row
    outlives every step before its commit, so all-clear is final."""

    def clear() -> list[int]:
        empty = leftovers(vault, tenant) == (0, 0, 0) and not vault.assets.list(tenant.id)[0]
        return [1] if empty else []

    return wait_for(clear, count=1, timeout=15) == [1]


def upload(api: Stubs, tenant: Tenancy, messages: list[asset_pb2.UploadRequest]) -> object:
    return api.assets.Upload(iter(messages), metadata=tenant.md(Role.INGEST))


DATA = os.urandom(2 * CHUNK + 17)
SHA = hashlib.sha256(DATA).digest()
BODY = [chunk(DATA[i : i + CHUNK]) for i in range(0, len(DATA), CHUNK)]


# -- a stream without its end message ---------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([meta()], id="metadata only"),
        pytest.param([meta(), *BODY], id="every chunk"),
        pytest.param(
            [meta(expected_size=len(DATA), expected_sha256=SHA), *BODY],
            id="every chunk, as the metadata promised",
        ),
    ],
)
def test_a_stream_closed_without_its_end_message_commits_nothing(
    api: Stubs, vault: Vault, acme: Tenancy, messages
):
    error = rpc_error(lambda: upload(api, acme, messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert nothing_left(vault, acme)


@pytest.mark.parametrize(
    "after",
    [
        pytest.param([chunk(b"late")], id="a chunk"),
        pytest.param([end()], id="a second end"),
        pytest.param([meta("other")], id="metadata"),
        pytest.param([asset_pb2.UploadRequest()], id="an empty message"),
    ],
)
def test_a_message_after_the_end_is_refused_and_commits_nothing(
    api: Stubs, vault: Vault, acme: Tenancy, after
):
    error = rpc_error(lambda: upload(api, acme, [meta(), *BODY, end(), *after]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert nothing_left(vault, acme)


def test_end_straight_after_the_metadata_is_an_empty_asset(api: Stubs, acme: Tenancy):
    asset = upload(api, acme, [meta(), end(size=0)])
    assert isinstance(asset, asset_pb2.Asset)
    assert asset.size == 0
    assert asset.sha256 == hashlib.sha256(b"").digest()


# -- the end message's checks -----------------------------------------------------------


def test_an_end_message_that_agrees_is_accepted(api: Stubs, acme: Tenancy):
    asset = upload(api, acme, [meta(expected_sha256=SHA), *BODY, end(size=len(DATA), sha256=SHA)])
    assert isinstance(asset, asset_pb2.Asset)
    assert (asset.size, asset.sha256) == (len(DATA), SHA)


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([meta(), *BODY, end(size=len(DATA) - 1)], id="size too small"),
        pytest.param([meta(), *BODY, end(size=len(DATA) + 1)], id="size too large"),
        pytest.param([meta(), *BODY, end(size=0)], id="size zero"),
        pytest.param([meta(), *BODY, end(sha256=b"\0" * 32)], id="wrong sha"),
        pytest.param([meta(), *BODY, end(sha256=b"\0" * 7)], id="malformed sha"),
        pytest.param(
            [meta(expected_sha256=SHA), *BODY, end(sha256=b"\0" * 32)],
            id="sha differs from the metadata's",
        ),
        pytest.param(
            [meta(expected_sha256=b"\0" * 32), *BODY, end(sha256=SHA)],
            id="metadata's sha wrong, end's right",
        ),
    ],
)
def test_an_end_message_that_disagrees_is_refused_and_commits_nothing(
    api: Stubs, vault: Vault, acme: Tenancy, messages
):
    error = rpc_error(lambda: upload(api, acme, messages))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert nothing_left(vault, acme)


# -- the Python client ------------------------------------------------------------------


def test_the_client_ends_its_uploads(server: ServerThread, acme: Tenancy):
    with Client(server.address, acme.tokens[Role.INGEST]) as client:
        sized = client.upload(DATA, path="client/sized")
        streamed = client.upload(iter([DATA[:CHUNK], DATA[CHUNK:]]), path="client/streamed")
        for asset in (sized, streamed):
            assert (asset.size, asset.sha256) == (len(DATA), SHA)
            assert b"".join(client.download(asset.id)) == DATA


def test_a_client_whose_source_fails_stores_nothing(
    server: ServerThread, vault: Vault, acme: Tenancy
):
    def source() -> Iterator[bytes]:
        yield DATA[:CHUNK]
        raise OSError("the disk went away")

    with (
        Client(server.address, acme.tokens[Role.INGEST]) as client,
        pytest.raises(OSError, match="the disk went away"),
    ):
        client.upload(source(), path="client/broken")
    assert nothing_left(vault, acme)


# -- a cancellation at every point of the stream ----------------------------------------

MESSAGES = 1 + CHUNKS + 1  # metadata, chunks, end
SENT_ALL = MESSAGES  # every message sent, the stream still open
CLOSED = MESSAGES + 1  # the stream closed; the server is completing
ANSWERED = MESSAGES + 2  # the answer is in; cancelling now changes nothing


class _Spy:
    """Counts what the server has done with an upload, and holds ``complete`` (when asked)
    until the cancellation has reached the server's handler: the one thing the server cannot
    see coming, as the stream of a cancelled call ends like a closed one."""

    def __init__(self, server: ServerThread, monkeypatch: pytest.MonkeyPatch, hold: bool) -> None:
        self.begun = 0
        self.received = 0  # messages after the metadata, chunks and end alike
        self.written = 0
        self.completing = threading.Event()
        begin, write, complete = Assets.begin_upload, AssetUpload.write, AssetUpload.complete

        def spy_begin(assets: Assets, tenant_id: str, spec: UploadSpec) -> AssetUpload:
            upload = begin(assets, tenant_id, spec)
            self.begun += 1
            return upload

        def spy_write(upload: AssetUpload, data: bytes) -> None:
            write(upload, data)
            self.written += 1

        def spy_complete(upload: AssetUpload) -> object:
            self.completing.set()
            if hold:
                assert wait_for(lambda: [1] if server.run(_cancelling()) else [], count=1)
            return complete(upload)

        def spy_check_deadline(context: object) -> None:
            self.received += 1  # the servicer checks the deadline as each message arrives
            check_deadline(context)

        monkeypatch.setattr(Assets, "begin_upload", spy_begin)
        monkeypatch.setattr(servicers, "check_deadline", spy_check_deadline)
        monkeypatch.setattr(AssetUpload, "write", spy_write)
        monkeypatch.setattr(AssetUpload, "complete", spy_complete)


async def _cancelling() -> bool:
    """Whether a task on the server's loop has been asked to cancel: the upload's."""
    return any(task.cancelling() for task in asyncio.all_tasks())


@pytest.mark.parametrize("point", range(ANSWERED + 1))
def test_a_cancellation_at_any_point_leaves_nothing(
    server: ServerThread,
    api: Stubs,
    vault: Vault,
    acme: Tenancy,
    monkeypatch: pytest.MonkeyPatch,
    point: int,
):
    """``point`` messages sent, then the call cancelled (0 to SENT_ALL); or the stream closed
    and the server completing (CLOSED); or the answer received (ANSWERED)."""
    data = os.urandom(CHUNKS * CHUNK)
    messages = [meta(), *[chunk(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)], end()]
    spy = _Spy(server, monkeypatch, hold=point in (SENT_ALL, CLOSED))
    reached, release = threading.Event(), threading.Event()

    def requests() -> Iterator[asset_pb2.UploadRequest]:
        yield from messages[:point]
        if point < CLOSED:  # hold the stream open at exactly this point
            reached.set()
            release.wait(30)
            return
        yield from messages[point:]

    future = api.assets.Upload.future(requests(), metadata=acme.md(Role.INGEST))
    try:
        if point == ANSWERED:
            future.result(timeout=30)
        elif point == CLOSED:
            assert spy.completing.wait(30)
        else:
            assert reached.wait(30)
            # the server has begun the upload, received every message sent so far (the end
            # too) and stored every chunk
            begun, received = min(point, 1), max(point - 1, 0)
            written = min(received, CHUNKS)
            assert wait_for(
                lambda: [1] if spy.begun >= begun and spy.received >= received else [], count=1
            )
            assert wait_for(lambda: [1] if spy.written >= written else [], count=1)
        cancelled = future.cancel()
    finally:
        release.set()

    if cancelled:
        assert future.cancelled()
        assert future.code() == grpc.StatusCode.CANCELLED
        assert nothing_left(vault, acme)
        if point < SENT_ALL:
            assert not spy.completing.is_set()  # without its end, never even attempted
    else:  # only possible once the answer is in: the asset is there, whole
        assert point == ANSWERED
        asset = future.result()
        [stored] = vault.assets.list(acme.id)[0]
        assert (stored.id, stored.size) == (asset.id, len(data))
        assert leftovers(vault, acme) == (1, 0, 0)
