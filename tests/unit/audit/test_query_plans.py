"""SQLite's plans for a page of audit events: every filter shape the API allows pages along
the intended index, whatever the planner statistics say (none, the sequencer's sampled
ANALYZE of a one-tenant log, a full ANALYZE), and a later page starts at its position.

These are plan assertions, not timings: docs/benchmarks.md has the timings at 1M events. The
statistics below are what ``sqlite_stat1`` held for that benchmark's log of 1,000,000 events
of one tenant. The sampled ones (``AuditLog.analyze``) say that an API key, an asset or an
action narrows a log no further than the log itself; left to choose, SQLite then paged a
later page of one key's events along the time index, through most of the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeRootKeyProvider
from sqlalchemy import event

from reelvault.audit import AuditLog, Outcome, RequestInfo, Resource
from reelvault.audit.events import Actor, AuditEvent
from reelvault.catalog import Database
from reelvault.catalog.audit import AuditFilter
from reelvault.clock import FakeClock

LOG = "0123456789abcdef0123456789abcdef"
KEYS = ("a" * 16, "b" * 16, "c" * 16)
ASSETS = ("1" * 32, "2" * 32, "3" * 32)
ACTIONS = ("asset.read", "asset.stat", "apikey.revoke")
OUTCOMES = (Outcome.DENIED, Outcome.ALLOWED, Outcome.FAILED)
METHODS = ("/reelvault.v1.AssetService/ReadAsset", "/reelvault.v1.AssetService/StatAsset")
EVERYTHING = {"start_us": 1_000, "end_us": 1_000_000}

TIME = "ix_audit_events_log_id_time_us_id"
ACTOR = "ix_audit_events_log_id_actor_key_id_time_us_id"
RESOURCE = "ix_audit_events_log_id_resource_id_time_us_id"
ACTION = "ix_audit_events_log_id_action_time_us_id"

STATISTICS = {
    "none": {},
    "sampled": {  # AuditLog.analyze: ANALYZE with analysis_limit=1000
        ACTION: "923940 1001 1001 1 1",
        RESOURCE: "3058055 1001 1001 1 1",
        ACTOR: "1101128 1001 1001 1 1",
        TIME: "857088 1001 1 1",
        "sqlite_autoindex_audit_events_2": "328680 1001 1",
        "sqlite_autoindex_audit_events_1": "529920 1",
    },
    "full": {  # ANALYZE without a limit
        ACTION: "1000000 1000000 111112 1 1",
        RESOURCE: "1000000 1000000 22 1 1",
        ACTOR: "1000000 1000000 10000 1 1",
        TIME: "1000000 1000000 1 1",
        "sqlite_autoindex_audit_events_2": "1000000 1000000 1",
        "sqlite_autoindex_audit_events_1": "1000000 1",
    },
}

# (name, filter, the index, the column it narrows by after log_id, more than one value)
SHAPES = [
    ("time only", AuditFilter(), TIME, None, False),
    ("actor", AuditFilter(actors=[KEYS[0]]), ACTOR, "actor_key_id", False),
    (
        "actor + outcome",
        AuditFilter(actors=[KEYS[0]], outcomes=["denied"]),
        ACTOR,
        "actor_key_id",
        False,
    ),
    ("resource", AuditFilter(resources=[ASSETS[0]]), RESOURCE, "resource_id", False),
    ("action", AuditFilter(actions=[ACTIONS[0]]), ACTION, "action", False),
    ("outcome", AuditFilter(outcomes=["denied"]), TIME, None, False),
    ("method", AuditFilter(methods=[METHODS[0]]), TIME, None, False),
    ("outcome + method", AuditFilter(outcomes=["denied"], methods=[METHODS[0]]), TIME, None, False),
    (
        "actor + resource",
        AuditFilter(actors=[KEYS[0]], resources=[ASSETS[0]]),
        RESOURCE,
        "resource_id",
        False,
    ),
    (
        "actor + action",
        AuditFilter(actors=[KEYS[0]], actions=[ACTIONS[0]]),
        ACTOR,
        "actor_key_id",
        False,
    ),
    (
        "resource + action",
        AuditFilter(resources=[ASSETS[0]], actions=[ACTIONS[0]]),
        RESOURCE,
        "resource_id",
        False,
    ),
    (
        "every field",
        AuditFilter(
            actors=[KEYS[0]],
            resources=[ASSETS[0]],
            actions=[ACTIONS[0]],
            outcomes=["denied"],
            methods=[METHODS[0]],
        ),
        RESOURCE,
        "resource_id",
        False,
    ),
    ("two actors", AuditFilter(actors=KEYS[:2]), ACTOR, "actor_key_id", True),
    (
        "two actors + outcome",
        AuditFilter(actors=KEYS[:2], outcomes=["denied"]),
        ACTOR,
        "actor_key_id",
        True,
    ),
    ("three resources", AuditFilter(resources=ASSETS), RESOURCE, "resource_id", True),
    ("two actions", AuditFilter(actions=ACTIONS[:2]), ACTION, "action", True),
    (
        "two actors + one action",  # one value beats two
        AuditFilter(actors=KEYS[:2], actions=[ACTIONS[0]]),
        ACTION,
        "action",
        False,
    ),
    (
        "two resources + two actors",
        AuditFilter(resources=ASSETS[:2], actors=KEYS[:2]),
        RESOURCE,
        "resource_id",
        True,
    ),
]


def _event(i: int, time_us: int) -> AuditEvent:
    """Events 0, 3, 6, ... match every single-value filter of SHAPES."""
    k = i % 3
    return AuditEvent(
        event_id=f"{i:032x}",
        log_id=LOG,
        time_us=time_us,
        action=ACTIONS[k],
        outcome=OUTCOMES[k],
        status="OK",
        actor=Actor(key_id=KEYS[k], role="auditor", tenant_id=LOG, authenticated=True),
        request=RequestInfo(transport="grpc", operation=METHODS[k % 2]),
        resources=(Resource("asset", ASSETS[k]),),
    )


def _set_statistics(database: Database, rows: dict[str, str]) -> None:
    with database.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE audit_events")  # creates sqlite_stat1
        connection.exec_driver_sql("DELETE FROM sqlite_stat1")
        for index, stat in rows.items():
            connection.exec_driver_sql(
                "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('audit_events', ?, ?)",
                (index, stat),
            )
    database.dispose()  # new connections load the statistics


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Database]:
    """A SQLite catalog of its own: these plans are SQLite's (PostgreSQL plans by itself)."""
    database = Database(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture(params=sorted(STATISTICS))
def log(request: pytest.FixtureRequest, catalog: Database) -> AuditLog:
    audit = AuditLog(catalog, FakeRootKeyProvider(), FakeClock())
    audit.write([_event(i, 10_000 + i) for i in range(12)])
    _set_statistics(catalog, STATISTICS[request.param])
    return audit


class _Captured:
    """The page queries a block of code sent to SQLite, with their parameters."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.queries: list[tuple[str, Any]] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "FROM audit_events" in statement:
            self.queries.append((statement, parameters))

    def plan(self) -> list[str]:
        [(statement, parameters)] = self.queries
        with self.database.engine.connect() as connection:
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return [str(row[3]) for row in rows]


def _pages(audit: AuditLog, database: Database, where: AuditFilter) -> Iterator[_Captured]:
    """The first page of one event, then the next page from its token."""
    token = ""
    for _ in range(2):
        captured = _Captured(database)
        event.listen(database.engine, "before_cursor_execute", captured)
        try:
            page = audit.list_events(LOG, **EVERYTHING, where=where, page_size=1, page_token=token)
        finally:
            event.remove(database.engine, "before_cursor_execute", captured)
        yield captured
        assert page.next_page_token, "every shape matches more than one event"
        token = page.next_page_token


@pytest.mark.parametrize(
    ("where", "index", "column", "several"),
    [shape[1:] for shape in SHAPES],
    ids=[shape[0] for shape in SHAPES],
)
def test_each_filter_shape_pages_along_its_index_whatever_the_statistics(
    log: AuditLog,
    catalog: Database,
    where: AuditFilter,
    index: str,
    column: str | None,
    several: bool,
) -> None:
    narrowed = f"log_id=? AND {column}=?" if column else "log_id=?"
    search = f"SEARCH audit_events USING INDEX {index} ({narrowed} AND time_us>? AND time_us<?)"
    for captured in _pages(log, catalog, where):
        plan = captured.plan()
        assert plan[0] == search, plan
        assert not any(step.startswith("SCAN") for step in plan), plan
        # One filtered value: the index gives the page order. Several: SQLite reads each
        # value's range in order and merges them in a sorter of one page.
        assert ("USE TEMP B-TREE FOR ORDER BY" in plan) == several, plan
        assert len(plan) == 1 + several, plan


def test_a_later_page_starts_its_index_range_at_its_position(
    log: AuditLog, catalog: Database
) -> None:
    """The window's start is not a bound of a later page's query: the position is (SQLite
    would start the range at the start and step over every earlier event)."""
    where = AuditFilter(actors=[KEYS[0]])
    first, later = _pages(log, catalog, where)
    [(_, first_parameters)] = first.queries
    [(_, later_parameters)] = later.queries
    assert EVERYTHING["start_us"] in first_parameters
    assert EVERYTHING["start_us"] not in later_parameters
    assert 10_000 in later_parameters  # the first page's event


@pytest.mark.parametrize("where", [AuditFilter(), AuditFilter(actors=KEYS)], ids=["time", "actors"])
def test_pages_within_one_microsecond_neither_skip_nor_repeat(
    catalog: Database, where: AuditFilter
) -> None:
    audit = AuditLog(catalog, FakeRootKeyProvider(), FakeClock())
    audit.write([_event(i, 10_000 + i // 4) for i in range(12)])  # 4 per microsecond
    seen: list[str] = []
    token = ""
    while True:
        page = audit.list_events(LOG, **EVERYTHING, where=where, page_size=3, page_token=token)
        seen += [e.event_id for e in page.events]
        if not (token := page.next_page_token):
            break
    assert seen == [f"{i:032x}" for i in range(12)]
