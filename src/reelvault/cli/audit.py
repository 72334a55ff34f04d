"""``reelvault audit``: query, export and verify the access audit log, its checkpoints
and retention, through the service; ``verify`` offline on files alone, and ``purge``
here, against the configured catalog (like ``gc``).

An export is JSON Lines that :func:`reelvault.audit.verify.verify_export` reads: each line
is exactly the leaf bytes the log committed to (an OCSF record) and a newline, so anyone
can hash it; an event whose body was purged is the line
``{"leaf_hash":"<hex>","purged":true,"sequence":N}`` (canonical JSON: sorted keys, no
spaces), whose leaf hash still lets the Merkle tree be recomputed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

from reelvault import errors
from reelvault.cli import _common
from reelvault.cli._common import Groups, Output, table, when
from reelvault.client import ADDR_ENV, TOKEN_ENV, AuditCheckpoint, AuditEvent, AuditRecord
from reelvault.config import Settings

__all__ = ["TimeSyntaxError", "add_commands", "export_line", "parse_time"]

_MAX_PAGE: Final = 1000  # the server's largest page
_INT64_MAX: Final = (1 << 63) - 1
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE: Final = re.compile(r"([0-9]{1,12})([smhdw])")
_OUTCOMES: Final = ("allowed", "denied", "failed")
_TIME_HELP: Final = (
    "ISO-8601 (2025-06-01, 2025-06-01T12:00:00+02:00; no offset means UTC), 'now', or a "
    "time before now: 90s, 15m, 1h, 7d, 2w"
)
_TENANT_HELP: Final = (
    "whose log: platform auditors name a tenant (default: the platform log); tenant "
    "auditors read their own tenant's log"
)


class TimeSyntaxError(ValueError):
    """A ``--since``/``--until`` that is neither ISO-8601, ``now`` nor a duration."""


def parse_time(text: str, now: datetime) -> datetime:
    """An aware time from ISO-8601 (UTC when it names no offset), ``now``, or a duration
    before ``now``: a number and one of ``s``, ``m``, ``h``, ``d``, ``w``.

    Raises:
        TimeSyntaxError: anything else.
    """
    value = text.strip()
    if value.lower() == "now":
        return now
    match = _RELATIVE.fullmatch(value)
    if match is not None:
        try:
            return now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
        except OverflowError:
            raise TimeSyntaxError(f"{text!r} reaches before the year 1") from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TimeSyntaxError(
            f"{text!r} is not ISO-8601, 'now' or a duration such as 1h or 7d"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _time_argument(text: str) -> datetime:
    try:
        return parse_time(text, datetime.now(UTC))
    except TimeSyntaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= _INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range")
    return value


def _days_argument(text: str) -> int:
    value = _count_argument(text)
    if value == 0:
        raise argparse.ArgumentTypeError("give at least 1 day, or --keep-forever")
    return value


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    audit = groups.add_parser(
        "audit",
        help="query, export and verify the access audit log",
        description=(
            f"The access audit log, through the service at ${ADDR_ENV} with the key in "
            f"${TOKEN_ENV}: auditors read their tenant's log, platform auditors any "
            "tenant's or the platform log; admins set retention. 'verify' needs no "
            "service, and 'purge' runs here against the configured catalog."
        ),
    )
    commands = audit.add_subparsers(dest="command", metavar="COMMAND", required=True)

    query = commands.add_parser(
        "query",
        parents=[common],
        help="find events by time, caller, resource, action, outcome or method",
        description=(
            "Events in a time range, oldest first. Filters are AND across options and OR "
            "within a repeated one. Events the log has not integrated yet have no "
            'sequence number. With --json: one JSON document, {"events": [...], '
            '"truncated": bool}, each event with its indexed fields and its OCSF record '
            "as an object (null once purged). For the exact record bytes, as JSON Lines "
            "to hash or forward, use 'audit export'."
        ),
    )
    query.add_argument(
        "--since", required=True, type=_time_argument, metavar="TIME", help=_TIME_HELP
    )
    query.add_argument(
        "--until",
        type=_time_argument,
        metavar="TIME",
        help="the end, exclusive, in the same forms (default: now)",
    )
    query.add_argument(
        "--actor", action="append", default=[], metavar="KEY_ID", help="the caller's API key id"
    )
    query.add_argument(
        "--resource",
        action="append",
        default=[],
        metavar="ID",
        help="a resource id (asset id, API key id, tenant id)",
    )
    query.add_argument(
        "--action", action="append", default=[], metavar="ACTION", help="e.g. asset.read"
    )
    query.add_argument("--outcome", action="append", default=[], choices=_OUTCOMES)
    query.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="METHOD",
        help="the full gRPC method, e.g. /reelvault.v1.AssetService/Download",
    )
    query.add_argument("--tenant", metavar="ID", help=_TENANT_HELP)
    query.add_argument(
        "--limit",
        type=_count_argument,
        default=100,
        metavar="N",
        help="show at most N events (default 100; 0 for all)",
    )
    query.set_defaults(handler=_audit_query)

    export = commands.add_parser(
        "export",
        parents=[common],
        help="write a log's events as JSON Lines, verifiable offline",
        description=(
            "Write a log's integrated events in sequence order as JSON Lines: each line "
            "is exactly the record bytes the log committed to, so SHA-256(0x00 || line) "
            'is its Merkle leaf; a purged event is {"leaf_hash":HEX,"purged":true,'
            '"sequence":N}. With --checkpoint-out, the newest signed checkpoint is taken '
            "first and exactly the events it covers are written, so that 'audit verify' "
            "can check the pair. With --follow, new events keep coming, each line "
            "flushed as it is written, until Ctrl-C or SIGTERM (exit 0); resume with "
            "--from. Without --out the lines go to stdout (then --json is refused)."
        ),
    )
    export.add_argument("--tenant", metavar="ID", help=_TENANT_HELP)
    export.add_argument(
        "--from",
        dest="start",
        type=_count_argument,
        default=0,
        metavar="N",
        help="first sequence number (default 0; verify needs a whole log, from 0)",
    )
    export.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write here (replaced when complete; appended to with --follow)",
    )
    ending = export.add_mutually_exclusive_group()
    ending.add_argument(
        "--follow", action="store_true", help="keep streaming new events (for log forwarders)"
    )
    ending.add_argument(
        "--checkpoint-out",
        type=Path,
        metavar="FILE",
        help="save the signed checkpoint the export matches",
    )
    export.set_defaults(handler=_audit_export)

    checkpoint = commands.add_parser(
        "checkpoint",
        parents=[common],
        help="print or save a log's newest signed checkpoint",
        description=(
            "The log's newest signed checkpoint (a C2SP signed note over its size and "
            "Merkle root), covering every event so far, this read included. The note goes "
            "to stdout (or --out), the verifier key to stderr (with --json, both are in "
            "the document). Pin the verifier key once, out of band: a key fetched with "
            "the checkpoint proves nothing about it."
        ),
    )
    checkpoint.add_argument("--tenant", metavar="ID", help=_TENANT_HELP)
    checkpoint.add_argument("--out", type=Path, metavar="FILE", help="save the note here")
    checkpoint.set_defaults(handler=_audit_checkpoint)

    verify = commands.add_parser(
        "verify",
        parents=[common],
        help="check an export against a signed checkpoint, offline",
        description=(
            "Check an export (from sequence 0) against a signed checkpoint, with no "
            "service: the signature under the pinned key, the numbering (deleted, "
            "inserted or reordered events), each event's record of the previous one's "
            "hash (edited events), and the Merkle root; with --previous, that an earlier "
            "checkpoint is a prefix of the same log. Every log is signed with the same "
            "key, so say which log you expect with --log (or read the log named in the "
            "output). Exit 0 when all hold; otherwise exit 1 with the problems, naming "
            "the events."
        ),
    )
    verify.add_argument("export", metavar="EXPORT", help="the JSON Lines file; - reads stdin")
    verify.add_argument(
        "--checkpoint", required=True, type=Path, metavar="FILE", help="the signed note"
    )
    verify.add_argument(
        "--key",
        required=True,
        metavar="VKEY",
        help="the pinned verifier key (name+id+key), or a file holding it",
    )
    verify.add_argument(
        "--previous", type=Path, metavar="FILE", help="an earlier checkpoint of the same log"
    )
    verify.add_argument(
        "--log",
        metavar="ID",
        help="the log the checkpoint must be of: a tenant id, or 'platform'",
    )
    verify.set_defaults(handler=_audit_verify)

    retention = commands.add_parser(
        "retention",
        parents=[common],
        help="set how long event bodies are kept, and the legal hold (admins)",
        description=(
            "Set a tenant's audit retention and legal hold, both at once (the service "
            "takes both, so neither has a default that could lift a hold by accident). "
            "'audit purge' drops event bodies past retention; leaf hashes stay, so "
            "exports and proofs still verify. A legal hold blocks every purge."
        ),
    )
    retention.add_argument(
        "--tenant", metavar="ID", help="the tenant (platform admins; admins: their own)"
    )
    keep = retention.add_mutually_exclusive_group(required=True)
    keep.add_argument("--days", type=_days_argument, metavar="N", help="keep bodies N days")
    keep.add_argument("--keep-forever", action="store_true", help="never purge")
    retention.add_argument("--legal-hold", required=True, choices=("on", "off"))
    retention.set_defaults(handler=_audit_retention)

    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="drop event bodies past each tenant's retention",
        description=(
            "Drop the bodies of events older than their tenant's retention (tenants on "
            "legal hold and the platform log are never purged). Leaf hashes stay, so "
            "exports, checkpoints and proofs keep verifying. Runs here, against the "
            "configured database (the same settings as serve); safe while the service "
            "runs."
        ),
    )
    purge.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    purge.set_defaults(handler=_audit_purge)


# -- query -------------------------------------------------------------------------------


def _audit_query(args: argparse.Namespace) -> Output:
    start: datetime = args.since
    end: datetime = args.until or datetime.now(UTC)
    if start >= end:
        raise errors.InvalidArgument("--since must be before --until")
    limit: int = args.limit
    with _common.client() as client:
        found = client.iter_audit_events(
            start=start,
            end=end,
            tenant_id=args.tenant,
            actors=args.actor,
            resources=args.resource,
            actions=args.action,
            outcomes=args.outcome,
            methods=args.method,
            page_size=min(limit + 1, _MAX_PAGE) if limit else _MAX_PAGE,
        )
        events = list(itertools.islice(found, limit + 1) if limit else found)
    truncated = bool(limit) and len(events) > limit
    events = events[:limit] if limit else events
    rows = [
        (
            when(e.time),
            "-" if e.sequence is None else str(e.sequence),
            e.action,
            e.outcome,
            e.status,
            e.actor_key_id or "-",
            f"{e.resource_type}:{e.resource_id}" if e.resource_id else (e.resource_type or "-"),
        )
        for e in events
    ]
    text = table(
        ("TIME", "SEQ", "ACTION", "OUTCOME", "STATUS", "ACTOR", "RESOURCE"),
        rows,
        empty="no events",
    )
    if truncated:
        text += f"\n(only the first {limit}: raise --limit or narrow the query)"
    return Output(
        data={"events": [_event_data(e) for e in events], "truncated": truncated}, text=text
    )


def _event_data(event: AuditEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "log_id": event.log_id,
        "sequence": event.sequence,
        "time": event.time.isoformat(),
        "action": event.action,
        "outcome": event.outcome,
        "status": event.status,
        "method": event.method,
        "actor_key_id": event.actor_key_id,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "record": _parse_record(event) if event.record is not None else None,
    }


def _parse_record(event: AuditEvent) -> Any:
    try:
        return json.loads(event.record or b"")
    except ValueError:
        raise errors.ReelvaultError(
            f"the service sent a record of event {event.event_id} that is not JSON"
        ) from None


# -- export ------------------------------------------------------------------------------


def _audit_export(args: argparse.Namespace) -> Output:
    if args.json and args.out is None:
        raise errors.InvalidArgument(
            "with --json, give --out: without it, stdout carries the export itself"
        )
    if args.follow:
        return _export_follow(args)
    out, note_out = args.out, args.checkpoint_out
    if out is not None and note_out is not None and out.resolve() == note_out.resolve():
        raise errors.InvalidArgument("--out and --checkpoint-out name the same file")
    start: int = args.start
    with _common.client() as client:
        checkpoint: AuditCheckpoint | None = None
        end = 0  # the log's size when the export starts
        if args.checkpoint_out is not None:
            checkpoint = client.get_checkpoint(args.tenant)
            if start > checkpoint.size:
                raise errors.InvalidArgument(
                    f"--from {start} is beyond the checkpoint's size {checkpoint.size}"
                )
            end = checkpoint.size
        records = (
            client.export_audit_events(args.tenant, start, end)
            if checkpoint is None or start < end
            else iter(())
        )
        written = _Written(start)
        with _destination(args.out) as file:
            _write_records(records, file, written, flush=False)
            if checkpoint is not None and written.end != checkpoint.size:
                raise errors.IntegrityError(
                    f"the export ended at sequence {written.end}, before the checkpoint's "
                    f"size {checkpoint.size}"
                )
            if checkpoint is not None:
                with _replacing(args.checkpoint_out) as note_file:
                    note_file.write(checkpoint.note.encode("utf-8"))
    return _export_output(args, written, checkpoint)


def _export_follow(args: argparse.Namespace) -> Output:
    written = _Written(args.start)
    with contextlib.ExitStack() as stack:
        file = (
            stack.enter_context(open(args.out, "ab")) if args.out is not None else sys.stdout.buffer
        )
        client = stack.enter_context(_common.client())
        stack.enter_context(_sigterm_interrupts())
        records = client.export_audit_events(args.tenant, args.start, 0, follow=True)
        stack.callback(records.close)  # cancels the stream
        # Ctrl-C or SIGTERM is how a follow ends: whatever arrived is written.
        with contextlib.suppress(KeyboardInterrupt):
            _write_records(records, file, written, flush=True)
    return _export_output(args, written, None)


class _Written:
    """What an export wrote so far: ``end`` is the next sequence number expected."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.end = start
        self.purged = 0

    @property
    def events(self) -> int:
        return self.end - self.start


