"""The durable, tamper-evident audit log in the catalog database.

Two steps, as in Trillian and Tessera, so that thousands of accesses a second for one
tenant never queue on one row lock:

1. **Durable first.** :meth:`AuditLog.write` (the :class:`~reelvault.audit.AuditSink`) puts
   events in ``audit_events`` with no sequence number. Concurrent writers share a group
   commit: a caller that finds fewer than ``max_in_flight`` commits running (1 on SQLite,
   which has one writer at a time) becomes a leader, takes every event queued so far (up
   to ``max_batch``) and commits them in one transaction; the others wait for the batch
   that carries theirs. One caller alone pays one transaction and no added wait. If a
   batch fails, each caller's events are committed alone, so that one bad event fails
   only its own caller (``Unavailable``).
2. **Integrated in batches.** :meth:`AuditLog.integrate` (the sequencer, run by every
   service process in the background and before any proof or checkpoint is served) locks
   one log's tree row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: another replica already
   integrating that log is left to it), gives the pending events the next sequence
   numbers in commit order, seals each into its leaf bytes (the OCSF record with its
   sequence number and the previous leaf's hash), and stores the new leaf and interior
   node hashes and the new root, all in one transaction. Sequence numbers are therefore
   gapless and unique per log, whatever the number of replicas.

Checkpoints (C2SP signed notes over origin, size and root) are signed with one Ed25519 key
whose private half is wrapped by the root key provider; :meth:`AuditLog.checkpoint` signs
one whenever the log has grown since the last.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from sqlalchemy import Connection, insert

from reelvault.audit import merkle
from reelvault.audit.events import AuditEvent, cap, render_json, seal_record
from reelvault.audit.note import Checkpoint, encode_verifier_key, sign_note
from reelvault.catalog import Database
from reelvault.catalog.audit import AuditFilter, AuditRepository
from reelvault.catalog.tables import AuditEventRow
from reelvault.clock import Clock
from reelvault.crypto.signing import ed25519_public_key
from reelvault.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from reelvault.keys.provider import RootKeyProvider, WrappedKey

__all__ = [
    "AuditLog",
    "CheckpointInfo",
    "EventPage",
    "MAX_PAGE_SIZE",
    "StoredEvent",
]

_log = structlog.get_logger("reelvault.audit")
_EVENTS: Final = insert(AuditEventRow)
# What the write path inserts, in the order of _values; seq and leaf_hash stay NULL until
# the sequencer integrates the event.
_WRITE_COLUMNS: Final = (
    "event_id",
    "log_id",
    "time_us",
    "action",
    "outcome",
    "status",
    "method",
    "actor_key_id",
    "resource_type",
    "resource_id",
    "body",
)

MAX_PAGE_SIZE: Final = 1000
DEFAULT_PAGE_SIZE: Final = 100
# Events one sequencer transaction integrates: small enough that the lock it holds (the
# whole database on SQLite) is short, large enough that a busy log keeps up.
_INTEGRATE_BATCH: Final = 1000
_MAX_TIME_US: Final = 253_402_300_800 * 1_000_000  # 9999-12-31 (protobuf's Timestamp range)
_SIGNING_CONTEXT: Final = {"purpose": "audit-checkpoint"}


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored. ``record``: the leaf bytes once integrated (``seq`` set), the
    rendered OCSF JSON before, None once purged."""

    log_id: str
    seq: int | None
    event_id: str
    time_us: int
    action: str
    outcome: str
    status: str
    method: str
    actor_key_id: str | None
    resource_type: str | None
    resource_id: str | None
    record: bytes | None
    leaf_hash: bytes | None


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    log_id: str
    origin: str
    size: int
    root_hash: bytes
    note: str
    verifier_key: str


class _Slot:
    """One caller's events waiting for a group commit. Each has its own wake-up, so a
    commit wakes exactly the callers it concerns (and the next leader), not every waiter.

    The wake-up is a bare lock, held while nobody has woken the caller: the caller blocks
    acquiring it, a waker releases it. A ``threading.Event`` does the same through a
    condition variable, a lock per wait and a few dozen bytecodes more, once per event.
    ``woken`` (read and written under ``AuditLog._lock``) says the lock is released and
    not yet taken back, so that two wake-ups in a row release it once."""

    __slots__ = ("done", "error", "rows", "taken", "wake", "woken")

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.taken = False  # in a batch being committed
        self.done = False
        self.error: BaseException | None = None
        self.wake = threading.Lock()
        self.wake.acquire()
        self.woken = False

    def signal(self) -> bool:
        """Whether a waker must release ``wake`` (``AuditLog._lock`` held): False if a
        wake-up is already pending."""
        if self.woken:
            return False
        self.woken = True
        return True


