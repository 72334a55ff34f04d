"""Attacks on the audit log's building blocks: the unauthenticated-attempt limiter, the
offline verifier, the signed-note parser and the sequencer's lock.

Each test shows an attack defeated: some from the start, the others findings of the
security review that were fixed (findings 2, 7, 9 and 11).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fakes import FakeRootKeyProvider
from sqlalchemy import update

from reelvault.audit import AuditLog, Auditor, MemoryAuditSink, Outcome, Resource, merkle
from reelvault.audit import auditor as auditor_module
from reelvault.audit.auditor import Access
from reelvault.audit.events import (
    Actor,
    AuditEvent,
    RequestInfo,
    canonical_json,
    new_event_id,
    render,
    seal_record,
)
from reelvault.audit.note import Checkpoint, encode_verifier_key, open_note, sign_note
from reelvault.audit.verify import verify_export
from reelvault.catalog import Database
from reelvault.catalog.audit import AuditRepository
from reelvault.catalog.tables import TenantRow
from reelvault.cli import main
from reelvault.clock import FakeClock
from reelvault.crypto.signing import ed25519_public_key
from reelvault.keys.tenant import TenantKeys

BURST = 10  # the Auditor's default unauthenticated burst per peer and window

# -- the limiter ---------------------------------------------------------------------------


def _unauthenticated(peer: str) -> Access:
    return Access(
        actor=Actor(),
        request=RequestInfo(
            transport="grpc", operation="/reelvault.v1.AssetService/StatAsset", peer=peer
        ),
        action="asset.stat",
    )


def _knock(auditor: Auditor, peer: str) -> None:
    auditor.conclude(_unauthenticated(peer), "UNAUTHENTICATED", denied=True)


def test_an_ipv6_client_opening_new_connections_is_one_peer():
    sink = MemoryAuditSink()
    auditor = Auditor(sink, FakeClock())
    # The exact peer strings grpcio 1.85 hands the servicer for one IPv6 client (see
    # tests/integration/rpc/test_rpc_audit_attacks.py for the same over the wire).
    for port in range(3 * BURST):
        _knock(auditor, f"ipv6:%5B2001:db8::7%5D:{40000 + port}")
    assert len(sink.events) == BURST  # the burst; the rest only counted


def test_an_ipv4_client_opening_new_connections_is_one_peer():
    """The same attack over IPv4 is defeated: the port is stripped."""
    sink = MemoryAuditSink()
    auditor = Auditor(sink, FakeClock())
    for port in range(3 * BURST):
        _knock(auditor, f"ipv4:198.51.100.7:{40000 + port}")
    assert len(sink.events) == BURST


def test_one_ipv6_prefix_cannot_multiply_its_burst():
    sink = MemoryAuditSink()
    auditor = Auditor(sink, FakeClock())
    for host in range(1, 201):  # 200 addresses of one /64: one customer, one machine
        for _ in range(2):
            _knock(auditor, f"ipv6:[2001:db8:0:1::{host:x}]:443")
    assert len(sink.events) <= BURST


def test_a_full_peer_table_does_not_reset_a_known_peers_burst(monkeypatch):
    """Flooding the limiter with new peers neither evicts a known peer (whose burst would
    then start again) nor lets anyone past the shared overflow counter's burst."""
    monkeypatch.setattr(auditor_module, "_MAX_PEERS", 50)
    sink = MemoryAuditSink()
    auditor = Auditor(sink, FakeClock())
    for _ in range(BURST):
        _knock(auditor, "ipv4:203.0.113.1:1")
    for n in range(200):  # a flood of new peers: the table fills up
        _knock(auditor, f"ipv4:10.0.{n // 256}.{n % 256}:1")
    recorded = len(sink.events)
    for _ in range(5):
        _knock(auditor, "ipv4:203.0.113.1:2")  # the first peer: still past its burst
    for n in range(200, 230):  # more new peers: all on the one '*' counter, also spent
        _knock(auditor, f"ipv4:10.0.{n // 256}.{n % 256}:1")
    assert len(sink.events) == recorded
    assert len(auditor._peers) <= 51


# -- a log built in memory, exactly as the sequencer seals it --------------------------------

_KEY_NAME = "reelvault-audit"


@dataclass
class _Log:
    log_id: str
    origin: str
    lines: list[bytes]
    seed: bytes

    @property
    def key(self) -> str:
        return encode_verifier_key(_KEY_NAME, ed25519_public_key(self.seed))

    def note(self, size: int | None = None) -> str:
        size = len(self.lines) if size is None else size
        leaves = [merkle.leaf_hash(line) for line in self.lines[:size]]
        return sign_note(
            Checkpoint(self.origin, size, merkle.root(leaves)).body(), _KEY_NAME, self.seed
        )


