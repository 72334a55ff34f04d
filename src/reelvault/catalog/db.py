"""The catalog database: one engine, transactions, and migrations.

SQLite (an embedded file, the default) and PostgreSQL (production) are the two supported
backends; every migration and test runs on both.

SQLite needs three things the defaults get wrong for a service:

* Python's ``sqlite3`` driver does not BEGIN before a SELECT, so a read-then-write
  transaction is not serializable. The driver's transaction handling is switched off and
  :class:`Database` emits ``BEGIN IMMEDIATE`` itself, which takes the write lock up front:
  two writers queue on ``busy_timeout`` instead of one failing with "database is locked"
  halfway through. Read-only transactions use a deferred ``BEGIN`` so readers never wait
  for writers (WAL).
* ``foreign_keys`` is off unless asked for on every connection.
* ``synchronous`` stays at its default (FULL): losing a committed KEK version to a power
  cut would make everything encrypted under it unreadable, which costs more than the
  fsyncs.

Statements honour the caller's deadline (:mod:`reelvault.deadline`), as the object store
and the key provider do: once the deadline bound to the call has passed, the next
statement of :meth:`Database.transaction` or :meth:`Database.read_row` (SQLite's ``BEGIN``
included) is not sent and :class:`~reelvault.errors.DeadlineExceeded` is raised instead,
so a caller who has given up stops costing the database at the next statement. A
statement already sent runs on to its own bounds (PostgreSQL's ``statement_timeout``,
SQLite's ``busy_timeout``). Statements on :attr:`Database.engine` itself are not checked:
the audit log's group commit, which commits other callers' events beside its leader's,
and migrations.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, InternalError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from reelvault import deadline
from reelvault._files import ensure_private
from reelvault.errors import ConfigurationError, DeadlineExceeded, IntegrityError, Unavailable

__all__ = [
    "DEFAULT_URL",
    "Database",
    "describe_failure",
    "head_revision",
    "safe_endpoint",
    "safe_url",
]

DEFAULT_URL: Final = "sqlite:///.reelvault/catalog.sqlite3"
"""Embedded catalog, relative to the working directory (``.reelvault/`` is git-ignored)."""

_SCRIPT_LOCATION: Final = "reelvault.catalog:migrations"
# Execution option read by the SQLite "begin" hook: IMMEDIATE or DEFERRED.
_SQLITE_BEGIN: Final = "reelvault_sqlite_begin"
# Execution option: the connection's statements stop at the caller's deadline (module doc).
_BOUNDED: Final = "reelvault_deadline"
# pg_advisory_xact_lock key that serializes migrate() across replicas starting together.
_MIGRATION_LOCK_KEY: Final = 0x7265656C7661  # "reelva"
# libpq and psycopg quote connection parameters in some messages; never a password.
_PASSWORD_PARAMETER: Final = re.compile(r"(\w*password\w*\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
# A query parameter whose name holds "password" (password=, sslpassword=, PASSWORD=).
_PASSWORD_QUERY: Final = re.compile(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", re.IGNORECASE)
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A URL inside a driver's message.
_URL_IN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")
_HIDDEN: Final = "***"

_log = structlog.get_logger("reelvault.catalog")


class Database:
    """The catalog's engine and session factory; safe to share between threads.

    Args:
        url: a SQLAlchemy URL, ``sqlite:///path`` or ``postgresql+psycopg://...``. A
            relative SQLite path is relative to the working directory; its directory is
            created if missing.
        busy_timeout: seconds a SQLite writer waits for another writer's lock before
            giving up with :class:`~reelvault.errors.Unavailable`.
        timeout: on PostgreSQL, the bound of each wait in seconds: opening a connection,
            waiting for a pooled one or a lock (a statement gets three times as long;
            migrations are not bounded); past it the call fails with
            :class:`~reelvault.errors.Unavailable`. (A server that stops answering on an
            open connection is bounded by TCP keepalives, not by this.)
        echo: log every statement (debugging only: statements include bound values).
    """

    def __init__(
        self,
        url: str | URL = DEFAULT_URL,
        *,
        busy_timeout: float = 5.0,
        timeout: float = 10.0,
        echo: bool = False,
    ) -> None:
        try:
            self._url = make_url(url)
            backend = self._url.get_backend_name()
            if backend == "sqlite":
                self._engine = _sqlite_engine(self._url, busy_timeout=busy_timeout, echo=echo)
            elif backend == "postgresql":
                # pre_ping: replicas outlive database restarts and failovers.
                self._engine = create_engine(
                    self._url,
                    pool_pre_ping=True,
                    pool_timeout=timeout,
                    connect_args=_postgres_timeouts(timeout, self._url),
                    echo=echo,
                )
            else:
                raise ConfigurationError(f"unsupported catalog database backend {backend!r}")
        except ArgumentError:  # malformed URL, unknown driver (NoSuchModuleError)
            # the message would quote the URL, password and all
            raise ConfigurationError(
                "catalog database URL is malformed or names an unknown driver "
                "(expected sqlite:///PATH or postgresql+psycopg://...)"
            ) from None
        event.listen(self._engine, "before_cursor_execute", _stop_at_deadline)
        bounded = self._engine.execution_options(**{_BOUNDED: True})
        self._sessions = sessionmaker(bounded, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            bounded.execution_options(**{_SQLITE_BEGIN: "DEFERRED"}),
            expire_on_commit=False,
        )
        self._lone_reads = bounded.execution_options(**{_SQLITE_BEGIN: "NONE"})

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect_name(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def __repr__(self) -> str:
        return f"Database({safe_url(self._url)!r})"

    @contextmanager
    def transaction(self, *, readonly: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises.

        Args:
            readonly: the block only reads. On SQLite it then does not take the write lock,
                so it neither waits for nor blocks writers. (Writing anyway still works but
                may fail with ``Unavailable`` under contention.)

        Raises:
            Unavailable: the database cannot be reached or stayed locked.
            DeadlineExceeded: the caller's deadline passed before a statement was sent.
        """
        factory = self._read_sessions if readonly else self._sessions
        try:
            with factory.begin() as session:
                yield session
        except OperationalError as exc:
            raise self._unavailable(exc, "transaction") from exc

    def read_row(self, statement: Any, parameters: Mapping[str, Any] | None = None) -> Any:
        """The first row of one SELECT, or None: the hot read path (an asset looked up for
        a download or an origin fetch), on a pooled connection without an ORM session.

        On SQLite no ``BEGIN`` is sent: a lone SELECT is its own consistent snapshot, and
        skipping the transaction and the session makes this about a third of the cost of
        :meth:`transaction` (bench/origin_bench.py, "where the time goes").

        Raises:
            Unavailable: the database cannot be reached or stayed locked.
            DeadlineExceeded: the caller's deadline had passed.
        """
        try:
            with self._lone_reads.connect() as connection:
                return connection.execute(statement, parameters).first()
        except OperationalError as exc:
            raise self._unavailable(exc, "read") from exc

    def migrate(self) -> None:
        """Bring the schema to the newest migration; a no-op when it is already there.

        Safe to call from several replicas at once: on PostgreSQL an advisory lock, on
        SQLite ``BEGIN IMMEDIATE``, makes the others wait and then find nothing to do.
        Everything runs in one transaction, so a failed migration leaves the old schema.
        """
        try:
            with self._engine.connect() as connection:
                if connection.dialect.name == "sqlite":
                    # Batch migrations drop and recreate tables; with foreign keys on, that
                    # would cascade into (or fail on) the rows referring to them, so they
                    # are off during the upgrade and checked once at its end. The pragma
                    # only works outside a transaction: hence the driver connection.
                    _sqlite_pragma(connection, "foreign_keys=OFF")
                    try:
                        _upgrade(connection)
                    finally:
                        _sqlite_pragma(connection, "foreign_keys=ON")
                else:
                    _upgrade(connection)
        except CommandError as exc:  # the database names a revision this version lacks
            raise ConfigurationError(
                "REELVAULT_DATABASE_URL: the catalog's schema revision is unknown to this "
                f"reelvault (was it migrated by a newer version?): {exc}"
            ) from None
        except (ProgrammingError, InternalError) as exc:  # e.g. no CREATE privilege
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else ""
            raise ConfigurationError(
                f"REELVAULT_DATABASE_URL: cannot migrate the catalog: {reason}"
            ) from None
        except OperationalError as exc:
            raise self._unavailable(exc, "migrate") from exc

    def schema_revision(self) -> str | None:
        """The migration the database is at; None before the first :meth:`migrate`."""
        try:
            with self._engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except OperationalError as exc:
            raise Unavailable("catalog database unavailable") from exc

    def _unavailable(self, exc: OperationalError, operation: str) -> Unavailable:
        """The error for callers (no cause: it may name hosts and users), after logging the
        driver's reason for the operator once, without a password."""
        _log.warning(
            "catalog database unavailable",
            operation=operation,
            database=safe_url(self._url),
            cause=describe_failure(exc),
        )
        return Unavailable("catalog database unavailable")

    def dispose(self) -> None:
        """Close pooled connections (at shutdown, and in tests before deleting the file)."""
        self._engine.dispose()


