"""``serve(Settings.load())`` as a real process: configured only through REELVAULT_*
variables, wired by ``Vault.from_settings`` (catalog, local keyring, SeaweedFS), serving
until a signal, then draining and exiting cleanly."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rpc_harness import CHANNEL_OPTIONS, Stubs, bearer
from serve_process import SERVE, Process, serve_environment

from reelvault.allocator import SETTINGS
from reelvault.app import Vault
from reelvault.auth import ApiKeys, Role
from reelvault.clock import SystemClock
from reelvault.config import Settings
from reelvault.keys import init_keyring
from reelvault.storage.seaweed import SeaweedServer
from reelvault.v1 import apikey_pb2, asset_pb2, tenant_pb2

pytestmark = pytest.mark.db


@pytest.fixture
def environment(database, seaweed: SeaweedServer, tmp_path: Path) -> dict[str, str]:
    keyring = tmp_path / "keyring.json"
    init_keyring(keyring)
    return serve_environment(database, seaweed, keyring, tmp_path / "data", "reelvault-serve")


@pytest.fixture
def process(environment) -> Iterator[Process]:
    process = Process(environment)
    try:
        yield process
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
        process.popen.wait(30)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_from_the_environment_until_signalled(process, database, environment, signum):
    port = process.wait_for_event("listening")["port"]
    assert port > 0
    platform_token = ApiKeys(database, SystemClock()).create(
        tenant_id=None, role=Role.PLATFORM_ADMIN
    )[1]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        api = Stubs(channel)
        platform = bearer(platform_token)
        tenant = api.tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(name="serve"), metadata=platform
        )
        ingest = api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(tenant_id=tenant.id, role=apikey_pb2.ROLE_INGEST),
            metadata=platform,
        ).secret
        data = os.urandom(6 * 1024 * 1024 + 5)  # two S3 parts of 5 MiB
        chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
        messages = [asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="a.ts"))]
        messages += [asset_pb2.UploadRequest(chunk=c) for c in chunks]
        messages.append(asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()))
        asset = api.assets.Upload(iter(messages), metadata=bearer(ingest))
        responses = list(
            api.assets.Download(
                asset_pb2.DownloadRequest(asset_id=asset.id), metadata=bearer(ingest)
            )
        )
        assert b"".join(r.chunk for r in responses[1:]) == data

    process.popen.send_signal(signum)
    assert process.popen.wait(30) == 0
    process.wait_for_event("stopped")
    assert len(process.lines) == len(process.raw)  # every line is structured (JSON)
    assert not [line for line in process.lines if line["level"] in ("warning", "error")]
    access = [line for line in process.lines if line.get("event") == "rpc"]
    assert {line["status"] for line in access} == {"OK"}
    everything = "".join(process.raw)
    assert environment["REELVAULT_S3_SECRET_ACCESS_KEY"] not in everything
    assert platform_token.split("_", 2)[2] not in everything
    assert ingest.split("_", 2)[2] not in everything


def test_from_settings_wires_the_same_graph(environment, seaweed):
    settings = Settings.load(environment)
    vault = Vault.from_settings(settings)
    try:
        tenant = vault.tenant_keys.create_tenant("wired")
        assert vault.tenant_keys.get_tenant(tenant.id) == tenant
        assert vault.assets.list(tenant.id) == ([], "")
    finally:
        vault.close()


def test_a_missing_keyring_stops_the_start(environment, tmp_path):
    environment["REELVAULT_KEYRING"] = str(tmp_path / "nowhere.json")
    result = subprocess.run(
        [sys.executable, "-c", SERVE],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "nowhere.json" in result.stderr


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class _PeakRss(threading.Thread):
    """Samples a process's resident set every 20 ms (memory, not time: no timing assert)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._halt = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, _rss_bytes(self.pid))
            self._halt.wait(0.02)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_1GiB_upload_and_download_keep_server_memory_flat(environment, database):
    """The server streams: a 1 GiB asset passes through bounded buffers (chunks, frames,
    parts in flight), so its resident memory must not grow with the asset."""
    for name in SETTINGS:  # the server tunes malloc itself (reelvault.allocator)
        environment.pop(name, None)
    process = Process(environment)
    try:
        port = process.wait_for_event("listening")["port"]
        keys = ApiKeys(database, SystemClock())
        platform = bearer(keys.create(tenant_id=None, role=Role.PLATFORM_ADMIN)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            api = Stubs(channel)
            tenant = api.tenants.CreateTenant(
                tenant_pb2.CreateTenantRequest(name="big"), metadata=platform
            )
            ingest = bearer(
                api.keys.CreateApiKey(
                    apikey_pb2.CreateApiKeyRequest(
                        tenant_id=tenant.id, role=apikey_pb2.ROLE_INGEST
                    ),
                    metadata=platform,
                ).secret
            )
            blocks = [os.urandom(1 << 20) for _ in range(7)]  # incompressible, not one block
            sent = hashlib.sha256()

            def messages() -> Iterator[asset_pb2.UploadRequest]:
                yield asset_pb2.UploadRequest(
                    metadata=asset_pb2.AssetMetadata(path="big.mxf", expected_size=1 << 30)
                )
                for i in range(1024):
                    sent.update(blocks[i % 7])
                    yield asset_pb2.UploadRequest(chunk=blocks[i % 7])
                yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())

            baseline = _rss_bytes(process.popen.pid)
            sampler = _PeakRss(process.popen.pid)
            sampler.start()
            try:
                asset = api.assets.Upload(messages(), metadata=ingest)
                received, size = hashlib.sha256(), 0
                for response in api.assets.Download(
                    asset_pb2.DownloadRequest(asset_id=asset.id), metadata=ingest
                ):
                    received.update(response.chunk)
                    size += len(response.chunk)
            finally:
                peak = sampler.stop()
        assert asset.size == size == 1 << 30
        assert asset.sha256 == sent.digest() == received.digest()
        growth = peak - baseline
        assert growth < 160 * 1024 * 1024, f"server RSS grew by {growth >> 20} MiB for 1 GiB"
    finally:
        process.popen.send_signal(signal.SIGTERM)
        process.popen.wait(60)