def _event(log_id: str, n: int) -> AuditEvent:
    return AuditEvent(
        event_id=new_event_id(),
        log_id=log_id,
        time_us=1_785_312_000_000_000 + n,
        action="asset.read",
        outcome=Outcome.ALLOWED,
        status="OK",
        actor=Actor(
            key_id="9f2c4e1ab07d3356", role="renderer", tenant_id=log_id, authenticated=True
        ),
        request=RequestInfo(transport="grpc", operation="/reelvault.v1.AssetService/Download"),
        resources=(Resource("asset", f"{n:032x}", f"take-{n}.mp4", 0, 10),),
        kek_version=1,
    )


def _seal(log_id: str, events: Sequence[AuditEvent], previous: bytes = bytes(32)) -> list[bytes]:
    lines = []
    for offset, event in enumerate(events):
        line = seal_record(render(event), offset, previous)
        lines.append(line)
        previous = merkle.leaf_hash(line)
    return lines


def _build(log_id: str, size: int, seed: bytes) -> _Log:
    lines = _seal(log_id, [_event(log_id, n) for n in range(size)])
    return _Log(log_id, f"reelvault.local/audit/{log_id}", lines, seed)


@pytest.fixture
def seed() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def acme(seed: bytes) -> _Log:
    return _build(secrets.token_hex(16), 6, seed)


@pytest.fixture
def globex(seed: bytes) -> _Log:
    return _build(secrets.token_hex(16), 6, seed)


def _purged(line: bytes, seq: int) -> bytes:
    leaf = merkle.leaf_hash(line).hex()
    return canonical_json({"leaf_hash": leaf, "purged": True, "sequence": seq})


def test_the_untampered_log_verifies(acme: _Log):
    report = verify_export(acme.lines, acme.note(), acme.key)
    assert report.ok and report.events == 6


# -- the verifier: attacks that are defeated --------------------------------------------------


def test_a_duplicated_line_is_refused(acme: _Log):
    lines = [*acme.lines[:3], acme.lines[2], *acme.lines[3:]]
    assert not verify_export(lines, acme.note(), acme.key).ok


@pytest.mark.parametrize(
    "spelling",
    [
        lambda line: line + b" ",
        lambda line: line + b"\r",
        lambda line: b" " + line,
        lambda line: json.dumps(json.loads(line), sort_keys=True).encode(),  # ", " and ": "
        lambda line: json.dumps(json.loads(line), ensure_ascii=False, indent=1).encode(),
        lambda line: canonical_json(json.loads(line)).replace(b'"OK"', b'"\\u004fK"'),
    ],
    ids=["trailing-space", "carriage-return", "leading-space", "spaces", "indented", "escape"],
)
def test_another_spelling_of_the_same_json_is_refused(acme: _Log, spelling):
    """A verifier hashes the bytes it got: an equivalent JSON text is another leaf."""
    for at in (0, 3, 5):  # the first, one in the middle, the last the checkpoint covers
        lines = list(acme.lines)
        lines[at] = spelling(lines[at])
        assert json.loads(lines[at]) == json.loads(acme.lines[at])
        assert not verify_export(lines, acme.note(), acme.key).ok


def test_the_checkpoint_of_another_log_is_refused(acme: _Log, globex: _Log):
    """Same signing key, another tenant's origin: the root and the events' log differ."""
    assert not verify_export(acme.lines, globex.note(), acme.key).ok


def test_an_earlier_checkpoint_of_another_log_is_refused(acme: _Log, globex: _Log):
    report = verify_export(acme.lines, acme.note(), acme.key, previous_note=globex.note(3))
    assert not report.ok
    assert "origin" in " ".join(report.problems)


def test_an_earlier_checkpoint_larger_than_the_newer_one_is_refused(acme: _Log):
    newer = acme.note(3)
    report = verify_export(acme.lines, newer, acme.key, previous_note=acme.note(5))
    assert not report.ok


def test_events_of_another_log_spliced_in_are_refused(acme: _Log, globex: _Log):
    """Another tenant's events, re-chained to fit, still name their own log."""
    tail = _seal(globex.log_id, [_event(globex.log_id, n) for n in range(2)])
    # Renumber and re-chain the foreign events after acme's first four: the chain holds,
    # but every foreign record names globex's log.
    previous = merkle.leaf_hash(acme.lines[3])
    forged = []
    for offset, line in enumerate(tail):
        record = json.loads(line)
        record["metadata"]["sequence"] = 4 + offset
        record["unmapped"]["reelvault"]["previous"] = previous.hex()
        forged.append(canonical_json(record))
        previous = merkle.leaf_hash(forged[-1])
    lines = acme.lines[:4] + forged
    report = verify_export(lines, acme.note(), acme.key)
    assert not report.ok


