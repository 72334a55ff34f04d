"""The cross-cutting work of every RPC, done once: request ids, authentication,
authorization, error mapping and the access log.

:class:`VaultInterceptor` wraps each method handler's behaviour, so all of it runs inside
the call itself, in the task that runs the servicer. (An aio interceptor's own
``intercept_service`` runs before the call, in another context: a contextvar set there
would not reach the servicer, and it cannot see the call's ``ServicerContext``.) For each
call, in order:

1. **Request id.** The client's ``x-request-id`` if it is a sane token (1-128 characters
   of ``[A-Za-z0-9._:-]``), else a fresh one. Sent back in the initial and the trailing
   metadata, and bound in structlog's contextvars so every log line of the call has it.
2. **Authentication.** ``authorization: Bearer <token>`` through
   :meth:`ApiKeys.authenticate <reelvault.auth.ApiKeys.authenticate>` in a worker thread
   (it reads the catalog). Health checks and reflection are public; everything else
   needs a key.
3. **Authorization.** The method is mapped to its domain action
   (:data:`reelvault.rpc.actions.METHOD_ACTIONS`) and :func:`reelvault.auth.authorize`
   decides on the action: a method missing from the table is denied to everyone.
4. **The servicer**, with the caller available from :func:`current_principal` and the
   request's :class:`~reelvault.audit.Access` bound for the domain to fill in (resource,
   range, key version) and record before it releases anything.
5. **Error mapping.** A :class:`~reelvault.errors.ReelvaultError` becomes its class's gRPC
   status with its message; one whose status is ``INTERNAL`` (configuration, an
   unclassified provider failure) and any other exception become ``INTERNAL`` /
   ``internal error``, with the traceback logged here and never sent. No call ends in
   ``UNKNOWN``, and no stack trace or internal detail reaches a client.
6. **Audit conclusion.** Before a unary answer is sent (and when a stream ends), the
   :class:`~reelvault.audit.Auditor` records the call unless the domain already did:
   denied and failed calls included, unauthenticated ones through its per-peer limiter.
   If that record cannot be made durable, the caller gets ``UNAVAILABLE`` instead of the
   answer. The interceptor only reports the outcome; the event is the domain's.
7. **Operational log and metrics.** One ``rpc`` line per call: method, status, duration,
   request id, peer, tenant and key id, never the token. The same call is counted in
   :mod:`reelvault.metrics` by method and status, with its duration; calls in flight are a
   gauge, and message bytes are counted as they cross the wire (requests before they are
   parsed, responses as they are serialized), by method. Health and reflection calls are
   counted too. The method label is bounded: only registered methods reach the wrapper.
8. **Trace.** When tracing is on, the call is a server span (:mod:`reelvault.tracing`),
   current in every step above and in every step of a stream, so the dependency spans
   made in the worker threads are its children; it ends with the call's status. (Our own
   span rather than OpenTelemetry's gRPC interceptor, which has broken streaming calls.)
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import secrets
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

import grpc  # type: ignore[import-untyped, unused-ignore]
import structlog

from reelvault import deadline, metrics, tracing
from reelvault.audit import Access, Actor, Auditor, RequestInfo, Resource
from reelvault.auth import ApiKeys, Principal, authorize
from reelvault.errors import (
    IntegrityError,
    InvalidArgument,
    PermissionDenied,
    ReelvaultError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from reelvault.rpc.actions import action_for

__all__ = [
    "DeadlineExceeded",
    "PUBLIC_METHOD_PREFIXES",
    "REQUEST_ID_KEY",
    "RETRY_AFTER_KEY",
    "VaultInterceptor",
    "check_deadline",
    "current_principal",
]

REQUEST_ID_KEY: Final = "x-request-id"
RETRY_AFTER_KEY: Final = "retry-after"
"""Trailing metadata of a RESOURCE_EXHAUSTED answer: whole seconds to wait before retrying."""
PUBLIC_METHOD_PREFIXES: Final = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Methods callable without an API key: load balancers and tooling use them."""

_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_BEARER: Final = "bearer "
_INTERNAL_MESSAGE: Final = "internal error"

_log = structlog.get_logger("reelvault.rpc")
_principal: ContextVar[Principal | None] = ContextVar("reelvault_principal", default=None)
# The call being served by the current task (see _started).
_current_call: ContextVar[_Call | None] = ContextVar("reelvault_call", default=None)


