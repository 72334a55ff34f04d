"""``reelvault gc``: remove leftovers of crashed uploads and failed deletes, here, against
the configured database and object store."""

from __future__ import annotations

import argparse
from pathlib import Path

from reelvault.cli._common import Groups, Output
from reelvault.config import Settings

__all__ = ["add_commands"]


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    gc = groups.add_parser(
        "gc",
        parents=[common],
        help="remove leftovers of crashed uploads and failed deletes",
        description=(
            "Remove what crashes and failed deletes left behind: stale uploads, their "
            "multipart uploads, and stored objects no asset owns. Runs here, against the "
            "configured database and object store (the same settings as serve); safe "
            "while the service runs."
        ),
    )
    gc.add_argument(
        "--older-than",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help=(
            "only leftovers older than this (default 3600; at least 120: running uploads "
            "refresh their rows every 30 s, so any threshold allowed is safe for them)"
        ),
    )
    gc.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    gc.set_defaults(handler=_gc)


def _gc(args: argparse.Namespace) -> Output:
    from reelvault.app import Vault  # noqa: PLC0415 - startup time

    settings = Settings.load(config_file=args.config)
    vault = Vault.from_settings(settings)
    try:
        report = vault.assets.gc(older_than_seconds=args.older_than)
    finally:
        vault.close()
    data = {
        "stale_uploads": report.stale_uploads,
        "aborted_multipart_uploads": report.aborted_multipart_uploads,
        "deleted_objects": report.deleted_objects,
    }
    return Output(
        data=data,
        text=(
            f"removed {report.stale_uploads} stale upload(s), aborted "
            f"{report.aborted_multipart_uploads} multipart upload(s), deleted "
            f"{report.deleted_objects} orphaned object(s)"
        ),
    )
