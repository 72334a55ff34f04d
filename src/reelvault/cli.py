"""The ``reelvault`` command.

Each command group is one ``_add_<group>_commands`` function: it adds its subparsers and
sets a handler on each leaf. A handler takes the parsed arguments and returns an
:class:`Output` (JSON-able data plus its text rendering); everything common to every
command (``--json``, error reporting, exit codes) happens once, in :func:`main`. Adding a
group (tenant, apikey, asset, serve, ...) means one more ``_add_*`` function and one line
in :func:`build_parser`.

Exit codes: 0 success, 1 a reelvault error, 2 a usage error, 130 interrupted. Errors are
reported as one ``reelvault: error: ...`` line on stderr (with or without ``--json``;
scripts read the exit code), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reelvault import errors
from reelvault.keys.local import KeyringInfo, init_keyring, read_keyring_info, rotate_keyring

__all__ = ["Output", "build_parser", "default_keyring_path", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Output:
    """What a command produced, in both renderings, so ``--json`` is never an afterthought.

    Attributes:
        data: printed as JSON with ``--json``; the stable, scriptable form.
        text: printed otherwise; for people, free to change.
    """

    data: dict[str, Any]
    text: str


Handler = Callable[[argparse.Namespace], Output]


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
        print(f"reelvault: error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(output.data, indent=2))
    else:
        print(output.text)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelvault", description="Encrypted vault for video assets."
    )
    parser.add_argument(
        "--json", action="store_true", help="print machine-readable JSON instead of text"
    )
    # Accept --json after the subcommand too. SUPPRESS keeps a subcommand that was not
    # given --json from resetting the value set before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    _add_keyring_commands(groups, common)
    return parser


def default_keyring_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the keyring lives when ``--path`` is not given.

    ``$REELVAULT_KEYRING``, else ``$REELVAULT_DATA_DIR/keyring.json``, else
    ``.reelvault/keyring.json`` in the working directory (the layout ``reelvault dev``
    uses, so a local setup needs no configuration).
    """
    if explicit := environ.get("REELVAULT_KEYRING"):
        return Path(explicit)
    if data_dir := environ.get("REELVAULT_DATA_DIR"):
        return Path(data_dir) / "keyring.json"
    return Path(".reelvault") / "keyring.json"


# --- keyring ---------------------------------------------------------------------------


def _add_keyring_commands(
    groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    keyring = groups.add_parser(
        "keyring",
        help="manage the local root keyring file",
        description="Manage the local keyring file of root keys (when not using AWS KMS).",
    )
    commands = keyring.add_subparsers(dest="command", metavar="COMMAND", required=True)
    path_help = (
        "keyring file (default: $REELVAULT_KEYRING, else $REELVAULT_DATA_DIR/keyring.json, "
        "else .reelvault/keyring.json)"
    )
    for name, handler, help_text in (
        ("init", _keyring_init, "create a keyring with one root key (never overwrites)"),
        ("rotate", _keyring_rotate, "add a root key version and make it active"),
        ("show", _keyring_show, "list root key versions (never key material)"),
    ):
        command = commands.add_parser(name, parents=[common], help=help_text)
        command.add_argument("--path", type=Path, help=path_help)
        command.set_defaults(handler=handler)


def _keyring_path(args: argparse.Namespace) -> Path:
    path: Path | None = args.path
    return path if path is not None else default_keyring_path()


def _keyring_init(args: argparse.Namespace) -> Output:
    info = init_keyring(_keyring_path(args))
    return Output(
        data=_keyring_data(info),
        text=(
            f"created keyring {info.path} with root key version {info.active_version}\n"
            "Back this file up now, apart from database backups: losing it loses every "
            "tenant key,\nand a backup holding both it and the database is a full compromise."
        ),
    )


def _keyring_rotate(args: argparse.Namespace) -> Output:
    info = rotate_keyring(_keyring_path(args))
    return Output(
        data=_keyring_data(info),
        text=(
            f"rotated keyring {info.path}: root key version {info.active_version} is active; "
            f"{len(info.versions) - 1} older version(s) kept for unwrapping\n"
            "Back up the new file, and restart running services so they load it."
        ),
    )


def _keyring_show(args: argparse.Namespace) -> Output:
    info = read_keyring_info(_keyring_path(args))
    lines = [f"keyring {info.path}"]
    for entry in info.versions:
        active = "  (active)" if entry.version == info.active_version else ""
        lines.append(f"  version {entry.version}  created {entry.created_at}{active}")
    return Output(data=_keyring_data(info), text="\n".join(lines))


def _keyring_data(info: KeyringInfo) -> dict[str, Any]:
    return {
        "path": info.path,
        "active_version": info.active_version,
        "versions": [
            {
                "version": entry.version,
                "created_at": entry.created_at,
                "active": entry.version == info.active_version,
            }
            for entry in info.versions
        ],
    }