class DeadlineExceeded(Exception):
    """Raised by a servicer that finds its call's deadline has passed (see
    :func:`check_deadline`); mapped to ``DEADLINE_EXCEEDED``. A transport condition, so
    not part of the domain's error tree."""


def current_principal() -> Principal:
    """The authenticated caller of the RPC being served.

    Raises:
        RuntimeError: outside an authenticated call (a programming error: INTERNAL).
    """
    principal = _principal.get()
    if principal is None:
        raise RuntimeError("no authenticated principal in this context")
    return principal


def check_deadline(context: Any) -> None:
    """Raise :class:`DeadlineExceeded` if the call's deadline has passed. Long streams call
    it between messages, so they stop working for a client that has given up even where
    the cancellation has not reached the handler yet."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded


@dataclass(frozen=True, slots=True)
class _Meters:
    """One method's metric series, looked up once (``labels`` takes a lock)."""

    method: str
    duration: Any
    in_flight: Any
    received: Any
    sent: Any

    @classmethod
    def of(cls, method: str) -> _Meters:
        return cls(
            method,
            metrics.REQUEST_DURATION.labels(method),
            metrics.IN_FLIGHT.labels(method),
            metrics.BYTES_RECEIVED.labels(method),
            metrics.BYTES_SENT.labels(method),
        )


@dataclass
class _Call:
    """What the interceptor knows about one call, for its steps and its log line."""

    method: str
    meters: _Meters
    request_id: str = ""
    peer: str = ""
    deadline: float | None = None  # on time.monotonic()
    principal: Principal | None = None
    access: Access | None = None  # None for public methods (health, reflection)
    status: Any = None  # grpc.StatusCode once decided
    started: float = field(default_factory=time.monotonic)
    # Message bytes on the wire: requests as they arrive; a stream's responses as they are
    # serialized, a unary response when the servicer returns it (it is serialized after
    # the call's log line).
    bytes_in: int = 0
    bytes_out: int = 0
    client_identity: str | None = None  # the mTLS client certificate's name

    def asset_id(self) -> str | None:
        """The asset the call is about, as the domain noted it (or the refused request
        named it)."""
        if self.access is None:
            return None
        return next((r.id for r in self.access.resources if r.type == "asset"), None)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Bind the call's principal and log fields for one step of the call."""
        token = _principal.set(self.principal)
        fields: dict[str, Any] = {"request_id": self.request_id, "method": self.method}
        if self.principal is not None:
            fields["tenant_id"] = self.principal.tenant_id
            fields["key_id"] = self.principal.key_id
        try:
            with structlog.contextvars.bound_contextvars(**fields), deadline.bound(self.deadline):
                if self.access is None:
                    yield
                else:
                    with Auditor.bind(self.access):
                        yield
        finally:
            _principal.reset(token)


class VaultInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc, unused-ignore]
    """The server's one interceptor (see the module docstring for what it does).

    Args:
        api_keys: authenticates bearer tokens.
        auditor: records each call's outcome (module docstring, step 6).
    """

    def __init__(self, api_keys: ApiKeys, auditor: Auditor) -> None:
        self._api_keys = api_keys
        self._auditor = auditor
        self._meters: dict[str, _Meters] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return None
        method: str = handler_call_details.method
        meters = self._meters.get(method)
        if meters is None:
            meters = self._meters[method] = _Meters.of(method)
        decode = _decoder(handler.request_deserializer, handler.request_streaming, meters.received)
        return _rewrap(
            handler, lambda behaviour: self._wrap(meters, behaviour, decode), meters.sent
        )

    def _wrap(
        self, meters: _Meters, behaviour: Callable[..., Any], decode: Callable[[Any], Any]
    ) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behaviour):
            return self._wrap_stream(meters, behaviour, decode)
        return self._wrap_call(meters, behaviour, decode)

    def _wrap_call(
        self, meters: _Meters, behaviour: Callable[..., Any], decode: Callable[[Any], Any]
    ) -> Callable[..., Any]:
        """Handlers that are coroutines: unary responses, and streams written with
        ``context.write`` (the health service's Watch)."""

        async def handle(request: Any, context: Any) -> Any:
            call = _Call(meters.method, meters)
            span = tracing.start_call(meters.method, context.invocation_metadata() or ())
            _started(call, request)
            try:
                with call.scope(), tracing.current(span):
                    await self._admit(call, context, request, decode)
                    request = decode(request)
                with call.scope(), tracing.current(span):
                    result = await behaviour(request, context)
                    call.bytes_out += _message_size(result)
                    await self._conclude(call, grpc.StatusCode.OK)
                call.status = grpc.StatusCode.OK
                return result
            except BaseException as exc:
                with call.scope(), tracing.current(span):
                    await self._fail(call, context, exc)
            finally:
                _finished(call)
                _end_span(span, call)

        return handle

    def _wrap_stream(
        self, meters: _Meters, behaviour: Callable[..., Any], decode: Callable[[Any], Any]
    ) -> Callable[..., Any]:
        """Handlers that are async generators (server streaming). Each step of the inner
        generator runs inside the call's scope, whichever task drives it."""

        async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _Call(meters.method, meters)
            span = tracing.start_call(meters.method, context.invocation_metadata() or ())
            stream: AsyncGenerator[Any, None] | None = None
            _started(call, request)
            try:
                with call.scope(), tracing.current(span):
                    await self._admit(call, context, request, decode)
                    request = decode(request)
                stream = behaviour(request, context)
                while True:
                    with call.scope(), tracing.current(span):
                        try:
                            item = await anext(stream)
                        except StopAsyncIteration:
                            break
                    yield item
                with call.scope(), tracing.current(span):
                    await self._conclude(call, grpc.StatusCode.OK)
                call.status = grpc.StatusCode.OK
            except GeneratorExit:  # the server closed the stream: the call is over
                call.status = grpc.StatusCode.CANCELLED
                self._conclude_later(call)
                raise
            except BaseException as exc:
                with call.scope(), tracing.current(span):
                    await self._fail(call, context, exc)
            finally:
                if stream is not None:
                    with call.scope(), tracing.current(span):
                        await stream.aclose()
                _finished(call)
                _end_span(span, call)

        return handle

    async def _admit(
        self, call: _Call, context: Any, raw: Any, decode: Callable[[Any], Any]
    ) -> None:
        """Request id, authentication, authorization: everything before the servicer."""
        # Read what the log needs now: asking a finished call for its peer crashes grpcio.
        call.peer = context.peer()
        call.client_identity = _client_identity(context.auth_context())
        remaining = context.time_remaining()
        if remaining is not None:
            call.deadline = call.started + remaining
        metadata = tuple(context.invocation_metadata() or ())
        call.request_id = _request_id(metadata)
        echoed = ((REQUEST_ID_KEY, call.request_id),)
        context.set_trailing_metadata(echoed)
        await context.send_initial_metadata(echoed)
        if call.method.startswith(PUBLIC_METHOD_PREFIXES):
            return
        action = action_for(call.method)
        call.access = Access(
            actor=Actor(),
            request=RequestInfo(
                transport="grpc",
                operation=call.method,
                peer=call.peer,
                user_agent=_user_agent(metadata),
                request_id=call.request_id,
            ),
            action=action.value if action is not None else "unknown",
        )
        token = _bearer_token(metadata)
        principal = await asyncio.to_thread(self._api_keys.authenticate, token)
        call.principal = principal
        call.access.actor = Actor(
            key_id=principal.key_id,
            role=principal.role.value,
            tenant_id=principal.tenant_id,
            authenticated=True,
        )
        if action is None:
            raise PermissionDenied("no role may call this method")
        try:
            authorize(principal, action)
        except PermissionDenied:
            _note_requested_resource(call.access, raw, decode)
            raise

    async def _conclude(self, call: _Call, code: Any) -> None:
        """Have the auditor record the call's outcome, durably, before the answer goes
        out (module docstring, step 6)."""
        access = call.access
        if access is None:
            return
        denied = code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

        def record() -> None:
            # Not bound by the call's deadline: a call that failed with DEADLINE_EXCEEDED
            # is recorded too, and the catalog stops at the deadline (reelvault.deadline).
            with deadline.bound(None):
                self._auditor.conclude(access, code.name, denied=denied)

        await asyncio.shield(asyncio.to_thread(record))

    def _conclude_later(self, call: _Call) -> None:
        """Record a call the server closed (nothing is sent any more): best effort, in
        the background, since the stream's task is ending."""
        access = call.access
        if access is None or access.concluded:
            return

        def record() -> None:
            try:
                self._auditor.conclude(access, "CANCELLED")
            except Exception:  # the client is gone; the operator hears of it
                _log.warning("could not record a cancelled call in the audit log")

        asyncio.get_running_loop().run_in_executor(None, record)

    async def _fail(self, call: _Call, context: Any, exc: BaseException) -> None:
        """:func:`_fail`, with the outcome recorded first. If even that record cannot be
        made durable, the caller hears ``UNAVAILABLE``: the log has no gaps it knows of."""
        code = _status_of(call, exc)
        if code is not None:
            try:
                await self._conclude(call, code)
            except Unavailable as unavailable:
                if not isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError):
                    exc = unavailable
            except Exception:  # the call's own error is what the client hears
                _log.error("recording a failed call in the audit log failed", exc_info=True)
        await _fail(call, context, exc)


