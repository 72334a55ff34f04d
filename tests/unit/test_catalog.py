"""The catalog database: migrations, connection settings and the schema's invariants.

Schema invariants are tested with raw rows, below the key manager, because they are the
last line of defence when code (or an operator with psql) gets it wrong.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import StatementError

from reelvault import errors
from reelvault.catalog import (
    KEK_STATES,
    Base,
    Database,
    TenantKeyVersionRow,
    TenantRepository,
    TenantRow,
    head_revision,
)
from reelvault.catalog.db import _alembic_config
from reelvault.keys.tenant import KekState

NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
TABLES = {
    "alembic_version",
    "tenants",
    "tenant_key_versions",
    "api_keys",
    "assets",
    "uploads",
    "deleted_objects",
    "audit_events",
    "audit_trees",
    "audit_nodes",
    "audit_checkpoints",
    "audit_signing_keys",
    "scrub_passes",
    "scrub_findings",
    "url_signing_keys",
    "url_revocations",
    "subjects",
    "consents",
    "payloads",
    "key_exports",
}


def _add_tenant(database: Database, name: str | None = None) -> str:
    tenant_id = secrets.token_hex(16)
    with database.transaction() as session:
        session.add(TenantRow(id=tenant_id, name=name or tenant_id, created_at=NOW))
    return tenant_id


def _version_row(
    tenant_id: str, version: int, state: str = "active", **overrides: object
) -> TenantKeyVersionRow:
    values: dict[str, object] = {
        "tenant_id": tenant_id,
        "version": version,
        "state": state,
        "root_key_id": "fake:1",
        "wrapped_key": None if state == "destroyed" else b"wrapped",
        "created_at": NOW,
        "state_changed_at": NOW,
        "deletion_due_at": NOW if state == "pending-deletion" else None,
    }
    values.update(overrides)
    return TenantKeyVersionRow(**values)


def _insert(database: Database, *rows: object) -> None:
    with database.transaction() as session:
        for row in rows:
            session.add(row)


def _table_names(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return set(sa.inspect(connection).get_table_names())


# -- migrations ----------------------------------------------------------------------


@pytest.mark.db
def test_migrate_builds_the_schema_from_empty_and_is_idempotent(
    unmigrated_database: Database,
) -> None:
    assert unmigrated_database.schema_revision() is None
    assert _table_names(unmigrated_database) == set()

    unmigrated_database.migrate()
    assert unmigrated_database.schema_revision() == head_revision()
    assert _table_names(unmigrated_database) == TABLES

    _insert(unmigrated_database, TenantRow(id="a" * 32, name="kept", created_at=NOW))
    unmigrated_database.migrate()
    assert unmigrated_database.schema_revision() == head_revision()
    with unmigrated_database.transaction(readonly=True) as session:
        assert [row.name for row in TenantRepository(session).tenants()] == ["kept"]


@pytest.mark.db
def test_replicas_starting_together_migrate_once(unmigrated_database: Database) -> None:
    replicas = [Database(unmigrated_database.engine.url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(Database.migrate, replicas))
    finally:
        for replica in replicas:
            replica.dispose()
    assert unmigrated_database.schema_revision() == head_revision()
    assert _table_names(unmigrated_database) == TABLES


@pytest.mark.db
def test_migrated_schema_matches_the_models(database: Database) -> None:
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


@pytest.mark.db
def test_migrated_schema_has_the_one_active_partial_unique_index(database: Database) -> None:
    with database.engine.connect() as connection:
        indexes = sa.inspect(connection).get_indexes("tenant_key_versions")
    [index] = [i for i in indexes if i["name"] == "uq_tenant_key_versions_one_active"]
    assert index["unique"]
    assert index["column_names"] == ["tenant_id"]


@pytest.mark.db
def test_downgrade_to_nothing_and_upgrade_again(database: Database) -> None:
    config = _alembic_config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert _table_names(database) == {"alembic_version"}
    assert database.schema_revision() is None

    database.migrate()
    assert _table_names(database) == TABLES


def test_head_revision_is_the_newest_migration() -> None:
    versions = Path(__file__).parents[2] / "src/reelvault/catalog/migrations/versions"
    newest = max(p.name.split("_")[0] for p in versions.glob("[0-9]*_*.py"))
    assert head_revision() == newest


# -- connections and transactions ----------------------------------------------------


@pytest.mark.db
def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(database: Database) -> None:
    if database.dialect_name != "sqlite":
        pytest.skip("SQLite connection settings")
    with database.engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA foreign_keys").scalar() == 1
        assert pragma("PRAGMA busy_timeout").scalar() == 5000


def test_default_database_is_an_embedded_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    database = Database()
    try:
        assert database.dialect_name == "sqlite"
        database.migrate()
        assert (tmp_path / ".reelvault" / "catalog.sqlite3").is_file()
    finally:
        database.dispose()


@pytest.mark.db
def test_transaction_commits_on_success_and_rolls_back_on_error(database: Database) -> None:
    tenant_id = _add_tenant(database, "committed")
    with pytest.raises(RuntimeError), database.transaction() as session:
        session.add(TenantRow(id="b" * 32, name="rolled back", created_at=NOW))
        session.flush()
        raise RuntimeError

    with database.transaction(readonly=True) as session:
        names = [row.name for row in TenantRepository(session).tenants()]
        assert TenantRepository(session).tenant(tenant_id).name == "committed"
    assert names == ["committed"]


@pytest.mark.db
def test_sqlite_readers_do_not_block_a_writer(database: Database) -> None:
    if database.dialect_name != "sqlite":
        pytest.skip("SQLite locking")
    with database.transaction(readonly=True) as reader:
        assert TenantRepository(reader).tenants() == []
        _add_tenant(database, "written while a reader is open")
        # The reader keeps its snapshot (WAL): a repeatable read.
        assert TenantRepository(reader).tenants() == []
    with database.transaction(readonly=True) as session:
        assert len(TenantRepository(session).tenants()) == 1


@pytest.mark.db
def test_sqlite_writer_waiting_too_long_is_unavailable(database: Database) -> None:
    if database.dialect_name != "sqlite":
        pytest.skip("SQLite locking")
    impatient = Database(database.engine.url, busy_timeout=0.05)
    try:
        with database.transaction() as session:
            session.add(TenantRow(id="c" * 32, name="holds the write lock", created_at=NOW))
            session.flush()
            with pytest.raises(errors.Unavailable), impatient.transaction() as waiting:
                TenantRepository(waiting).tenants()
    finally:
        impatient.dispose()


def test_unreachable_database_is_unavailable() -> None:
    database = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(errors.Unavailable), database.transaction() as session:
            TenantRepository(session).tenants()
        with pytest.raises(errors.Unavailable):
            database.migrate()
    finally:
        database.dispose()


def test_unsupported_backend_is_a_configuration_error() -> None:
    with pytest.raises(errors.ConfigurationError):
        Database("mysql://user@localhost/db")


def test_repr_hides_the_password() -> None:
    database = Database("postgresql+psycopg://reelvault:hunter2@db.internal/catalog")
    assert "hunter2" not in repr(database)
    assert "db.internal" in repr(database)


# -- schema invariants ---------------------------------------------------------------


def test_stored_states_match_the_key_manager() -> None:
    assert tuple(state.value for state in KekState) == KEK_STATES


@pytest.mark.db
def test_tenant_names_are_unique(database: Database) -> None:
    _add_tenant(database, "acme")
    with pytest.raises(errors.AlreadyExists), database.transaction() as session:
        TenantRepository(session).add_tenant(
            TenantRow(id=secrets.token_hex(16), name="acme", created_at=NOW)
        )


@pytest.mark.db
def test_min_decryption_version_defaults_to_one_in_the_database(database: Database) -> None:
    with database.transaction() as session:
        session.execute(
            sa.text("INSERT INTO tenants (id, name, created_at) VALUES (:id, 'raw', :at)"),
            {"id": "d" * 32, "at": NOW.replace(tzinfo=None)},
        )
    with database.transaction(readonly=True) as session:
        assert TenantRepository(session).tenant("d" * 32).min_decryption_version == 1


@pytest.mark.db
def test_key_versions_need_an_existing_tenant(database: Database) -> None:
    with pytest.raises(SqlIntegrityError):
        _insert(database, _version_row("e" * 32, 1))


@pytest.mark.db
@pytest.mark.parametrize("state", KEK_STATES)
def test_every_state_is_storable(database: Database, state: str) -> None:
    tenant_id = _add_tenant(database)
    _insert(database, _version_row(tenant_id, 1, state))


@pytest.mark.db
def test_unknown_states_are_rejected(database: Database) -> None:
    tenant_id = _add_tenant(database)
    with pytest.raises(SqlIntegrityError):
        _insert(database, _version_row(tenant_id, 1, "enabled"))


@pytest.mark.db
def test_version_numbers_start_at_one(database: Database) -> None:
    tenant_id = _add_tenant(database)
    with pytest.raises(SqlIntegrityError):
        _insert(database, _version_row(tenant_id, 0))


@pytest.mark.db
def test_at_most_one_active_version_per_tenant(database: Database) -> None:
    tenant_id, other_tenant_id = _add_tenant(database), _add_tenant(database)
    _insert(database, _version_row(tenant_id, 1))
    with pytest.raises(SqlIntegrityError):
        _insert(database, _version_row(tenant_id, 2))
    # Any number of non-active versions, and one active version per tenant.
    _insert(
        database,
        _version_row(tenant_id, 2, "decrypt-only"),
        _version_row(tenant_id, 3, "disabled"),
        _version_row(other_tenant_id, 1),
    )
    with database.transaction() as session:
        TenantRepository(session).key_version(tenant_id, 1).state = "decrypt-only"
    _insert(database, _version_row(tenant_id, 4))


@pytest.mark.db
def test_the_same_version_cannot_be_stored_twice(database: Database) -> None:
    tenant_id = _add_tenant(database)
    _insert(database, _version_row(tenant_id, 1))
    with pytest.raises(SqlIntegrityError):
        _insert(database, _version_row(tenant_id, 1, "decrypt-only"))


@pytest.mark.db
@pytest.mark.parametrize(
    ("state", "wrapped_key"),
    [("destroyed", b"still here"), ("active", None), ("decrypt-only", None)],
)
def test_key_material_is_present_exactly_until_destroyed(
    database: Database, state: str, wrapped_key: bytes | None
) -> None:
    tenant_id = _add_tenant(database)
    with pytest.raises(SqlIntegrityError):
        _insert(database, _version_row(tenant_id, 1, state, wrapped_key=wrapped_key))


@pytest.mark.db
def test_pending_deletion_needs_a_due_date(database: Database) -> None:
    tenant_id = _add_tenant(database)
    with pytest.raises(SqlIntegrityError):
        _insert(database, _version_row(tenant_id, 1, "pending-deletion", deletion_due_at=None))


@pytest.mark.db
def test_timestamps_come_back_as_aware_utc(database: Database) -> None:
    plus_two = datetime(2027, 1, 15, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    tenant_id = secrets.token_hex(16)
    _insert(database, TenantRow(id=tenant_id, name="tz", created_at=plus_two))
    with database.transaction(readonly=True) as session:
        created_at = TenantRepository(session).tenant(tenant_id).created_at
    assert created_at == plus_two
    assert created_at.tzinfo is UTC
    assert created_at.hour == 8


@pytest.mark.db
def test_naive_timestamps_are_refused(database: Database) -> None:
    with pytest.raises(StatementError, match="timezone-aware"):
        _insert(database, TenantRow(id="f" * 32, name="naive", created_at=datetime(2027, 1, 1)))
