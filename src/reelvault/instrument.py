"""Latency and errors of the three dependencies: the object store, the catalog and the
root key provider (``reelvault_dependency_duration_seconds`` and
``reelvault_dependency_errors_total`` in :mod:`reelvault.metrics`).

Each is measured from outside, without touching its code:

* :class:`InstrumentedStore` is an :class:`~reelvault.storage.base.ObjectStore` over
  another one. It times every call; a streaming read is timed to its first byte (the GET
  is sent when :meth:`~InstrumentedStore.open_stream` is called), a listing to its first
  result, and errors raised later, while the body or the pages are read, are counted too.
  An upload's writes are timed one by one: a write is a buffer copy unless the parts in
  flight are full, so its latency is how long the store holds an upload back.
* :func:`instrument_catalog` hooks SQLAlchemy's cursor events on the catalog's engine:
  each statement is timed, under its kind (``select``, ``insert``...).
* :class:`InstrumentedKeyProvider` is a :class:`~reelvault.keys.provider.RootKeyProvider`
  over another one, timing ``generate_key``, ``unwrap`` and ``rewrap``.

Labels stay bounded: the operation is a method name or a statement kind, the error a class
name (reelvault's error tree for the store and the key provider, SQLAlchemy's DBAPI error
classes for the catalog, ``other`` for anything else). Keys, statements and contexts are
never labels.

Inside a traced call each operation is also a span, a child of the call's
(:mod:`reelvault.tracing`), with the same operation name and error class. An upload's
writes and a stream's reads are too many to trace one by one: an upload is one ``upload``
span from ``begin`` to ``complete`` or ``abort``, a streaming read one ``read_stream``
span from ``open_stream`` to the end of the body, each with the bytes that went through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from opentelemetry.trace import Span
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from reelvault import tracing
from reelvault.catalog import Database
from reelvault.errors import ReelvaultError
from reelvault.keys.provider import RootKeyProvider, WrappedKey
from reelvault.metrics import DEPENDENCY_DURATION, DEPENDENCY_ERRORS
from reelvault.storage.base import (
    BytesLike,
    MultipartUploadInfo,
    ObjectInfo,
    ObjectStore,
    Upload,
)

__all__ = [
    "InstrumentedKeyProvider",
    "InstrumentedStore",
    "instrument_catalog",
]

_T = TypeVar("_T")

# Statement kinds kept as the catalog's operation label; any other is "other".
_STATEMENT_KINDS: Final = frozenset(
    ("select", "insert", "update", "delete", "with", "begin", "pragma", "create", "alter", "drop")
)
# Attributes of SQLAlchemy's ExecutionContext holding the statement's start time and span.
_STARTED: Final = "_reelvault_started"
_SPAN: Final = "_reelvault_span"


class _Meter:
    """Times the calls to one dependency and counts their errors."""

    def __init__(self, dependency: str) -> None:
        self._dependency = dependency

    @contextmanager
    def measure(self, operation: str, *, traced: bool = True) -> Iterator[Span | None]:
        """Time the block, count its error and trace it (if ``traced``); the span (None
        outside a traced call) is for the block to add attributes to."""
        started = time.perf_counter()
        spans = tracing.dependency(self._dependency, operation) if traced else nullcontext()
        with spans as span:
            try:
                yield span
            except Exception as exc:
                self.failed(operation, exc, span)
                raise
            finally:
                self.observe(operation, time.perf_counter() - started)

    def start(self, operation: str) -> Span | None:
        """A span for an operation that outlives the caller's block (module docstring)."""
        return tracing.start_dependency(self._dependency, operation)

    def observe(self, operation: str, seconds: float) -> None:
        DEPENDENCY_DURATION.labels(self._dependency, operation).observe(seconds)

    def failed(self, operation: str, exc: BaseException, span: Span | None = None) -> None:
        DEPENDENCY_ERRORS.labels(self._dependency, operation, _error_name(exc)).inc()
        tracing.failed(span, _error_name(exc))

    def listing(self, operation: str, start: Callable[[], Iterable[_T]]) -> Iterator[_T]:
        """The results of ``start()``, timed from the call to the first result (or to the
        end, if there are none); an error is counted whether the call or a later page
        raises it."""
        started = time.perf_counter()
        try:
            results = start()
        except Exception as exc:
            self.failed(operation, exc)
            self.observe(operation, time.perf_counter() - started)
            raise
        return self._first_result(operation, started, results)

    def _first_result(
        self, operation: str, started: float, results: Iterable[_T]
    ) -> Generator[_T, None, None]:
        timed = False
        try:
            for item in results:
                if not timed:
                    self.observe(operation, time.perf_counter() - started)
                    timed = True
                yield item
        except Exception as exc:
            self.failed(operation, exc)
            raise
        finally:
            if not timed:
                self.observe(operation, time.perf_counter() - started)


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, ReelvaultError):
        return type(exc).__name__
    return "other"


