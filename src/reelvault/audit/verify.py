"""Offline verification of an exported audit log (``reelvault audit verify``).

Input: an export (JSON Lines, one event per line, each line the exact leaf bytes the log
committed to; a purged event is a line ``{"leaf_hash": HEX, "purged": true, "sequence":
N}``), a signed checkpoint, the pinned verifier key, and optionally an earlier checkpoint
the verifier saved before. Nothing here talks to the service. The checks, in order:

1. the checkpoint's signature verifies under the pinned key (C2SP signed note), and every
   event names the log the checkpoint's origin names;
2. the events are numbered 0, 1, 2, ... with no gap, repeat or swap: a deleted, inserted
   or reordered event is named by the first line where the numbering breaks;
3. each event records the leaf hash of the one before it (``unmapped.reelvault.previous``),
   so an edited event is named by its successor, which still records the true hash;
4. the Merkle root (RFC 6962) of the first ``size`` leaves equals the checkpoint's root:
   this catches an edit of the last event and a truncated tail;
5. an earlier checkpoint, if given, is a prefix of the same log (its root equals the root
   of the first ``size`` leaves): the log was only appended to in between.

docs/audit.md spells out the same procedure for implementers without this code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reelvault.audit import merkle
from reelvault.audit.events import PLATFORM_LOG
from reelvault.audit.note import Checkpoint, NoteError, open_note, parse_checkpoint

__all__ = ["VerifyReport", "verify_export"]

_ZERO = bytes(32)


@dataclass
class VerifyReport:
    """What verification found. ``problems`` is empty exactly when everything verified."""

    checkpoint: Checkpoint | None = None
    events: int = 0  # every event read, including those past the checkpoint
    beyond_checkpoint: int = 0  # events past the checkpoint: chained, but no root covers them
    purged: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Leaf:
    seq: int
    uid: str
    leaf: bytes


def verify_export(
    lines: Iterable[bytes],
    checkpoint_note: str | bytes,
    verifier_key: str,
    *,
    previous_note: str | bytes | None = None,
) -> VerifyReport:
    """Verify an export against a checkpoint (module docstring). Never raises for bad
    input: every problem becomes a message in the report that names the event."""
    report = VerifyReport()
    try:
        report.checkpoint = parse_checkpoint(open_note(checkpoint_note, verifier_key))
    except NoteError as exc:
        report.problems.append(f"checkpoint: {exc}")
        return report
    previous: Checkpoint | None = None
    if previous_note is not None:
        try:
            previous = parse_checkpoint(open_note(previous_note, verifier_key))
        except NoteError as exc:
            report.problems.append(f"earlier checkpoint: {exc}")
    # The origin names the log (``<prefix>/<log id>``); every event must say the same.
    expected_log = report.checkpoint.origin.rsplit("/", 1)[-1]
    leaves: list[bytes] = []
    uids: dict[int, str] = {}  # the uid of the checkpoint's last event, for messages
    last: _Leaf | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\n")
        if not line:
            continue
        parsed = _parse(line, number, report)
        if parsed is None:
            return report
        entry, recorded_previous, log_name = parsed
        if log_name is None and expected_log == PLATFORM_LOG:
            report.problems.append(
                f"line {number}: a purged event in the platform log, which is never purged"
            )
            return report
        if log_name is not None and log_name != expected_log:
            report.problems.append(
                f"event {entry.uid} (sequence {entry.seq}) belongs to log {log_name!r}, not "
                f"to the checkpoint's log {expected_log!r}"
            )
            return report
        expected = len(leaves)
        if entry.seq != expected:
            report.problems.append(_numbering_problem(entry, expected, last))
            return report
        expected_previous = last.leaf if last is not None else _ZERO
        if recorded_previous is not None and recorded_previous != expected_previous:
            named = f"event {last.uid} (sequence {last.seq})" if last else "the first event"
            report.problems.append(
                f"{named} was altered: its hash differs from the one event {entry.uid} "
                f"(sequence {entry.seq}) recorded for it"
            )
            return report
        leaves.append(entry.leaf)
        last = entry
        if report.checkpoint is not None and entry.seq == report.checkpoint.size - 1:
            uids[entry.seq] = entry.uid
    report.events = len(leaves)
    checkpoint = report.checkpoint
    report.beyond_checkpoint = max(0, len(leaves) - checkpoint.size)
    if len(leaves) < checkpoint.size:
        tail = f"after event {last.uid} (sequence {last.seq})" if last else "from sequence 0"
        report.problems.append(
            f"the export is truncated: the checkpoint covers {checkpoint.size} events, the "
            f"export holds {len(leaves)}; events {tail} are missing"
        )
        return report
    if merkle.root(leaves[: checkpoint.size]) != checkpoint.root_hash:
        if checkpoint.size and last is not None:
            at = checkpoint.size - 1
            named = uids.get(at, "")
            report.problems.append(
                f"the root of the first {checkpoint.size} events does not match the "
                f"checkpoint: event {named} (sequence {at}), the last it covers and the one "
                f"whose hash no later event records, was altered, or the log was rewritten"
            )
        else:
            report.problems.append("the export does not match the checkpoint's root")
        return report
    if previous is not None:
        if previous.origin != checkpoint.origin:
            report.problems.append("the earlier checkpoint belongs to another log (origin)")
        elif previous.size > checkpoint.size:
            report.problems.append("the earlier checkpoint is larger than the newer one")
        elif merkle.root(leaves[: previous.size]) != previous.root_hash:
            report.problems.append(
                f"the log is not an extension of the earlier checkpoint (size "
                f"{previous.size}): events before sequence {previous.size} were changed"
            )
    return report


def _parse(
    line: bytes, number: int, report: VerifyReport
) -> tuple[_Leaf, bytes | None, str | None] | None:
    try:
        value: Any = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        report.problems.append(f"line {number}: not a JSON object")
        return None
    if not isinstance(value, dict):
        report.problems.append(f"line {number}: not a JSON object")
        return None
    try:
        if value.get("purged") is True and "metadata" not in value:
            report.purged += 1
            leaf = bytes.fromhex(value["leaf_hash"])
            seq = value["sequence"]
            if len(leaf) != merkle.HASH_LEN or not isinstance(seq, int):
                raise ValueError
            return _Leaf(seq, "(purged)", leaf), None, None
        metadata = value["metadata"]
        seq = metadata["sequence"]
        uid = metadata["uid"]
        log_name = metadata["log_name"]
        previous = bytes.fromhex(value["unmapped"]["reelvault"]["previous"])
        if not (isinstance(seq, int) and isinstance(uid, str) and isinstance(log_name, str)):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        report.problems.append(f"line {number}: not an audit record of this log's format")
        return None
    leaf = hashlib.sha256(b"\x00" + line).digest()
    return _Leaf(seq, uid, leaf), previous, log_name


def _numbering_problem(entry: _Leaf, expected: int, last: _Leaf | None) -> str:
    after = f" after event {last.uid} (sequence {last.seq})" if last else ""
    if entry.seq > expected:
        missing = (
            f"sequence {expected}"
            if entry.seq == expected + 1
            else f"sequences {expected} to {entry.seq - 1}"
        )
        return (
            f"events deleted or moved: {missing} missing{after}, before event {entry.uid} "
            f"(sequence {entry.seq})"
        )
    return (
        f"event {entry.uid} carries sequence {entry.seq} where {expected} was expected"
        f"{after}: an event was inserted, repeated or reordered"
    )