def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of the migrations shipped with this reelvault."""
    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except Exception:  # alembic raises its own errors for unknown or malformed ids
        return False


def head_revision() -> str:
    """The newest migration shipped with this version of reelvault."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise ConfigurationError("no catalog migrations found")
    return head


def describe_failure(exc: BaseException) -> str | None:
    """The driver's reason for a catalog failure, on one line and without any password:
    ``exc`` itself or the cause of the ``Unavailable`` it was turned into. None if the
    failure did not come from the database driver. For the operator's log and start-up
    errors, never for a client.
    """
    cause = exc if isinstance(exc, OperationalError) else exc.__cause__
    if not isinstance(cause, OperationalError):
        return None
    original = cause.orig if cause.orig is not None else cause
    text = " ".join(str(original).split()) or type(original).__name__
    text = _URL_IN_TEXT.sub(lambda match: safe_endpoint(match.group()), text)
    return _PASSWORD_PARAMETER.sub(r"\1***", text)


def safe_url(url: str | URL) -> str:
    """A database URL fit for a message or a log: the password in the user part and the
    value of every query parameter whose name holds "password" (any case) shown as
    ``***``. Something that does not parse as a URL, or whose user or host part holds a
    stray ``@`` (an unencoded one in the password), has everything up to its last ``@``
    masked instead, so no part of a password shows whatever the input."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return safe_endpoint(str(url))
    if "@" in (parsed.username or "") or "@" in (parsed.host or ""):
        return safe_endpoint(parsed.render_as_string(hide_password=False), whole=True)
    return _PASSWORD_QUERY.sub(rf"\1{_HIDDEN}", parsed.render_as_string(hide_password=True))


def safe_endpoint(url: str, *, whole: bool = False) -> str:
    """Any URL (an S3, KMS or tracing endpoint) fit for a message or a log: a password in
    its user part (``user:***@``), or a user part without one (perhaps a token:
    ``***@``), and password query parameters masked; anything else unchanged.

    The user part is taken to end at the URL's last ``@``: a stray ``@`` elsewhere costs
    some of what is shown, never a secret. ``whole``: mask all of the user part.
    """
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme is not None else 0
    head, rest = url[:start], url[start:]
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, _password = userinfo.partition(":")
        if whole or not colon or re.search(r"[@/?#\s]", user):
            rest = f"{_HIDDEN}@{rest}"
        else:
            rest = f"{user}:{_HIDDEN}@{rest}"
    return _PASSWORD_QUERY.sub(rf"\1{_HIDDEN}", head + rest)


def _stop_at_deadline(
    connection: Connection,
    _cursor: Any,
    _statement: str,
    _parameters: Any,
    _context: Any,
    _executemany: bool,
) -> None:
    """``before_cursor_execute``: refuse to send a statement of a bounded connection
    (:data:`_BOUNDED`) once the caller's deadline has passed (module docstring). It runs
    for every statement, so without a deadline it is one context-variable lookup."""
    left = deadline.remaining()
    if left is not None and left <= 0 and connection.get_execution_options().get(_BOUNDED):
        raise DeadlineExceeded()


def _upgrade(connection: Connection) -> None:
    with connection.begin():
        if connection.dialect.name == "postgresql":
            # A migration may rewrite large tables and wait for another replica's: it is
            # not bound by the service's statement and lock timeouts.
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            connection.exec_driver_sql("SET LOCAL lock_timeout = 0")
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        if (
            connection.dialect.name == "sqlite"
            and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None
        ):
            raise IntegrityError("migration left rows violating foreign keys")


def _alembic_config() -> Config:
    # Built in code with a package-relative script location, so migrations run from an
    # installed wheel with no alembic.ini.
    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    return config


def _postgres_timeouts(timeout: float, url: URL) -> dict[str, Any]:
    """libpq connection parameters bounding each wait on the server (``timeout`` s).

    Parameters the URL sets itself win (``?connect_timeout=...``); ``options`` are joined,
    ours first, so a URL's ``-c`` settings (a ``search_path``, another timeout) apply too.
    """
    millis = max(1, int(timeout * 1000))
    ours = {
        "connect_timeout": max(1, round(timeout)),
        # statements get a wider bound than waits: a long audit query is not a stall
        "options": f"-c statement_timeout={millis * 3} -c lock_timeout={millis}"
        f" -c idle_in_transaction_session_timeout={millis * 6}",
        # a dead peer (host gone, network cut) is noticed within about 3 x timeout
        "keepalives": 1,
        "keepalives_idle": max(1, round(timeout)),
        "keepalives_interval": max(1, round(timeout / 3)),
        "keepalives_count": 3,
    }
    given = url.query
    parameters = {name: value for name, value in ours.items() if name not in given}
    if "options" in given:
        theirs = given["options"]
        theirs = " ".join(theirs) if isinstance(theirs, tuple) else theirs
        parameters["options"] = f"{ours['options']} {theirs}"
    return parameters


def _sqlite_engine(url: URL, *, busy_timeout: float, echo: bool) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        ensure_private(Path(database))  # 0600 before SQLite makes it 0644 (and its -wal)
    engine = create_engine(url, echo=echo)
    timeout_ms = int(busy_timeout * 1000)

    def on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module doc)
        # busy_timeout first: switching to WAL briefly needs a lock another connection may hold.
        dbapi_connection.execute(f"PRAGMA busy_timeout={timeout_ms:d}")
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "IMMEDIATE")
        if mode != "NONE":  # NONE: one statement that is its own snapshot (read_row)
            connection.exec_driver_sql(f"BEGIN {mode}")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    return engine


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    connection.connection.driver_connection.execute(f"PRAGMA {pragma}")  # type: ignore[union-attr]
