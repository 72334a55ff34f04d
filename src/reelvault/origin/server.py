"""Running the origin: uvicorn with ``origin_workers`` processes on one listening socket.

The parent binds the socket (so ``origin_port`` 0 works and the bound port is known
before any worker starts), migrates the catalog once, and hands the socket to uvicorn;
each worker process builds its own :class:`~reelvault.app.Vault` from the same settings
(read again from the environment, which the parent pins with ``REELVAULT_CONFIG``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any, Final

import uvicorn
from uvicorn.supervisors import Multiprocess

from reelvault import allocator
from reelvault.app import Vault
from reelvault.config import CONFIG_FILE_ENV, Settings
from reelvault.logging import configure_logging
from reelvault.origin.app import OriginApp, OriginConfig, create_app

__all__ = ["MAX_CONNECTIONS_PER_WORKER", "UVICORN_OPTIONS", "app_from_environment", "bind", "run"]

MAX_CONNECTIONS_PER_WORKER: Final = 512
"""uvicorn answers 503 beyond this many concurrent connections per worker."""

UVICORN_OPTIONS: Final[dict[str, Any]] = {
    "http": "httptools",
    "access_log": False,  # every fetch is in the audit log
    "log_config": None,  # reelvault's structlog setup stays in charge
    "proxy_headers": False,  # client IPs: OriginConfig.trusted_proxies decides, nobody else
    "server_header": False,
    "limit_concurrency": MAX_CONNECTIONS_PER_WORKER,
    "timeout_keep_alive": 15,
}
"""How every origin runs uvicorn: ``reelvault origin``, ``reelvault dev``, the tests and
the benchmark's bare relay, so that none of them differs from production by accident."""


def app_from_environment() -> OriginApp:
    """The factory each worker process calls: the settings from the environment."""
    allocator.tune()  # each worker process, before its threads start (as serve does)
    settings = Settings.load()
    configure_logging(settings.log_level, settings.log_format)
    vault = Vault.from_settings(settings, migrate=False)
    app = create_app(vault, OriginConfig.from_settings(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            vault.close()

    app.lifespan_context = lifespan
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(
    settings: Settings, *, config_file: str | None = None, sock: socket.socket | None = None
) -> None:
    """Serve until interrupted. Migrates the catalog first (workers never do)."""
    if config_file is not None:
        os.environ[CONFIG_FILE_ENV] = os.path.abspath(config_file)
    Vault.from_settings(settings).close()  # migrate, and fail here on a broken config
    if sock is None:
        sock = bind(settings.origin_host, settings.origin_port)
    config = uvicorn.Config(
        "reelvault.origin.server:app_from_environment",
        factory=True,
        fd=sock.fileno(),
        workers=settings.origin_workers,
        loop="uvloop",
        lifespan="on",
        **UVICORN_OPTIONS,
    )
    server = uvicorn.Server(config)
    if settings.origin_workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        server.run(sockets=[sock])
