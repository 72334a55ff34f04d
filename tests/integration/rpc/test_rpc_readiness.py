"""Health that means something (issue #8): each service's readiness follows whether the
catalog, the object store and the key provider answer, from cached probes.

The symptom this reproduces: with the object store stalled, health said SERVING
throughout while every store-bound call failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpc_harness import ServerThread

from reelvault.app import Vault
from reelvault.config import Settings
from reelvault.errors import Unavailable
from reelvault.readiness import Readiness
from reelvault.rpc.server import LIVENESS, readiness
from reelvault.storage import MemoryObjectStore

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ASSETS = "reelvault.v1.AssetService"
TENANTS = "reelvault.v1.TenantService"
AUDIT = "reelvault.v1.AuditService"

pytestmark = pytest.mark.db


class SwitchableStore(MemoryObjectStore):
    """A store whose HEAD fails (``broken``) or hangs (``frozen``) on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.frozen = threading.Event()
        self.thawed = threading.Event()

    def head(self, key: str):
        if self.frozen.is_set():
            self.thawed.wait(30)
        if self.broken:
            raise Unavailable("object store unavailable")
        return super().head(key)


@pytest.fixture
def switchable() -> SwitchableStore:
    return SwitchableStore()


@pytest.fixture
def vault(database, root_provider, clock, switchable) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=switchable, clock=clock)


@pytest.fixture
def watched(vault: Vault) -> Iterator[ServerThread]:
    settings = Settings(grpc_port=0, shutdown_grace=1.0, readiness_interval=0.05)
    thread = ServerThread(vault, settings)
    stop = asyncio.Event()
    entered = threading.Event()

    async def watch() -> None:
        async with readiness(vault, settings, thread.health):
            entered.set()
            await stop.wait()

    task = thread.submit(watch())
    assert entered.wait(30)
    try:
        yield thread
    finally:
        thread.run(_set(stop))
        with contextlib.suppress(Exception):
            task.result(30)
        thread.close()


async def _set(event: asyncio.Event) -> None:
    event.set()


def _status(thread: ServerThread, service: str) -> int:
    with thread.channel() as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(answer.status)


def _eventually(thread: ServerThread, expected: dict[str, int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = {service: _status(thread, service) for service in expected}
        if seen == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"health {seen}, expected {expected}")
        time.sleep(0.05)


def test_a_failing_store_makes_the_asset_service_not_ready(watched, switchable):
    _eventually(watched, {"": SERVING, ASSETS: SERVING, TENANTS: SERVING, LIVENESS: SERVING})
    switchable.broken = True
    # The asset service needs the store; the tenant and audit services do not.
    # The server stays in rotation: catalog-only calls still work.
    _eventually(
        watched,
        {"": SERVING, ASSETS: NOT_SERVING, TENANTS: SERVING, AUDIT: SERVING, LIVENESS: SERVING},
    )
    switchable.broken = False
    _eventually(watched, {"": SERVING, ASSETS: SERVING})


def test_a_frozen_store_is_not_ready_and_probes_do_not_pile_up(watched, switchable):
    switchable.frozen.set()
    try:
        _eventually(watched, {"": SERVING, ASSETS: NOT_SERVING, LIVENESS: SERVING})
        # Health answers from the cache at once while the store probe hangs.
        started = time.monotonic()
        for _ in range(20):
            assert _status(watched, ASSETS) == NOT_SERVING
        checks = time.monotonic() - started
        names = [t.name for t in threading.enumerate()]
        print(f"\n20 health checks with the store frozen: {checks * 1000:.0f} ms")
        assert len(names) < 200  # one stuck probe, not one per round
    finally:
        switchable.thawed.set()
        switchable.frozen.clear()
    _eventually(watched, {"": SERVING, ASSETS: SERVING})


def test_the_catalog_probe_fails_when_the_catalog_does_not_answer(
    database, switchable, root_provider
):
    checker = Readiness(database, switchable, root_provider, timeout=5.0)
    assert asyncio.run(checker.probe()) == {"catalog": True, "store": True, "key_provider": True}
    broken = Readiness(_Broken(), switchable, root_provider, timeout=5.0)  # type: ignore[arg-type]
    assert asyncio.run(broken.probe()) == {
        "catalog": False,
        "store": True,
        "key_provider": True,
    }


class _Broken:
    @contextlib.contextmanager
    def transaction(self, *, readonly: bool = False):
        raise Unavailable("catalog database unavailable")
        yield


def test_the_key_provider_probe_is_used_where_there_is_one(database, switchable):
    class Provider:
        healthy = True

        def probe(self) -> None:
            if not self.healthy:
                raise Unavailable("key provider unavailable")

    provider = Provider()
    checker = Readiness(database, switchable, provider, timeout=5.0)  # type: ignore[arg-type]
    assert asyncio.run(checker.probe())["key_provider"] is True
    provider.healthy = False
    assert asyncio.run(checker.probe())["key_provider"] is False
