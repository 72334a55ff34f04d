"""AssetService end to end: a real server over the in-memory store and over SeaweedFS,
on the catalog the environment selects (SQLite or PostgreSQL)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from rpc_harness import MiB, Stubs, Tenancy, leftovers, wait_for

from reelvault.app import Vault
from reelvault.assets import AssetUpload
from reelvault.auth import Role
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db


@pytest.fixture
def vault(database, root_provider, clock, store) -> Vault:
    """Every test here runs over both stores."""
    return Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)


def requests(
    data: bytes, path: str = "campaign/seg-1.ts", chunk: int = MiB, **metadata
) -> Iterator[asset_pb2.UploadRequest]:
    yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path, **metadata))
    for at in range(0, len(data), chunk):
        yield asset_pb2.UploadRequest(chunk=data[at : at + chunk])
    yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())


def upload(api: Stubs, tenant: Tenancy, data: bytes, **kwargs) -> asset_pb2.Asset:
    return api.assets.Upload(requests(data, **kwargs), metadata=tenant.md(Role.INGEST))


def download(
    api: Stubs, tenant: Tenancy, asset_id: str, role: Role = Role.RENDERER, **range_
) -> tuple[asset_pb2.DownloadHeader, bytes, list[int]]:
    responses = list(
        api.assets.Download(
            asset_pb2.DownloadRequest(asset_id=asset_id, **range_), metadata=tenant.md(role)
        )
    )
    assert responses[0].WhichOneof("payload") == "header"
    assert all(r.WhichOneof("payload") == "chunk" for r in responses[1:])
    chunks = [r.chunk for r in responses[1:]]
    return responses[0].header, b"".join(chunks), [len(c) for c in chunks]


def settle_leftovers(vault: Vault, tenant: Tenancy) -> tuple[int, int, int]:
    """Leftovers once the server has finished cleaning up after a failed call (the status
    can reach the client before the abort's last request returns)."""
    deadline = time.monotonic() + 15
    while (counts := leftovers(vault, tenant)) != (0, 0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    return counts


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# -- the happy paths --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MiB + 3, 6 * MiB + 17])
def test_upload_stat_download_round_trip(api: Stubs, acme, size):
    data = os.urandom(size)
    asset = upload(api, acme, data, content_type="video/mp2t", labels={"res": "720p"})
    assert asset.size == size
    assert asset.sha256 == hashlib.sha256(data).digest()
    assert asset.tenant_id == acme.id
    assert asset.content_type == "video/mp2t"
    assert dict(asset.labels) == {"res": "720p"}
    assert asset.create_time.seconds > 0

    assert (
        api.assets.StatAsset(
            asset_pb2.StatAssetRequest(asset_id=asset.id), metadata=acme.md(Role.DISTRIBUTOR)
        )
        == asset
    )

    header, body, sizes = download(api, acme, asset.id)
    assert body == data
    assert header.asset == asset
    assert (header.offset, header.length) == (0, size)
    assert all(0 < n <= MiB for n in sizes)


def test_ranges_and_suffixes(api: Stubs, acme):
    data = os.urandom(3 * MiB + 5)
    asset = upload(api, acme, data)
    rng = asset_pb2.ByteRange(offset=MiB - 7, length=MiB + 100)
    header, body, _ = download(api, acme, asset.id, byte_range=rng)
    assert body == data[MiB - 7 : 2 * MiB + 93]
    assert (header.offset, header.length) == (MiB - 7, MiB + 100)

    header, body, _ = download(api, acme, asset.id, suffix_length=1000)
    assert body == data[-1000:]
    assert header.offset == len(data) - 1000

    _, body, _ = download(api, acme, asset.id, suffix_length=10 * len(data))  # clamped
    assert body == data


@pytest.mark.parametrize(
    ("range_", "code"),
    [
        ({"byte_range": asset_pb2.ByteRange(offset=0, length=101)}, "OUT_OF_RANGE"),
        ({"byte_range": asset_pb2.ByteRange(offset=100, length=1)}, "OUT_OF_RANGE"),
        ({"byte_range": asset_pb2.ByteRange(offset=0, length=0)}, "INVALID_ARGUMENT"),
        ({"byte_range": asset_pb2.ByteRange(offset=-1, length=5)}, "INVALID_ARGUMENT"),
        ({"suffix_length": 0}, "INVALID_ARGUMENT"),
        ({"suffix_length": -3}, "INVALID_ARGUMENT"),
    ],
)
def test_a_bad_range_is_a_status_before_any_message(api: Stubs, acme, range_, code):
    asset = upload(api, acme, os.urandom(100))
    stream = api.assets.Download(
        asset_pb2.DownloadRequest(asset_id=asset.id, **range_), metadata=acme.md()
    )
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        received.extend(stream)
    assert received == []
    assert caught.value.code() == getattr(grpc.StatusCode, code)


def test_list_and_delete(api: Stubs, acme, vault):
    for name in ["a/1", "a/2", "a/3", "b/1"]:
        upload(api, acme, name.encode(), path=name)
    md = acme.md(Role.INGEST)
    page = api.assets.ListAssets(asset_pb2.ListAssetsRequest(prefix="a/", page_size=2), metadata=md)
    assert [a.path for a in page.assets] == ["a/1", "a/2"]
    assert page.next_page_token
    rest = api.assets.ListAssets(
        asset_pb2.ListAssetsRequest(prefix="a/", page_size=2, page_token=page.next_page_token),
        metadata=md,
    )
    assert [a.path for a in rest.assets] == ["a/3"]
    assert rest.next_page_token == ""

    victim = page.assets[0]
    for _ in range(2):  # idempotent
        api.assets.DeleteAsset(asset_pb2.DeleteAssetRequest(asset_id=victim.id), metadata=md)
    error = rpc_error(
        lambda: api.assets.StatAsset(asset_pb2.StatAssetRequest(asset_id=victim.id), metadata=md)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(list(vault.store.list_keys(f"t/{acme.id}/"))) == 3

    error = rpc_error(
        lambda: api.assets.ListAssets(asset_pb2.ListAssetsRequest(page_size=1001), metadata=md)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = rpc_error(
        lambda: api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(page_token="not a token"), metadata=md
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- tenant isolation -------------------------------------------------------------------


def test_another_tenants_asset_is_indistinguishable_from_a_missing_one(
    api: Stubs, acme, globex, vault
):
    data = os.urandom(1000)
    asset = upload(api, acme, data)
    missing = "0123456789abcdef" * 2
    md = globex.md(Role.ADMIN)

    def answers(asset_id: str) -> list[tuple[grpc.StatusCode, str]]:
        calls = [
            lambda: api.assets.StatAsset(
                asset_pb2.StatAssetRequest(asset_id=asset_id), metadata=md
            ),
            lambda: list(
                api.assets.Download(asset_pb2.DownloadRequest(asset_id=asset_id), metadata=md)
            ),
            lambda: list(
                api.assets.Download(
                    asset_pb2.DownloadRequest(asset_id=asset_id, suffix_length=1), metadata=md
                )
            ),
        ]
        return [(e.code(), e.details()) for e in map(rpc_error, calls)]

    theirs, nobodys = answers(asset.id), answers(missing)
    assert theirs == nobodys
    assert {code for code, _ in theirs} == {grpc.StatusCode.NOT_FOUND}

    # Deleting is idempotent, so it succeeds for both, and must not touch acme's asset.
    api.assets.DeleteAsset(asset_pb2.DeleteAssetRequest(asset_id=asset.id), metadata=md)
    assert download(api, acme, asset.id)[1] == data
    assert api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=md).assets == []


def test_the_tenant_comes_from_the_key_not_the_request(api: Stubs, acme, globex):
    upload(api, globex, b"globex data", path="shared/name")
    asset = upload(api, acme, b"acme data", path="shared/name")  # same path, other tenant
    assert asset.tenant_id == acme.id
    listed = api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md())
    assert [a.tenant_id for a in listed.assets] == [acme.id]


# -- uploads that fail leave nothing behind ---------------------------------------------


def meta(path: str = "x/y", **kwargs) -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path, **kwargs))


def chunk(data: bytes) -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(chunk=data)


def end() -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([], id="empty stream"),
        pytest.param([chunk(b"abc")], id="chunk first"),
        pytest.param([asset_pb2.UploadRequest()], id="nothing set first"),
        pytest.param([meta(), chunk(b"a"), meta()], id="metadata twice"),
        pytest.param([meta(), asset_pb2.UploadRequest()], id="message without payload"),
        pytest.param([meta(), chunk(b"a" * (MiB + 1))], id="chunk over 1 MiB"),
        pytest.param([meta(), chunk(os.urandom(MiB)), chunk(b"a" * (2 * MiB))], id="later big"),
        pytest.param([meta(path="")], id="empty path"),
        pytest.param([meta(path="a/../b")], id="dot-dot path"),
        pytest.param([meta(path="a//b")], id="empty segment"),
        pytest.param([meta(labels={"Bad Key": "v"})], id="bad label"),
        pytest.param([meta(content_type="nonsense")], id="bad content type"),
        pytest.param([meta(expected_size=5), chunk(b"abcd"), end()], id="too few bytes"),
        pytest.param([meta(expected_size=3), chunk(b"abcd")], id="too many bytes"),
        pytest.param([meta(expected_sha256=b"\0" * 32), chunk(b"abcd"), end()], id="wrong sha"),
        pytest.param([meta(expected_sha256=b"\0" * 7)], id="malformed sha"),
    ],
)
def test_bad_uploads_are_invalid_arguments_and_leave_nothing(api: Stubs, acme, vault, messages):
    error = rpc_error(lambda: api.assets.Upload(iter(messages), metadata=acme.md(Role.INGEST)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert settle_leftovers(vault, acme) == (0, 0, 0)
    assert api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md()).assets == []


def test_a_taken_path_is_already_exists(api: Stubs, acme, vault):
    upload(api, acme, b"first", path="p")
    error = rpc_error(lambda: upload(api, acme, b"second", path="p"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert leftovers(vault, acme)[1:] == (0, 0)


def test_expectations_that_hold_are_accepted(api: Stubs, acme):
    data = os.urandom(MiB + 1)
    asset = upload(
        api, acme, data, expected_size=len(data), expected_sha256=hashlib.sha256(data).digest()
    )
    assert asset.size == len(data)


def _stalling_upload(vault: Vault, tenant: Tenancy, stall: threading.Event, size: int):
    """Metadata and ``size`` bytes, then wait until a multipart upload exists in the store
    (so the test proves it is aborted) and stall until ``stall`` is set."""

    def messages() -> Iterator[asset_pb2.UploadRequest]:
        yield meta("stalled/upload.ts")
        for _ in range(size // MiB):
            yield chunk(os.urandom(MiB))
        assert wait_for(lambda: [1] if leftovers(vault, tenant)[1] else [], count=1)
        stall.wait(30)

    return messages()


def test_an_upload_past_its_deadline_aborts_its_multipart_upload(api: Stubs, acme, vault):
    stall = threading.Event()
    try:
        error = rpc_error(
            lambda: api.assets.Upload(
                _stalling_upload(vault, acme, stall, 6 * MiB),
                metadata=acme.md(Role.INGEST),
                timeout=3.0,
            )
        )
    finally:
        stall.set()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert settle_leftovers(vault, acme) == (0, 0, 0)


def test_a_cancelled_upload_aborts_its_multipart_upload(api: Stubs, acme, vault):
    stall = threading.Event()
    future = api.assets.Upload.future(
        _stalling_upload(vault, acme, stall, 6 * MiB), metadata=acme.md(Role.INGEST)
    )
    try:
        wait_for(lambda: [1] if leftovers(vault, acme)[1] else [], count=1)
        future.cancel()
    finally:
        stall.set()
    assert future.cancelled()
    assert settle_leftovers(vault, acme) == (0, 0, 0)


def test_an_upload_cancelled_while_completing_is_not_kept(api: Stubs, acme, vault, monkeypatch):
    """A cancellation that arrives while the upload completes removes the asset again: the
    client is told CANCELLED. After the end message, grpc.aio ends a cancelled call's
    request stream like a finished one, so the server may be completing when it hears."""
    completing = threading.Event()
    original = AssetUpload.complete

    def slow_complete(self):
        completing.set()
        time.sleep(1.0)  # the cancellation arrives meanwhile
        return original(self)

    monkeypatch.setattr(AssetUpload, "complete", slow_complete)
    future = api.assets.Upload.future(
        requests(os.urandom(MiB + 1), path="cancelled/while-completing.ts"),
        metadata=acme.md(Role.INGEST),
    )
    assert completing.wait(30)
    future.cancel()
    assert future.cancelled()
    assert settle_leftovers(vault, acme) == (0, 0, 0)
    listed = api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md())
    assert listed.assets == []


# -- downloads ----------------------------------------------------------------------------


def test_a_cancelled_download_stops_cleanly(api: Stubs, acme):
    data = os.urandom(5 * MiB)
    asset = upload(api, acme, data)
    stream = api.assets.Download(asset_pb2.DownloadRequest(asset_id=asset.id), metadata=acme.md())
    next(stream)
    first = next(stream)
    assert data.startswith(first.chunk)
    stream.cancel()
    # The server is fine afterwards: the same asset downloads again.
    assert download(api, acme, asset.id)[1] == data


def _tamper(vault: Vault, tenant: Tenancy, at: int) -> None:
    [key] = list(vault.store.list_keys(f"t/{tenant.id}/"))
    info = vault.store.head(key)
    assert info is not None
    stored = bytearray(vault.store.get_range(key, 0, info.size))
    stored[at % info.size] ^= 0x01
    vault.store.put(key, [bytes(stored)])


def test_a_tampered_final_frame_is_data_loss_before_any_message(api: Stubs, acme, vault):
    asset = upload(api, acme, os.urandom(3 * MiB))
    _tamper(vault, acme, -20)
    received = []
    error = rpc_error(
        lambda: received.extend(
            api.assets.Download(asset_pb2.DownloadRequest(asset_id=asset.id), metadata=acme.md())
        )
    )
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert received == []


def test_a_tampered_middle_frame_ends_the_stream_with_data_loss(api: Stubs, acme, vault):
    data = os.urandom(3 * MiB)
    asset = upload(api, acme, data)
    _tamper(vault, acme, 2 * MiB)
    received = []
    error = rpc_error(
        lambda: received.extend(
            api.assets.Download(asset_pb2.DownloadRequest(asset_id=asset.id), metadata=acme.md())
        )
    )
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert received[0].WhichOneof("payload") == "header"
    assert data.startswith(b"".join(r.chunk for r in received[1:]))  # only genuine bytes
