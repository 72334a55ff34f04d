"""``reelvault scrub``: read every stored object back and check it against the catalog, here,
against the configured database and object store (:mod:`reelvault.scrub`)."""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from reelvault.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    Groups,
    Output,
    add_dev_flag,
    deployment_settings,
    human,
    table,
    when,
)
from reelvault.config import Settings
from reelvault.errors import FailedPrecondition

if TYPE_CHECKING:
    from reelvault.scrub import ScrubPass, ScrubReport

__all__ = ["EXIT_DAMAGED", "EXIT_INCOMPLETE", "RateSyntaxError", "add_commands", "parse_rate"]

EXIT_DAMAGED: Final = 3
"""The pass (so far) found at least one damaged asset."""

EXIT_INCOMPLETE: Final = 4
"""No damage found, but the pass is not complete (a limit, the store unavailable), or
some assets could not be read (the store did not answer for them)."""

_UNITS: Final = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_RATE: Final = re.compile(r"(\d+)\s*(b|kib|mib|gib)?")


class RateSyntaxError(argparse.ArgumentTypeError):
    """A ``--rate`` that is not a number of bytes per second."""


def parse_rate(text: str) -> int:
    """Bytes per second from ``52428800``, ``50MiB`` or ``50MiB/s`` (binary units, as the
    ``scrub_rate`` setting takes them); 0 means unlimited.

    Raises:
        RateSyntaxError: anything else.
    """
    match = _RATE.fullmatch(text.strip().lower().removesuffix("/s").strip())
    if match is None:
        raise RateSyntaxError("expected bytes per second, e.g. 50MiB/s (0: unlimited)")
    return int(match[1]) * _UNITS[match[2] or ""]


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    scrub = groups.add_parser(
        "scrub",
        parents=[common],
        help="check that every stored object is intact",
        description=(
            "Read every stored object back and check it: its size, its header against the "
            "catalog's copy, and every frame's authentication tag. Each damaged asset is "
            "reported (and recorded in its tenant's audit log) and the pass goes on. A pass "
            "keeps its progress in the catalog: an interrupted one (Ctrl-C, SIGTERM, --limit, "
            "the store unavailable) resumes where it stopped. Runs here, against the "
            "configured database and object store (the same settings as serve); safe while "
            "the service runs."
        ),
        epilog=(
            f"exit codes: {EXIT_OK} the pass is complete and found no damage; 1 an error; "
            f"{EXIT_DAMAGED} damage found; {EXIT_INCOMPLETE} no damage found so far, but the "
            f"pass is not complete or some objects could not be read; {EXIT_INTERRUPTED} "
            "interrupted (progress saved)."
        ),
    )
    scrub.add_argument(
        "--rate",
        type=parse_rate,
        metavar="RATE",
        help="stored bytes read per second, e.g. 50MiB/s; 0 is unlimited "
        "(default: the scrub_rate setting, 50MiB/s)",
    )
    scrub.add_argument(
        "--tenant", metavar="TENANT_ID", help="only this tenant's assets (a pass of its own)"
    )
    scrub.add_argument(
        "--restart",
        action="store_true",
        help="abandon the open pass and start a new one instead of resuming it",
    )
    scrub.add_argument(
        "--limit",
        type=_positive,
        metavar="ASSETS",
        help="check at most this many assets, then stop (the pass resumes next time)",
    )
    scrub.add_argument(
        "--report",
        action="store_true",
        help="check nothing: show the newest pass and what it found",
    )
    scrub.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    add_dev_flag(scrub)
    scrub.set_defaults(handler=_scrub)


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive number of assets")
    return value


