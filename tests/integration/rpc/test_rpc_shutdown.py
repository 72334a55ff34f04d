"""Graceful shutdown: health flips to NOT_SERVING, new calls are refused, calls in flight
finish within the grace period, and what is still running after it is cancelled cleanly."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from rpc_harness import MiB, Stubs, wait_for

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db


@pytest.fixture
def vault(database, root_provider, clock, store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)


def _upload(api: Stubs, md, data: bytes) -> asset_pb2.Asset:
    def messages() -> Iterator[asset_pb2.UploadRequest]:
        yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="big.ts"))
        for at in range(0, len(data), MiB):
            yield asset_pb2.UploadRequest(chunk=data[at : at + MiB])
        yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())

    return api.assets.Upload(messages(), metadata=md)


def test_shutdown_drains_an_in_flight_download(server, api: Stubs, acme):
    data = os.urandom(8 * MiB)
    asset = _upload(api, acme.md(Role.INGEST), data)
    watch = api.health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stream = api.assets.Download(asset_pb2.DownloadRequest(asset_id=asset.id), metadata=acme.md())
    header = next(stream).header
    received = [next(stream).chunk]

    stopping = server.shutdown(grace=30.0)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()  # a watch never ends by itself; it would hold the drain for the grace

    def refused() -> list[bool]:
        with server.channel() as fresh:
            try:
                Stubs(fresh).health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError as exc:
                return [exc.code() == grpc.StatusCode.UNAVAILABLE]
        return []

    assert wait_for(refused, count=1) == [True]  # new calls are refused meanwhile

    received += [message.chunk for message in stream]  # the download still completes
    assert b"".join(received) == data
    assert header.length == len(data)
    stopping.result(timeout=20)  # and the drain ends once it has, long before the grace


def test_calls_still_running_after_the_grace_are_cancelled_and_clean_up(
    server, api: Stubs, acme, vault
):
    release = threading.Event()
    prefix = f"t/{acme.id}/"

    def multipart_uploads() -> int:
        return sum(1 for u in vault.store.list_multipart_uploads() if u.key.startswith(prefix))

    def stalled() -> Iterator[asset_pb2.UploadRequest]:
        yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="stalled.ts"))
        for _ in range(6):
            yield asset_pb2.UploadRequest(chunk=os.urandom(MiB))
        release.wait(30)

    future = api.assets.Upload.future(stalled(), metadata=acme.md(Role.INGEST))
    try:
        assert wait_for(lambda: [1] * multipart_uploads(), count=1)
        started = time.monotonic()
        server.shutdown(grace=0.5).result(timeout=30)
        assert time.monotonic() - started < 15
        with pytest.raises(grpc.RpcError) as caught:
            future.result(timeout=10)
        assert caught.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        release.set()
    assert wait_for(lambda: [] if multipart_uploads() else [1], count=1) == [1]
    assert list(vault.store.list_keys(prefix)) == []
