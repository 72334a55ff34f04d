"""Queries on the audit log's tables, inside a transaction the caller owns."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

from reelvault.catalog.tables import (
    AuditCheckpointRow,
    AuditEventRow,
    AuditNodeRow,
    AuditSigningKeyRow,
    AuditTreeRow,
    TenantRow,
)

__all__ = ["AuditFilter", "AuditRepository"]

_ZERO_HASH = bytes(32)


class AuditFilter:
    """Filters of an event query: AND across fields, OR within one (empty: any)."""

    __slots__ = ("actions", "actors", "methods", "outcomes", "resources")

    def __init__(
        self,
        *,
        actors: Sequence[str] = (),
        resources: Sequence[str] = (),
        actions: Sequence[str] = (),
        outcomes: Sequence[str] = (),
        methods: Sequence[str] = (),
    ) -> None:
        self.actors = tuple(sorted(set(actors)))
        self.resources = tuple(sorted(set(resources)))
        self.actions = tuple(sorted(set(actions)))
        self.outcomes = tuple(sorted(set(outcomes)))
        self.methods = tuple(sorted(set(methods)))

    def key(self) -> tuple[tuple[str, ...], ...]:
        return (self.actors, self.resources, self.actions, self.outcomes, self.methods)

    def clauses(self) -> list[ColumnElement[bool]]:
        pairs = (
            (AuditEventRow.actor_key_id, self.actors),
            (AuditEventRow.resource_id, self.resources),
            (AuditEventRow.action, self.actions),
            (AuditEventRow.outcome, self.outcomes),
            (AuditEventRow.method, self.methods),
        )
        return [column.in_(values) for column, values in pairs if values]

    def sqlite_index(self) -> str:
        """The index a page of this filter is read along on SQLite (``INDEXED BY``): that
        of the filtered column with the fewest values, resource before actor before action,
        or the time index when no indexed column is filtered. A filter index reads only the
        filtered values' events, each value's in page order (several values are merged in a
        sorter of one page); the time index would read every event of the log from the page
        position until the page is full. Fixed by the filter's shape, not by statistics.
        """
        chosen = min(
            (
                (len(values), rank, index)
                for rank, (attr, index) in enumerate(_FILTER_INDEXES)
                if (values := getattr(self, attr))
            ),
            default=(0, 0, _TIME_INDEX),
        )
        return chosen[2]


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    # -- writing ---------------------------------------------------------------------

    def add_events(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._session.execute(AuditEventRow.__table__.insert(), list(rows))  # type: ignore[attr-defined]

    def lock_tree(self, log_id: str, now: datetime, *, wait: bool = False) -> AuditTreeRow | None:
        """The log's tree row, locked until commit; created empty if missing. Without
        ``wait``, None when another transaction holds it (PostgreSQL ``SKIP LOCKED``: that
        sequencer is doing the work, so a background round need not wait); with ``wait``,
        after that transaction ends (a reader that must cover every durable event)."""
        self._insert_ignore(
            AuditTreeRow,
            {
                "log_id": log_id,
                "size": 0,
                "root_hash": _EMPTY_ROOT,
                "last_leaf_hash": _ZERO_HASH,
                "updated_at": now,
            },
        )
        query = select(AuditTreeRow).where(AuditTreeRow.log_id == log_id)
        query = query.with_for_update(skip_locked=not wait)
        return self._session.scalars(query).one_or_none()

    def tree(self, log_id: str) -> AuditTreeRow | None:
        return self._session.get(AuditTreeRow, log_id)

    def log_ids(self) -> list[str]:
        return list(self._session.scalars(select(AuditTreeRow.log_id)))

    def pending_logs(self, limit: int) -> list[str]:
        query = select(AuditEventRow.log_id).where(AuditEventRow.seq.is_(None)).distinct()
        return list(self._session.scalars(query.limit(limit)))

    def pending(self, log_id: str, limit: int) -> list[tuple[int, str]]:
        query = (
            select(AuditEventRow.id, AuditEventRow.body)
            .where(AuditEventRow.log_id == log_id, AuditEventRow.seq.is_(None))
            .order_by(AuditEventRow.id)
            .limit(limit)
        )
        return [(row_id, body or "") for row_id, body in self._session.execute(query)]

    def set_sequenced(self, updates: Sequence[Mapping[str, Any]]) -> None:
        """``updates``: dicts of ``id``, ``seq``, ``body``, ``leaf_hash``."""
        table = AuditEventRow.__table__
        statement = (
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("row_id"))
            .values(
                seq=bindparam("new_seq"),
                body=bindparam("new_body"),
                leaf_hash=bindparam("new_leaf"),
            )
        )
        self._session.connection().execute(
            statement,
            [
                {
                    "row_id": u["id"],
                    "new_seq": u["seq"],
                    "new_body": u["body"],
                    "new_leaf": u["leaf_hash"],
                }
                for u in updates
            ],
        )

    def add_nodes(self, log_id: str, nodes: Mapping[tuple[int, int], bytes]) -> None:
        if nodes:
            self._session.execute(
                AuditNodeRow.__table__.insert(),  # type: ignore[attr-defined]
                [
                    {"log_id": log_id, "level": level, "index": index, "hash": digest}
                    for (level, index), digest in nodes.items()
                ],
            )

    def nodes(self, log_id: str, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        by_level: dict[int, list[int]] = {}
        for level, index in set(wanted):
            by_level.setdefault(level, []).append(index)
        found: dict[tuple[int, int], bytes] = {}
        # One query per level (at most one per bit of the size): each is a range of the
        # primary key, which neither a row-value IN nor an OR of levels gets on SQLite.
        for level, indexes in by_level.items():
            query = select(AuditNodeRow.index, AuditNodeRow.hash).where(
                AuditNodeRow.log_id == log_id,
                AuditNodeRow.level == level,
                AuditNodeRow.index.in_(sorted(indexes)),
            )
            for index, digest in self._session.execute(query):
                found[(level, index)] = digest
        return found

    # -- checkpoints and keys ----------------------------------------------------------

    def latest_checkpoint(self, log_id: str) -> AuditCheckpointRow | None:
        query = (
            select(AuditCheckpointRow)
            .where(AuditCheckpointRow.log_id == log_id)
            .order_by(AuditCheckpointRow.size.desc())
            .limit(1)
        )
        return self._session.scalars(query).one_or_none()

    def checkpoint(self, log_id: str, size: int) -> AuditCheckpointRow | None:
        return self._session.get(AuditCheckpointRow, (log_id, size))

    def add_checkpoint(self, values: Mapping[str, Any]) -> None:
        self._insert_ignore(AuditCheckpointRow, values)

    def signing_key(self, name: str) -> AuditSigningKeyRow | None:
        return self._session.get(AuditSigningKeyRow, name)

    def add_signing_key(self, values: Mapping[str, Any]) -> None:
        self._insert_ignore(AuditSigningKeyRow, values)

    # -- reading ---------------------------------------------------------------------

    def query(
        self,
        log_id: str,
        *,
        start_us: int,
        end_us: int,
        where: AuditFilter,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[AuditEventRow]:
        # A later page starts at its position: the position's time is the lower bound of
        # the index range, and the row value drops that microsecond's rows up to the
        # position's id. SQLite takes one lower bound per index column, and not the row
        # value's id (the rowid): given both `time_us >= start_us` and the row value, it
        # began every later page at `start_us` and stepped over all the earlier entries.
        lower = start_us if after is None else max(start_us, after[0])
        query = select(AuditEventRow).where(
            AuditEventRow.log_id == log_id,
            AuditEventRow.time_us >= lower,
            AuditEventRow.time_us < end_us,
            *where.clauses(),
        )
        if after is not None:
            query = query.where(tuple_(AuditEventRow.time_us, AuditEventRow.id) > after)
        # Left to its statistics, SQLite read a later page of one key's events along the
        # time index: with none, or with the sequencer's sampled ANALYZE of a one-tenant log
        # (which sees one log_id, so a key seems to narrow nothing). That took 140 ms over
        # 1M events, against 12 ms along the key's index. The index is therefore fixed by
        # the filter's shape (tests/unit/audit/test_query_plans.py). PostgreSQL plans well
        # by itself and gets no hint.
        query = query.with_hint(
            AuditEventRow, f"INDEXED BY {where.sqlite_index()}", dialect_name="sqlite"
        )
        query = query.order_by(AuditEventRow.time_us, AuditEventRow.id).limit(limit)
        return list(self._session.scalars(query))

    def sequenced(self, log_id: str, start: int, end: int) -> list[AuditEventRow]:
        query = (
            select(AuditEventRow)
            .where(
                AuditEventRow.log_id == log_id,
                AuditEventRow.seq >= start,
                AuditEventRow.seq < end,
            )
            .order_by(AuditEventRow.seq)
        )
        return list(self._session.scalars(query))

    def event_at(self, log_id: str, seq: int) -> AuditEventRow | None:
        query = select(AuditEventRow).where(
            AuditEventRow.log_id == log_id, AuditEventRow.seq == seq
        )
        return self._session.scalars(query).one_or_none()

    # -- retention -------------------------------------------------------------------

    def retention_policies(self) -> list[tuple[str, int]]:
        """(tenant, days) of every tenant with a retention and no legal hold."""
        query = select(TenantRow.id, TenantRow.audit_retention_days).where(
            TenantRow.audit_retention_days.is_not(None), TenantRow.legal_hold.is_(False)
        )
        return [(tenant_id, int(days or 0)) for tenant_id, days in self._session.execute(query)]

    def retention_for_purge(self, tenant_id: str) -> int | None:
        """The tenant's retention in days, with its row locked until commit; None when it
        keeps everything or is on legal hold."""
        row = self._session.scalars(
            select(TenantRow).where(TenantRow.id == tenant_id).with_for_update()
        ).one_or_none()
        if row is None or row.legal_hold or row.audit_retention_days is None:
            return None
        return int(row.audit_retention_days)

    def purge(self, log_id: str, before_us: int) -> int:
        """Drop the bodies of integrated events older than ``before_us``; the leaf hashes
        stay. Returns how many were dropped."""
        result = self._session.execute(
            update(AuditEventRow)
            .where(
                AuditEventRow.log_id == log_id,
                AuditEventRow.time_us < before_us,
                AuditEventRow.seq.is_not(None),
                AuditEventRow.body.is_not(None),
            )
            .values(body=None)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # -- helpers ---------------------------------------------------------------------

    def _insert_ignore(self, table: Any, values: Mapping[str, Any]) -> None:
        dialect = self._session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._session.execute(insert(table).values(**values).on_conflict_do_nothing())


def _index_name(*columns: str) -> str:
    """The name of the audit_events index on exactly ``columns``, from the schema."""
    table: Any = AuditEventRow.__table__
    for index in table.indexes:
        if tuple(column.name for column in index.columns) == columns:
            return str(index.name)
    raise LookupError(f"audit_events has no index on {columns}")


_TIME_INDEX = _index_name("log_id", "time_us", "id")
# (AuditFilter attribute, its index), in order of preference: assets outnumber API keys,
# which outnumber actions, so a value of the first usually narrows a log most.
_FILTER_INDEXES = tuple(
    (attr, _index_name("log_id", column, "time_us", "id"))
    for attr, column in (
        ("resources", "resource_id"),
        ("actors", "actor_key_id"),
        ("actions", "action"),
    )
)


@compiles(Table, "sqlite")
def _sqlite_table(element: Table, compiler: SQLCompiler, **kw: Any) -> str:
    """A table with its ``with_hint(..., dialect_name="sqlite")`` text after its name in
    FROM, where SQLite takes ``INDEXED BY``: SQLAlchemy's SQLite compiler drops table hints.
    Statements without a SQLite hint render as before."""
    text = compiler.visit_table(element, **kw)  # type: ignore[no-untyped-call]
    hint = (kw.get("fromhints") or {}).get(element)
    if hint and kw.get("asfrom") and compiler.get_from_hint_text(element, hint) is None:
        text = f"{text} {hint}"
    return str(text)


# RFC 6962's root of the empty tree, SHA-256 of nothing (audit.merkle.EMPTY_ROOT; the
# catalog does not import the layer above it).
_EMPTY_ROOT = hashlib.sha256(b"").digest()