class AuditLog:
    """The catalog-backed audit sink, sequencer, checkpointer and reader.

    Args:
        database: the catalog.
        root: wraps the checkpoint signing key.
        clock: time source.
        origin_prefix: checkpoints of log L carry the origin ``<prefix>/<L>``.
        key_name: the signing key's name in signed notes.
        max_batch: most events one group commit carries.
    """

    def __init__(
        self,
        database: Database,
        root: RootKeyProvider,
        clock: Clock,
        *,
        origin_prefix: str = "reelvault.local/audit",
        key_name: str = "reelvault-audit",
        max_batch: int = 1000,
        max_in_flight: int = 2,
    ) -> None:
        self._db = database
        self._root = root
        self._clock = clock
        self._origin_prefix = origin_prefix
        self._key_name = key_name
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: deque[_Slot] = deque()
        self._in_flight = 0
        # Commits in flight at once: PostgreSQL flushes the WAL of concurrent commits
        # together; SQLite has one writer at a time, so more would only queue on its lock.
        self._max_in_flight = 1 if database.dialect_name == "sqlite" else max_in_flight
        self._signer_lock = threading.Lock()
        self._signer: tuple[bytes, bytes] | None = None  # (private seed, public key)
        self._insert_sql = _insert_sql(database.engine.dialect.paramstyle)
        self._warm: list[Connection] = []  # for the next group commit (_checkin)

    # -- 1. durable first (group commit) -------------------------------------------------

    def write(self, events: Sequence[AuditEvent]) -> None:
        """Make ``events`` durable (the :class:`AuditSink` protocol; module docstring).

        Raises:
            Unavailable: the catalog did not commit them.
        """
        if not events:
            return
        slot = _Slot([_values(event) for event in events])
        lock = self._lock
        with lock:
            self._queue.append(slot)
            batch = self._lead()
        while True:
            if not batch:
                # Woken when our batch is durable, or when we may lead the next one.
                slot.wake.acquire()
                if slot.done:  # set before the wake-up: no need for the lock to see it
                    break
                with lock:
                    slot.woken = False
                    if slot.done:
                        break
                    batch = [] if slot.taken else self._lead()
                continue
            errors: list[BaseException | None] = [Unavailable("audit write interrupted")] * len(
                batch
            )
            interrupted = True
            try:
                errors = self._commit_batch(batch)
                interrupted = False
            finally:
                with lock:
                    for taken, error in zip(batch, errors, strict=True):
                        taken.done, taken.error = True, error
                    self._in_flight -= 1
                    # the batch's other callers; released below
                    wake = [taken for taken in batch if taken is not slot and taken.signal()]
                    done = slot.done
                    # the queue was longer than a batch: ours may still be in it
                    batch = [] if interrupted or done or slot.taken else self._lead()
                    # the next leader, if a commit may start (else the one in flight
                    # wakes it when it ends)
                    if (
                        self._queue
                        and self._in_flight < self._max_in_flight
                        and self._queue[0].signal()
                    ):
                        wake.append(self._queue[0])
                for woken in wake:
                    woken.wake.release()
            if done:
                break
        if slot.error is not None:
            raise Unavailable("audit log unavailable") from slot.error

    def _lead(self) -> list[_Slot]:
        """A batch for a caller to commit, if a commit may start now (the lock held)."""
        if self._in_flight >= self._max_in_flight or not self._queue:
            return []
        self._in_flight += 1
        return self._take()

    def _take(self) -> list[_Slot]:
        """The next batch from the front of the queue (the lock held)."""
        batch: list[_Slot] = []
        count = 0
        while self._queue and (not batch or count + len(self._queue[0].rows) <= self._max_batch):
            taken = self._queue.popleft()
            taken.taken = True
            batch.append(taken)
            count += len(taken.rows)
        return batch

    def _commit_batch(self, batch: list[_Slot]) -> list[BaseException | None]:
        """Commit a batch; if that fails, each caller's events alone, so one bad event
        cannot fail the others' calls. Returns each slot's error (None: durable)."""
        try:
            if len(batch) == 1:
                self._commit(batch[0].rows)
            else:
                self._commit([row for taken in batch for row in taken.rows])
            return [None] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
        errors: list[BaseException | None] = []
        for taken in batch:
            try:
                self._commit(taken.rows)
                errors.append(None)
            except Exception as exc:
                errors.append(exc)
        return errors

    def _commit(self, rows: list[tuple[Any, ...]]) -> None:
        # A Core connection, not an ORM session, and the insert as driver SQL with
        # positional rows, not a Core construct with a dict per row: this runs for every
        # batch, and both the session's bookkeeping and Core's per-row parameter handling
        # were measurable there (bench/audit_bench.py). Still run through the engine, so
        # the catalog's metrics, traces and disconnect handling see it.
        retry = True
        while True:
            connection, warm = self._checkout()
            try:
                with connection.begin():
                    if self._insert_sql is not None:
                        connection.exec_driver_sql(self._insert_sql, rows)
                    else:
                        mappings = [dict(zip(_WRITE_COLUMNS, row, strict=True)) for row in rows]
                        connection.execute(_EVENTS, mappings)
            except Exception as exc:  # any database failure: not durable
                lost = warm and connection.invalidated  # e.g. the server restarted
                _close(connection)
                if not (lost and retry):
                    raise Unavailable("audit log unavailable") from exc
                # A warm connection skipped the pool's liveness check: once more on one
                # that passes it. (Had the lost commit gone through after all, the event
                # ids, which are unique, make this one fail instead of repeating it.)
                retry = False
                self._drop_warm()
                continue
            self._checkin(connection)
            return

    def _checkout(self) -> tuple[Connection, bool]:
        """A connection for a commit, and whether it is a warm one (``_checkin``)."""
        with self._lock:
            if self._warm:
                return self._warm.pop(), True
        try:
            return self._db.engine.connect(), False
        except Exception as exc:
            raise Unavailable("audit log unavailable") from exc

    def _checkin(self, connection: Connection) -> None:
        """After a commit: while callers are queued, the connection stays out of the pool
        for the next leader (warm), which saves the pool's checkout, liveness check (a
        round trip on PostgreSQL) and reset for each commit under load. When nothing is
        queued it goes back, with any warm one: an idle log holds no connection. There are
        never more than ``max_in_flight`` (a leader opens one only when none is warm)."""
        with self._lock:
            if self._queue:
                self._warm.append(connection)
                return
            idle, self._warm = self._warm, []
        _close(connection)
        for other in idle:
            _close(other)

    def _drop_warm(self) -> None:
        with self._lock:
            idle, self._warm = self._warm, []
        for connection in idle:
            _close(connection)

    # -- 2. the sequencer ----------------------------------------------------------------

    def integrate(self, log_id: str, *, limit: int = _INTEGRATE_BATCH, wait: bool = False) -> int:
        """Integrate up to ``limit`` pending events of one log; how many it did (0 when
        nothing was pending, or, without ``wait``, when another sequencer holds the log).

        With ``wait`` a sequencer already at work on the log (another replica's background
        round) is waited for, not skipped: a checkpoint or export served after it covers
        every event that was durable when it was asked for.
        """
        now = self._now()
        with self._db.transaction(readonly=True) as session:
            if not AuditRepository(session).pending(log_id, 1):
                return 0  # and no tree row is made for a log that has no events
        with self._db.transaction() as session:
            repository = AuditRepository(session)
            tree = repository.lock_tree(log_id, now, wait=wait)
            if tree is None:
                return 0
            pending = repository.pending(log_id, limit)
            if not pending:
                return 0
            frontier = repository.nodes(log_id, merkle.frontier_nodes(tree.size))
            previous = tree.last_leaf_hash
            updates: list[dict[str, Any]] = []
            leaves: list[bytes] = []
            for offset, (row_id, body) in enumerate(pending):
                seq = tree.size + offset
                record = seal_record(json.loads(body), seq, previous)
                leaf = merkle.leaf_hash(record)
                updates.append(
                    {"id": row_id, "seq": seq, "body": record.decode("ascii"), "leaf_hash": leaf}
                )
                leaves.append(leaf)
                previous = leaf
            created, root = merkle.append(frontier, tree.size, leaves)
            for offset, leaf in enumerate(leaves):
                created[(0, tree.size + offset)] = leaf
            repository.set_sequenced(updates)
            repository.add_nodes(log_id, created)
            tree.size += len(leaves)
            tree.root_hash = root
            tree.last_leaf_hash = previous
            tree.updated_at = now
            return len(leaves)

    def integrate_all(self, *, max_logs: int = 1000) -> int:
        """Integrate every log with pending events until none is left; the total."""
        total = 0
        with self._db.transaction(readonly=True) as session:
            logs = AuditRepository(session).pending_logs(max_logs)
        for log_id in logs:
            while (done := self.integrate(log_id)) > 0:
                total += done
                if done < _INTEGRATE_BATCH:
                    break
        return total

    def run_sequencer(
        self,
        stop: threading.Event,
        *,
        interval: float = 0.5,
        checkpoint_interval: float = 60.0,
        purge_interval: float = 3600.0,
        on_round: Callable[[], None] | None = None,
        purge: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """The service's background loop until ``stop``: integrate what is pending (every
        ``interval`` seconds), run ``on_round``, sign a checkpoint of
        each grown log every ``checkpoint_interval`` seconds, and purge past retention
        every ``purge_interval`` seconds (through ``purge``, which records it)."""
        last_checkpoints = self._clock.monotonic()
        last_purge = last_checkpoints - purge_interval  # purge and analyze in the first round
        # Rounds at a fixed pace rather than after each write: a round per write would make
        # every audited call pay for an integration (and, on SQLite, wait for its lock).
        while not stop.wait(interval):
            try:
                if on_round is not None:
                    on_round()
                self.integrate_all()
                now = self._clock.monotonic()
                if now - last_checkpoints >= checkpoint_interval:
                    last_checkpoints = now
                    self.checkpoint_all()
                if now - last_purge >= purge_interval:
                    last_purge = now
                    for tenant_id, count in (purge or self.purge)().items():
                        _log.info("audit events purged", tenant_id=tenant_id, count=count)
                    self.analyze()
            except Exception:  # retried next round; the events are durable already
                _log.warning("audit sequencer round failed", exc_info=True)

    def analyze(self) -> None:
        """Refresh SQLite's planner statistics of the audit tables (PostgreSQL's autovacuum
        does this by itself). The sequencer's every round looks for logs with pending
        events: with statistics SQLite skip-scans the (log_id, seq) index for them; without
        them it reads the whole index (90 ms at 1M events, against 0.01 ms). Event pages do not
        depend on these statistics: their index is fixed by the filter
        (``AuditFilter.sqlite_index``), since a sample sees a one-tenant log's first 1,000
        entries, all of one log_id. ``analysis_limit`` keeps it to that sample, so it is
        quick (0.1 s at 1M events; a full ANALYZE took 1.3 s)."""
        if self._db.dialect_name != "sqlite":
            return
        with self._db.engine.begin() as connection:
            connection.exec_driver_sql("PRAGMA analysis_limit=1000")
            connection.exec_driver_sql("ANALYZE audit_events")

    # -- checkpoints --------------------------------------------------------------------

    def origin(self, log_id: str) -> str:
        return f"{self._origin_prefix}/{log_id}"

    def verifier_key(self) -> str:
        """The C2SP verifier key of checkpoint signatures: pin it to verify offline."""
        _, public = self._signing_key()
        return encode_verifier_key(self._key_name, public)

    def checkpoint(self, log_id: str, *, refresh: bool = True) -> CheckpointInfo:
        """The newest checkpoint of the log; with ``refresh``, pending events are
        integrated and a new checkpoint signed first if the log grew.

        Raises:
            NotFound: the log has no events yet (and so no tree).
        """
        if refresh:
            while self.integrate(log_id, wait=True) >= _INTEGRATE_BATCH:
                pass
        seed, public = self._signing_key()
        with self._db.transaction() as session:
            repository = AuditRepository(session)
            tree = repository.tree(log_id)
            if tree is None:
                raise NotFound("this log has no events yet")
            latest = repository.latest_checkpoint(log_id)
            if latest is None or (refresh and latest.size < tree.size):
                body = Checkpoint(self.origin(log_id), tree.size, tree.root_hash).body()
                note = sign_note(body, self._key_name, seed)
                repository.add_checkpoint(
                    {
                        "log_id": log_id,
                        "size": tree.size,
                        "root_hash": tree.root_hash,
                        "note": note,
                        "created_at": self._now(),
                    }
                )
                latest = repository.checkpoint(log_id, tree.size)
            assert latest is not None  # just written, by us or a concurrent replica
            return CheckpointInfo(
                log_id=log_id,
                origin=self.origin(log_id),
                size=latest.size,
                root_hash=latest.root_hash,
                note=latest.note,
                verifier_key=encode_verifier_key(self._key_name, public),
            )

    def checkpoint_all(self) -> None:
        """Sign a checkpoint of every log that grew since its last one."""
        with self._db.transaction(readonly=True) as session:
            logs = AuditRepository(session).log_ids()
        for log_id in logs:
            self.checkpoint(log_id, refresh=True)

    def _signing_key(self) -> tuple[bytes, bytes]:
        with self._signer_lock:
            if self._signer is not None:
                return self._signer
            with self._db.transaction() as session:
                repository = AuditRepository(session)
                row = repository.signing_key(self._key_name)
                if row is None:
                    seed, wrapped = self._root.generate_key(
                        _SIGNING_CONTEXT | {"name": self._key_name}
                    )
                    repository.add_signing_key(
                        {
                            "name": self._key_name,
                            "public_key": ed25519_public_key(seed),
                            "root_key_id": wrapped.root_key_id,
                            "wrapped_key": wrapped.ciphertext,
                            "created_at": self._now(),
                        }
                    )
                    row = repository.signing_key(self._key_name)
                assert row is not None
                stored = WrappedKey(row.root_key_id, row.wrapped_key)
                public = row.public_key
            seed = self._root.unwrap(stored, _SIGNING_CONTEXT | {"name": self._key_name})
            if not hmac.compare_digest(ed25519_public_key(seed), public):
                raise FailedPrecondition("the audit signing key does not match its public key")
            self._signer = (seed, public)
            return self._signer

    # -- proofs -------------------------------------------------------------------------

    def tree_size(self, log_id: str) -> int:
        with self._db.transaction(readonly=True) as session:
            tree = AuditRepository(session).tree(log_id)
            return 0 if tree is None else tree.size

    def inclusion_proof(self, log_id: str, seq: int, size: int) -> tuple[bytes, list[bytes]]:
        """The leaf hash of event ``seq`` and its inclusion proof in the tree of ``size``.

        Raises:
            InvalidArgument: ``seq`` outside the tree, or ``size`` beyond the log.
        """
        current = self.tree_size(log_id)
        if not 0 < size <= current:
            raise InvalidArgument(f"tree size must be 1 to {current}")
        if not 0 <= seq < size:
            raise InvalidArgument("the sequence number must be inside the tree")
        with self._db.transaction(readonly=True) as session:
            repository = AuditRepository(session)
            leaf = repository.nodes(log_id, [(0, seq)])[(0, seq)]
            proof = merkle.inclusion_proof(seq, size, lambda nodes: repository.nodes(log_id, nodes))
        return leaf, proof

    def consistency_proof(self, log_id: str, old_size: int, new_size: int) -> list[bytes]:
        current = self.tree_size(log_id)
        if not 0 < old_size <= new_size <= current:
            raise InvalidArgument(f"sizes must satisfy 0 < old <= new <= {current}")
        with self._db.transaction(readonly=True) as session:
            repository = AuditRepository(session)
            return merkle.consistency_proof(
                old_size, new_size, lambda nodes: repository.nodes(log_id, nodes)
            )

    # -- reading ------------------------------------------------------------------------

    def list_events(
        self,
        log_id: str,
        *,
        start_us: int,
        end_us: int,
        where: AuditFilter,
        page_size: int = 0,
        page_token: str = "",
    ) -> EventPage:
        """One page of the log's events in ``[start_us, end_us)``, by time.

        Raises:
            InvalidArgument: an empty or inverted time range, a page size beyond 1,000, a
                page token that is malformed or was made for another query.
        """
        if end_us <= start_us:
            raise InvalidArgument("a time range (start before end) is required")
        # Beyond what any event can carry: the same answer, and no overflow in SQL.
        start_us = max(-_MAX_TIME_US, min(start_us, _MAX_TIME_US))
        end_us = max(-_MAX_TIME_US, min(end_us, _MAX_TIME_US))
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page size must be 0 to {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        query_key = _query_key(log_id, start_us, end_us, where)
        after = _decode_token(page_token, query_key) if page_token else None
        with self._db.transaction(readonly=True) as session:
            rows = AuditRepository(session).query(
                log_id, start_us=start_us, end_us=end_us, where=where, after=after, limit=size + 1
            )
            events = [_stored(row) for row in rows[:size]]
            token = ""
            if len(rows) > size:
                last = rows[size - 1]
                token = _encode_token(query_key, last.time_us, last.id)
        return EventPage(events, token)

    def export(
        self, log_id: str, start: int, end: int, *, batch: int = 1000
    ) -> Iterator[StoredEvent]:
        """Integrated events ``start <= seq < end`` in sequence order, read in batches."""
        position = start
        while position < end:
            stop = min(end, position + batch)
            with self._db.transaction(readonly=True) as session:
                rows = AuditRepository(session).sequenced(log_id, position, stop)
                events = [_stored(row) for row in rows]
            if len(events) != stop - position:
                raise Unavailable("audit log export: events missing from the integrated range")
            yield from events
            position = stop

    # -- retention ----------------------------------------------------------------------

    def purge(self) -> dict[str, int]:
        """Drop event bodies past each tenant's retention (tenants on legal hold are
        skipped); leaf hashes stay, so proofs keep verifying. Returns tenant -> count."""
        now_us = int(self._clock.now() * 1_000_000)
        with self._db.transaction(readonly=True) as session:
            policies = AuditRepository(session).retention_policies()
        purged: dict[str, int] = {}
        for tenant_id, _ in policies:
            with self._db.transaction() as session:
                repository = AuditRepository(session)
                # Read again under the tenant's lock: a hold set (or a retention lengthened)
                # since the list above wins.
                days = repository.retention_for_purge(tenant_id)
                if days is None:
                    continue
                count = repository.purge(tenant_id, now_us - days * 86_400_000_000)
            if count:
                purged[tenant_id] = count
        return purged

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)


def _close(connection: Connection) -> None:
    """Give a connection back to the pool (which discards it if it was invalidated)."""
    try:
        connection.close()
    except Exception:  # a broken connection: the pool has dropped it
        _log.debug("audit: closing a catalog connection failed", exc_info=True)


def _insert_sql(paramstyle: str) -> str | None:
    """The write path's insert for a driver taking positional parameters as ``?``
    (sqlite3) or ``%s`` (psycopg); None for any other (Core does it then)."""
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(paramstyle)
    if marker is None:
        return None
    names = ", ".join(_WRITE_COLUMNS)
    marks = ", ".join([marker] * len(_WRITE_COLUMNS))
    return f"INSERT INTO {AuditEventRow.__tablename__} ({names}) VALUES ({marks})"  # noqa: S608


def _values(event: AuditEvent) -> tuple[Any, ...]:
    """The row of a new event, in the order of ``_WRITE_COLUMNS``."""
    resource = event.resources[0] if event.resources else None
    return (
        event.event_id,
        event.log_id,
        event.time_us,
        cap(event.action, 48),
        event.outcome.value,
        event.status,
        cap(event.request.operation, 128),
        event.actor.key_id,
        cap(resource.type, 16) if resource else None,
        cap(resource.id, 64) if resource and resource.id else None,
        # json.dumps(render(event), separators=(",", ":")), not canonical yet (sorting
        # would cost a third of this function): the sequencer seals the canonical leaf
        # bytes from it (events.seal_record).
        render_json(event),
    )


def _row(event: AuditEvent) -> dict[str, Any]:
    """The row of a new event as a mapping of every column (for bulk inserts of
    ``AuditRepository.add_events``, the benchmark's)."""
    row: dict[str, Any] = dict(zip(_WRITE_COLUMNS, _values(event), strict=True))
    row["seq"] = row["leaf_hash"] = None
    return row


def _stored(row: AuditEventRow) -> StoredEvent:
    return StoredEvent(
        log_id=row.log_id,
        seq=row.seq,
        event_id=row.event_id,
        time_us=row.time_us,
        action=row.action,
        outcome=row.outcome,
        status=row.status,
        method=row.method,
        actor_key_id=row.actor_key_id,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        record=row.body.encode("ascii") if row.body is not None else None,
        leaf_hash=row.leaf_hash,
    )


def _query_key(log_id: str, start_us: int, end_us: int, where: AuditFilter) -> bytes:
    text = json.dumps([log_id, start_us, end_us, where.key()], separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()[:12]


def _encode_token(query_key: bytes, time_us: int, row_id: int) -> str:
    raw = query_key + time_us.to_bytes(8, "big", signed=True) + row_id.to_bytes(8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, query_key: bytes) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 28 or not hmac.compare_digest(raw[:12], query_key):
        raise InvalidArgument("page token is malformed or belongs to another query")
    time_us = int.from_bytes(raw[12:20], "big", signed=True)
    row_id = int.from_bytes(raw[20:], "big")
    if abs(time_us) > _MAX_TIME_US or row_id >= 2**63:
        raise InvalidArgument("page token is malformed or belongs to another query")
    return time_us, row_id
