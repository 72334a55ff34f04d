"""The service itself: ``kill -9`` of ``reelvault serve`` while uploads are mid-stream,
restarted on the same port as a supervisor would; and two ``reelvault serve`` processes
sharing one catalog and one bucket, with every call alternating between them (an upload
on one is read back through the other)."""

from __future__ import annotations

import time

import pytest
from load import Load, MiB, Mix

pytestmark = pytest.mark.faults

WARM_UP = 20
AFTER = 5.0
SHARED = 20.0  # seconds of load on the two replicas

# Large uploads paced so that several are always mid-stream, some past their first
# multipart part (5 MiB), when the process dies.
SLOW_UPLOADS = Mix(large_every=3, large_size=8 * MiB, chunk_pause=0.3)


def test_vault_killed_mid_upload_and_restarted(deployment, conclude):
    service = deployment.serve()
    load = Load([service.address], deployment.token, prefix="crash", seed=4, mix=SLOW_UPLOADS)
    with load:
        load.wait_until(lambda: load.committed_count() >= WARM_UP, 90, "warm-up")
        load.wait_until(lambda: load.mid_stream() >= 2, 60, "uploads mid-stream")
        mid_stream = load.mid_stream()
        service.kill()
        removed = time.monotonic()
        service.start()
        restart = time.monotonic() - removed
        recovery = load.recover(since=removed)
        time.sleep(AFTER)
        conclude(
            load,
            "vault-killed",
            f"vault killed (kill -9) with {mid_stream} uploads mid-stream, restarted",
            recovery,
            restart_seconds=restart,
        )


def test_two_replicas_share_one_catalog(deployment, conclude):
    replicas = [deployment.serve(), deployment.serve()]
    with Load([r.address for r in replicas], deployment.token, prefix="shared", seed=5) as load:
        time.sleep(SHARED)
        row = conclude(
            load,
            "two-replicas",
            "two `reelvault serve` on one catalog and bucket",
            None,
            faulted=False,
        )
        for address, tally in load.by_address().items():
            assert tally["ok"] > 0, f"{address} answered nothing: {tally}"
        assert row["failed"] == {}, row["failed"]
