"""Render the fault suite's JSON report as the Markdown table of docs/reliability.md.

    .venv/bin/python tests/faults/report.py [REPORT.json]

The report is the file the suite wrote (``REELVAULT_FAULTS_REPORT``, or the path it printed
at the end of the run). Rows appear in the order of :data:`ORDER`, then any others.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ORDER = ("store-paused", "store-killed", "database-restarted", "vault-killed", "two-replicas")


def _failed(failed: Mapping[str, int]) -> str:
    if not failed:
        return "none"
    ranked = sorted(failed.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {status}" for status, count in ranked)


def _catalog_only(row: Mapping[str, Any]) -> str:
    kinds = row.get("by_kind", {})
    tried = sum(kinds.get(k, {}).get("tried", 0) for k in ("stat", "list"))
    ok = sum(kinds.get(k, {}).get("ok", 0) for k in ("stat", "list"))
    return f"{tried - ok} of {tried}"


def _recovery(row: Mapping[str, Any]) -> str:
    seconds = row.get("recovery_seconds")
    if not row.get("faulted", True):
        return "n/a (no fault)"
    if seconds is None:
        return "**not within 60 s**"
    restart = row.get("restart_seconds")
    return f"{seconds:.1f} s" + ("" if restart is None else f" (restart {restart:.1f} s)")


def _leftovers(row: Mapping[str, Any]) -> str:
    gc = row.get("gc") or {}
    left = sum(gc.get(k, 0) for k in ("upload_rows", "multipart_uploads", "orphan_objects"))
    return f"{gc.get('collected', 0)} / {left}"


def render_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The Markdown table, one line per scenario."""
    ranked = sorted(
        rows,
        key=lambda r: (ORDER.index(r["scenario"]) if r["scenario"] in ORDER else len(ORDER),),
    )
    lines = [
        "| Scenario | Calls tried | Succeeded | Failed, by status | Committed lost "
        "| Partial visible | Catalog-only calls failed | Ambiguous uploads: committed / absent "
        "| gc: collected / left | Recovery |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in ranked:
        ambiguous = row.get("ambiguous_uploads", {})
        lines.append(
            f"| {row.get('fault', row['scenario'])} | {row['tried']} | {row['ok']} "
            f"| {_failed(row['failed'])} | {row['lost']} | {row['partial_visible']} "
            f"| {_catalog_only(row)} "
            f"| {ambiguous.get('committed', 0)} / {ambiguous.get('absent', 0)} "
            f"| {_leftovers(row)} | {_recovery(row)} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    rows = json.loads(Path(argv[0]).read_text())["rows"]
    print(render_table(rows.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
