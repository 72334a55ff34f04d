"""The server's log line for stored data that failed an integrity check: it always says
why, for the operator (the client hears only DATA_LOSS and the generic message). A missing
or truncated object has no ``reason`` attribute (only a DecryptionError does); its line
once carried ``"reason": null``. Over the in-memory store and a real SeaweedFS."""

from __future__ import annotations

import os

import grpc
import pytest
from rpc_harness import MiB, Stubs, Tenancy, wait_for
from structlog.testing import capture_logs

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db

_EVENT = "stored data failed an integrity check"


@pytest.fixture
def vault(database, root_provider, clock, store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)


def _upload(api: Stubs, tenant: Tenancy, data: bytes) -> asset_pb2.Asset:
    def requests():
        yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="seg-1.ts"))
        for at in range(0, len(data), MiB):
            yield asset_pb2.UploadRequest(chunk=data[at : at + MiB])
        yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())

    return api.assets.Upload(requests(), metadata=tenant.md(Role.INGEST))


def _object_key(vault: Vault, tenant: Tenancy) -> str:
    [key] = list(vault.store.list_keys(f"t/{tenant.id}/"))
    return key


def _download_fails_with_data_loss(api: Stubs, tenant: Tenancy, asset_id: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(
            api.assets.Download(
                asset_pb2.DownloadRequest(asset_id=asset_id), metadata=tenant.md(Role.RENDERER)
            )
        )
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS


def _integrity_lines(logs: list[dict]) -> list[dict]:
    return wait_for(lambda: [e for e in logs if e["event"] == _EVENT], count=1)


def test_a_missing_stored_object_is_logged_with_a_reason(api: Stubs, acme, vault):
    asset = _upload(api, acme, os.urandom(2 * MiB + 5))
    vault.store.delete(_object_key(vault, acme))
    with capture_logs() as logs:
        _download_fails_with_data_loss(api, acme, asset.id)
        lines = _integrity_lines(logs)
    assert len(lines) == 1
    assert lines[0]["reason"] == "the stored object is missing or truncated"
    assert lines[0]["log_level"] == "error"


def test_a_tampered_stored_object_is_logged_with_the_decryption_reason(api: Stubs, acme, vault):
    asset = _upload(api, acme, os.urandom(2 * MiB + 5))
    key = _object_key(vault, acme)
    info = vault.store.head(key)
    assert info is not None
    stored = bytearray(vault.store.get_range(key, 0, info.size))
    stored[-20] ^= 0x01  # in the final frame: the failure comes before any chunk
    vault.store.put(key, [bytes(stored)])
    with capture_logs() as logs:
        _download_fails_with_data_loss(api, acme, asset.id)
        lines = _integrity_lines(logs)
    assert len(lines) == 1
    reason = lines[0]["reason"]
    assert isinstance(reason, str) and reason  # the DecryptionError's own reason
    assert reason != "unspecified"