def test_a_purged_line_in_place_of_an_event_is_reported_as_purged(acme: _Log):
    """Known limit (docs/audit.md, threat-model.md): a purged line proves a position, not
    a content, so whoever handles an export can blank any event. It does not go unseen:
    the report (and ``reelvault audit verify``) counts purged events."""
    lines = list(acme.lines)
    lines[2] = _purged(lines[2], 2)
    report = verify_export(lines, acme.note(), acme.key)
    assert report.ok and report.purged == 1


# -- the verifier: findings ---------------------------------------------------------------------


def _forged_after(log: _Log, count: int) -> list[bytes]:
    """Events a forger appends past the checkpoint, chained to the last real one."""
    previous = merkle.leaf_hash(log.lines[-1])
    forged = []
    for n in range(count):
        record = json.loads(seal_record(render(_event(log.log_id, 100 + n)), 0, bytes(32)))
        record["metadata"]["sequence"] = len(log.lines) + n
        record["unmapped"]["reelvault"]["previous"] = previous.hex()
        forged.append(canonical_json(record))
        previous = merkle.leaf_hash(forged[-1])
    return forged


def test_events_past_the_checkpoint_are_reported_apart(acme: _Log):
    """Lines past the checkpoint's size are only chained, and a forger can append any:
    the report says how many no root covers. (Fixed during the review.)"""
    lines = acme.lines + _forged_after(acme, 3)
    report = verify_export(lines, acme.note(), acme.key)
    assert not report.ok or report.beyond_checkpoint == 3


