"""``reelvault serve`` as a child process, configured only through REELVAULT_* variables,
for the tests that need real service processes (signals, several replicas)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from reelvault.catalog import Database
from reelvault.storage.seaweed import SeaweedServer

SERVE = "import asyncio; from reelvault.config import Settings; from reelvault.rpc import serve; "
SERVE += "asyncio.run(serve(Settings.load()))"
TUNED_SERVE = "from reelvault import allocator; allocator.tune(); " + SERVE
"""As ``reelvault serve`` runs: with its malloc settings (memory measurements need them)."""


class Process:
    """The service as a child process, with its JSON log lines collected as they come."""

    def __init__(self, env: dict[str, str], code: str = SERVE) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.raw.append(line)
            with contextlib.suppress(ValueError):  # not every line is ours (warnings)
                self.lines.append(json.loads(line))

    def wait_for_event(self, event: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.get("event") == event:
                    return line
            if self.popen.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} log line; stderr:\n{''.join(self.raw)}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)


def serve_environment(
    database: Database, seaweed: SeaweedServer, keyring: Path, data_dir: Path, bucket: str
) -> dict[str, str]:
    """The variables of a service over ``database``, ``keyring`` and a SeaweedFS bucket."""
    seaweed.object_store(bucket, create=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELVAULT_")}
    env.update(
        {
            "REELVAULT_DATA_DIR": str(data_dir),
            "REELVAULT_DATABASE_URL": database.engine.url.render_as_string(hide_password=False),
            "REELVAULT_KEYRING": str(keyring),
            "REELVAULT_S3_ENDPOINT_URL": seaweed.endpoint_url,
            "REELVAULT_S3_BUCKET": bucket,
            "REELVAULT_S3_REGION": seaweed.region,
            "REELVAULT_S3_ACCESS_KEY_ID": seaweed.access_key,
            "REELVAULT_S3_SECRET_ACCESS_KEY": seaweed.secret_key,
            "REELVAULT_S3_PART_SIZE": "5MiB",
            "REELVAULT_GRPC_PORT": "0",
            "REELVAULT_SHUTDOWN_GRACE": "5",
            "REELVAULT_LOG_FORMAT": "json",
        }
    )
    return env
