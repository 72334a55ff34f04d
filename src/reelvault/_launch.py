"""The ``reelvault`` console script.

It sets the process-wide defaults that must be in place before grpc is imported, then
runs :func:`reelvault.cli.main`. gRPC's C core reads ``GRPC_VERBOSITY`` once, at import;
left unset, it writes informational lines of its own to stderr (a failed TLS handshake,
say), which break the one-error-line contract of the client commands and the one JSON
object per line of ``serve``. An operator who sets the variable keeps their value.
"""

from __future__ import annotations

import os

__all__ = ["main"]


def main() -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from reelvault.cli import main as run  # noqa: PLC0415 - after the environment is set

    return run()
