"""``reelvault keyring``: manage the local root keyring file (when not using AWS KMS)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelvault.cli._common import Groups, Output, add_dev_flag
from reelvault.errors import ConfigurationError

if TYPE_CHECKING:
    from reelvault.keys.local import KeyringInfo

__all__ = ["add_commands", "default_keyring_path"]


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


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    keyring = groups.add_parser(
        "keyring",
        help="manage the local root keyring file",
        description="Manage the local keyring file of root keys (when not using AWS KMS).",
    )
    commands = keyring.add_subparsers(dest="command", metavar="COMMAND", required=True)
    path_help = (
        "keyring file (default: $REELVAULT_KEYRING, else $REELVAULT_DATA_DIR/keyring.json, "
        "else .reelvault/keyring.json, which init and rotate write only with --dev)"
    )
    for name, handler, help_text in (
        ("init", _keyring_init, "create a keyring with one root key (never overwrites)"),
        ("rotate", _keyring_rotate, "add a root key version and make it active"),
        ("show", _keyring_show, "list root key versions (never key material)"),
    ):
        command = commands.add_parser(name, parents=[common], help=help_text)
        command.add_argument("--path", type=Path, help=path_help)
        if handler is not _keyring_show:
            add_dev_flag(command)
        command.set_defaults(handler=handler)


def _keyring_path(args: argparse.Namespace) -> Path:
    path: Path | None = args.path
    return path if path is not None else default_keyring_path()


def _keyring_to_write(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Path:
    """The keyring ``init`` or ``rotate`` may write: one somebody named.

    Raises:
        ConfigurationError: the root key provider is AWS KMS (there is no keyring to
            write), or only the dev default ``.reelvault/keyring.json`` here is left and
            ``--dev`` was not given.
    """
    from reelvault.config import Settings  # noqa: PLC0415 - startup time

    if args.path is None and Settings.load(environ).root_key_provider == "aws-kms":
        raise ConfigurationError(
            "REELVAULT_ROOT_KEY_PROVIDER is aws-kms: the root key lives in KMS and no "
            "keyring file is used (rotate the KMS key in KMS; --path to write a file anyway)"
        )
    named = args.path is not None or any(
        environ.get(name) for name in ("REELVAULT_KEYRING", "REELVAULT_DATA_DIR")
    )
    if not named and not args.dev:
        raise ConfigurationError(
            f"no keyring named: set REELVAULT_KEYRING or REELVAULT_DATA_DIR to the "
            f"deployment's, or give --path; --dev to use the dev default "
            f"{default_keyring_path(environ)}"
        )
    return _keyring_path(args)


def _keyring_init(args: argparse.Namespace) -> Output:
    from reelvault.keys.local import init_keyring  # noqa: PLC0415 - startup time

    info = init_keyring(_keyring_to_write(args))
    return Output(
        data=_keyring_data(info),
        text=(
            f"created keyring {info.path} with root key version {info.active_version}\n"
            "Back this file up now, apart from database backups: losing it loses every "
            "tenant key,\nand a backup holding both it and the database is a full compromise."
        ),
    )


def _keyring_rotate(args: argparse.Namespace) -> Output:
    from reelvault.keys.local import rotate_keyring  # noqa: PLC0415 - startup time

    info = rotate_keyring(_keyring_to_write(args))
    return Output(
        data=_keyring_data(info),
        text=(
            f"rotated keyring {info.path}: root key version {info.active_version} is active; "
            f"{len(info.versions) - 1} older version(s) kept for unwrapping\n"
            "Back up the new file, and restart running services so they load it."
        ),
    )


def _keyring_show(args: argparse.Namespace) -> Output:
    from reelvault.keys.local import read_keyring_info  # noqa: PLC0415 - startup time

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
