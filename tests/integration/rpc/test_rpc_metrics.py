"""The metrics endpoint beside a real server: what calls move, and scrapes under load.

Prometheus metrics are process-wide and other tests move them too, so every assertion is
on the change between two scrapes of the endpoint, never on an absolute value (except
the in-flight gauge, which is back to zero whenever no call runs).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families
from rpc_harness import CHANNEL_OPTIONS, MiB, ServerThread, Stubs, Tenancy, make_tenancy
from serve_process import Process, serve_environment

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.catalog import Database
from reelvault.keys import init_keyring
from reelvault.metrics import MetricsServer, start_metrics_server
from reelvault.storage.seaweed import SeaweedServer
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db

ASSETS = "/reelvault.v1.AssetService/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
MISSING = "0" * 32  # a well-formed asset id that no asset has

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def vault(database, root_provider, clock, memory_store) -> Vault:
    """Measured as Vault.from_settings measures a production vault."""
    return Vault.from_parts(
        database=database, root=root_provider, store=memory_store, clock=clock, instrumented=True
    )


@pytest.fixture
def metrics() -> Iterator[MetricsServer]:
    server = start_metrics_server("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.close()


def scrape(metrics: MetricsServer | str) -> Samples:
    url = metrics if isinstance(metrics, str) else metrics.url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def requests(data: bytes, path: str) -> Iterator[asset_pb2.UploadRequest]:
    yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path))
    for at in range(0, len(data), MiB):
        yield asset_pb2.UploadRequest(chunk=data[at : at + MiB])
    yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())


def upload(api: Stubs, tenant: Tenancy, data: bytes, path: str) -> asset_pb2.Asset:
    return api.assets.Upload(requests(data, path), metadata=tenant.md(Role.INGEST))


def download(api: Stubs, tenant: Tenancy, asset_id: str) -> bytes:
    responses = api.assets.Download(
        asset_pb2.DownloadRequest(asset_id=asset_id), metadata=tenant.md(Role.RENDERER)
    )
    return b"".join(r.chunk for r in responses)


def stat(api: Stubs, tenant: Tenancy, asset_id: str) -> asset_pb2.Asset:
    return api.assets.StatAsset(
        asset_pb2.StatAssetRequest(asset_id=asset_id), metadata=tenant.md(Role.RENDERER)
    )


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_calls_move_their_counters_by_method_and_code(
    api: Stubs, vault: Vault, metrics: MetricsServer
):
    before = scrape(metrics)
    tenant = make_tenancy(vault, "metrics")  # a KEK made by the (measured) key provider
    data = os.urandom(3 * MiB + 5)
    asset = upload(api, tenant, data, "m/a.ts")
    assert download(api, tenant, asset.id) == data
    stat(api, tenant, asset.id)
    stat(api, tenant, asset.id)
    assert code_of(lambda: stat(api, tenant, MISSING)) == grpc.StatusCode.NOT_FOUND
    unauthenticated = code_of(
        lambda: api.assets.StatAsset(asset_pb2.StatAssetRequest(asset_id=asset.id))
    )
    assert unauthenticated == grpc.StatusCode.UNAUTHENTICATED
    api.health.Check(health_pb2.HealthCheckRequest())
    after = scrape(metrics)

    def calls(method: str, code: str) -> float:
        return delta(before, after, "reelvault_requests_total", method=method, code=code)

    assert calls(ASSETS + "Upload", "OK") == 1
    assert calls(ASSETS + "Download", "OK") == 1
    assert calls(ASSETS + "StatAsset", "OK") == 2
    assert calls(ASSETS + "StatAsset", "NOT_FOUND") == 1
    assert calls(ASSETS + "StatAsset", "UNAUTHENTICATED") == 1
    assert calls(HEALTH_CHECK, "OK") == 1
    timed = "reelvault_request_duration_seconds_count"
    assert delta(before, after, timed, method=ASSETS + "StatAsset") == 4
    assert delta(before, after, timed, method=ASSETS + "Upload") == 1
    for method in ("Upload", "Download", "StatAsset"):
        assert value(after, "reelvault_requests_in_flight", method=ASSETS + method) == 0

    # Wire bytes: the payload plus a little framing and the metadata messages.
    received = delta(before, after, "reelvault_received_bytes_total", method=ASSETS + "Upload")
    sent = delta(before, after, "reelvault_sent_bytes_total", method=ASSETS + "Download")
    assert len(data) < received < len(data) + 4096
    assert len(data) < sent < len(data) + 4096
    assert delta(before, after, "reelvault_sent_bytes_total", method=ASSETS + "StatAsset") > 0

    # The dependencies the calls went through.
    dependency = "reelvault_dependency_duration_seconds_count"
    assert delta(before, after, dependency, dependency="store", operation="begin") == 1
    assert delta(before, after, dependency, dependency="store", operation="upload_complete") == 1
    assert delta(before, after, dependency, dependency="catalog", operation="select") > 0
    assert delta(before, after, dependency, dependency="catalog", operation="insert") > 0
    generated = delta(
        before, after, dependency, dependency="key_provider", operation="generate_key"
    )
    assert generated >= 1


def test_a_failing_store_shows_in_the_errors_and_the_status(
    api: Stubs, memory_store, acme: Tenancy, metrics: MetricsServer
):
    asset = upload(api, acme, os.urandom(MiB), "m/b.ts")
    for key in list(memory_store.list_keys(f"t/{acme.id}/")):
        memory_store.delete(key)  # the object is gone; its catalog row is not
    before = scrape(metrics)
    code = code_of(lambda: download(api, acme, asset.id))
    after = scrape(metrics)

    failed = delta(
        before, after, "reelvault_requests_total", method=ASSETS + "Download", code=code.name
    )
    assert failed == 1
    store_errors = [
        (dict(labels), value(after, name, **dict(labels)) - value(before, name, **dict(labels)))
        for name, labels in after
        if name == "reelvault_dependency_errors_total" and ("dependency", "store") in labels
    ]
    moved = [(labels, change) for labels, change in store_errors if change]
    assert moved
    assert all(labels["error"] == "NotFound" for labels, _ in moved)


def test_the_endpoint_answers_every_scrape_under_load(
    server: ServerThread, vault: Vault, acme: Tenancy, metrics: MetricsServer
):
    """Eight clients call StatAsset and Download as fast as they can for two seconds while
    Prometheus-style scrapes run back to back: each answers 200 and parses, and the
    counters agree with what the clients did."""
    with server.channel() as channel:
        asset = upload(Stubs(channel), acme, os.urandom(MiB + 17), "m/load.ts")
    before = scrape(metrics)
    stop = threading.Event()
    done: list[int] = []
    failures: list[BaseException] = []

    def client() -> None:
        count = 0
        try:
            with server.channel() as channel:
                api = Stubs(channel)
                while not stop.is_set():
                    stat(api, acme, asset.id)
                    assert len(download(api, acme, asset.id)) == MiB + 17
                    count += 1
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.append(count)

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    scrapes, slowest = 0, 0.0
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            samples = scrape(metrics)  # 200 and parseable, or it raises
            slowest = max(slowest, time.monotonic() - started)
            assert ("reelvault_requests_total", frozenset()) not in samples
            scrapes += 1
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    assert not failures, failures
    after = scrape(metrics)

    assert scrapes >= 5
    assert slowest < 5.0
    pairs = sum(done)
    assert pairs >= 8
    for method in ("StatAsset", "Download"):
        moved = delta(before, after, "reelvault_requests_total", method=ASSETS + method, code="OK")
        assert moved == pairs
        assert value(after, "reelvault_requests_in_flight", method=ASSETS + method) == 0


def test_serve_runs_the_endpoint_when_configured(
    database: Database, seaweed: SeaweedServer, tmp_path
):
    """``reelvault serve`` with REELVAULT_METRICS_PORT: the endpoint is up while it
    serves, measures the vault from_settings built, and is gone after the drain."""
    keyring = tmp_path / "keyring.json"
    init_keyring(keyring)
    environment = serve_environment(database, seaweed, keyring, tmp_path / "d", "rv-metrics")
    environment["REELVAULT_METRICS_PORT"] = "0"
    process = Process(environment)
    try:
        url = process.wait_for_event("metrics listening")["url"]
        port = process.wait_for_event("listening")["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            Stubs(channel).health.Check(health_pb2.HealthCheckRequest())
        samples = scrape(url)
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(30) == 0
    finally:
        process.stop()

    assert value(samples, "reelvault_requests_total", method=HEALTH_CHECK, code="OK") == 1
    catalog = "reelvault_dependency_duration_seconds_count"
    assert value(samples, catalog, dependency="catalog", operation="select") > 0
    with pytest.raises(OSError):  # URLError: nothing listens any more
        scrape(url)
