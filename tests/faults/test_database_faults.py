"""The catalog database stops under load (``pg_ctl stop -m fast``: every session cut) and
starts again; the service, on PostgreSQL, must lose nothing, show nothing partial, and
answer again once the database is back."""

from __future__ import annotations

import time

import pytest
from load import Load

pytestmark = pytest.mark.faults

WARM_UP = 20
DOWN = 10.0
AFTER = 5.0


def test_database_stopped_and_restarted(deployment, postgres, conclude):
    service = deployment.serve()
    with Load([service.address], deployment.token, prefix="database", seed=3) as load:
        load.wait_until(lambda: load.committed_count() >= WARM_UP, 60, "warm-up")
        postgres.stop()
        try:
            time.sleep(DOWN)
        finally:
            removed = time.monotonic()
            postgres.start()
        restart = time.monotonic() - removed
        recovery = load.recover(since=removed)
        time.sleep(AFTER)
        conclude(
            load,
            "database-restarted",
            f"database stopped {DOWN:.0f} s (pg_ctl stop -m fast), started",
            recovery,
            restart_seconds=restart,
        )
