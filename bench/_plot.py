"""What the plot scripts share: matplotlib is optional, not a project dependency."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load_pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None (with a hint) if missing."""
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print(
            "matplotlib is not installed (it is not a project dependency); install it with\n"
            "  .venv/bin/pip install matplotlib",
            file=sys.stderr,
        )
        return None
    return plt


def start(
    argv: list[str] | None, *, prog: str, description: str | None, name: str
) -> tuple[Any, dict[str, Any], Path] | None:
    """Parse ``--json``/``--out`` (defaults bench/results/NAME.json, docs/img/bench-NAME.png),
    load pyplot and the results; None if matplotlib is missing."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--json", type=Path, default=Path(f"bench/results/{name}.json"))
    parser.add_argument("--out", type=Path, default=Path(f"docs/img/bench-{name}.png"))
    args = parser.parse_args(argv)
    plt = load_pyplot()
    if plt is None:
        return None
    return plt, json.loads(args.json.read_text(encoding="utf-8")), args.out


def finish(fig: Any, out: Path, footer: str) -> int:
    """Add the grey environment footer, lay out, write ``out``; the exit status."""
    fig.text(0.01, 0.01, footer, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


def label_bar(ax: Any, bar: Any, text: str) -> None:
    """Write ``text`` just above ``bar``."""
    ax.annotate(
        text,
        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=8,
    )
