"""The catalog-backed audit log: group commit, the sequencer, checkpoints, proofs,
queries and retention, on SQLite and (with -m db in CI) PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from fakes import FakeRootKeyProvider

from reelvault.audit import (
    AuditLog,
    Auditor,
    Outcome,
    RequestInfo,
    Resource,
    merkle,
)
from reelvault.audit.auditor import Access
from reelvault.audit.events import Actor
from reelvault.audit.note import open_note, parse_checkpoint
from reelvault.audit.verify import verify_export
from reelvault.catalog import Database
from reelvault.catalog.audit import AuditFilter, AuditRepository
from reelvault.catalog.tables import TenantRow
from reelvault.clock import FakeClock
from reelvault.errors import InvalidArgument, NotFound, Unavailable
from reelvault.keys.tenant import TenantKeys

pytestmark = pytest.mark.db


@pytest.fixture
def log(database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock) -> AuditLog:
    return AuditLog(database, root_provider, clock)


@pytest.fixture
def auditor(log: AuditLog, clock: FakeClock) -> Auditor:
    return Auditor(log, clock)


@pytest.fixture
def tenant(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock, auditor: Auditor
) -> str:
    """A tenant whose creation (its KEK version 1) is the first event of its log."""
    return TenantKeys(database, root_provider, clock, auditor=auditor).create_tenant("acme").id


def _access(key: str, action: str = "asset.read") -> Access:
    return Access(
        actor=Actor(key_id=key, role="renderer", tenant_id=None, authenticated=True),
        request=RequestInfo(transport="grpc", operation=f"/reelvault.v1.X/{action}"),
        action=action,
    )


def _record(auditor: Auditor, tenant: str, n: int, *, key: str = "0" * 16, **kw) -> None:
    for i in range(n):
        auditor.record(
            kw.get("action", "asset.read"),
            tenant_id=tenant,
            resources=[Resource("asset", f"{i % 7:032x}")],
            outcome=kw.get("outcome", Outcome.ALLOWED),
        )


def _export_lines(log: AuditLog, tenant: str, size: int) -> list[bytes]:
    lines = []
    for event in log.export(tenant, 0, size):
        if event.record is None:
            assert event.leaf_hash is not None
            lines.append(
                b'{"leaf_hash":"%s","purged":true,"sequence":%d}'
                % (event.leaf_hash.hex().encode(), event.seq)
            )
        else:
            lines.append(event.record)
    return lines


def test_concurrent_writers_and_two_sequencers_leave_no_gap_or_duplicate(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock, tenant: str
):
    # Two AuditLog objects stand for two replicas sharing one catalog.
    replicas = [AuditLog(database, root_provider, clock) for _ in range(2)]
    writers_done = threading.Event()
    errors: list[BaseException] = []

    def write(replica: AuditLog) -> None:
        try:
            _record(Auditor(replica, clock), tenant, 40)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def sequence(replica: AuditLog) -> None:
        try:
            while not writers_done.is_set():
                replica.integrate(tenant, limit=17)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(replicas[i % 2],)) for i in range(8)]
    sequencers = [threading.Thread(target=sequence, args=(r,)) for r in replicas]
    for thread in writers + sequencers:
        thread.start()
    for thread in writers:
        thread.join()
    writers_done.set()
    for thread in sequencers:
        thread.join()
    assert not errors
    replicas[0].integrate_all()
    events = list(replicas[1].export(tenant, 0, replicas[1].tree_size(tenant)))
    creation = 1  # key.create of the tenant
    assert [e.seq for e in events] == list(range(8 * 40 + creation))
    assert len({e.event_id for e in events}) == len(events)
    checkpoint = replicas[1].checkpoint(tenant)
    report = verify_export(
        _export_lines(replicas[0], tenant, checkpoint.size),
        checkpoint.note,
        checkpoint.verifier_key,
    )
    assert report.ok, report.problems


def test_a_checkpoint_waits_for_a_sequencer_at_work_and_covers_every_durable_event(
    log: AuditLog, auditor: Auditor, tenant: str, database: Database, clock: FakeClock
):
    # Another replica's background round holds the log's tree (it is integrating): a
    # checkpoint asked for now must not skip it and sign the tree as it was before.
    log.integrate(tenant)
    _record(auditor, tenant, 5)
    holding, release = threading.Event(), threading.Event()

    def sequencer_at_work() -> None:
        with database.transaction() as session:
            now = datetime.fromtimestamp(clock.now(), UTC)
            assert AuditRepository(session).lock_tree(tenant, now) is not None
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=sequencer_at_work)
    holder.start()
    assert holding.wait(30)
    result: list[int] = []
    reader = threading.Thread(target=lambda: result.append(log.checkpoint(tenant).size))
    reader.start()
    reader.join(0.5)
    assert reader.is_alive(), "the checkpoint did not wait for the sequencer holding the log"
    release.set()
    holder.join()
    reader.join(30)
    assert result == [1 + 5]  # the tenant's creation and the five reads


def test_proofs_from_the_stored_tree_verify(log: AuditLog, auditor: Auditor, tenant: str):
    _record(auditor, tenant, 37)
    log.integrate(tenant)
    checkpoint = log.checkpoint(tenant)
    body = parse_checkpoint(open_note(checkpoint.note, checkpoint.verifier_key))
    assert (body.size, body.root_hash) == (checkpoint.size, checkpoint.root_hash)
    assert body.origin == f"reelvault.local/audit/{tenant}"
    records = [e.record for e in log.export(tenant, 0, checkpoint.size)]
    for size in (1, 2, 5, 16, 17, checkpoint.size):
        root = merkle.root([merkle.leaf_hash(r) for r in records[:size]])
        for seq in range(size):
            leaf, proof = log.inclusion_proof(tenant, seq, size)
            assert leaf == merkle.leaf_hash(records[seq])
            assert merkle.verify_inclusion(leaf, seq, size, proof, root)
        proof = log.consistency_proof(tenant, size, checkpoint.size)
        assert merkle.verify_consistency(size, checkpoint.size, root, checkpoint.root_hash, proof)
    with pytest.raises(InvalidArgument):
        log.inclusion_proof(tenant, checkpoint.size, checkpoint.size)
    with pytest.raises(InvalidArgument):
        log.inclusion_proof(tenant, 0, checkpoint.size + 1)
    with pytest.raises(InvalidArgument):
        log.consistency_proof(tenant, 5, 4)


def test_checkpoints_are_signed_when_the_log_grew(log: AuditLog, auditor: Auditor, tenant: str):
    first = log.checkpoint(tenant)
    assert log.checkpoint(tenant).note == first.note  # nothing new: the same checkpoint
    _record(auditor, tenant, 3)
    second = log.checkpoint(tenant)  # integrates the pending events first
    assert second.size == first.size + 3
    assert second.verifier_key == first.verifier_key
    with pytest.raises(NotFound):
        log.checkpoint("f" * 32)


def test_the_signing_key_is_wrapped_by_the_root_provider(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock, tenant: str
):
    first = AuditLog(database, root_provider, clock).verifier_key()
    # Another replica unwraps the same key rather than making its own.
    assert AuditLog(database, root_provider, clock).verifier_key() == first
    assert {"purpose": "audit-checkpoint", "name": "reelvault-audit"} in root_provider.contexts


def test_queries_filter_and_page_with_tokens_bound_to_the_query(
    log: AuditLog, auditor: Auditor, clock: FakeClock, tenant: str
):
    for key in ("a" * 16, "b" * 16):
        with auditor.bind(_access(key)):
            _record(auditor, tenant, 5)
    with auditor.bind(_access("a" * 16, "asset.delete")):
        _record(auditor, tenant, 2, action="asset.delete", outcome=Outcome.DENIED)
    everything = {"start_us": 0, "end_us": int((clock.now() + 1) * 1e6)}
    only_a = AuditFilter(actors=["a" * 16])
    page = log.list_events(tenant, **everything, where=only_a, page_size=3)
    assert len(page.events) == 3 and page.next_page_token
    seen = list(page.events)
    while page.next_page_token:
        page = log.list_events(
            tenant, **everything, where=only_a, page_size=3, page_token=page.next_page_token
        )
        seen += page.events
    assert len(seen) == 7 and {e.actor_key_id for e in seen} == {"a" * 16}
    assert len({e.event_id for e in seen}) == 7
    denied = log.list_events(
        tenant, **everything, where=AuditFilter(outcomes=["denied"], actions=["asset.delete"])
    )
    assert [e.outcome for e in denied.events] == ["denied", "denied"]
    either = log.list_events(tenant, **everything, where=AuditFilter(actors=["a" * 16, "b" * 16]))
    assert len(either.events) == 12
    token = log.list_events(tenant, **everything, where=only_a, page_size=1).next_page_token
    with pytest.raises(InvalidArgument, match="another query"):
        log.list_events(tenant, **everything, where=AuditFilter(), page_token=token)
    with pytest.raises(InvalidArgument, match="another query"):
        log.list_events("f" * 32, **everything, where=only_a, page_token=token)
    with pytest.raises(InvalidArgument):
        log.list_events(tenant, start_us=5, end_us=5, where=only_a)
    with pytest.raises(InvalidArgument):
        log.list_events(tenant, **everything, where=only_a, page_size=1001)


def test_purge_keeps_leaf_hashes_and_honours_the_legal_hold(
    database: Database, log: AuditLog, auditor: Auditor, clock: FakeClock, tenant: str
):
    _record(auditor, tenant, 4)
    log.integrate(tenant)
    with database.transaction() as session:
        session.get(TenantRow, tenant).audit_retention_days = 30
        session.get(TenantRow, tenant).legal_hold = True
    clock.advance(31 * 86400)
    _record(auditor, tenant, 2)  # recent: kept
    log.integrate(tenant)
    assert log.purge() == {}  # on hold
    with database.transaction() as session:
        session.get(TenantRow, tenant).legal_hold = False
    assert log.purge() == {tenant: 5}  # key.create and the four old reads
    checkpoint = log.checkpoint(tenant)
    events = list(log.export(tenant, 0, checkpoint.size))
    assert [e.record is None for e in events] == [True] * 5 + [False] * 2
    report = verify_export(
        _export_lines(log, tenant, checkpoint.size), checkpoint.note, checkpoint.verifier_key
    )
    assert report.ok and report.purged == 5, report.problems
    leaf, proof = log.inclusion_proof(tenant, 1, checkpoint.size)
    assert merkle.verify_inclusion(leaf, 1, checkpoint.size, proof, checkpoint.root_hash)


def test_a_failed_commit_fails_every_waiter_and_nothing_is_half_written(
    log: AuditLog, auditor: Auditor, tenant: str, monkeypatch: pytest.MonkeyPatch
):
    log.integrate(tenant)
    before = log.tree_size(tenant)

    def broken(rows):
        raise Unavailable("catalog database unavailable")

    monkeypatch.setattr(log, "_commit", broken)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            _record(auditor, tenant, 1)
        except Unavailable as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(failures) == 8
    monkeypatch.undo()
    log.integrate(tenant)
    assert log.tree_size(tenant) == before


def test_sqlite_gets_planner_statistics_for_the_audit_tables(
    database: Database, log: AuditLog, auditor: Auditor, tenant: str
):
    _record(auditor, tenant, 3)
    log.analyze()  # a no-op on PostgreSQL, whose autovacuum keeps statistics
    if database.dialect_name == "sqlite":
        with database.engine.connect() as connection:
            tables = {row[0] for row in connection.exec_driver_sql("SELECT tbl FROM sqlite_stat1")}
        assert "audit_events" in tables
