"""Fixtures shared by the whole test suite.

``database`` is a migrated catalog. By default it is a fresh SQLite file in the test's
``tmp_path``. With ``REELVAULT_TEST_DATABASE_URL`` set (for example
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) it is PostgreSQL instead, in a
schema of its own that is dropped afterwards, so tests never see each other's rows. Tests
using it must be marked ``@pytest.mark.db``, so that ``-m db`` runs all of them against
PostgreSQL in CI.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fakes import FakeRootKeyProvider

from reelvault.catalog import Database
from reelvault.clock import FakeClock
from reelvault.keys.tenant import TenantKeys

TEST_DATABASE_URL_ENV = "REELVAULT_TEST_DATABASE_URL"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put the root logger back after each test: a test that runs ``serve`` or the CLI in
    this process configures logging (level, handlers) for the whole process, and the
    next test's captured output would then hold log lines it never asked for."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def unmigrated_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty catalog database (no tables), on the backend chosen by the environment."""
    if request.node.get_closest_marker("db") is None:
        pytest.fail("tests using the catalog database must be marked @pytest.mark.db")
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    if not url:
        database = Database(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
        yield database
        database.dispose()
        return
    schema = f"t_{secrets.token_hex(8)}"
    admin = sa.create_engine(url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        scoped = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        database = Database(scoped)
        try:
            yield database
        finally:
            database.dispose()
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def database(unmigrated_database: Database) -> Database:
    """A catalog database migrated to the newest schema."""
    unmigrated_database.migrate()
    return unmigrated_database


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def root_provider() -> FakeRootKeyProvider:
    return FakeRootKeyProvider()


@pytest.fixture
def tenant_keys(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock
) -> TenantKeys:
    """Tenant KEKs over ``database``, the fake root provider and the fake clock (TTL 60 s)."""
    return TenantKeys(database, root_provider, clock, cache_ttl=60.0)
