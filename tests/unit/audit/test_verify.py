"""Offline verification of an export, against a real log.

Each test builds a tenant's log in-process (the catalog, the sequencer, the signed
checkpoints), exports it exactly as ``reelvault audit export`` writes it, and checks that
the untampered export verifies and that every tampering fails with a message naming the
event: an edit (in the middle, and of the last event, which no later event vouches for),
a deletion, a swap, an insertion (a copy, a forged event, a forged event with the rest of
the log renumbered or fully re-chained), a truncated tail, a wrong key, a flipped byte
anywhere in the checkpoint, and an earlier checkpoint from a log rewritten since.
Purged events (retention) still verify from their leaf hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from reelvault.app import Vault
from reelvault.audit import Outcome, Resource, StoredEvent
from reelvault.audit.events import canonical_json
from reelvault.audit.note import encode_verifier_key
from reelvault.audit.verify import VerifyReport, verify_export
from reelvault.catalog.tables import (
    AuditCheckpointRow,
    AuditEventRow,
    AuditNodeRow,
    AuditTreeRow,
)
from reelvault.cli.audit import export_line
from reelvault.client import AuditRecord
from reelvault.crypto import signing
from reelvault.storage import MemoryObjectStore

pytestmark = pytest.mark.db

READS = 9  # with the tenant's key.create event: a log of 10, not a power of two
DAY = 86_400.0
EDITS = [(b"/take-", b"/tak3-"), (b'"action":"asset.read"', b'"action":"asset.reaD"')]
"""One character of an event's path, or of its action."""


@dataclass
class Export:
    lines: list[bytes]
    note: str
    key: str

    def uid(self, seq: int) -> str:
        return str(json.loads(self.lines[seq])["metadata"]["uid"])

    def verify(self, lines: list[bytes] | None = None, **kwargs: Any) -> VerifyReport:
        return verify_export(self.lines if lines is None else lines, self.note, self.key, **kwargs)


@pytest.fixture
def vault(database, root_provider, clock) -> Vault:
    return Vault.from_parts(
        database=database, root=root_provider, store=MemoryObjectStore(), clock=clock
    )


@pytest.fixture
def tenant(vault: Vault) -> str:
    return vault.tenant_keys.create_tenant("acme").id


