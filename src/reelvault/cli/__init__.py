"""The ``reelvault`` command.

Each command group is one module of this package (:mod:`.service`, :mod:`.tenant`,
:mod:`.apikey`, :mod:`.asset`, :mod:`.audit`, :mod:`.gc`, :mod:`.scrub`, :mod:`.keyring`,
:mod:`.health`) with an ``add_commands(groups, common)`` function: it adds its subparsers,
each with ``common`` (:mod:`._common`'s parent parser) among its parents, and sets a
handler on each leaf. A handler takes the parsed arguments and returns an :class:`Output`
(JSON-able data plus its text rendering); everything common to every command (``--json``,
error reporting, exit codes) happens once, in :func:`main`, and what the groups share (the
client, tables, sizes, the progress bar) lives in :mod:`._common`. Adding a group means one
more module with ``add_commands`` and one line in :func:`build_parser`.

Groups: ``serve`` and ``dev`` run the service; ``tenant``, ``apikey``, ``asset`` and
``audit`` call a running one through :class:`reelvault.client.Client` (``$REELVAULT_ADDR``,
``$REELVAULT_TOKEN``), and ``health`` asks its health service (no key); ``keyring``,
``gc``, ``apikey bootstrap`` and ``audit purge`` work on local files and the configured
database and store directly (so does ``scrub``), and ``audit verify`` on files alone.
Modules only some commands need (the key hierarchy, the domain, the gRPC server) are
imported in those handlers, so that the client commands, run often from scripts, start
quickly.

Exit codes: 0 success, 1 a reelvault error (or a local file that cannot be read or
written), 2 a usage error, 130 interrupted; ``scrub`` adds 3 (damage found) and 4 (the
pass is not complete). Errors are reported as one
``reelvault: error: ...`` line on stderr (with or without ``--json``; scripts read the exit
code), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from reelvault import errors
from reelvault._version import package_version
from reelvault.cli import (
    apikey,
    asset,
    audit,
    gc,
    health,
    key,
    keyring,
    privacy,
    scrub,
    service,
    tenant,
    url,
)
from reelvault.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Handler,
    Output,
    common_parser,
    describe_os_error,
    fail,
)
from reelvault.cli.asset import ByteRange, RangeSyntaxError, parse_range
from reelvault.cli.keyring import default_keyring_path
from reelvault.client import ADDR_ENV, TOKEN_ENV

__all__ = [
    "ByteRange",
    "Output",
    "RangeSyntaxError",
    "build_parser",
    "default_keyring_path",
    "main",
    "parse_range",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code instead of exiting, for tests."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        output = handler(args)
    except errors.ReelvaultError as exc:
        return fail(exc.message)
    except OSError as exc:  # a local file: the one to upload, the one to write, ...
        return fail(describe_os_error(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(output.data, indent=2))
    elif output.text:
        print(output.text)
    return output.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelvault",
        description="Encrypted vault for video assets.",
        epilog=(
            f"Client commands reach the service at ${ADDR_ENV} with the API key in "
            f"${TOKEN_ENV}; TLS: $REELVAULT_TLS=1, $REELVAULT_TLS_ROOTS_FILE, and for mutual "
            "TLS $REELVAULT_TLS_CLIENT_CERT_FILE with $REELVAULT_TLS_CLIENT_KEY_FILE."
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of text"
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the installed version and exit"
    )
    common = common_parser()
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    service.add_commands(groups, common)
    tenant.add_commands(groups, common)
    apikey.add_commands(groups, common)
    asset.add_commands(groups, common)
    url.add_commands(groups, common)
    privacy.add_commands(groups, common)
    key.add_commands(groups, common)
    audit.add_commands(groups, common)
    gc.add_commands(groups, common)
    scrub.add_commands(groups, common)
    keyring.add_commands(groups, common)
    health.add_commands(groups, common)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: reads the package metadata only when asked (argparse's own version
    action needs the string while the parser is built, for every command)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"reelvault {package_version()}")
        parser.exit()
