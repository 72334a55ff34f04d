"""The object store fails under load: SeaweedFS paused (SIGSTOP) and resumed, then killed
(SIGKILL) and restarted on the same directory and ports. Catalog-only calls are not
asserted to keep answering here (the isolation tests do that); what must hold is that
nothing committed is lost, nothing partial becomes visible, and the service recovers."""

from __future__ import annotations

import time

import pytest
from load import Load

pytestmark = pytest.mark.faults

WARM_UP = 20  # committed uploads before the fault
PAUSE = 20.0  # seconds the store stays stopped
DOWN = 5.0  # seconds the store stays dead before it is restarted
AFTER = 5.0  # seconds of load after recovery


def test_store_paused_and_resumed(deployment, conclude):
    service = deployment.serve()
    with Load([service.address], deployment.token, prefix="paused", seed=1) as load:
        load.wait_until(lambda: load.committed_count() >= WARM_UP, 60, "warm-up")
        deployment.store.pause()
        time.sleep(PAUSE)
        removed = time.monotonic()
        deployment.store.resume()
        recovery = load.recover(since=removed)
        time.sleep(AFTER)
        conclude(load, "store-paused", f"store paused {PAUSE:.0f} s (SIGSTOP, SIGCONT)", recovery)


def test_store_killed_and_restarted(deployment, conclude):
    service = deployment.serve()
    with Load([service.address], deployment.token, prefix="killed", seed=2) as load:
        load.wait_until(lambda: load.committed_count() >= WARM_UP, 60, "warm-up")
        deployment.store.kill()
        time.sleep(DOWN)
        removed = time.monotonic()
        deployment.store.restart()
        restart = time.monotonic() - removed
        recovery = load.recover(since=removed)
        time.sleep(AFTER)
        conclude(
            load,
            "store-killed",
            f"store killed (SIGKILL), restarted after {DOWN:.0f} s",
            recovery,
            restart_seconds=restart,
        )
