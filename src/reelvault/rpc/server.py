"""The gRPC server: construction, TLS, health, reflection and graceful shutdown.

:func:`create_server` builds a ``grpc.aio`` server for a :class:`~reelvault.app.Vault` and
binds it, returning the bound port, so tests listen on port 0. :func:`serve` runs one
until SIGTERM or SIGINT, then :func:`shutdown` drains it:

1. the health service answers ``NOT_SERVING`` for every service, so load balancers stop
   routing here;
2. the server stops accepting calls; calls in flight (a long download, say) have up to
   ``shutdown_grace`` seconds to finish;
3. calls still running then are cancelled: an upload cancelled this way aborts its
   multipart upload and leaves nothing behind.

A second signal during the drain cancels the remaining calls at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import grpc  # type: ignore[import-untyped, unused-ignore]
import structlog
from grpc_health.v1 import (  # type: ignore[import-untyped, unused-ignore]
    health,
    health_pb2,
    health_pb2_grpc,
)
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped, unused-ignore]

from reelvault import allocator, preflight, tracing
from reelvault._version import package_version
from reelvault.admission import Admission
from reelvault.app import Vault
from reelvault.config import Settings
from reelvault.errors import ConfigurationError
from reelvault.logging import configure_logging
from reelvault.metrics import serve_metrics
from reelvault.readiness import DEPENDENCIES, Readiness
from reelvault.rpc import convert
from reelvault.rpc.bulkhead import StorePool
from reelvault.rpc.interceptors import VaultInterceptor
from reelvault.rpc.privacy_servicers import (
    ConsentServicer,
    KeyServicer,
    PayloadServicer,
    PrivacyServicer,
)
from reelvault.rpc.servicers import (
    ApiKeyServicer,
    AssetServicer,
    AuditServicer,
    DistributionServicer,
    TenantServicer,
)
from reelvault.scrub import run_scrubber
from reelvault.startup_warnings import warn_at_startup
from reelvault.v1 import (
    apikey_pb2,
    apikey_pb2_grpc,
    asset_pb2,
    asset_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    distribution_pb2,
    distribution_pb2_grpc,
    key_pb2,
    key_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)

__all__ = [
    "HealthServicer",
    "LIVENESS",
    "SERVICE_NEEDS",
    "MAX_MESSAGE_BYTES",
    "SERVICE_NAMES",
    "audit_sequencer",
    "background",
    "create_server",
    "readiness",
    "serve",
    "shutdown",
]

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""Send and receive limit: 1 MiB chunks plus headroom (gRPC's default receive limit is 4 MiB)."""

SERVICE_NAMES: Final = (
    tenant_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name,
    apikey_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name,
    asset_pb2.DESCRIPTOR.services_by_name["AssetService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    distribution_pb2.DESCRIPTOR.services_by_name["DistributionService"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["PayloadService"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name,
    key_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
)
"""reelvault's own services, as health checks and reflection name them."""

# Worker threads for the domain's catalog-bound calls (authentication, metadata, the audit
# log). Store-bound calls have threads of their own (reelvault.rpc.bulkhead).
_WORKER_THREADS: Final = 64

# How long shutdown waits for cancelled calls to clean up (an S3 abort is one request).
_CLEANUP_TIMEOUT: Final = 10.0

_log = structlog.get_logger("reelvault.rpc")

HealthServicer = health.aio.HealthServicer
"""The standard health service, asyncio flavour."""


async def create_server(
    vault: Vault, settings: Settings, *, health_servicer: Any = None
) -> tuple[Any, int]:
    """Build the server and bind it; the caller starts it (``await server.start()``).

    Args:
        vault: the components the servicers call.
        settings: ``grpc_host``, ``grpc_port`` (0: a free port) and the ``tls_*`` files.
        health_servicer: the :data:`HealthServicer` to register, for a caller that will
            flip it to ``NOT_SERVING`` at shutdown (:func:`shutdown`); a new one by default.

    Returns:
        The ``grpc.aio.Server`` and the port it is bound to.

    Raises:
        ConfigurationError: a TLS file cannot be read, or the address cannot be bound.
    """
    server = grpc.aio.server(
        interceptors=[VaultInterceptor(vault.api_keys, vault.auditor)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC sets SO_REUSEPORT by default: a second server on the same port would
            # then start quietly and take half the connections. Fail instead.
            ("grpc.so_reuseport", 0),
        ],
    )
    admission = Admission.from_settings(settings)
    assets = AssetServicer(
        vault,
        admission=admission,
        store_pool=StorePool(admission),
        idle_timeout=settings.upload_idle_timeout,
    )
    registrations: tuple[tuple[Callable[[Any, Any], None], Any], ...] = (
        (tenant_pb2_grpc.add_TenantServiceServicer_to_server, TenantServicer(vault)),
        (apikey_pb2_grpc.add_ApiKeyServiceServicer_to_server, ApiKeyServicer(vault)),
        (_add_asset_service, assets),
        (audit_pb2_grpc.add_AuditServiceServicer_to_server, AuditServicer(vault)),
        (privacy_pb2_grpc.add_PayloadServiceServicer_to_server, PayloadServicer(vault)),
        (privacy_pb2_grpc.add_ConsentServiceServicer_to_server, ConsentServicer(vault)),
        (privacy_pb2_grpc.add_PrivacyServiceServicer_to_server, PrivacyServicer(vault)),
        (key_pb2_grpc.add_KeyServiceServicer_to_server, KeyServicer(vault)),
        (
            distribution_pb2_grpc.add_DistributionServiceServicer_to_server,
            DistributionServicer(vault),
        ),
    )
    for register, servicer in registrations:
        register(servicer, server)

    if health_servicer is None:
        health_servicer = HealthServicer()
    for name in ("", LIVENESS, *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )

    address = _address(settings.grpc_host, settings.grpc_port)
    credentials = _credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        raise ConfigurationError(
            f"cannot listen on {address} (REELVAULT_GRPC_HOST, REELVAULT_GRPC_PORT): {exc}"
        ) from None
    return server, int(port)


async def shutdown(server: Any, health_servicer: Any, grace: float | None) -> None:
    """Drain: health ``NOT_SERVING``, stop accepting, let calls in flight finish for up to
    ``grace`` seconds (None: cancel them at once), then cancel the rest.

    Returns once the cleanup of cancelled calls (aborting their multipart uploads) has
    finished too, or after :data:`_CLEANUP_TIMEOUT`, so the caller can close the vault.
    """
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace)
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=_CLEANUP_TIMEOUT)


