"""Prometheus metrics: the one catalogue of what the service measures.

Every metric reelvault exports is defined here, on prometheus-client's default registry
(which also carries the process collector: RSS, CPU, open file descriptors). Components
import the metric they update; nothing else in the code base creates metrics, so
docs/operations.md can list them all from this file.

Label values are bounded sets (method names, status codes, dependency and operation
names, admission kinds): never a tenant id, asset id or path, which would grow the series
without bound and put identifiers in a monitoring system that is not access-audited.

:func:`serve_metrics` exposes the registry over HTTP on a port of its own (``GET
/metrics``), served by prometheus-client's threaded WSGI server: scrapes never run on the
event loop, and a slow scraper holds only its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from reelvault.errors import ConfigurationError

__all__ = [
    "ADMISSION_REJECTIONS",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DEPENDENCY_DURATION",
    "DEPENDENCY_ERRORS",
    "IN_FLIGHT",
    "MetricsServer",
    "READY",
    "REQUESTS",
    "REQUEST_DURATION",
    "SCRUB_BYTES",
    "SCRUB_DAMAGED",
    "SCRUB_LAST_PASS",
    "SCRUB_OBJECTS",
    "serve_metrics",
    "start_metrics_server",
]

_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

REQUESTS: Final = Counter(
    "reelvault_requests",
    "Calls answered, by transport method and final status code.",
    ("method", "code"),
)
REQUEST_DURATION: Final = Histogram(
    "reelvault_request_duration_seconds",
    "Time from a call's arrival to its last message, by method.",
    ("method",),
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT: Final = Gauge(
    "reelvault_requests_in_flight",
    "Calls being served right now, by method.",
    ("method",),
)
BYTES_RECEIVED: Final = Counter(
    "reelvault_received_bytes",
    "Request message bytes received from clients, by method (uploads dominate).",
    ("method",),
)
BYTES_SENT: Final = Counter(
    "reelvault_sent_bytes",
    "Response message bytes sent to clients, by method (downloads dominate).",
    ("method",),
)
ADMISSION_REJECTIONS: Final = Counter(
    "reelvault_admission_rejections",
    "Calls refused with RESOURCE_EXHAUSTED by admission control, by kind (upload,"
    " download, delete) and the limit that refused them (process, tenant).",
    ("kind", "limit"),
)
DEPENDENCY_DURATION: Final = Histogram(
    "reelvault_dependency_duration_seconds",
    "Latency of calls to a dependency (store, catalog, key_provider), by operation.",
    ("dependency", "operation"),
    buckets=_LATENCY_BUCKETS,
)
DEPENDENCY_ERRORS: Final = Counter(
    "reelvault_dependency_errors",
    "Failed calls to a dependency, by operation and the error class they raised.",
    ("dependency", "operation", "error"),
)
READY: Final = Gauge(
    "reelvault_dependency_ready",
    "1 if the dependency answered its last readiness probe, else 0.",
    ("dependency",),
)
SCRUB_OBJECTS: Final = Counter(
    "reelvault_scrub_objects",
    "Stored objects the integrity scrub has checked, by result (ok, damaged; skipped: the"
    " KEK may not decrypt; unchecked: the store did not answer).",
    ("result",),
)
SCRUB_BYTES: Final = Counter(
    "reelvault_scrub_bytes",
    "Stored (ciphertext) bytes the integrity scrub has read and authenticated.",
)
SCRUB_DAMAGED: Final = Gauge(
    "reelvault_scrub_damaged_objects",
    "Damaged objects found by the most recent complete scrub pass (or the current one so far).",
)
SCRUB_LAST_PASS: Final = Gauge(
    "reelvault_scrub_last_pass_completed_timestamp_seconds",
    "Unix time at which the last complete scrub pass finished (0: none yet).",
)


_log = structlog.get_logger("reelvault.metrics")


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running metrics endpoint; :meth:`close` stops it.

    Attributes:
        host: the address it listens on.
        port: the bound port (the real one when 0 was asked for).
    """

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """Where a scraper on this machine fetches the metrics."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(  # noqa: S104
            self.host, self.host
        )
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; waits up to half a second (the server's
        poll interval) for its loop to notice."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Serve the default registry at ``http://host:port/metrics`` from background threads.

    Args:
        host: the listen address (``127.0.0.1`` keeps it local to the machine).
        port: 0 picks a free port.

    Raises:
        ConfigurationError: the address cannot be resolved or bound (say, the port is in
            use).
    """
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:  # EADDRINUSE, EACCES, an unresolvable host
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port} (REELVAULT_METRICS_HOST, "
            f"REELVAULT_METRICS_PORT): {exc.strerror or exc}"
        ) from None
    thread.name = "reelvault-metrics"
    return MetricsServer(host, int(server.server_port), server, thread)


@contextlib.asynccontextmanager
async def serve_metrics(host: str, port: int | None) -> AsyncIterator[MetricsServer | None]:
    """Run the metrics endpoint for the block; nothing when ``port`` is None (metrics
    off). Starting and stopping run in a worker thread, off the event loop.

    Raises:
        ConfigurationError: as :func:`start_metrics_server`.
    """
    if port is None:
        yield None
        return
    server = await asyncio.to_thread(start_metrics_server, host, port)
    _log.info("metrics listening", url=server.url)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)