def test_the_cli_json_does_not_count_forged_tail_events_as_verified(
    acme: _Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    export = tmp_path / "events.jsonl"
    forged = acme.lines + _forged_after(acme, 3)
    export.write_bytes(b"".join(line + b"\n" for line in forged))
    note = tmp_path / "cp.note"
    note.write_text(acme.note(), encoding="utf-8")
    verify = ["audit", "verify", str(export), "--checkpoint", str(note), "--key", acme.key]
    code = main([*verify, "--json"])
    if code == 0:
        data = json.loads(capsys.readouterr().out)
        assert data["events"] == 6 or data.get("beyond_checkpoint") == 3, data


@pytest.mark.parametrize("line", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_json_is_a_reported_problem(acme: _Log, line: bytes):
    """verify_export never raises on bad input. (Fixed during the review: it raised
    RecursionError.)"""
    report = verify_export([*acme.lines, line], acme.note(), acme.key)
    assert not report.ok


def test_a_purged_line_in_the_platform_log_is_refused(seed: bytes):
    log = _build("platform", 4, seed)
    lines = list(log.lines)
    lines[1] = _purged(lines[1], 1)
    assert not verify_export(lines, log.note(), log.key).ok


def test_the_cli_names_the_log_it_verified_and_refuses_another_one(
    acme: _Log, globex: _Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Every log is signed with the same key, so another tenant's export and checkpoint
    verify as such: ``reelvault audit verify`` names the log it verified, and with
    ``--log`` refuses a pair of another log. (Fixed during the review.)"""
    export = tmp_path / "events.jsonl"
    export.write_bytes(b"".join(line + b"\n" for line in globex.lines))
    note = tmp_path / "cp.note"
    note.write_text(globex.note(), encoding="utf-8")
    verify = ["audit", "verify", str(export), "--checkpoint", str(note), "--key", acme.key]
    assert main(verify) == 0
    assert globex.log_id in capsys.readouterr().out
    assert main([*verify, "--log", acme.log_id]) != 0
    assert main([*verify, "--log", globex.log_id]) == 0


# -- the note parser -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mangle",
    [
        lambda note: note.replace("\u2014 ", "-- "),  # ASCII instead of the em dash
        lambda note: note.replace("\u2014 ", "\u2014  "),  # two spaces
        lambda note: note.replace("\n", "\r\n"),  # CRLF
        lambda note: note.rstrip("\n"),  # no final newline
        lambda note: note + "\n",  # a blank line after the signatures
        lambda note: note + "extra\n",  # a line that is no signature
        lambda note: note.replace("\n\n", "\n"),  # no blank line
        lambda note: note.replace("\n\n", "\nextension\n\n", 1),  # an unsigned extension
        lambda note: note.replace("\n\n", "\n \n"),  # a blank line with a space
        lambda note: "\ufeff" + note,  # a byte-order mark
    ],
    ids=[
        "ascii-dash",
        "two-spaces",
        "crlf",
        "no-final-newline",
        "trailing-blank",
        "trailing-text",
        "no-blank",
        "unsigned-extension",
        "space-blank",
        "bom",
    ],
)
def test_the_note_parser_refuses_every_variant(acme: _Log, mangle):
    note = acme.note()
    assert verify_export(acme.lines, note, acme.key).ok
    assert not verify_export(acme.lines, mangle(note), acme.key).ok


def test_a_signature_block_appended_by_a_forger_is_refused(acme: _Log):
    """A forger cannot bury the real signature in the signed text: the last blank line
    starts the signatures, and the block after it has no signature by the pinned key."""
    other = secrets.token_bytes(32)
    forged = sign_note(acme.note().encode("utf-8"), _KEY_NAME, other)
    assert not verify_export(acme.lines, forged, acme.key).ok
    with pytest.raises(ValueError):
        open_note(forged, acme.key)


# -- the sequencer (catalog) ------------------------------------------------------------------


@pytest.mark.db
def test_a_second_sequencer_never_integrates_a_locked_log(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock
):
    """While one sequencer holds a log's tree row, another one skips the log (PostgreSQL:
    SKIP LOCKED) or waits for it (SQLite: BEGIN IMMEDIATE); either way no event is
    numbered twice and the log verifies."""
    first, second = (
        AuditLog(database, root_provider, clock),
        AuditLog(database, root_provider, clock),
    )
    auditor = Auditor(first, clock)
    log_id = secrets.token_hex(16)

    def record(count: int) -> None:
        for n in range(count):
            auditor.record(
                "asset.read", tenant_id=log_id, resources=[Resource("asset", f"{n:032x}")]
            )

    record(3)
    assert first.integrate(log_id) == 3
    record(4)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with database.transaction() as session:
            assert AuditRepository(session).lock_tree(log_id, datetime.now(UTC)) is not None
            holding.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    result: list[int] = []
    other = threading.Thread(target=lambda: result.append(second.integrate(log_id)))
    other.start()
    other.join(1.0)
    if database.engine.dialect.name == "postgresql":
        assert result == [0]  # skipped, not waited
    done.set()
    holder.join(10)
    other.join(10)
    first.integrate_all()
    size = first.tree_size(log_id)
    events = list(first.export(log_id, 0, size))
    assert [e.seq for e in events] == list(range(7))
    assert len({e.event_id for e in events}) == 7
    checkpoint = second.checkpoint(log_id)
    assert all(e.record is not None for e in events)
    lines = [e.record or b"" for e in events]
    report = verify_export(lines, checkpoint.note, checkpoint.verifier_key)
    assert report.ok, report.problems


@pytest.mark.db
def test_integrating_again_adds_nothing(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock
):
    log = AuditLog(database, root_provider, clock)
    auditor = Auditor(log, clock)
    log_id = secrets.token_hex(16)
    for _ in range(5):
        auditor.record("asset.read", tenant_id=log_id)
    assert log.integrate(log_id) == 5
    assert log.integrate(log_id) == 0
    assert log.integrate_all() == 0
    assert log.tree_size(log_id) == 5
    leaves = [
        hashlib.sha256(b"\x00" + (e.record or b"")).digest() for e in log.export(log_id, 0, 5)
    ]
    assert merkle.root(leaves) == log.checkpoint(log_id).root_hash


# -- retention (catalog) -----------------------------------------------------------------------


@pytest.mark.db
def test_a_legal_hold_set_while_a_purge_runs_is_honoured(
    database: Database,
    root_provider: FakeRootKeyProvider,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
):
    log = AuditLog(database, root_provider, clock)
    auditor = Auditor(log, clock)
    tenant = TenantKeys(database, root_provider, clock, auditor=auditor).create_tenant("acme").id
    for n in range(4):
        auditor.record("asset.read", tenant_id=tenant, resources=[Resource("asset", f"{n:032x}")])
    log.integrate(tenant)
    with database.transaction() as session:
        row = session.get(TenantRow, tenant)
        assert row is not None
        row.audit_retention_days = 1
    clock.advance(2 * 86_400)
    policies = AuditRepository.retention_policies

    def then_a_hold_is_set(self: AuditRepository) -> list[tuple[str, int]]:
        read = policies(self)
        # What SetAuditRetention(legal_hold=True) commits while the purge round runs
        # (the purge goes tenant by tenant, so with many tenants this is no short window).
        with database.transaction() as session:
            session.execute(update(TenantRow).where(TenantRow.id == tenant).values(legal_hold=True))
        return read

    monkeypatch.setattr(AuditRepository, "retention_policies", then_a_hold_is_set)
    purged = log.purge()
    monkeypatch.undo()
    bodies = [e.record for e in log.export(tenant, 0, log.tree_size(tenant))]
    assert purged == {} and all(body is not None for body in bodies)
