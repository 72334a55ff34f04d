"""A ``weed`` left running by an owner that died is stopped, and nothing else is.

No SeaweedFS here: the "weed" is Python run through a link named ``weed``, so its command
line is ``.../weed -c ... mini -dir=DIR`` as the real one's would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reelvault._files import try_lock
from reelvault.errors import ConfigurationError
from reelvault.storage.seaweed import SeaweedServer, stop_orphan

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux only")

SLEEP = "import sys, time; print('up', flush=True); time.sleep(60)"

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start a process named ``name`` with ``args`` after ``-c SLEEP``, once it runs."""
    (tmp_path / "bin").mkdir()
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        link = tmp_path / "bin" / name
        if not link.exists():
            link.symlink_to(os.path.realpath(sys.executable))
        process = subprocess.Popen(
            [str(link), "-I", "-S", "-c", SLEEP, *args], stdout=subprocess.PIPE
        )
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == b"up\n"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "seaweedfs"
    path.mkdir()
    return path


def record(data_dir: Path, process: subprocess.Popen[bytes]) -> None:
    (data_dir / "reelvault-weed.pid").write_text(f"{process.pid}\n")


def test_a_weed_on_this_directory_is_stopped(spawn: Spawn, data_dir: Path) -> None:
    orphan = spawn("weed", "mini", f"-dir={data_dir}")
    record(data_dir, orphan)
    assert stop_orphan(data_dir) == orphan.pid
    assert orphan.wait(10) == -signal.SIGTERM
    assert not (data_dir / "reelvault-weed.pid").exists()
    assert stop_orphan(data_dir) is None  # nothing left to do


@pytest.mark.parametrize(
    ("name", "dir_flag"),
    [("weed", "-dir={other}"), ("python", "-dir={ours}"), ("weed", "-dir={ours}/sub")],
    ids=["weed-on-another-directory", "not-weed", "weed-below-this-directory"],
)
def test_a_recorded_process_that_is_not_our_weed_is_left_alone(
    spawn: Spawn, data_dir: Path, tmp_path: Path, name: str, dir_flag: str
) -> None:
    bystander = spawn(name, "mini", dir_flag.format(other=tmp_path / "other", ours=data_dir))
    record(data_dir, bystander)  # a pid reused since, say
    assert stop_orphan(data_dir) is None
    assert bystander.poll() is None
    assert not (data_dir / "reelvault-weed.pid").exists()


def test_a_recorded_pid_that_is_gone_or_garbled_is_forgotten(data_dir: Path) -> None:
    for content in ("999999999\n", "garbled\n"):
        (data_dir / "reelvault-weed.pid").write_text(content)
        assert stop_orphan(data_dir) is None
        assert not (data_dir / "reelvault-weed.pid").exists()


def test_without_a_pid_file_nothing_is_touched(data_dir: Path) -> None:
    assert stop_orphan(data_dir) is None
    assert stop_orphan(data_dir / "missing") is None
    assert list(data_dir.iterdir()) == []


def test_a_directory_a_live_server_holds_is_refused(
    spawn: Spawn, data_dir: Path, tmp_path: Path
) -> None:
    weed = spawn("weed", "mini", f"-dir={data_dir}")  # the live server's own weed
    record(data_dir, weed)
    lock = try_lock(data_dir / "reelvault.lock")
    assert lock is not None
    try:
        with pytest.raises(ConfigurationError, match=f"in use by process {os.getpid()}"):
            stop_orphan(data_dir)
        server = SeaweedServer(data_dir, binary=tmp_path / "bin" / "weed")
        with pytest.raises(ConfigurationError, match=f"in use by process {os.getpid()}"):
            server.start()
        assert not server.running()
    finally:
        os.close(lock)
    assert weed.poll() is None
    assert (data_dir / "reelvault-weed.pid").exists()
