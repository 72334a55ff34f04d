"""``reelvault asset``: store, read, list and delete assets, through the service; and the
``--range`` syntax (:func:`reelvault.ranges.parse_range`, shared with the HTTP origin)."""

from __future__ import annotations

import argparse
import mimetypes
import os
import sys
from pathlib import Path
from typing import IO, Any

from reelvault import errors
from reelvault.cli import _common
from reelvault.cli._common import Groups, Output, human, progress_bar, showing, table, when
from reelvault.client import ADDR_ENV, READ_PATHS, TOKEN_ENV, Asset
from reelvault.direct import DEFAULT_CONCURRENCY
from reelvault.ranges import ByteRange, RangeSyntaxError, parse_range

__all__ = ["ByteRange", "RangeSyntaxError", "add_commands", "parse_range"]


def _range_argument(text: str) -> ByteRange:
    try:
        return parse_range(text)
    except RangeSyntaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _label_argument(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    asset = groups.add_parser(
        "asset",
        help="store, read, list and delete assets",
        description=(
            f"Assets of the caller's tenant, through the service at ${ADDR_ENV} with the "
            f"key in ${TOKEN_ENV} (an admin, ingest or renderer key)."
        ),
    )
    commands = asset.add_subparsers(dest="command", metavar="COMMAND", required=True)

    put = commands.add_parser("put", parents=[common], help="upload a file")
    put.add_argument("file", metavar="FILE", help="the file to upload; - reads stdin")
    put.add_argument(
        "--path", required=True, metavar="P", help="asset path, e.g. campaign-42/720p/master.mp4"
    )
    put.add_argument(
        "--content-type", metavar="T", help="media type (default: guessed from FILE's name)"
    )
    put.add_argument(
        "--label",
        action="append",
        type=_label_argument,
        default=[],
        metavar="KEY=VALUE",
        help="a label; repeat for more",
    )
    put.set_defaults(handler=_asset_put)

    get = commands.add_parser("get", parents=[common], help="download an asset or a range")
    get.add_argument("id", metavar="ID")
    get.add_argument("-o", "--output", required=True, type=Path, metavar="FILE")
    get.add_argument(
        "--range",
        type=_range_argument,
        metavar="RANGE",
        help="bytes START-END (inclusive), START- (to the end) or -N (the last N)",
    )
    get.add_argument(
        "--read-path",
        choices=READ_PATHS,
        default="auto",
        help="direct: from the object store with a read grant; vault: through the service; "
        "auto (default): direct where the tenant allows it and the store is reachable",
    )
    get.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"ranged GETs in flight for a direct read (default {DEFAULT_CONCURRENCY})",
    )
    get.set_defaults(handler=_asset_get)

    stat = commands.add_parser("stat", parents=[common], help="show an asset's metadata")
    stat.add_argument("id", metavar="ID")
    stat.set_defaults(handler=_asset_stat)

    ls = commands.add_parser("ls", parents=[common], help="list assets")
    ls.add_argument("--prefix", default="", metavar="P", help="only paths starting with P")
    ls.set_defaults(handler=_asset_ls)

    rm = commands.add_parser("rm", parents=[common], help="delete an asset (idempotent)")
    rm.add_argument("id", metavar="ID")
    rm.set_defaults(handler=_asset_rm)


def _asset_put(args: argparse.Namespace) -> Output:
    labels: dict[str, str] = {}
    for key, value in args.label:
        if key in labels:
            raise errors.InvalidArgument(f"label {key!r} is given twice")
        labels[key] = value
    content_type = args.content_type
    if content_type is None and args.file != "-":
        content_type = mimetypes.guess_type(args.file, strict=False)[0]
    source: str | IO[bytes] = sys.stdin.buffer if args.file == "-" else args.file
    total = None
    if args.file != "-" and os.path.isfile(args.file):
        total = os.path.getsize(args.file)
    bar = progress_bar(args, total)
    with _common.client() as client, showing(bar):
        asset = client.upload(
            source, path=args.path, content_type=content_type, labels=labels, progress=bar
        )
    return Output(
        data=_asset_data(asset),
        text=f"stored {asset.path} as {asset.id} ({human(asset.size)})",
    )


def _asset_get(args: argparse.Namespace) -> Output:
    selected: ByteRange = args.range or ByteRange()
    if args.concurrency < 1:
        raise errors.InvalidArgument("--concurrency must be at least 1")
    with (
        _common.client(direct_concurrency=args.concurrency) as client,
        client.download(
            args.id,
            offset=selected.offset,
            length=selected.length,
            suffix=selected.suffix,
            read_path=args.read_path,
        ) as stream,
    ):
        bar = progress_bar(args, stream.length)
        with showing(bar):
            stream.save(args.output, progress=bar)
    asset = stream.asset
    whole = stream.offset == 0 and stream.length == asset.size
    span = "" if whole else f" (bytes {stream.offset}-{stream.offset + stream.length - 1})"
    return Output(
        data={
            "asset": _asset_data(asset),
            "offset": stream.offset,
            "length": stream.length,
            "output": str(args.output),
        },
        text=f"wrote {human(stream.length)}{span} of {asset.path} to {args.output}",
    )


def _asset_stat(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        asset = client.stat(args.id)
    labels = ", ".join(f"{k}={v}" for k, v in sorted(asset.labels.items())) or "-"
    text = "\n".join(
        [
            f"id            {asset.id}",
            f"path          {asset.path}",
            f"size          {asset.size} ({human(asset.size)})",
            f"content type  {asset.content_type}",
            f"sha256        {asset.sha256.hex()}",
            f"etag          {asset.etag}",
            f"labels        {labels}",
            f"created       {when(asset.created_at)}",
            f"kek version   {asset.kek_version}",
        ]
    )
    return Output(data=_asset_data(asset), text=text)


def _asset_ls(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        assets = list(client.list(args.prefix))
    rows = [(a.id, str(a.size), when(a.created_at), a.path) for a in assets]
    return Output(
        data={"assets": [_asset_data(a) for a in assets]},
        text=table(("ID", "SIZE", "CREATED", "PATH"), rows, empty="no assets"),
    )


def _asset_rm(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        client.delete(args.id)
    return Output(data={"id": args.id, "deleted": True}, text=f"deleted asset {args.id}")


def _asset_data(asset: Asset) -> dict[str, Any]:
    return {
        "id": asset.id,
        "tenant_id": asset.tenant_id,
        "path": asset.path,
        "content_type": asset.content_type,
        "labels": dict(asset.labels),
        "size": asset.size,
        "sha256": asset.sha256.hex(),
        "etag": asset.etag,
        "created_at": asset.created_at.isoformat(),
        "kek_version": asset.kek_version,
    }
