"""What the plot scripts share: matplotlib is optional, not a project dependency."""

from __future__ import annotations

import sys
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
