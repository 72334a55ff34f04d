"""Private files and lock files (``reelvault._files``), and the catalog created private."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reelvault._files import (
    append_private,
    create_private,
    ensure_private,
    lock_holder,
    replace_private,
    try_lock,
)
from reelvault.catalog.db import Database


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    """The modes below hold whatever the umask allows: test under the loosest one."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_create_private_refuses_an_existing_file_and_a_link(tmp_path: Path) -> None:
    os.close(create_private(tmp_path / "secret"))
    assert mode(tmp_path / "secret") == 0o600
    with pytest.raises(FileExistsError):
        create_private(tmp_path / "secret")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        create_private(tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()


def test_ensure_private_creates_file_and_directory_and_keeps_an_existing_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "catalog.sqlite3"
    ensure_private(path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert path.read_bytes() == b""
    path.write_bytes(b"kept")
    path.chmod(0o640)
    ensure_private(path)
    assert path.read_bytes() == b"kept"
    assert mode(path) == 0o640


def test_append_private_creates_0600_and_narrows_an_old_log(tmp_path: Path) -> None:
    log = tmp_path / "weed.log"
    log.write_bytes(b"old\n")
    log.chmod(0o644)
    fd = append_private(log)
    try:
        os.write(fd, b"new\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"old\nnew\n"
    assert mode(log) == 0o600
    fresh = tmp_path / "fresh.log"
    os.close(append_private(fresh))
    assert mode(fresh) == 0o600


def test_replace_private_swaps_the_whole_file_in(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text("old")
    path.chmod(0o644)
    replace_private(path, "new")
    assert path.read_text() == "new"
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.json"]  # no temporary left


def test_a_lock_is_exclusive_records_its_holder_and_is_released_on_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dev.lock"
    first = try_lock(path)
    assert first is not None
    assert mode(path) == 0o600
    assert lock_holder(path) == os.getpid()
    assert try_lock(path) is None  # another open, even in this process
    os.close(first)
    second = try_lock(path)
    assert second is not None
    os.close(second)


def test_a_lock_dies_with_its_process_even_on_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "dev.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from reelvault._files import try_lock\n"
         "assert try_lock(sys.argv[1]) is not None; print('locked', flush=True); time.sleep(60)",
         str(path)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        assert try_lock(path) is None
        assert lock_holder(path) == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    fd = try_lock(path)
    assert fd is not None  # never stale
    os.close(fd)
    assert lock_holder(path) == os.getpid()


def test_lock_holder_of_a_missing_or_garbled_file_is_unknown(tmp_path: Path) -> None:
    assert lock_holder(tmp_path / "missing") is None
    (tmp_path / "garbled").write_text("not a pid")
    assert lock_holder(tmp_path / "garbled") is None


def test_the_sqlite_catalog_and_its_wal_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "catalog.sqlite3"
    database = Database(f"sqlite:///{path}")
    try:
        database.migrate()
        with database.transaction() as session:  # a connection in WAL mode: -wal and -shm
            session.connection().exec_driver_sql("SELECT 1")
            names = sorted(p.name for p in path.parent.iterdir())
            assert names == ["catalog.sqlite3", "catalog.sqlite3-shm", "catalog.sqlite3-wal"]
            modes = {name: mode(path.parent / name) for name in names}
            assert modes == dict.fromkeys(names, 0o600)
    finally:
        database.dispose()
    assert mode(path.parent) == 0o700
