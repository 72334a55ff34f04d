"""The catalog's bounded waits on PostgreSQL (issue #8): every connection carries the
statement and lock timeouts, and a URL's own ``options`` (the test fixture's
``search_path``, an operator's setting) still apply beside them."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from reelvault.catalog import Database

pytestmark = pytest.mark.db


def test_connections_carry_the_timeouts_and_the_urls_own_options(database: Database):
    if database.dialect_name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite bounds waits with its busy timeout")
    url = database.engine.url
    bounded = Database(url, timeout=7.0)
    try:
        with bounded.transaction(readonly=True) as session:
            shown = {
                name: session.execute(text(f"SHOW {name}")).scalar()
                for name in ("statement_timeout", "lock_timeout", "search_path")
            }
        with database.transaction(readonly=True) as session:
            expected_path = session.execute(text("SHOW search_path")).scalar()
    finally:
        bounded.dispose()
    assert shown["statement_timeout"] == "21s"
    assert shown["lock_timeout"] == "7s"
    assert shown["search_path"] == expected_path  # the fixture's schema, not public