def _decoder(
    deserialize: Callable[[bytes], Any] | None, streaming: bool, received: Any
) -> Callable[[Any], Any]:
    """The request parser the wrapped handler applies itself, after admission.

    gRPC would parse a request before any interceptor code runs, so a malformed body
    (bad UTF-8 in a string, a truncated field) would end the call as UNKNOWN and be parsed
    for callers that never authenticated. Registered without a deserializer, the handler
    gets raw bytes and parses them here, refusing garbage as INVALID_ARGUMENT. A stream's
    messages are counted in ``received`` as they arrive (a unary request is counted when
    the call starts: :func:`_started`).
    """
    if deserialize is None:
        return lambda request: request

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:  # protobuf's DecodeError, or any parser failure
            raise InvalidArgument("malformed request message") from None

    if not streaming:
        return parse

    async def parse_stream(requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        async for raw in requests:
            received.inc(len(raw))
            if (call := _current_call.get()) is not None:
                call.bytes_in += len(raw)
            yield parse(raw)

    return parse_stream


def _rewrap(
    handler: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]], sent: Any
) -> Any:
    serializers = {
        "request_deserializer": None,  # parsed by the wrapper, after admission (_decoder)
        "response_serializer": _counting(handler.response_serializer, sent),
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **serializers)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serializers)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **serializers)


def _counting(serialize: Callable[[Any], bytes] | None, sent: Any) -> Callable[[Any], bytes]:
    """The response serializer, counting the bytes it produces in ``sent``."""

    def serialize_and_count(message: Any) -> bytes:
        data = message if serialize is None else serialize(message)
        sent.inc(len(data))
        if (call := _current_call.get()) is not None and call.status is None:
            call.bytes_out += len(data)  # a stream's message (a unary one is counted before)
        return data

    return serialize_and_count


def _request_id(metadata: Sequence[tuple[str, Any]]) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return secrets.token_hex(16)


# Request fields that name what a refused caller was after, for the audit record, with the
# form an id must have to be recorded (anything else is the caller's noise, not an id).
_RESOURCE_FIELDS: Final = (
    ("asset_id", "asset", re.compile(r"[0-9a-f]{32}")),
    ("api_key_id", "apikey", re.compile(r"[0-9a-f]{16}")),
    ("tenant_id", "tenant", re.compile(r"[0-9a-f]{32}")),
)


def _note_requested_resource(access: Access, raw: Any, decode: Callable[[Any], Any]) -> None:
    """A refused call never reaches the domain, which would name its resource; name the
    one the (unary) request asks for, so that security teams find attempts on it."""
    if not isinstance(raw, bytes):
        return  # a stream: nothing read yet, and nothing worth reading for a refusal
    try:
        request = decode(raw)
    except InvalidArgument:
        return
    for name, kind, form in _RESOURCE_FIELDS:
        value = getattr(request, name, "")
        if isinstance(value, str) and form.fullmatch(value):
            access.resources.append(Resource(kind, value))
            return


def _user_agent(metadata: Sequence[tuple[str, Any]]) -> str:
    for key, value in metadata:
        if key == "user-agent" and isinstance(value, str):
            return "".join(c for c in value[:256] if c.isprintable())
    return ""


def _status_of(call: _Call, exc: BaseException) -> Any:
    """The status :func:`_fail` will end the call with; None where it re-raises a
    non-error (KeyboardInterrupt, SystemExit)."""
    if isinstance(exc, grpc.aio.AbortError):
        return None
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.DEADLINE_EXCEEDED if call.expired() else grpc.StatusCode.CANCELLED
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, ReelvaultError):
        return getattr(grpc.StatusCode, exc.grpc_status)
    if isinstance(exc, Exception):
        return grpc.StatusCode.INTERNAL
    return None


