"""Admission slots are held exactly as long as their work runs, and idle streams do not
keep them (issue #8, and the findings of an adversarial review):

- a DeleteAsset whose client gives up keeps its slot until the store deletion ends, so
  cancelled calls cannot pile work past the limit;
- an upload cancelled while it is being begun leaves no row, no heartbeat, nothing;
- an upload stream that sends nothing loses its slot after the idle timeout;
- a download cancelled while the server is blocked sending releases its slot and closes
  its stream (the in-flight gauge returns to 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from rpc_harness import ServerThread, Stubs, Tenancy, leftovers, make_tenancy, wait_for

from reelvault import metrics
from reelvault.app import Vault
from reelvault.assets import Assets
from reelvault.auth import Role
from reelvault.config import Settings
from reelvault.storage import MemoryObjectStore
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db

DOWNLOAD = "/reelvault.v1.AssetService/Download"


class SlowStore(MemoryObjectStore):
    """Deletions take ``delay`` seconds, like a store that answers slowly."""

    def __init__(self) -> None:
        super().__init__(part_size=256 * 1024, max_in_flight=2)
        self.delay = 0.0
        self.deleting = 0
        self.most_deleting = 0
        self._counting = threading.Lock()

    def delete(self, key: str) -> None:
        with self._counting:
            self.deleting += 1
            self.most_deleting = max(self.most_deleting, self.deleting)
        try:
            time.sleep(self.delay)
            super().delete(key)
        finally:
            with self._counting:
                self.deleting -= 1


@pytest.fixture
def slow_store() -> SlowStore:
    return SlowStore()


@pytest.fixture
def vault(database, root_provider, clock, slow_store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=slow_store, clock=clock)


@pytest.fixture
def limited(vault: Vault) -> Iterator[ServerThread]:
    settings = Settings(
        grpc_port=0,
        shutdown_grace=1.0,
        max_uploads=2,
        max_uploads_per_tenant=2,
        max_downloads=2,
        max_downloads_per_tenant=2,
        upload_idle_timeout=1.0,
    )
    thread = ServerThread(vault, settings)
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture
def stubs(limited: ServerThread) -> Iterator[Stubs]:
    channel = limited.channel()
    try:
        yield Stubs(channel)
    finally:
        channel.close()


@pytest.fixture
def acme(vault: Vault) -> Tenancy:
    return make_tenancy(vault, "acme")


def _upload(stubs: Stubs, tenant: Tenancy, path: str, data: bytes = b"x" * 100) -> str:
    step = 1024 * 1024
    messages = [
        asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path)),
        *(asset_pb2.UploadRequest(chunk=data[i : i + step]) for i in range(0, len(data), step)),
        asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()),
    ]
    asset = stubs.assets.Upload(iter(messages), metadata=tenant.md(Role.INGEST))
    return str(asset.id)


def test_a_cancelled_delete_keeps_its_slot_until_the_store_is_done(stubs, acme, slow_store):
    ids = [_upload(stubs, acme, f"d/{i}") for i in range(40)]
    slow_store.delay = 1.0
    codes: list[grpc.StatusCode] = []

    def delete(asset_id: str) -> None:
        try:
            stubs.assets.DeleteAsset(
                asset_pb2.DeleteAssetRequest(asset_id=asset_id),
                metadata=acme.md(Role.ADMIN),
                timeout=0.2,  # the client gives up long before the store answers
            )
        except grpc.RpcError as exc:
            codes.append(exc.code())

    threads = [threading.Thread(target=delete, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: [1] if slow_store.deleting == 0 else [], count=1, timeout=60)
    # The delete limit is 16: however many clients gave up, no more store deletions ran
    # at once (before the fix, every cancelled call freed its slot at once).
    assert slow_store.most_deleting <= 16
    assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_an_upload_cancelled_while_it_is_begun_leaves_nothing(stubs, acme, vault, monkeypatch):
    begun = threading.Event()
    original = Assets.begin_upload

    def slow_begin(self, tenant_id, spec):
        begun.set()
        time.sleep(1.0)  # the client cancels meanwhile
        return original(self, tenant_id, spec)

    monkeypatch.setattr(Assets, "begin_upload", slow_begin)
    release = threading.Event()

    def requests():
        yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="begun"))
        release.wait(30)

    future = stubs.assets.Upload.future(requests(), metadata=acme.md(Role.INGEST))
    assert begun.wait(30)
    future.cancel()
    release.set()
    assert wait_for(
        lambda: (
            [1] if leftovers(vault, acme) == (0, 0, 0) and not vault.assets.objects._live else []
        ),
        count=1,
        timeout=30,
    ) == [1]
    assert vault.assets.objects.refresh_uploads() == 0


def test_an_idle_upload_stream_loses_its_slot(stubs, acme, vault):
    release = threading.Event()

    def idle():
        yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="idle"))
        yield asset_pb2.UploadRequest(chunk=b"some bytes")
        release.wait(30)  # and then nothing, with the stream open

    try:
        with pytest.raises(grpc.RpcError) as dropped:
            stubs.assets.Upload(idle(), metadata=acme.md(Role.INGEST), timeout=30)
    finally:
        release.set()
    assert dropped.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "sent nothing" in (dropped.value.details() or "")
    assert wait_for(
        lambda: [1] if leftovers(vault, acme) == (0, 0, 0) else [], count=1, timeout=30
    ) == [1]
    # both slots free again
    _upload(stubs, acme, "after-1")
    _upload(stubs, acme, "after-2")


def test_a_download_cancelled_while_blocked_sending_frees_its_slot(stubs, acme):
    asset_id = _upload(stubs, acme, "big", b"z" * (24 * 1024 * 1024))
    in_flight = metrics.IN_FLIGHT.labels(DOWNLOAD)
    before = in_flight._value.get()
    call = stubs.assets.Download(
        asset_pb2.DownloadRequest(asset_id=asset_id), metadata=acme.md(Role.RENDERER)
    )
    next(call)  # the header: the server is streaming, and will block on flow control
    time.sleep(0.5)
    call.cancel()
    assert wait_for(
        lambda: [1] if in_flight._value.get() == before else [], count=1, timeout=30
    ) == [1]
    # the slots are free: two more downloads run (the limit is 2)
    for _ in range(2):
        chunks = stubs.assets.Download(
            asset_pb2.DownloadRequest(asset_id=asset_id), metadata=acme.md(Role.RENDERER)
        )
        assert sum(len(m.chunk) for m in chunks) == 24 * 1024 * 1024