# -- the object store ----------------------------------------------------------------------


class InstrumentedStore:
    """An :class:`~reelvault.storage.base.ObjectStore` that measures ``inner`` (module
    docstring). Behaviour, errors included, is ``inner``'s."""

    def __init__(self, inner: ObjectStore) -> None:
        self._inner = inner
        self._meter = _Meter("store")

    @property
    def inner(self) -> ObjectStore:
        """The store being measured."""
        return self._inner

    @property
    def part_size(self) -> int:
        return self._inner.part_size

    @property
    def max_in_flight(self) -> int:
        return self._inner.max_in_flight

    def begin(self, key: str) -> Upload:
        with self._meter.measure("begin"):
            upload = self._inner.begin(key)
        return _InstrumentedUpload(upload, self._meter, self._meter.start("upload"))

    def put(self, key: str, chunks: Iterable[BytesLike]) -> ObjectInfo:
        with self._meter.measure("put") as span:
            info = self._inner.put(key, chunks)
            if span is not None:
                span.set_attribute(tracing.BYTES, info.size)
            return info

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        with self._meter.measure("get_range") as span:
            data = self._inner.get_range(key, offset, length)
            if span is not None:
                span.set_attribute(tracing.BYTES, len(data))
            return data

    def presign_get(self, key: str, lifetime: int) -> str:
        return self._inner.presign_get(key, lifetime)  # local computation: nothing to measure

    def open_stream(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> Generator[bytes, None, None]:
        span = self._meter.start("read_stream")
        try:
            with self._meter.measure("open_stream"):
                stream = self._inner.open_stream(key, offset, length)
        except Exception as exc:
            _end(span, exc)
            raise
        return self._read(stream, span)

    def _read(
        self, stream: Generator[bytes, None, None], span: Span | None
    ) -> Generator[bytes, None, None]:
        read = 0
        error: Exception | None = None
        try:
            for data in stream:  # closing this generator closes ``stream`` too
                read += len(data)
                yield data
        except Exception as exc:
            error = exc
            self._meter.failed("read_stream", exc)
            raise
        finally:
            stream.close()
            if span is not None:
                span.set_attribute(tracing.BYTES, read)
                _end(span, error)

    def head(self, key: str) -> ObjectInfo | None:
        with self._meter.measure("head"):
            return self._inner.head(key)

    def delete(self, key: str) -> None:
        with self._meter.measure("delete"):
            self._inner.delete(key)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        return self._meter.listing("list_keys", lambda: self._inner.list_keys(prefix))

    def list_multipart_uploads(
        self, *, older_than: float | None = None
    ) -> Iterator[MultipartUploadInfo]:
        return self._meter.listing(
            "list_multipart_uploads",
            lambda: self._inner.list_multipart_uploads(older_than=older_than),
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with self._meter.measure("abort_multipart"):
            self._inner.abort_multipart(key, upload_id)

    def __repr__(self) -> str:
        return f"InstrumentedStore({self._inner!r})"


class _InstrumentedUpload:
    """An :class:`~reelvault.storage.base.Upload` that measures ``inner``'s calls, and
    traces the whole upload as ``span`` (None: not traced), ended by the first of
    ``complete``, ``abort`` or leaving the ``with`` block."""

    def __init__(self, inner: Upload, meter: _Meter, span: Span | None) -> None:
        self._inner = inner
        self._meter = meter
        self._span = span
        self._written = 0

    @property
    def key(self) -> str:
        return self._inner.key

    @property
    def upload_id(self) -> str | None:
        """The inner upload's multipart upload id (None while it has none, or if it is not
        a multipart upload at all): AssetUpload.abort reads it to know whether storage may
        still hold a multipart upload after a failure."""
        upload_id = getattr(self._inner, "upload_id", None)
        return upload_id if isinstance(upload_id, str) else None

    def write(self, data: BytesLike) -> None:
        with self._meter.measure("upload_write", traced=False):
            self._inner.write(data)
        self._written += data.nbytes if isinstance(data, memoryview) else len(data)

    def complete(self) -> ObjectInfo:
        try:
            with self._meter.measure("upload_complete"):
                info = self._inner.complete()
        except Exception as exc:
            self._end(exc)
            raise
        self._end(None)
        return info

    def abort(self) -> None:
        try:
            with self._meter.measure("upload_abort"):
                self._inner.abort()
        finally:
            self._end(None)

    def _end(self, error: BaseException | None) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.set_attribute(tracing.BYTES, self._written)
            _end(span, error)

    def __enter__(self) -> Self:
        self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._inner.__exit__(exc_type, exc, tb)
        finally:
            self._end(exc)


def _end(span: Span | None, error: BaseException | None) -> None:
    """End a span begun with :meth:`_Meter.start`, failed if ``error`` is set."""
    if span is None:
        return
    if error is not None:
        tracing.failed(span, _error_name(error))
    span.end()


# -- the catalog ---------------------------------------------------------------------------

_catalog = _Meter("catalog")


def instrument_catalog(database: Database) -> None:
    """Measure every statement ``database`` runs (module docstring). Idempotent."""
    engine = database.engine
    for name, listener, named in (
        ("before_cursor_execute", _before_statement, True),
        ("after_cursor_execute", _after_statement, True),
        ("handle_error", _statement_failed, False),
    ):
        if not event.contains(engine, name, listener):
            event.listen(engine, name, listener, named=named)


def _statement_kind(statement: str | None) -> str:
    """The catalog's operation label: a statement's first keyword, if a known one."""
    words = (statement or "").lstrip(" \t\r\n(").split(None, 1)
    kind = words[0].lower() if words else ""
    return kind if kind in _STATEMENT_KINDS else "other"


def _before_statement(**fields: Any) -> None:
    context = fields["context"]
    if context is not None:
        setattr(context, _STARTED, time.perf_counter())
        setattr(context, _SPAN, _statement_span(fields["conn"], fields["statement"]))


def _after_statement(**fields: Any) -> None:
    context = fields["context"]
    started = getattr(context, _STARTED, None)
    if started is not None:
        _catalog.observe(_statement_kind(fields["statement"]), time.perf_counter() - started)
    span = getattr(context, _SPAN, None)
    if span is not None:
        span.end()
        setattr(context, _SPAN, None)


def _statement_span(connection: Any, statement: str | None) -> Span | None:
    """A statement's span: its kind and the database system, never its text."""
    return tracing.start_dependency(
        "catalog",
        _statement_kind(statement),
        {"db.system.name": connection.dialect.name},
    )


def _statement_failed(context: Any) -> None:  # an ExceptionContext
    if context.is_pre_ping:  # a stale pooled connection, replaced without the caller knowing
        return
    if context.connection is None and context.statement is None:
        operation = "connect"
    else:
        operation = _statement_kind(context.statement)
    started = getattr(context.execution_context, _STARTED, None)
    if started is not None:
        _catalog.observe(operation, time.perf_counter() - started)
    error = context.sqlalchemy_exception
    if isinstance(error, DBAPIError):
        name = type(error).__name__
    else:  # the deadline hook raises DeadlineExceeded: named as for the store
        name = _error_name(context.original_exception)
    DEPENDENCY_ERRORS.labels("catalog", operation, name).inc()
    span = getattr(context.execution_context, _SPAN, None)
    if span is not None:
        tracing.failed(span, name)
        span.end()
        setattr(context.execution_context, _SPAN, None)


# -- the root key provider -------------------------------------------------------------------


class InstrumentedKeyProvider:
    """A :class:`~reelvault.keys.provider.RootKeyProvider` that measures ``inner``
    (module docstring). Behaviour, errors included, is ``inner``'s."""

    def __init__(self, inner: RootKeyProvider) -> None:
        self._inner = inner
        self._meter = _Meter("key_provider")

    @property
    def inner(self) -> RootKeyProvider:
        """The provider being measured."""
        return self._inner

    def generate_key(self, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        with self._meter.measure("generate_key"):
            return self._inner.generate_key(context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        with self._meter.measure("unwrap"):
            return self._inner.unwrap(wrapped, context)

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        with self._meter.measure("rewrap"):
            return self._inner.rewrap(wrapped, context)

    def probe(self) -> None:
        """The inner provider's readiness probe, where it has one (reelvault.readiness)."""
        probe = getattr(self._inner, "probe", None)
        if probe is not None:
            with self._meter.measure("probe"):
                probe()

    def __repr__(self) -> str:
        return f"InstrumentedKeyProvider({self._inner!r})"