def record_reads(vault: Vault, tenant: str, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        denied = i % 4 == 3
        vault.auditor.record(
            "asset.read",
            tenant_id=tenant,
            resources=[Resource("asset", f"{i:032x}", f"campaign-42/take-{i}.mp4", 0, 1024)],
            outcome=Outcome.DENIED if denied else Outcome.ALLOWED,
            status="PERMISSION_DENIED" if denied else "OK",
        )


def export(vault: Vault, log_id: str) -> Export:
    """What ``reelvault audit export --checkpoint-out`` writes: the checkpoint, then
    exactly the events it covers, one :func:`export_line` each."""
    checkpoint = vault.audit_log.checkpoint(log_id)
    events = vault.audit_log.export(log_id, 0, checkpoint.size)
    lines = [export_line(as_record(event)) for event in events]
    return Export(lines, checkpoint.note, vault.audit_log.verifier_key())


def as_record(event: StoredEvent) -> AuditRecord:
    """The event as the client hands it to the CLI (the wire's ``AuditRecord``)."""
    assert event.seq is not None and event.leaf_hash is not None
    return AuditRecord(event.seq, event.record, event.leaf_hash, event.record is None)


@pytest.fixture
def log(vault: Vault, tenant: str) -> Export:
    record_reads(vault, tenant, READS)
    vault.audit_log.integrate(tenant)
    exported = export(vault, tenant)
    assert len(exported.lines) == READS + 1
    return exported


def only_problem(report: VerifyReport) -> str:
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


def edit(line: bytes, old: bytes, new: bytes) -> bytes:
    assert line.count(old) == 1 and len(old) == len(new)
    return line.replace(old, new)


def reseal(line: bytes, **changes: Any) -> bytes:
    """The line's record with ``sequence``, ``uid``, ``previous`` (hex) or ``path``
    replaced, as canonical JSON: what a forger with no signing key can write."""
    record = json.loads(line)
    if "sequence" in changes:
        record["metadata"]["sequence"] = changes["sequence"]
    if "uid" in changes:
        record["metadata"]["uid"] = changes["uid"]
    if "previous" in changes:
        record["unmapped"]["reelvault"]["previous"] = changes["previous"]
    if "path" in changes:
        record["resources"][0]["name"] = changes["path"]
    return canonical_json(record) + b"\n"


def leaf(line: bytes) -> str:
    return hashlib.sha256(b"\x00" + line.rstrip(b"\n")).hexdigest()


# -- the untampered log -------------------------------------------------------------------


def test_an_untampered_export_verifies(log: Export):
    for note in (log.note, log.note.encode()):
        report = verify_export(log.lines, note, log.key)
        assert report.ok, report.problems
        assert report.events == len(log.lines) == report.checkpoint.size
        assert report.purged == 0
    assert all(line.endswith(b"}\n") and line.count(b"\n") == 1 for line in log.lines)
    sequences = [json.loads(line)["metadata"]["sequence"] for line in log.lines]
    assert sequences == list(range(len(log.lines)))


# -- tampered events ----------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), EDITS, ids=["path", "action"])
def test_an_edited_event_is_named_by_its_successor(log: Export, old: bytes, new: bytes):
    k = 5
    lines = list(log.lines)
    lines[k] = edit(lines[k], old, new)
    problem = only_problem(log.verify(lines))
    assert log.uid(k) in problem
    assert f"sequence {k}" in problem


@pytest.mark.parametrize(("old", "new"), EDITS, ids=["path", "action"])
def test_an_edited_last_event_is_caught_by_the_root(log: Export, old: bytes, new: bytes):
    last = len(log.lines) - 1
    lines = list(log.lines)
    lines[last] = edit(lines[last], old, new)
    assert f"sequence {last}" in only_problem(log.verify(lines))


def test_a_deleted_event_is_named(log: Export):
    k = 4
    problem = only_problem(log.verify(log.lines[:k] + log.lines[k + 1 :]))
    assert f"sequence {k}" in problem
    assert log.uid(k - 1) in problem and log.uid(k + 1) in problem


def test_swapped_events_are_named(log: Export):
    k = 3
    lines = list(log.lines)
    lines[k], lines[k + 1] = lines[k + 1], lines[k]
    problem = only_problem(log.verify(lines))
    assert log.uid(k + 1) in problem
    assert f"sequence {k}" in problem


def test_an_inserted_copy_is_named(log: Export):
    k = 6
    lines = [*log.lines[: k + 1], log.lines[k], *log.lines[k + 1 :]]
    problem = only_problem(log.verify(lines))
    assert log.uid(k) in problem
    assert f"sequence {k}" in problem


def test_a_forged_event_is_named(log: Export):
    # In place of event k, chained to event k-1 as a real one would be.
    k = 5
    forged_uid = "f" * 32
    forged = reseal(
        log.lines[k], uid=forged_uid, path="campaign-42/forged.mp4", previous=leaf(log.lines[k - 1])
    )
    problem = only_problem(log.verify([*log.lines[:k], forged, *log.lines[k:]]))
    assert forged_uid in problem
    assert log.uid(k) in problem


def test_a_forged_event_with_the_rest_renumbered_is_named(log: Export):
    k = 5
    forged_uid = "f" * 32
    forged = reseal(log.lines[k], uid=forged_uid, previous=leaf(log.lines[k - 1]))
    renumbered = [reseal(line, sequence=seq + 1) for seq, line in enumerate(log.lines) if seq >= k]
    problem = only_problem(log.verify([*log.lines[:k], forged, *renumbered]))
    assert forged_uid in problem
    assert f"sequence {k}" in problem


def test_a_forged_event_with_the_rest_rechained_fails_at_the_root(log: Export):
    # Renumbered and re-chained: consistent in itself, so only the signed root tells.
    k = 5
    lines = list(log.lines[:k])
    lines.append(reseal(log.lines[k], uid="f" * 32, previous=leaf(lines[-1])))
    for seq, line in enumerate(log.lines[k:], start=k + 1):
        lines.append(reseal(line, sequence=seq, previous=leaf(lines[-1])))
    assert f"sequence {len(log.lines) - 1}" in only_problem(log.verify(lines))


def test_a_truncated_tail_is_named(log: Export):
    kept = len(log.lines) - 2
    problem = only_problem(log.verify(log.lines[:kept]))
    assert log.uid(kept - 1) in problem and f"sequence {kept - 1}" in problem
    assert "sequence 0" in only_problem(log.verify([]))


def test_a_line_that_is_not_a_record_is_named_by_its_number(log: Export):
    lines = list(log.lines)
    lines[2] = b'{"not": "a record"}\n'
    assert "line 3" in only_problem(log.verify(lines))
    lines[2] = b"\xff\n"
    assert "line 3" in only_problem(log.verify(lines))


# -- the checkpoint -----------------------------------------------------------------------


def test_a_wrong_verifier_key_is_refused(log: Export):
    name = log.key.split("+", 1)[0]
    other = encode_verifier_key(name, signing.ed25519_generate()[1])
    for key in (other, log.key[:-2] + "AA"):
        assert only_problem(verify_export(log.lines, log.note, key)).startswith("checkpoint")


def test_every_flipped_byte_of_the_checkpoint_is_refused(log: Export):
    note = log.note.encode()
    for position in range(len(note)):
        flipped = note[:position] + bytes([note[position] ^ 0x01]) + note[position + 1 :]
        report = verify_export(log.lines, flipped, log.key)
        assert not report.ok, position
        assert report.problems[0].startswith("checkpoint"), (position, report.problems)


def test_an_earlier_consistent_checkpoint_passes(vault: Vault, tenant: str, log: Export):
    record_reads(vault, tenant, 7, first=READS)
    later = export(vault, tenant)
    assert len(later.lines) == len(log.lines) + 7
    assert later.lines[: len(log.lines)] == log.lines
    assert later.verify(previous_note=log.note).ok
    # Given the wrong way round, the "earlier" one is the larger.
    assert not log.verify(previous_note=later.note).ok


def test_an_earlier_checkpoint_of_a_rewritten_log_fails(vault: Vault, tenant: str, log: Export):
    rewrite_event(vault, tenant, 1)
    record_reads(vault, tenant, 3, first=READS)
    rewritten = export(vault, tenant)
    # The rewritten log is consistent in itself, and signed: only the earlier checkpoint
    # the verifier kept shows that history changed.
    assert rewritten.verify().ok
    problem = only_problem(rewritten.verify(previous_note=log.note))
    assert f"sequence {len(log.lines)}" in problem


def rewrite_event(vault: Vault, log_id: str, seq: int) -> None:
    """What an operator with the database can do: change an event, then have the service
    rebuild and sign the tree from scratch."""
    with vault.database.transaction() as session:
        row = session.scalars(
            select(AuditEventRow).where(AuditEventRow.log_id == log_id, AuditEventRow.seq == seq)
        ).one()
        record = json.loads(row.body or "")
        record["status_code"] = "REWRITTEN"
        row.body = canonical_json(record).decode()
        session.execute(
            update(AuditEventRow)
            .where(AuditEventRow.log_id == log_id)
            .values(seq=None, leaf_hash=None)
        )
        for table in (AuditNodeRow, AuditCheckpointRow, AuditTreeRow):
            session.execute(delete(table).where(table.log_id == log_id))


# -- retention ----------------------------------------------------------------------------


def test_purged_events_still_verify(vault: Vault, tenant: str, clock):
    record_reads(vault, tenant, 5)
    vault.audit_log.integrate(tenant)
    old = vault.audit_log.tree_size(tenant)
    vault.audit.set_retention(tenant, retention_days=1, legal_hold=False)
    clock.advance(2 * DAY)
    record_reads(vault, tenant, 3, first=5)
    assert vault.audit_log.purge() == {tenant: old}

    exported = export(vault, tenant)
    report = exported.verify()
    assert report.ok, report.problems
    assert (report.events, report.purged) == (old + 3, old)

    (stored,) = vault.audit_log.export(tenant, 0, 1)
    assert stored.record is None and stored.leaf_hash is not None
    assert exported.lines[0] == (
        b'{"leaf_hash":"' + stored.leaf_hash.hex().encode() + b'","purged":true,"sequence":0}\n'
    )

    # A purged event's leaf hash is still vouched for by the event after it.
    last_purged = old - 1
    lines = list(exported.lines)
    forged_hash = bytes(32).hex()
    lines[last_purged] = (
        canonical_json({"leaf_hash": forged_hash, "purged": True, "sequence": last_purged}) + b"\n"
    )
    assert f"sequence {last_purged}" in only_problem(exported.verify(lines))


def test_a_legal_hold_keeps_every_body(vault: Vault, tenant: str, clock):
    record_reads(vault, tenant, 3)
    vault.audit_log.integrate(tenant)
    vault.audit.set_retention(tenant, retention_days=1, legal_hold=True)
    clock.advance(2 * DAY)
    assert vault.audit_log.purge() == {}
    report = export(vault, tenant).verify()
    assert report.ok and report.purged == 0
