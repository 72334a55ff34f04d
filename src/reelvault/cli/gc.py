"""``reelvault gc``: remove leftovers of crashed uploads and failed deletes, here, against
the configured database and object store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from reelvault.cli._common import Groups, Output, add_dev_flag, deployment_settings

if TYPE_CHECKING:
    from reelvault.objects import GcReport

__all__ = ["add_commands"]

_EXAMPLES: Final = 5  # unknown keys named in the text output (--json lists them all)


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    gc = groups.add_parser(
        "gc",
        parents=[common],
        help="remove leftovers of crashed uploads and failed deletes",
        description=(
            "Remove what the catalog knows to be garbage: upload rows of dead processes, "
            "their multipart uploads and objects, and the objects of deleted assets. "
            "Objects the catalog has no record of (what a restored, older catalog sees for "
            "every newer asset) are reported and kept, unless --delete-unknown. Runs here, "
            "against the configured database and object store (the same settings as serve); "
            "safe while the service runs."
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
    gc.add_argument(
        "--dry-run",
        action="store_true",
        help="change nothing: list what a run would abort and delete",
    )
    gc.add_argument(
        "--delete-unknown",
        action="store_true",
        help=(
            "also delete objects and abort multipart uploads the catalog has no record of. "
            "Dangerous: after a catalog restore these are the assets created since the "
            "backup, and another deployment sharing the bucket owns its own"
        ),
    )
    gc.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    add_dev_flag(gc)
    gc.set_defaults(handler=_gc)


def _gc(args: argparse.Namespace) -> Output:
    from reelvault.app import Vault  # noqa: PLC0415 - startup time

    settings = deployment_settings(args, "gc" + (" --dry-run" if args.dry_run else ""))
    vault = Vault.from_settings(settings)
    try:
        report = vault.assets.objects.gc(
            older_than_seconds=args.older_than,
            dry_run=args.dry_run,
            delete_unknown=args.delete_unknown,
        )
    finally:
        vault.close()
    return Output(data=_data(report), text=_text(report))


def _data(report: GcReport) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "stale_uploads": report.stale_uploads,
        "aborted_multipart_uploads": report.aborted_multipart_uploads,
        "deleted_objects": report.deleted_objects,
        "unknown_objects": report.unknown_objects,
        "unknown_multipart_uploads": len(report.unknown_multipart_uploads),
        "delete_unknown": report.delete_unknown,
        "keys": {
            "stale_uploads": list(report.stale_upload_keys),
            "multipart_uploads": [
                {"key": key, "upload_id": upload_id} for key, upload_id in report.multipart_uploads
            ],
            "objects": list(report.deleted_keys),
            "unknown_objects": list(report.unknown_keys),
            "unknown_multipart_uploads": [
                {"key": key, "upload_id": upload_id}
                for key, upload_id in report.unknown_multipart_uploads
            ],
        },
    }


def _text(report: GcReport) -> str:
    if report.dry_run:
        lines = [
            f"dry run: would remove {report.stale_uploads} stale upload(s), abort "
            f"{report.aborted_multipart_uploads} multipart upload(s), delete "
            f"{report.deleted_objects} object(s)"
        ]
        lines += [f"  stale upload  {key}" for key in report.stale_upload_keys]
        lines += [
            f"  abort multipart upload  {key}  {upload_id}"
            for key, upload_id in report.multipart_uploads
        ]
        lines += [f"  delete object  {key}" for key in report.deleted_keys]
    else:
        lines = [
            f"removed {report.stale_uploads} stale upload(s), aborted "
            f"{report.aborted_multipart_uploads} multipart upload(s), deleted "
            f"{report.deleted_objects} object(s)"
        ]
    unknown = len(report.unknown_keys) + len(report.unknown_multipart_uploads)
    if unknown:
        keys = [*report.unknown_keys, *(key for key, _ in report.unknown_multipart_uploads)]
        examples = ", ".join(keys[:_EXAMPLES]) + (", ..." if len(keys) > _EXAMPLES else "")
        fate = (
            ("would be deleted" if report.dry_run else "deleted")
            if report.delete_unknown
            else "kept; --delete-unknown removes them, see docs/operations.md first"
        )
        lines.append(
            f"unknown to the catalog: {report.unknown_objects} object(s), "
            f"{len(report.unknown_multipart_uploads)} multipart upload(s) ({fate}), "
            f"e.g. {examples}"
        )
    return "\n".join(lines)
