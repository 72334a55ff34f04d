"""Catalog statements stop at the caller's deadline (``reelvault.deadline``), as the object
store's and the key provider's calls do: once it has passed, the next statement is not
sent and the caller gets DeadlineExceeded (DEADLINE_EXCEEDED over gRPC). On SQLite and
(with -m db in CI) PostgreSQL."""

from __future__ import annotations

import time

import pytest
from fakes import FakeRootKeyProvider
from sqlalchemy import text

from reelvault import deadline
from reelvault.audit import AuditLog, Auditor
from reelvault.catalog import Database
from reelvault.clock import FakeClock
from reelvault.errors import DeadlineExceeded

pytestmark = pytest.mark.db

_SELECT = text("SELECT 1")


def _passed() -> float:
    return time.monotonic() - 1.0


@pytest.fixture
def probe(database: Database) -> str:
    """A table of our own to write to (in the test's schema on PostgreSQL)."""
    with database.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE deadline_probe (n INTEGER NOT NULL)")
    return "deadline_probe"


def _count(database: Database, table: str) -> int:
    with database.transaction(readonly=True) as session:
        return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_a_statement_after_the_deadline_fails_with_deadline_exceeded(database: Database):
    with deadline.bound(_passed()):
        with pytest.raises(DeadlineExceeded):
            database.read_row(_SELECT)
        with pytest.raises(DeadlineExceeded), database.transaction(readonly=True) as session:
            session.execute(_SELECT)
        with pytest.raises(DeadlineExceeded), database.transaction() as session:
            session.execute(_SELECT)


def test_statements_without_a_deadline_or_before_it_run(database: Database):
    assert tuple(database.read_row(_SELECT)) == (1,)
    with deadline.bound(time.monotonic() + 60):
        assert tuple(database.read_row(_SELECT)) == (1,)
        with database.transaction() as session:
            assert session.execute(_SELECT).scalar() == 1
    with deadline.bound(None), database.transaction(readonly=True) as session:
        assert session.execute(_SELECT).scalar() == 1


def test_a_refused_statement_leaves_the_pool_usable(database: Database):
    for _ in range(3):  # more refusals than SQLite's pool keeps connections
        with deadline.bound(_passed()), pytest.raises(DeadlineExceeded):
            database.read_row(_SELECT)
        with (
            deadline.bound(_passed()),
            pytest.raises(DeadlineExceeded),
            database.transaction() as session,
        ):
            session.execute(_SELECT)
    assert tuple(database.read_row(_SELECT)) == (1,)
    with database.transaction() as session:
        assert session.execute(_SELECT).scalar() == 1


def test_a_transaction_stopped_by_the_deadline_commits_nothing(database: Database, probe: str):
    with (
        pytest.raises(DeadlineExceeded),
        deadline.bound(time.monotonic() + 0.2),
        database.transaction() as session,
    ):
        session.execute(text(f"INSERT INTO {probe} (n) VALUES (1)"))
        time.sleep(0.3)  # the deadline passes between two statements
        session.execute(text(f"INSERT INTO {probe} (n) VALUES (2)"))
    assert _count(database, probe) == 0


def test_the_audit_logs_group_commit_is_not_bound_by_its_leaders_deadline(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock
):
    # The leader of a group commit commits other callers' events beside its own: its
    # expired deadline must not fail theirs. (Direct statements on Database.engine, which
    # the group commit uses, are not checked; the edges bound the audit conclusion of a
    # call that missed its deadline to no deadline.)
    auditor = Auditor(AuditLog(database, root_provider, clock), clock)
    with deadline.bound(_passed()):
        auditor.record("catalog.probe", tenant_id=None)
        with database.engine.connect() as connection:
            assert connection.execute(_SELECT).scalar() == 1
