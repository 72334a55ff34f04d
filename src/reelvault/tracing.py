"""OpenTelemetry traces of the calls the server answers (docs/operations.md, "Tracing").

Off unless ``tracing_endpoint`` is set. Off, nothing here imports the SDK, no span is
made and each hook costs one check of the current span. On, :func:`exporting` installs a
tracer provider that sends spans to an OTLP/gRPC collector in batches, and flushes it when
``serve`` stops. The provider is this module's, not OpenTelemetry's global one: nothing
else in the process reports spans through it, and tests can install their own
(:func:`_installed`).

One trace per call:

* the **server span** (``SERVER``), opened by the interceptor
  (:class:`reelvault.rpc.interceptors.VaultInterceptor`) when the call starts and ended
  when its last message is sent: :func:`start_call`, :func:`current`, :func:`end_call`.
  A caller's W3C ``traceparent`` makes it a child of the caller's trace.
* its **dependency spans** (``CLIENT``), one per store, catalog and key provider
  operation, made by :mod:`reelvault.instrument`: :func:`dependency` and
  :func:`start_dependency`. They are made only inside a recording call span, so the
  background work of ``serve`` (readiness probes, the audit sequencer, scrub) is not
  traced. The worker threads the domain runs in get the call's context with the other
  context variables (:func:`asyncio.to_thread`, :func:`reelvault.rpc.bulkhead.run`).
  An upload's parts are sent by the store's own threads and have no spans: their time
  shows in the ``upload`` span and in ``upload_complete``, which waits for them.

What a span may carry: the method, the gRPC status, the request id, the tenant id, the
dependency, the operation (a method name or a statement kind), the database system, byte
counts and an error's class name. Never SQL text, object keys, asset paths, tokens, key
material or an error's message (messages can name files).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from reelvault.config import Settings

__all__ = [
    "TRACER_NAME",
    "current",
    "dependency",
    "end_call",
    "exporting",
    "failed",
    "start_call",
    "start_dependency",
]

TRACER_NAME: Final = "reelvault"

# Attribute names: OpenTelemetry's semantic conventions where they have one.
REQUEST_ID: Final = "reelvault.request_id"
TENANT_ID: Final = "reelvault.tenant_id"
DEPENDENCY: Final = "reelvault.dependency"
OPERATION: Final = "reelvault.operation"
BYTES: Final = "reelvault.bytes"
ERROR_TYPE: Final = "error.type"

_log = structlog.get_logger("reelvault.tracing")
_propagator: Final = TraceContextTextMapPropagator()
_tracer: Tracer | None = None  # None: off


@contextlib.asynccontextmanager
async def exporting(settings: Settings) -> AsyncIterator[None]:
    """Trace the calls made in the block, if ``settings.tracing_endpoint`` is set, and
    send what is left when the block ends."""
    if settings.tracing_endpoint is None:
        yield
        return
    # The SDK is imported only when tracing is on.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.tracing_service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.tracing_endpoint))
    )
    from reelvault.catalog.db import safe_endpoint  # noqa: PLC0415 - only when tracing

    _log.info(
        "tracing",
        endpoint=safe_endpoint(settings.tracing_endpoint),
        service_name=settings.tracing_service_name,
        sample_ratio=settings.tracing_sample_ratio,
    )
    try:
        with _installed(provider):
            yield
    finally:
        await asyncio.to_thread(provider.shutdown)  # sends the spans still queued


@contextlib.contextmanager
def _installed(provider: TracerProvider) -> Iterator[None]:
    """Make spans with ``provider`` in the block (tests install one with an in-memory
    exporter)."""
    global _tracer  # noqa: PLW0603 - the one switch between off and on
    previous, _tracer = _tracer, provider.get_tracer(TRACER_NAME)
    try:
        yield
    finally:
        _tracer = previous


# -- the server span ----------------------------------------------------------------------


def start_call(method: str, metadata: Sequence[tuple[str, Any]]) -> Span:
    """The server span of a call to ``method`` (``/package.Service/Method``), a child of
    the caller's trace if ``metadata`` carries a ``traceparent``. Not current yet:
    :func:`current` makes it so for each step of the call."""
    if _tracer is None:
        return INVALID_SPAN
    carrier = {key: value for key, value in metadata if isinstance(value, str)}
    name = method.lstrip("/")
    service, _, rpc_method = name.rpartition("/")
    return _tracer.start_span(
        name,
        context=_propagator.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method},
    )


@contextlib.contextmanager
def current(span: Span) -> Iterator[None]:
    """Make ``span`` the current span for the block: the dependency spans made in it,
    in this task and in the worker threads it starts, are its children."""
    if not span.is_recording():
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


def end_call(
    span: Span, *, request_id: str, tenant_id: str | None, status: str, status_code: int
) -> None:
    """End a call's server span with its outcome: any status but ``OK`` is an error,
    described by the status's name alone (the message stays in the log)."""
    if not span.is_recording():
        return
    if request_id:
        span.set_attribute(REQUEST_ID, request_id)
    if tenant_id:
        span.set_attribute(TENANT_ID, tenant_id)
    span.set_attribute("rpc.grpc.status_code", status_code)
    if status != "OK":
        span.set_status(Status(StatusCode.ERROR, status))
    span.end()


# -- dependency spans ---------------------------------------------------------------------


def start_dependency(
    dependency: str, operation: str, attributes: Mapping[str, str | int] | None = None
) -> Span | None:
    """A span for one operation on ``dependency``, a child of the current span, for an
    operation that outlives the caller's block (a stream, an upload). The caller ends it.
    None outside a traced call."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return None
    return _tracer.start_span(
        f"{dependency} {operation}",
        kind=SpanKind.CLIENT,
        attributes={DEPENDENCY: dependency, OPERATION: operation, **(attributes or {})},
    )


@contextlib.contextmanager
def dependency(dependency: str, operation: str) -> Iterator[Span | None]:
    """:func:`start_dependency` for the block, current in it, ended when it ends. The
    caller marks a failure (:func:`failed`), since it knows what to call the error."""
    span = start_dependency(dependency, operation)
    if span is None:
        yield None
        return
    try:
        with current(span):
            yield span
    finally:
        span.end()


def failed(span: Span | None, error: str) -> None:
    """Mark ``span`` failed with the class name ``error`` (never the message)."""
    if span is not None:
        span.set_attribute(ERROR_TYPE, error)
        span.set_status(Status(StatusCode.ERROR, error))