def _scrub(args: argparse.Namespace) -> Output:
    # startup time: only this command needs the domain
    from reelvault.app import Vault  # noqa: PLC0415
    from reelvault.logging import configure_logging  # noqa: PLC0415
    from reelvault.scrub import Scrubber, StopReason  # noqa: PLC0415

    # A pass records its progress and findings: not in a catalog nobody named.
    settings = (
        Settings.load(config_file=args.config)
        if args.report
        else deployment_settings(args, "scrub")
    )
    configure_logging(settings.log_level, settings.log_format)  # progress lines on stderr
    vault = Vault.from_settings(settings)
    stop = threading.Event()
    try:
        scrubber = Scrubber(
            vault.database,
            vault.tenant_keys,
            vault.store,
            vault.clock,
            auditor=vault.auditor,
            rate=settings.scrub_rate if args.rate is None else args.rate,
            progress_interval=10.0,
        )
        if args.report:
            report = scrubber.report(tenant_id=args.tenant)
        else:
            with _stopping_on_signals(stop):
                report = scrubber.run(
                    tenant_id=args.tenant, restart=args.restart, stop=stop, limit=args.limit
                )
    finally:
        vault.close()
    if report.stopped is StopReason.BUSY:
        until = report.latest.claimed_until if report.latest else None
        raise FailedPrecondition(
            "another scrubber is working on this pass"
            + (f" (its lease runs until {when(until)})" if until else "")
            + "; try again later"
        )
    code = _exit_code(report, interrupted=report.stopped is StopReason.STOPPED)
    data: dict[str, Any] = {
        "pass": _pass_data(report.latest),
        "previous": _pass_data(report.previous),
        "stopped": report.stopped.value if report.stopped else None,
        "checked": report.checked,
        "exit_code": code,
    }
    return Output(data=data, text=_text(report), exit_code=code)


@contextlib.contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM stop the pass at the next chunk with its progress saved; a
    second one interrupts at once."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _exit_code(report: ScrubReport, *, interrupted: bool) -> int:
    latest = report.latest
    if latest is None:
        return EXIT_INCOMPLETE  # no pass has run: nothing is known to be intact
    if latest.damaged:
        return EXIT_DAMAGED
    if interrupted:
        return EXIT_INTERRUPTED
    if not latest.complete or latest.unchecked:
        return EXIT_INCOMPLETE
    return EXIT_OK


def _pass_data(scrub_pass: ScrubPass | None) -> dict[str, Any] | None:
    if scrub_pass is None:
        return None
    p = scrub_pass
    return {
        "id": p.id,
        "number": p.number,
        "tenant_id": p.tenant_id,
        "started_at": p.started_at.isoformat(),
        "updated_at": p.updated_at.isoformat(),
        "completed_at": p.completed_at.isoformat() if p.completed_at else None,
        "complete": p.complete,
        "percent": round(p.percent, 1),
        "assets_checked": p.assets_checked,
        "bytes_checked": p.bytes_checked,
        "damaged": p.damaged,
        "skipped": p.skipped,
        "unchecked": p.unchecked,
        "remaining": p.remaining,
        "findings": [
            {
                "asset_id": f.asset_id,
                "tenant_id": f.tenant_id,
                "object_key": f.object_key,
                "result": f.result.value,
                "problem": f.problem.value,
                "frame": f.frame,
                "byte_offset": f.byte_offset,
                "frames": f.frames,
                "detail": f.detail,
            }
            for f in p.findings
        ],
    }


def _text(report: ScrubReport) -> str:
    if report.latest is None:
        return "no scrub pass has run yet"
    parts = [_pass_text(report.latest)]
    if report.stopped is not None:
        parts.append(f"this run stopped early ({report.stopped.value}); run again to resume")
    if report.previous is not None:
        parts.append("the last complete pass:\n" + _pass_text(report.previous))
    return "\n\n".join(parts)


def _pass_text(p: ScrubPass) -> str:
    scope = f"tenant {p.tenant_id}" if p.tenant_id else "all tenants"
    state = (
        f"complete {when(p.completed_at)}"
        if p.completed_at
        else f"open, {p.percent:.1f}% ({p.remaining} asset(s) to go)"
    )
    lines = [
        f"scrub pass {p.number} ({scope}), started {when(p.started_at)}, {state}",
        f"{p.assets_checked} asset(s), {human(p.bytes_checked)} checked: {p.damaged} damaged, "
        f"{p.skipped} skipped (key unavailable), {p.unchecked} unchecked (store unavailable)",
    ]
    if p.findings:
        rows = [
            [
                f.asset_id,
                f.tenant_id,
                f.object_key,
                f.result.value,
                f.problem.value,
                "" if f.byte_offset is None else str(f.byte_offset),
                f.detail,
            ]
            for f in p.findings
        ]
        header = ["ASSET", "TENANT", "OBJECT KEY", "RESULT", "PROBLEM", "OFFSET", "DETAIL"]
        lines.append(table(header, rows, empty=""))
    return "\n".join(lines)