class _HandlerRecorder:
    """Stands in for a server to catch the handlers a generated ``add_*_to_server`` makes."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers[service] = dict(handlers)


def _add_asset_service(servicer: AssetServicer, server: Any) -> None:
    """Register AssetService as generated, except that Download's response serializer
    lets bytes through: the servicer serializes chunk messages itself, off the event loop
    (:func:`reelvault.rpc.convert.download_chunk_messages`)."""
    recorder = _HandlerRecorder()
    asset_pb2_grpc.add_AssetServiceServicer_to_server(servicer, recorder)  # type: ignore[no-untyped-call]
    ((service, handlers),) = recorder.handlers.items()
    download = handlers["Download"]
    handlers["Download"] = grpc.unary_stream_rpc_method_handler(
        download.unary_stream,
        request_deserializer=download.request_deserializer,
        response_serializer=convert.download_response_bytes,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


async def serve(settings: Settings, *, config_file: Path | None = None) -> None:
    """Run the service until SIGTERM or SIGINT, then drain it (module docstring).

    Args:
        config_file: the file the settings were read from (``--config``), checked for
            secrets others may read; None: ``$REELVAULT_CONFIG``, if set.

    Raises:
        ConfigurationError, Unavailable: the service could not start.
    """
    configure_logging(settings.log_level, settings.log_format)
    warn_at_startup(settings, config_file)
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=_WORKER_THREADS, thread_name_prefix="reelvault")
    )
    vault = await asyncio.to_thread(preflight.open_vault, settings)
    try:
        # Before listening: a broken dependency stops the start with one line naming it.
        await asyncio.to_thread(preflight.verify, vault, settings)
        async with (
            serve_metrics(settings.metrics_host, settings.metrics_port),
            tracing.exporting(settings),
            background(vault, settings),
        ):
            await _serve_until_signalled(vault, settings)
    finally:
        vault.close()


async def _serve_until_signalled(vault: Vault, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain (module docstring)."""
    loop = asyncio.get_running_loop()
    health_servicer = HealthServicer()
    server, port = await create_server(vault, settings, health_servicer=health_servicer)
    async with readiness(vault, settings, health_servicer):
        await server.start()
        _log.info(
            "listening",
            host=settings.grpc_host,
            port=port,
            tls=settings.tls_enabled,
            mutual_tls=settings.tls_client_ca_file is not None,
            malloc=allocator.applied() or None,
            version=package_version(),
        )
        signalled = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal_handler(signum, signalled.set)
        try:
            await signalled.wait()
            _log.info("shutting down", grace_seconds=settings.shutdown_grace)
            for signum in signals:  # a second signal: stop waiting for calls in flight
                loop.add_signal_handler(signum, _cancel_calls, server)
            await shutdown(server, health_servicer, settings.shutdown_grace)
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
    _log.info("stopped")