def _write_records(
    records: Iterator[AuditRecord], file: IO[bytes], written: _Written, *, flush: bool
) -> None:
    """Write each record's line; ``flush`` each one at once (a follower's reader)."""
    for record in records:
        if record.sequence != written.end:
            raise errors.IntegrityError(
                f"the service sent sequence {record.sequence} where {written.end} was due"
            )
        file.write(export_line(record))
        if flush:
            file.flush()
        written.end += 1
        written.purged += record.purged
    file.flush()


def export_line(record: AuditRecord) -> bytes:
    """One line of an export (module docstring), newline included."""
    if record.record is None:
        purged = {"leaf_hash": record.leaf_hash.hex(), "purged": True, "sequence": record.sequence}
        return json.dumps(purged, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
    if b"\n" in record.record:
        raise errors.IntegrityError(
            f"the record at sequence {record.sequence} spans lines; it is not a log record"
        )
    return record.record + b"\n"


def _export_output(
    args: argparse.Namespace, written: _Written, checkpoint: AuditCheckpoint | None
) -> Output:
    data: dict[str, Any] = {
        "from_sequence": written.start,
        "to_sequence": written.end,
        "events": written.events,
        "purged": written.purged,
        "out": str(args.out) if args.out is not None else None,
        "checkpoint": None,
    }
    if args.out is None:
        return Output(data=data, text="")  # stdout carried the export
    span = f" (sequences {written.start} to {written.end - 1})" if written.events else ""
    text = f"exported {written.events} event(s){span} to {args.out}"
    if checkpoint is not None:
        data["checkpoint"] = dict(_checkpoint_data(checkpoint), out=str(args.checkpoint_out))
        text += (
            f"\nsaved the checkpoint (size {checkpoint.size}) to {args.checkpoint_out}"
            f"\nverifier key: {checkpoint.verifier_key}"
        )
    return Output(data=data, text=text)


@contextlib.contextmanager
def _destination(path: Path | None) -> Iterator[IO[bytes]]:
    """The file an export goes to: ``path``, replaced once complete; else stdout."""
    if path is None:
        yield sys.stdout.buffer
        return
    with _replacing(path) as file:
        yield file


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[IO[bytes]]:
    """A new file beside ``path``, renamed over it on success and removed on failure, so
    a failed export never leaves a partial file that looks like a whole one."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with open(fd, "wb") as file:
            yield file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the block like Ctrl-C, so a supervisor stopping a forwarder gets a
    clean end rather than a kill."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (an embedding caller): keep its handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- checkpoint --------------------------------------------------------------------------


def _audit_checkpoint(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        checkpoint = client.get_checkpoint(args.tenant)
    data = _checkpoint_data(checkpoint)
    if args.out is not None:
        with _replacing(args.out) as file:
            file.write(checkpoint.note.encode("utf-8"))
        data["out"] = str(args.out)
        text = (
            f"saved the checkpoint of log {checkpoint.log_id} (size {checkpoint.size}, "
            f"root {checkpoint.root_hash.hex()}) to {args.out}"
        )
    else:
        text = checkpoint.note.removesuffix("\n")  # print() gives the newline back
    if not args.json:
        print(f"verifier key: {checkpoint.verifier_key}", file=sys.stderr)
    return Output(data=data, text=text)


def _checkpoint_data(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "log_id": checkpoint.log_id,
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root_hash": checkpoint.root_hash.hex(),
        "note": checkpoint.note,
        "verifier_key": checkpoint.verifier_key,
    }


# -- verify ------------------------------------------------------------------------------


def _audit_verify(args: argparse.Namespace) -> Output:
    from reelvault.audit.verify import verify_export  # noqa: PLC0415 - startup time

    key = _verifier_key(args.key)
    note = args.checkpoint.read_bytes()
    previous = args.previous.read_bytes() if args.previous is not None else None
    with _export_lines(args.export) as lines:
        report = verify_export(lines, note, key, previous_note=previous)
    problems = list(report.problems)
    checkpoint = report.checkpoint
    # The origin is <prefix>/<log id> (AuditLog.origin); the events name the same log.
    log_id = checkpoint.origin.rsplit("/", 1)[-1] if checkpoint is not None else None
    if args.log is not None and log_id is not None and log_id != args.log:
        problems.append(f"the checkpoint is of log {log_id!r}, not of {args.log!r}")
    if problems:
        raise errors.IntegrityError("the export does not verify: " + "; ".join(problems))
    assert checkpoint is not None  # a report without problems has read its checkpoint
    purged = f" ({report.purged} purged)" if report.purged else ""
    covered = report.events - report.beyond_checkpoint
    text = (
        f"verified: {covered} events{purged}, checkpoint size {checkpoint.size}, "
        f"root {checkpoint.root_hash.hex()}, log {log_id} ({checkpoint.origin})"
    )
    if previous is not None:
        text += ", consistent with the earlier checkpoint"
    if report.beyond_checkpoint:
        text += (
            f"\nnote: {report.beyond_checkpoint} events from sequence {checkpoint.size} on are "
            "not covered by the checkpoint and not verified (only chained)"
        )
    return Output(
        data={
            "verified": True,
            "events": covered,
            "beyond_checkpoint": report.beyond_checkpoint,
            "purged": report.purged,
            "log_id": log_id,
            "checkpoint": {
                "origin": checkpoint.origin,
                "size": checkpoint.size,
                "root_hash": checkpoint.root_hash.hex(),
            },
            "previous_checked": previous is not None,
        },
        text=text,
    )


def _verifier_key(value: str) -> str:
    """The key itself, or the content of the file it names (a key always holds a '+')."""
    path = Path(value)
    if "+" not in value or path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return value


@contextlib.contextmanager
def _export_lines(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as file:
        yield file


# -- retention and purge -----------------------------------------------------------------


def _audit_retention(args: argparse.Namespace) -> Output:
    days: int | None = None if args.keep_forever else args.days
    with _common.client() as client:
        policy = client.set_audit_retention(
            args.tenant, retention_days=days, legal_hold=args.legal_hold == "on"
        )
    kept = "forever" if policy.retention_days is None else f"{policy.retention_days} days"
    hold = "on" if policy.legal_hold else "off"
    return Output(
        data={
            "tenant_id": policy.tenant_id,
            "retention_days": policy.retention_days,
            "legal_hold": policy.legal_hold,
        },
        text=f"tenant {policy.tenant_id}: audit event bodies kept {kept}, legal hold {hold}",
    )


def _audit_purge(args: argparse.Namespace) -> Output:
    from reelvault.app import Vault  # noqa: PLC0415 - startup time

    settings = Settings.load(config_file=args.config)
    vault = Vault.from_settings(settings)
    try:
        purged = vault.audit.purge()
    finally:
        vault.close()
    total = sum(purged.values())
    text = f"purged the bodies of {total} event(s) past retention in {len(purged)} tenant log(s)"
    if purged:
        rows = [(tenant, str(count)) for tenant, count in sorted(purged.items())]
        text += "\n" + table(("TENANT", "EVENTS"), rows, empty="")
    return Output(data={"purged": dict(sorted(purged.items())), "events": total}, text=text)
