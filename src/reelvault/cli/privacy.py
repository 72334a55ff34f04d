"""``reelvault payload``, ``reelvault consent`` and ``reelvault subject``: viewer data,
consent and the privacy team's operations, through the service (docs/privacy.md)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reelvault import errors
from reelvault.cli import _common
from reelvault.cli._common import Groups, Output, table, when
from reelvault.client import ADDR_ENV, TOKEN_ENV
from reelvault.client_privacy import ConsentDecision, Payload

__all__ = ["add_commands"]

_THROUGH = f"through the service at ${ADDR_ENV} with the key in ${TOKEN_ENV}"


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    payload = groups.add_parser(
        "payload",
        help="personalization payloads (ingest writes, renderers read)",
        description=f"Payloads: viewer data read for one consented purpose, {_THROUGH}.",
    )
    commands = payload.add_subparsers(dest="command", metavar="COMMAND", required=True)
    put = commands.add_parser("put", parents=[common], help="store a payload for a viewer")
    put.add_argument("subject", metavar="VIEWER_ID", help="the tenant's own viewer id")
    put.add_argument("--purpose", required=True, help="what it may be read for")
    source = put.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="the payload itself (e.g. JSON)")
    source.add_argument("--file", type=Path, help="read the payload from a file (- for stdin)")
    put.add_argument("--content-type", default="application/json")
    put.add_argument("--ttl", type=int, default=0, help="seconds until it expires (0: never)")
    put.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    put.set_defaults(handler=_put)
    get = commands.add_parser("get", parents=[common], help="print a payload's data")
    get.add_argument("id", metavar="PAYLOAD_ID")
    get.add_argument("--purpose", required=True, help="the purpose of this read")
    get.add_argument("--out", type=Path, help="write the data to a file instead")
    get.set_defaults(handler=_get)
    ls = commands.add_parser("ls", parents=[common], help="list a viewer's payloads")
    ls.add_argument("subject", metavar="VIEWER_ID")
    ls.add_argument("--page-size", type=int, default=0)
    ls.add_argument("--page-token", default="")
    ls.set_defaults(handler=_ls)
    rm = commands.add_parser("rm", parents=[common], help="delete a payload (idempotent)")
    rm.add_argument("id", metavar="PAYLOAD_ID")
    rm.set_defaults(handler=_rm)

    consent = groups.add_parser(
        "consent",
        help="record and read viewers' consent",
        description=f"Consent decisions, the history kept, {_THROUGH}.",
    )
    commands = consent.add_subparsers(dest="command", metavar="COMMAND", required=True)
    set_ = commands.add_parser("set", parents=[common], help="record a decision")
    set_.add_argument("subject", metavar="VIEWER_ID")
    set_.add_argument("--purpose", required=True)
    decision = set_.add_mutually_exclusive_group(required=True)
    decision.add_argument("--grant", action="store_true", help="the viewer agreed")
    decision.add_argument("--withdraw", action="store_true", help="the viewer withdrew")
    set_.add_argument("--source", required=True, help="where it was collected (a form, a CMP)")
    set_.add_argument("--at", metavar="ISO8601", help="when the viewer decided (default: now)")
    set_.set_defaults(handler=_consent_set)
    cget = commands.add_parser("get", parents=[common], help="current state and history")
    cget.add_argument("subject", metavar="VIEWER_ID")
    cget.add_argument("--purpose", default="")
    cget.set_defaults(handler=_consent_get)

    subject = groups.add_parser(
        "subject",
        help="erase, export, hash or hold a viewer's data (privacy role)",
        description=f"Privacy operations on one viewer, {_THROUGH}.",
    )
    commands = subject.add_subparsers(dest="command", metavar="COMMAND", required=True)
    erase = commands.add_parser(
        "erase", parents=[common], help="crypto-shred the viewer's key, delete its data"
    )
    erase.add_argument("subject", metavar="VIEWER_ID")
    erase.set_defaults(handler=_erase)
    export = commands.add_parser(
        "export", parents=[common], help="everything held about the viewer, as JSON"
    )
    export.add_argument("subject", metavar="VIEWER_ID")
    export.add_argument("--out", type=Path, help="write to a file (default: stdout)")
    export.set_defaults(handler=_export)
    hash_ = commands.add_parser(
        "hash", parents=[common], help="the pseudonym to query the audit log with"
    )
    hash_.add_argument("subject", metavar="VIEWER_ID")
    hash_.set_defaults(handler=_hash)
    hold = commands.add_parser("hold", parents=[common], help="set or release a legal hold")
    hold.add_argument("subject", metavar="VIEWER_ID")
    hold.add_argument("--release", action="store_true", help="release the hold")
    hold.set_defaults(handler=_hold)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise errors.InvalidArgument(f"a label is KEY=VALUE, not {pair!r}")
        labels[key] = value
    return labels


def _payload_data(p: Payload) -> dict[str, Any]:
    return {
        "id": p.id,
        "subject": p.subject,
        "purpose": p.purpose,
        "content_type": p.content_type,
        "labels": dict(p.labels),
        "size": p.size,
        "created_at": p.created_at.isoformat(),
        "expires_at": p.expires_at.isoformat() if p.expires_at else None,
    }


def _put(args: argparse.Namespace) -> Output:
    if args.data is not None:
        data = args.data.encode("utf-8")
    elif str(args.file) == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = args.file.read_bytes()
        except OSError as exc:
            raise errors.InvalidArgument(_common.describe_os_error(exc)) from None
    with _common.client() as client:
        payload = client.put_payload(
            args.subject,
            args.purpose,
            data,
            content_type=args.content_type,
            ttl=args.ttl,
            labels=_labels(args.label),
        )
    return Output(
        data=_payload_data(payload),
        text=f"stored payload {payload.id} ({payload.size} bytes) for {payload.subject}",
    )


def _get(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        payload, data = client.get_payload(args.id, args.purpose)
    if args.out is not None:
        args.out.write_bytes(data)
        text = f"wrote {len(data)} bytes to {args.out}"
    else:
        text = data.decode("utf-8", "replace")
    entry = _payload_data(payload)
    entry["data"] = data.decode("utf-8", "replace")
    return Output(data=entry, text=text)


def _ls(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        payloads, token = client.list_payloads(
            args.subject, page_size=args.page_size, page_token=args.page_token
        )
    rows = [
        (
            p.id,
            p.purpose,
            str(p.size),
            when(p.created_at),
            when(p.expires_at) if p.expires_at else "-",
        )
        for p in payloads
    ]
    text = table(("ID", "PURPOSE", "SIZE", "CREATED", "EXPIRES"), rows, empty="no payloads")
    if token:
        text += f"\nmore: --page-token {token}"
    return Output(
        data={"payloads": [_payload_data(p) for p in payloads], "next_page_token": token},
        text=text,
    )


def _rm(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        client.delete_payload(args.id)
    return Output(data={"deleted": args.id}, text=f"deleted payload {args.id}")


def _decision_data(d: ConsentDecision) -> dict[str, Any]:
    return {
        "purpose": d.purpose,
        "granted": d.granted,
        "source": d.source,
        "effective_at": d.effective_at.isoformat(),
        "recorded_at": d.recorded_at.isoformat(),
    }


def _consent_set(args: argparse.Namespace) -> Output:
    at = None
    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            raise errors.InvalidArgument("--at must be an ISO 8601 time") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    with _common.client() as client:
        decision = client.record_consent(
            args.subject, args.purpose, granted=args.grant, source=args.source, effective_at=at
        )
    verb = "granted" if decision.granted else "withdrawn"
    return Output(
        data={"subject": decision.subject, **_decision_data(decision)},
        text=f"{decision.purpose}: {verb} for {decision.subject}",
    )


def _consent_get(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        state = client.get_consent(args.subject, args.purpose)
    rows = [
        (d.purpose, "granted" if d.granted else "withdrawn", d.source, when(d.effective_at))
        for d in state.history
    ]
    current = ", ".join(f"{p}={'yes' if g else 'no'}" for p, g in sorted(state.granted.items()))
    return Output(
        data={
            "subject": state.subject,
            "granted": dict(state.granted),
            "history": [_decision_data(d) for d in state.history],
        },
        text=f"subject {state.subject}: {current or 'no decisions'}\n"
        + table(("PURPOSE", "DECISION", "SOURCE", "EFFECTIVE"), rows, empty="no history"),
    )


def _erase(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        erased = client.erase_subject(args.subject)
    return Output(
        data={
            "subject": erased.subject,
            "key_destroyed": erased.key_destroyed,
            "payloads_deleted": erased.payloads_deleted,
            "assets_deleted": erased.assets_deleted,
        },
        text=(
            f"erased {erased.subject}: key "
            f"{'destroyed' if erased.key_destroyed else 'already gone'}, "
            f"{erased.payloads_deleted} payloads and {erased.assets_deleted} assets deleted"
        ),
    )


def _export(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        document = b"".join(client.export_subject(args.subject))
    if args.out is not None:
        args.out.write_bytes(document)
        return Output(
            data={"written": str(args.out), "bytes": len(document)},
            text=f"wrote {len(document)} bytes to {args.out}",
        )
    return Output(data=json.loads(document), text=document.decode("utf-8").rstrip("\n"))


def _hash(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        pseudonym = client.hash_subject(args.subject)
    return Output(data={"subject": pseudonym}, text=pseudonym)


def _hold(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        status = client.set_legal_hold(args.subject, not args.release)
    state = "on hold" if status.legal_hold else "released"
    return Output(
        data={"subject": status.subject, "legal_hold": status.legal_hold},
        text=f"{status.subject}: {state}",
    )