SERVICE_NEEDS: Final[dict[str, tuple[str, ...]]] = {
    # The server as a whole (what a load balancer or Kubernetes probes) needs only the
    # catalog, which every call needs: a store or KMS outage must not take every replica
    # out of service at once, since catalog-only calls still work; the asset service
    # says when the store is the problem.
    "": ("catalog",),
    tenant_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name: ("catalog", "key_provider"),
    apikey_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name: ("catalog",),
    asset_pb2.DESCRIPTOR.services_by_name["AssetService"].full_name: DEPENDENCIES,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name: ("catalog",),
    distribution_pb2.DESCRIPTOR.services_by_name["DistributionService"].full_name: (
        "catalog",
        "key_provider",
    ),
    privacy_pb2.DESCRIPTOR.services_by_name["PayloadService"].full_name: (
        "catalog",
        "key_provider",
    ),
    privacy_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name: (
        "catalog",
        "key_provider",
    ),
    # erasure deletes stored renditions, but gc finishes that if the store is down
    privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name: (
        "catalog",
        "key_provider",
    ),
    key_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name: ("catalog", "key_provider"),
}
"""What each service's readiness depends on; ``""`` is the whole server. The service
:data:`LIVENESS` is SERVING while the process serves, whatever its dependencies."""

LIVENESS: Final = "liveness"


@contextlib.asynccontextmanager
async def readiness(vault: Vault, settings: Settings, health_servicer: Any) -> AsyncIterator[None]:
    """Probe the dependencies every ``readiness_interval`` seconds for the block and set
    each service's health status from the cached results (:data:`SERVICE_NEEDS`). The
    first round runs before the block, so a server never reports SERVING unchecked."""
    checker = Readiness(
        vault.database, vault.store, vault.root, timeout=min(settings.readiness_interval, 5.0)
    )

    async def publish() -> None:
        await checker.probe()
        for name, needs in SERVICE_NEEDS.items():
            serving = checker.all_ready(needs)
            await health_servicer.set(
                name,
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.readiness_interval)
            try:
                await publish()
            except Exception:  # the next round tries again
                _log.warning("readiness round failed", exc_info=True)

    await publish()
    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _privacy_rounds(vault: Vault, stop: threading.Event, interval: float) -> None:
    """Purge expired payloads (retention) and destroy tenants whose deletion is due, every
    ``interval`` seconds; a failed round is logged and the next one tried."""
    while not stop.wait(interval):
        try:
            vault.payloads.purge_expired()
            vault.lifecycle.destroy_due()
        except Exception:
            _log.warning("privacy round failed", exc_info=True)


@contextlib.asynccontextmanager
async def background(vault: Vault, settings: Settings) -> AsyncIterator[None]:
    """Everything a service process runs beside its calls, for the block: the audit
    sequencer (:func:`audit_sequencer`), the heartbeat of running uploads
    (:meth:`~reelvault.objects.SealedObjects.run_heartbeat`), the retirement of URL signing keys
    past their overlap, the privacy rounds (expired payloads purged, tenants due for
    deletion destroyed; every ``privacy_interval``), and, when ``scrub_interval`` is set,
    the integrity scrub (:func:`reelvault.scrub.run_scrubber`)."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_privacy_rounds,
            args=(vault, stop, settings.privacy_interval),
            name="reelvault-privacy",
            daemon=True,
        ),
        threading.Thread(
            target=vault.assets.objects.run_heartbeat,
            args=(stop,),
            name="reelvault-upload-heartbeat",
            daemon=True,
        ),
        threading.Thread(
            target=vault.distribution.keys.run_retirement,
            args=(stop,),
            name="reelvault-url-key-retirement",
            daemon=True,
        ),
    ]
    if settings.scrub_interval > 0:
        threads.append(
            threading.Thread(
                target=run_scrubber,
                args=(vault, stop),
                kwargs={"interval": settings.scrub_interval, "rate": settings.scrub_rate},
                name="reelvault-scrubber",
                daemon=True,
            )
        )
    for thread in threads:
        thread.start()
    try:
        async with audit_sequencer(vault, settings):
            yield
    finally:
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join, 30.0)


@contextlib.asynccontextmanager
async def audit_sequencer(vault: Vault, settings: Settings) -> AsyncIterator[None]:
    """Run the audit log's sequencer (integration, checkpoints, summaries of refused
    attempts) in a background thread for the block; every service process runs one, and
    replicas share the work (``reelvault.audit.log``)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=vault.audit_log.run_sequencer,
        args=(stop,),
        kwargs={
            "interval": settings.audit_integrate_interval,
            "checkpoint_interval": settings.audit_checkpoint_interval,
            "on_round": vault.auditor.flush_summaries,
            "purge": vault.audit.purge,
        },
        name="reelvault-audit-sequencer",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30.0)


def _cancel_calls(server: Any) -> None:
    _log.warning("second signal: cancelling calls in flight")
    asyncio.ensure_future(server.stop(None))  # noqa: RUF006 - the drain awaits the stop


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}"


def _credentials(settings: Settings) -> Any:
    """Server TLS credentials, or None for plaintext. With a client CA, clients must
    present a certificate it signed (mutual TLS)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    certificate = _read(settings.tls_cert_file, "REELVAULT_TLS_CERT_FILE")
    key = _read(settings.tls_key_file, "REELVAULT_TLS_KEY_FILE")
    client_ca = (
        _read(settings.tls_client_ca_file, "REELVAULT_TLS_CLIENT_CA_FILE")
        if settings.tls_client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, certificate)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _read(path: Path, variable: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigurationError(f"{variable}: {path} is not a PEM file")
    return data
