"""The metrics of the dependencies (reelvault.instrument), the endpoint that serves them
(reelvault.metrics) and its settings.

Prometheus metrics are process-wide, and other tests move them too: every assertion here
is on the change a test caused, never on an absolute value.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
import sqlalchemy as sa
from fakes import FakeRootKeyProvider
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from reelvault.catalog import Database
from reelvault.config import Settings
from reelvault.errors import (
    ConfigurationError,
    DecryptionError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from reelvault.instrument import InstrumentedKeyProvider, InstrumentedStore, instrument_catalog
from reelvault.metrics import serve_metrics, start_metrics_server
from reelvault.storage import MemoryObjectStore, ObjectStore
from reelvault.storage.conformance import ObjectStoreConformance

MIB = 1024 * 1024
DURATION = "reelvault_dependency_duration_seconds_count"
ERRORS = "reelvault_dependency_errors_total"


class Deltas:
    """Reads samples now and reports how far they moved since."""

    def __init__(self) -> None:
        self._before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        if key not in self._before:
            raise AssertionError(f"{key} was not read before the test acted")
        return _value(name, labels) - self._before[key]

    def watch(self, name: str, **labels: str) -> Deltas:
        self._before[(name, tuple(sorted(labels.items())))] = _value(name, labels)
        return self


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def calls(dependency: str, operation: str) -> dict[str, str]:
    return {"dependency": dependency, "operation": operation}


def errors(dependency: str, operation: str, error: str) -> dict[str, str]:
    return {"dependency": dependency, "operation": operation, "error": error}


# -- the store wrapper: the shared suite, then what it measures ----------------------------


class TestInstrumentedStoreConformance(ObjectStoreConformance):
    """Measuring a store changes nothing about how it behaves."""

    @pytest.fixture
    def store(self) -> InstrumentedStore:
        return InstrumentedStore(MemoryObjectStore(part_size=5 * MIB, max_in_flight=3))

    @contextmanager
    def probe_parts_in_flight(self, store: ObjectStore) -> Iterator[Callable[[], int | None]]:
        inner = _memory(store)
        inner.reset_stats()
        yield lambda: inner.stats.max_parts_in_flight

    def failing_parts(
        self, store: ObjectStore, *, after: int
    ) -> AbstractContextManager[None] | None:
        inner = _memory(store)

        @contextmanager
        def failing() -> Iterator[None]:
            inner.fail_parts(after=after)
            try:
                yield
            finally:
                inner.heal()

        return failing()


def _memory(store: ObjectStore) -> MemoryObjectStore:
    assert isinstance(store, InstrumentedStore)
    inner = store.inner
    assert isinstance(inner, MemoryObjectStore)
    return inner


@pytest.fixture
def memory() -> MemoryObjectStore:
    return MemoryObjectStore(part_size=256 * 1024, max_in_flight=2)


def test_store_calls_are_timed_and_failures_counted_by_error_class(memory: MemoryObjectStore):
    store = InstrumentedStore(memory)
    delta = (
        Deltas()
        .watch(DURATION, **calls("store", "put"))
        .watch(DURATION, **calls("store", "get_range"))
        .watch(DURATION, **calls("store", "head"))
        .watch(DURATION, **calls("store", "delete"))
        .watch(ERRORS, **errors("store", "get_range", "NotFound"))
        .watch(ERRORS, **errors("store", "get_range", "OutOfRange"))
        .watch(ERRORS, **errors("store", "head", "InvalidArgument"))
    )
    store.put("a", [b"x" * 1000])
    assert store.get_range("a", 10, 5) == b"xxxxx"
    assert store.head("a") is not None
    with pytest.raises(NotFound):
        store.get_range("missing", 0, 1)
    with pytest.raises(NotFound):
        store.get_range("missing", 0, 1)
    with pytest.raises(InvalidArgument):  # the inner store's own errors pass unchanged
        store.head("")
    store.delete("a")

    assert delta(DURATION, **calls("store", "put")) == 1
    assert delta(DURATION, **calls("store", "get_range")) == 3  # failures are timed too
    assert delta(DURATION, **calls("store", "head")) == 2
    assert delta(DURATION, **calls("store", "delete")) == 1
    assert delta(ERRORS, **errors("store", "get_range", "NotFound")) == 2
    assert delta(ERRORS, **errors("store", "get_range", "OutOfRange")) == 0
    assert delta(ERRORS, **errors("store", "head", "InvalidArgument")) == 1


def test_an_upload_is_measured_write_by_write_and_a_failed_part_is_counted(
    memory: MemoryObjectStore,
):
    store = InstrumentedStore(memory)
    delta = (
        Deltas()
        .watch(DURATION, **calls("store", "begin"))
        .watch(DURATION, **calls("store", "upload_write"))
        .watch(DURATION, **calls("store", "upload_complete"))
        .watch(ERRORS, **errors("store", "upload_write", "Unavailable"))
        .watch(ERRORS, **errors("store", "upload_complete", "Unavailable"))
    )
    with store.begin("ok") as upload:
        for _ in range(3):
            upload.write(b"y" * 200_000)
        upload.complete()
    assert memory.head("ok") is not None

    memory.fail_parts(after=0)
    with pytest.raises(Unavailable), store.begin("broken") as upload:
        for _ in range(10):
            upload.write(b"z" * 200_000)
        upload.complete()
    memory.heal()
    assert memory.head("broken") is None
    assert memory.pending_uploads() == 0  # leaving the block aborted it, as without metrics

    assert delta(DURATION, **calls("store", "begin")) == 2
    assert delta(DURATION, **calls("store", "upload_write")) >= 4
    assert delta(DURATION, **calls("store", "upload_complete")) >= 1
    failed = delta(ERRORS, **errors("store", "upload_write", "Unavailable")) + delta(
        ERRORS, **errors("store", "upload_complete", "Unavailable")
    )
    assert failed == 1


class _BreakingStore(MemoryObjectStore):
    """Streams and listings that fail after their first item, as a dropped connection."""

    def open_stream(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> Generator[bytes, None, None]:
        inner = super().open_stream(key, offset, length)

        def broken() -> Generator[bytes, None, None]:
            try:
                yield next(inner)
                raise Unavailable("connection dropped")
            finally:
                inner.close()
                self.closed_streams += 1

        return broken()

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        yield from list(super().list_keys(prefix))[:1]
        raise Unavailable("connection dropped")

    closed_streams = 0


def test_a_stream_is_timed_when_opened_and_a_failure_mid_body_is_counted():
    inner = _BreakingStore()
    store = InstrumentedStore(inner)
    store.put("a", [b"a" * (3 * MIB)])
    delta = (
        Deltas()
        .watch(DURATION, **calls("store", "open_stream"))
        .watch(ERRORS, **errors("store", "open_stream", "NotFound"))
        .watch(ERRORS, **errors("store", "read_stream", "Unavailable"))
    )
    stream = store.open_stream("a")
    assert len(next(stream)) == MIB
    with pytest.raises(Unavailable):
        next(stream)
    with pytest.raises(NotFound):
        store.open_stream("missing")
    assert inner.closed_streams == 1

    assert delta(DURATION, **calls("store", "open_stream")) == 2
    assert delta(ERRORS, **errors("store", "open_stream", "NotFound")) == 1
    assert delta(ERRORS, **errors("store", "read_stream", "Unavailable")) == 1


def test_closing_a_measured_stream_closes_the_store_stream():
    inner = _BreakingStore()
    store = InstrumentedStore(inner)
    store.put("a", [b"a" * (3 * MIB)])
    stream = store.open_stream("a")
    next(stream)
    stream.close()
    assert inner.closed_streams == 1


def test_a_listing_is_timed_to_its_first_key_and_a_failed_page_is_counted():
    store = InstrumentedStore(_BreakingStore())
    store.put("k1", [b"1"])
    store.put("k2", [b"2"])
    delta = (
        Deltas()
        .watch(DURATION, **calls("store", "list_keys"))
        .watch(ERRORS, **errors("store", "list_keys", "Unavailable"))
        .watch(DURATION, **calls("store", "list_multipart_uploads"))
    )
    keys = store.list_keys()
    assert next(keys) == "k1"
    with pytest.raises(Unavailable):
        next(keys)
    assert list(store.list_multipart_uploads()) == []  # an empty listing is timed too

    assert delta(DURATION, **calls("store", "list_keys")) == 1
    assert delta(ERRORS, **errors("store", "list_keys", "Unavailable")) == 1
    assert delta(DURATION, **calls("store", "list_multipart_uploads")) == 1


# -- the catalog -------------------------------------------------------------------------


@pytest.mark.db
def test_catalog_statements_are_timed_by_kind_and_failures_counted(database: Database):
    instrument_catalog(database)
    instrument_catalog(database)  # idempotent: every statement is still counted once
    delta = (
        Deltas()
        .watch(DURATION, **calls("catalog", "select"))
        .watch(DURATION, **calls("catalog", "with"))
        .watch(ERRORS, **errors("catalog", "select", "OperationalError"))
        .watch(ERRORS, **errors("catalog", "select", "ProgrammingError"))
    )
    with database.transaction(readonly=True) as session:  # the read-only engine too
        assert session.execute(sa.text("SELECT 1")).scalar() == 1
    with database.transaction() as session:
        assert session.execute(sa.text("  select 2")).scalar() == 2
        assert session.execute(sa.text("WITH t AS (SELECT 3 AS n) SELECT n FROM t")).scalar()
    with pytest.raises(sa.exc.DBAPIError) as caught, database.engine.connect() as connection:
        connection.execute(sa.text("SELECT * FROM no_such_table"))

    assert delta(DURATION, **calls("catalog", "select")) == 3  # the failed one included
    assert delta(DURATION, **calls("catalog", "with")) == 1
    error = type(caught.value).__name__  # OperationalError (SQLite), ProgrammingError (PG)
    assert delta(ERRORS, **errors("catalog", "select", error)) == 1


# -- the root key provider ---------------------------------------------------------------


def test_key_provider_calls_are_timed_and_failures_counted():
    fake = FakeRootKeyProvider()
    provider = InstrumentedKeyProvider(fake)
    context = {"tenant": "t1", "version": "1"}
    delta = (
        Deltas()
        .watch(DURATION, **calls("key_provider", "generate_key"))
        .watch(DURATION, **calls("key_provider", "unwrap"))
        .watch(DURATION, **calls("key_provider", "rewrap"))
        .watch(ERRORS, **errors("key_provider", "unwrap", "DecryptionError"))
        .watch(ERRORS, **errors("key_provider", "unwrap", "Unavailable"))
    )
    key, wrapped = provider.generate_key(context)
    assert provider.unwrap(wrapped, context) == key
    assert provider.unwrap(provider.rewrap(wrapped, context), context) == key
    with pytest.raises(DecryptionError):
        provider.unwrap(wrapped, {"tenant": "t2", "version": "1"})
    fake.unavailable = True
    with pytest.raises(Unavailable):
        provider.unwrap(wrapped, context)

    assert fake.unwrap_calls == 5  # rewrap unwraps inside the fake
    assert delta(DURATION, **calls("key_provider", "generate_key")) == 1
    assert delta(DURATION, **calls("key_provider", "unwrap")) == 4
    assert delta(DURATION, **calls("key_provider", "rewrap")) == 1
    assert delta(ERRORS, **errors("key_provider", "unwrap", "DecryptionError")) == 1
    assert delta(ERRORS, **errors("key_provider", "unwrap", "Unavailable")) == 1


# -- the endpoint ------------------------------------------------------------------------


def scrape(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_the_endpoint_serves_the_catalogue_and_releases_its_port():
    server = start_metrics_server("127.0.0.1", 0)
    try:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        families = scrape(server.url)
        for name in (
            "reelvault_requests",
            "reelvault_request_duration_seconds",
            "reelvault_dependency_errors",
            "process_resident_memory_bytes",
        ):
            assert name in families
    finally:
        server.close()
    assert_free(server.port)


def assert_free(port: int) -> None:
    """Nothing listens on ``port`` (SO_REUSEADDR: the scrape's TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_a_taken_port_is_a_configuration_error_naming_the_setting():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as caught:
            start_metrics_server("127.0.0.1", port)
    assert "REELVAULT_METRICS_PORT" in caught.value.message


def test_serve_metrics_is_off_without_a_port_and_stops_with_its_block():
    async def run() -> int:
        async with serve_metrics("127.0.0.1", None) as off:
            assert off is None
        async with serve_metrics("127.0.0.1", 0) as server:
            assert server is not None
            await asyncio.to_thread(scrape, server.url)
            return server.port

    assert_free(asyncio.run(run()))


def test_metrics_settings_default_to_off_on_loopback():
    settings = Settings()
    assert settings.metrics_port is None
    assert settings.metrics_host == "127.0.0.1"
    assert Settings.load({"REELVAULT_METRICS_PORT": "9400"}).metrics_port == 9400
    assert Settings.load({"REELVAULT_METRICS_PORT": " "}).metrics_port is None
    assert Settings.load({"REELVAULT_METRICS_PORT": "0"}).metrics_port == 0
    described = {variable: default for variable, default, _ in Settings.describe()}
    assert described["REELVAULT_METRICS_PORT"] == "off"
    for bad in ("65536", "-1", "http"):
        with pytest.raises(ConfigurationError) as caught:
            Settings.load({"REELVAULT_METRICS_PORT": bad})
        assert "REELVAULT_METRICS_PORT" in caught.value.message