def _bearer_token(metadata: Sequence[tuple[str, Any]]) -> str:
    values = [value for key, value in metadata if key == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        raise Unauthenticated("an API key is required: authorization: Bearer <token>")
    header: str = values[0]
    if header[: len(_BEARER)].lower() != _BEARER:
        raise Unauthenticated("an API key is required: authorization: Bearer <token>")
    return header[len(_BEARER) :].strip()


async def _fail(call: _Call, context: Any, exc: BaseException) -> None:
    """End the call with the status ``exc`` maps to, by re-raising it or by aborting the
    call (``context.abort`` raises)."""
    if isinstance(exc, grpc.aio.AbortError):  # already aborted with a status
        call.status = context.code() or grpc.StatusCode.UNKNOWN
        raise exc
    if isinstance(exc, asyncio.CancelledError):  # client cancelled, deadline, shutdown
        expired = call.expired()
        call.status = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        raise exc
    if isinstance(exc, DeadlineExceeded):
        code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    elif isinstance(exc, ReelvaultError):
        code, message = _map_error(exc)
    elif isinstance(exc, Exception):
        _log.error("unexpected error", exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE
    else:  # KeyboardInterrupt, SystemExit: not ours to translate
        raise exc
    call.status = code
    trailing: tuple[tuple[str, str], ...] = ((REQUEST_ID_KEY, call.request_id),)
    if isinstance(exc, ResourceExhausted):  # when to try again, in seconds (like HTTP's)
        trailing += ((RETRY_AFTER_KEY, str(max(1, math.ceil(exc.retry_after)))),)
    await context.abort(code, message, trailing_metadata=trailing)


def _map_error(exc: ReelvaultError) -> tuple[Any, str]:
    code = getattr(grpc.StatusCode, exc.grpc_status)
    if code == grpc.StatusCode.INTERNAL:
        # Configuration problems and unclassified failures: their messages may name files
        # or providers. The operator reads them here; the client learns nothing.
        _log.error("internal error", exc_info=exc)
        return code, _INTERNAL_MESSAGE
    if isinstance(exc, IntegrityError):
        # Possible tampering or corruption: the reason stays in the server log. Only a
        # DecryptionError carries a ``reason``; the others' message is the reason (a
        # missing or truncated object), short and free of secrets like every message here.
        _log.error(
            "stored data failed an integrity check",
            reason=getattr(exc, "reason", None) or exc.message,
        )
    elif isinstance(exc, Unavailable):
        _log.warning("dependency unavailable", exc_info=exc)
    elif isinstance(exc, Unauthenticated | PermissionDenied):
        _log.info("access refused", error=exc.message)
    return code, exc.message


def _end_span(span: Any, call: _Call) -> None:
    """End the call's server span (:mod:`reelvault.tracing`) with its outcome."""
    status = call.status if call.status is not None else grpc.StatusCode.UNKNOWN
    principal = call.principal
    tracing.end_call(
        span,
        request_id=call.request_id,
        tenant_id=principal.tenant_id if principal else None,
        status=status.name,
        status_code=status.value[0],
    )


def _started(call: _Call, request: Any) -> None:
    """Count the call in flight, and its request's bytes if it is one message."""
    meters = call.meters
    meters.in_flight.inc()
    # Set for the rest of the call's task: the serializer and a request stream's parser,
    # which gRPC runs there too, count the call's bytes into it.
    _current_call.set(call)
    if isinstance(request, bytes):
        meters.received.inc(len(request))
        call.bytes_in += len(request)


def _finished(call: _Call) -> None:
    """The call's metrics and its ``rpc`` log line (module docstring, step 7)."""
    principal = call.principal
    status = call.status if call.status is not None else grpc.StatusCode.UNKNOWN
    duration = time.monotonic() - call.started
    meters = call.meters
    meters.in_flight.dec()
    meters.duration.observe(duration)
    metrics.REQUESTS.labels(call.method, status.name).inc()
    _log.info(
        "rpc",
        method=call.method,
        status=status.name,
        duration_ms=round(duration * 1000, 3),
        request_id=call.request_id,
        peer=call.peer,
        tenant_id=principal.tenant_id if principal else None,
        key_id=principal.key_id if principal else None,
        asset_id=call.asset_id(),
        bytes_in=call.bytes_in,
        bytes_out=call.bytes_out,
        client=call.client_identity,
    )


def _message_size(message: Any) -> int:
    if isinstance(message, bytes):
        return len(message)
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0


def _client_identity(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The name in a verified mTLS client certificate: its common name, else its first
    subject alternative name; None without one. Printable characters only, at most 256."""
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth_context.get(key) or ()
        if values:
            name = values[0].decode("utf-8", "replace")
            return "".join(c for c in name[:256] if c.isprintable())
    return None
