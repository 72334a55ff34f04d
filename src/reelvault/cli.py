"""The ``reelvault`` command.

Each command group is one ``_add_<group>_commands`` function: it adds its subparsers and
sets a handler on each leaf. A handler takes the parsed arguments and returns an
:class:`Output` (JSON-able data plus its text rendering); everything common to every
command (``--json``, error reporting, exit codes) happens once, in :func:`main`. Adding a
group means one more ``_add_*`` function and one line in :func:`build_parser`.

Groups: ``serve`` and ``dev`` run the service; ``tenant``, ``apikey`` and ``asset`` call a
running one through :class:`reelvault.client.Client` (``$REELVAULT_ADDR``,
``$REELVAULT_TOKEN``); ``keyring``, ``gc`` and ``apikey bootstrap`` work on local files
and the configured database and store directly. Modules only some commands need (the key
hierarchy, the domain, the gRPC server) are imported in those handlers, so that the
client commands, run often from scripts, start quickly.

Exit codes: 0 success, 1 a reelvault error (or a local file that cannot be read or
written), 2 a usage error, 130 interrupted. Errors are reported as one
``reelvault: error: ...`` line on stderr (with or without ``--json``; scripts read the exit
code), never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mimetypes
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TextIO, TypeAlias

from reelvault import allocator, errors
from reelvault.client import ADDR_ENV, ROLES, TOKEN_ENV, ApiKey, Asset, Client, Tenant
from reelvault.config import CONFIG_FILE_ENV, Settings

if TYPE_CHECKING:
    from reelvault.auth import ApiKeyInfo
    from reelvault.keys.local import KeyringInfo

__all__ = [
    "ByteRange",
    "Output",
    "RangeSyntaxError",
    "build_parser",
    "default_keyring_path",
    "main",
    "parse_range",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_INT64_MAX: Final = (1 << 63) - 1

# Subscriptable only for type checkers (argparse's class is not generic at run time).
Groups: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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
        return _fail(exc.message)
    except OSError as exc:  # a local file: the one to upload, the one to write, ...
        return _fail(_describe_os_error(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(output.data, indent=2))
    elif output.text:
        print(output.text)
    return EXIT_OK


def _fail(message: str) -> int:
    print(f"reelvault: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _describe_os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


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
    # Accept --json after the subcommand too. SUPPRESS keeps a subcommand that was not
    # given --json from resetting the value set before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    _add_service_commands(groups, common)
    _add_tenant_commands(groups, common)
    _add_apikey_commands(groups, common)
    _add_asset_commands(groups, common)
    _add_gc_commands(groups, common)
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


# --- serve, dev ------------------------------------------------------------------------


def _add_service_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    serve = groups.add_parser(
        "serve",
        parents=[common],
        help="run the gRPC service",
        description=(
            "Run the gRPC service until SIGTERM or SIGINT. Settings come from REELVAULT_*\n"
            "environment variables, over a TOML file (--config), over the defaults."
        ),
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML file of settings (default: ${CONFIG_FILE_ENV}, else none)",
    )
    serve.set_defaults(handler=_serve)

    command = groups.add_parser(
        "dev",
        parents=[common],
        help="run a local vault on SeaweedFS, set up on first run (make run)",
        description=_DEV_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML file of settings (default: ${CONFIG_FILE_ENV}, else none)",
    )
    command.set_defaults(handler=_dev)


_DEV_DESCRIPTION: Final = """\
Run a complete local vault: SeaweedFS for S3 and the gRPC service, until Ctrl-C.

The first run creates, in $REELVAULT_DATA_DIR (default .reelvault/): the root keyring
(keyring.json), the catalog (catalog.sqlite3), SeaweedFS's data (seaweedfs/) and a
platform-admin API key (admin.token, mode 0600). Every run writes dev.json (gRPC address,
admin token path, S3 endpoint, bucket and credentials) once the vault is ready, and
removes it on exit.

Ports: gRPC on $REELVAULT_GRPC_HOST:$REELVAULT_GRPC_PORT (127.0.0.1:7400), SeaweedFS S3
on 127.0.0.1:$REELVAULT_DEV_S3_PORT (8333; its gRPC port is that + 10000). The S3 settings
(endpoint, credentials) are SeaweedFS's; every other setting is read as for serve.
"""


def _settings_help() -> str:
    lines = [
        "settings (environment variable=default; in the --config file, the same names in "
        "lower case without REELVAULT_):"
    ]
    for variable, default, help_text in Settings.describe():
        lines.append(f"  {variable}={default}")
        lines.append(f"      {help_text}")
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> Output:
    allocator.tune()  # before any thread starts
    from reelvault.rpc.server import serve  # noqa: PLC0415 - startup time

    settings = Settings.load(config_file=args.config)
    asyncio.run(serve(settings))
    return Output(data={"stopped": True}, text="")


def _dev(args: argparse.Namespace) -> Output:
    allocator.tune()  # before any thread starts
    from reelvault import dev  # noqa: PLC0415 - startup time

    settings = Settings.load(config_file=args.config)
    dev.run(settings, json_output=args.json)
    return Output(data={"stopped": True}, text="reelvault dev stopped")


# --- tenant ----------------------------------------------------------------------------


def _add_tenant_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    tenant = groups.add_parser(
        "tenant",
        help="create and list tenants (platform admin)",
        description=f"Tenants, through the service at ${ADDR_ENV} with the key in ${TOKEN_ENV}.",
    )
    commands = tenant.add_subparsers(dest="command", metavar="COMMAND", required=True)
    create = commands.add_parser("create", parents=[common], help="create a tenant")
    create.add_argument("name", metavar="NAME", help="unique, 1-128 printable characters")
    create.set_defaults(handler=_tenant_create)
    ls = commands.add_parser("ls", parents=[common], help="list tenants")
    ls.set_defaults(handler=_tenant_ls)


def _tenant_create(args: argparse.Namespace) -> Output:
    with _client() as client:
        tenant = client.create_tenant(args.name)
    return Output(
        data=_tenant_data(tenant),
        text=(
            f"created tenant {tenant.name} ({tenant.id})\n"
            f"next: reelvault apikey create --tenant {tenant.id} --role ingest"
        ),
    )


def _tenant_ls(args: argparse.Namespace) -> Output:
    with _client() as client:
        tenants = client.list_tenants()
    rows = [(t.id, _when(t.created_at), t.name) for t in tenants]
    return Output(
        data={"tenants": [_tenant_data(t) for t in tenants]},
        text=_table(("ID", "CREATED", "NAME"), rows, empty="no tenants"),
    )


def _tenant_data(tenant: Tenant) -> dict[str, Any]:
    return {"id": tenant.id, "name": tenant.name, "created_at": tenant.created_at.isoformat()}


# --- apikey ----------------------------------------------------------------------------


def _add_apikey_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    apikey = groups.add_parser(
        "apikey",
        help="create, list and revoke API keys",
        description=(
            f"API keys, through the service at ${ADDR_ENV} with the key in ${TOKEN_ENV}. "
            "A platform admin manages every tenant's keys, a tenant admin its own. "
            "'bootstrap' makes the first platform-admin key in the catalog itself."
        ),
    )
    commands = apikey.add_subparsers(dest="command", metavar="COMMAND", required=True)
    create = commands.add_parser(
        "create", parents=[common], help="create a key and print its secret (shown only once)"
    )
    create.add_argument(
        "--tenant",
        metavar="ID",
        help="the key's tenant (required unless the role is platform-admin)",
    )
    create.add_argument("--role", required=True, choices=ROLES, help="what the key may do")
    create.add_argument("--description", default="", help="what the key is for")
    create.set_defaults(handler=_apikey_create)
    ls = commands.add_parser("ls", parents=[common], help="list keys, revoked ones included")
    ls.add_argument(
        "--tenant", metavar="ID", help="whose keys (platform admins; default: platform keys)"
    )
    ls.set_defaults(handler=_apikey_ls)
    revoke = commands.add_parser("revoke", parents=[common], help="revoke a key (idempotent)")
    revoke.add_argument("id", metavar="ID")
    revoke.set_defaults(handler=_apikey_revoke)
    bootstrap = commands.add_parser(
        "bootstrap",
        parents=[common],
        help="create a platform-admin key in the configured catalog (first key of a vault)",
        description=(
            "Create a platform-admin API key straight in the catalog, without a running "
            "service: the way to the first key of a new deployment (every other key is "
            "made through the service). Runs here, with the same settings as serve "
            "(REELVAULT_DATABASE_URL, --config), and migrates the catalog if needed; "
            "whoever may run it holds the database credentials, which is the trust it "
            "needs. With --out the secret goes to a new file (mode 0600) and is not "
            "printed."
        ),
    )
    bootstrap.add_argument(
        "--out",
        metavar="FILE",
        help="write the secret to this new file (mode 0600; never overwritten)",
    )
    bootstrap.add_argument(
        "--description", default="bootstrap platform admin", help="what the key is for"
    )
    bootstrap.add_argument("--config", type=Path, metavar="FILE", help="TOML file of settings")
    bootstrap.set_defaults(handler=_apikey_bootstrap)


def _apikey_create(args: argparse.Namespace) -> Output:
    with _client() as client:
        key, secret = client.create_api_key(
            tenant_id=args.tenant, role=args.role, description=args.description
        )
    scope = f"tenant {key.tenant_id}" if key.tenant_id else "the platform"
    return Output(
        data={"api_key": _api_key_data(key), "secret": secret},
        text=(
            f"created API key {key.id} ({key.role}, {scope})\n"
            "secret (shown only now; the vault keeps only its hash):\n"
            f"{secret}"
        ),
    )


def _apikey_bootstrap(args: argparse.Namespace) -> Output:
    # startup time: the catalog is only needed here
    from reelvault._files import create_private  # noqa: PLC0415
    from reelvault.auth import ApiKeys, Role, check_description  # noqa: PLC0415
    from reelvault.catalog import Database  # noqa: PLC0415
    from reelvault.clock import SystemClock  # noqa: PLC0415

    # Everything that can be refused is refused before the catalog is touched (a migration
    # is not something to run by accident) and before the file exists.
    check_description(args.description)
    settings = Settings.load(config_file=args.config)
    url = settings.resolved_database_url
    out: str | None = args.out  # a str: Path() would drop a trailing "/"
    _check_bootstrap_target(url, out)
    fd = create_private(out) if out is not None else None
    database: Database | None = None
    created: str | None = None
    try:
        database = Database(url)
        database.migrate()
        keys = ApiKeys(database, SystemClock())
        info, secret = keys.create(
            tenant_id=None, role=Role.PLATFORM_ADMIN, description=args.description
        )
        created = info.id
        if fd is not None:
            owned, fd = fd, None  # from here the file object owns (and closes) it
            with open(owned, "w", encoding="utf-8") as file:
                file.write(secret + "\n")
    except BaseException:
        if fd is not None:
            os.close(fd)
        if out is not None:
            Path(out).unlink(missing_ok=True)  # ours (O_EXCL), and it holds no usable key
            if created is not None and database is not None:
                # the secret is lost with the file: a key nobody holds must not stay valid
                with contextlib.suppress(errors.ReelvaultError):
                    keys.revoke(created)
        raise
    finally:
        if database is not None:
            database.dispose()
    data: dict[str, Any] = {"api_key": _api_key_data(info)}
    head = f"created platform-admin API key {info.id}"
    if out is not None:
        data["secret_file"] = out
        return Output(data=data, text=f"{head}; its secret is in {out} (mode 0600)")
    data["secret"] = secret
    return Output(
        data=data,
        text=f"{head}\nsecret (shown only now; the vault keeps only its hash):\n{secret}",
    )


def _check_bootstrap_target(url: str, out: str | None) -> None:
    """Refuse a catalog that would not keep the key, and a secret file that is the catalog.

    An in-memory SQLite catalog is gone when the command ends, with the key in it. A new
    deployment's SQLite file does not exist yet, so ``--out`` naming it (or its journal)
    would pass the exclusive create, and then be opened as the catalog and overwritten.
    """
    from sqlalchemy import make_url  # noqa: PLC0415 - startup time
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # Database() reports it
    if parsed.get_backend_name() != "sqlite":
        return
    name = parsed.database or ""
    if name in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise errors.ConfigurationError(
            "an in-memory catalog would lose the key; set REELVAULT_DATABASE_URL to the "
            "service's catalog"
        )
    if out is not None:
        catalog = Path(name).resolve()
        taken = {catalog, *(catalog.with_name(catalog.name + s) for s in _SQLITE_SIDECARS)}
        if Path(out).resolve() in taken:
            raise errors.ConfigurationError("--out names the catalog database itself")


_SQLITE_SIDECARS: Final = ("-journal", "-wal", "-shm")


def _apikey_ls(args: argparse.Namespace) -> Output:
    with _client() as client:
        keys = client.list_api_keys(args.tenant)
    rows = [
        (
            k.id,
            k.role,
            _when(k.created_at),
            _when(k.revoked_at) if k.revoked_at else "-",
            k.description,
        )
        for k in keys
    ]
    return Output(
        data={"api_keys": [_api_key_data(k) for k in keys]},
        text=_table(("ID", "ROLE", "CREATED", "REVOKED", "DESCRIPTION"), rows, empty="no keys"),
    )


def _apikey_revoke(args: argparse.Namespace) -> Output:
    with _client() as client:
        key = client.revoke_api_key(args.id)
    return Output(data=_api_key_data(key), text=f"revoked API key {key.id}")


def _api_key_data(key: ApiKey | ApiKeyInfo) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "role": str(key.role),  # a Role from the catalog, already a str from the service
        "description": key.description,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


# --- asset -----------------------------------------------------------------------------


class RangeSyntaxError(ValueError):
    """A ``--range`` that is not ``START-END``, ``START-`` or ``-N``."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """A parsed ``--range``, as :meth:`Client.download` takes it: ``offset`` with
    ``length`` (``START-END``), ``offset`` alone (``START-``), or ``suffix`` (``-N``)."""

    offset: int | None = None
    length: int | None = None
    suffix: int | None = None


_RANGE: Final = re.compile(r"([0-9]*)-([0-9]*)")


def parse_range(text: str) -> ByteRange:
    """Parse an HTTP-style byte range: ``START-END`` (inclusive), ``START-`` or ``-N``.

    Raises:
        RangeSyntaxError: anything else, an end before the start, or ``-0``.
    """
    match = _RANGE.fullmatch(text.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeSyntaxError(f"{text!r} is not START-END, START- or -N")
    start, end = (int(g) if g else None for g in match.groups())
    if any(n is not None and n > _INT64_MAX for n in (start, end)):
        raise RangeSyntaxError(f"{text!r}: a number is too large")
    if start is None:
        if end == 0:
            raise RangeSyntaxError("-N needs N > 0")
        return ByteRange(suffix=end)
    if end is None:
        return ByteRange(offset=start)
    if end < start:
        raise RangeSyntaxError(f"{text!r}: the end is before the start")
    return ByteRange(offset=start, length=end - start + 1)


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


def _add_asset_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
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
    bar = _progress_bar(args, total)
    with _client() as client, _showing(bar):
        asset = client.upload(
            source, path=args.path, content_type=content_type, labels=labels, progress=bar
        )
    return Output(
        data=_asset_data(asset),
        text=f"stored {asset.path} as {asset.id} ({_human(asset.size)})",
    )


def _asset_get(args: argparse.Namespace) -> Output:
    selected: ByteRange = args.range or ByteRange()
    with (
        _client() as client,
        client.download(
            args.id, offset=selected.offset, length=selected.length, suffix=selected.suffix
        ) as stream,
    ):
        bar = _progress_bar(args, stream.length)
        with _showing(bar):
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
        text=f"wrote {_human(stream.length)}{span} of {asset.path} to {args.output}",
    )


def _asset_stat(args: argparse.Namespace) -> Output:
    with _client() as client:
        asset = client.stat(args.id)
    labels = ", ".join(f"{k}={v}" for k, v in sorted(asset.labels.items())) or "-"
    text = "\n".join(
        [
            f"id            {asset.id}",
            f"path          {asset.path}",
            f"size          {asset.size} ({_human(asset.size)})",
            f"content type  {asset.content_type}",
            f"sha256        {asset.sha256.hex()}",
            f"etag          {asset.etag}",
            f"labels        {labels}",
            f"created       {_when(asset.created_at)}",
        ]
    )
    return Output(data=_asset_data(asset), text=text)


def _asset_ls(args: argparse.Namespace) -> Output:
    with _client() as client:
        assets = list(client.list(args.prefix))
    rows = [(a.id, str(a.size), _when(a.created_at), a.path) for a in assets]
    return Output(
        data={"assets": [_asset_data(a) for a in assets]},
        text=_table(("ID", "SIZE", "CREATED", "PATH"), rows, empty="no assets"),
    )


def _asset_rm(args: argparse.Namespace) -> Output:
    with _client() as client:
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
    }


# --- gc --------------------------------------------------------------------------------


def _add_gc_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
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
        help="only leftovers older than this; keep it above the longest upload (default 3600)",
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


# --- shared helpers --------------------------------------------------------------------


def _client() -> Client:
    return Client()


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> str:
    if not rows:
        return empty
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _human(size: float) -> str:
    """``512 B``, ``3.0 MiB``: binary units, one decimal."""
    unit = "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size /= 1024
        unit = larger
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def _progress_bar(args: argparse.Namespace, total: int | None) -> _ProgressBar | None:
    """A progress line on stderr, for people only: not with --json nor when stderr is
    not a terminal (a log file or a pipe would get a line per redraw)."""
    if args.json or not sys.stderr.isatty():
        return None
    return _ProgressBar(total, sys.stderr)


@contextlib.contextmanager
def _showing(bar: _ProgressBar | None) -> Iterator[None]:
    """Leave the finished bar on screen after a transfer; erase it after a failure, so the
    error line that follows stands alone."""
    try:
        yield
    except BaseException:
        if bar is not None:
            bar.erase()
        raise
    if bar is not None:
        bar.finish()


class _ProgressBar:
    """Bytes done, rate and ETA on one terminal line, redrawn at most ten times a second.

    Called from a gRPC worker thread during uploads, hence the lock.
    """

    _INTERVAL: Final = 0.1

    def __init__(self, total: int | None, stream: TextIO) -> None:
        self._total = total
        self._stream = stream
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._drawn = 0.0
        self._shown = False
        self._done = 0

    def __call__(self, done: int) -> None:
        with self._lock:
            self._done = done
            now = time.monotonic()
            if now - self._drawn >= self._INTERVAL:
                self._drawn = now
                self._draw(now)

    def finish(self) -> None:
        with self._lock:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def erase(self) -> None:
        with self._lock:
            if self._shown:
                self._stream.write("\r\x1b[K")
                self._stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self._done / elapsed
        parts = [_human(self._done)]
        if self._total:
            parts[0] += f" / {_human(self._total)}"
            parts.append(f"{100 * self._done // self._total:3d}%")
        parts.append(f"{_human(rate)}/s")
        if self._total and rate > 0:
            parts.append(f"ETA {_duration(max(self._total - self._done, 0) / rate)}")
        # \r returns to the line start, ESC[K clears what a longer earlier line left.
        self._stream.write("\r" + "  ".join(parts) + "\x1b[K")
        self._stream.flush()
        self._shown = True


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# --- keyring ---------------------------------------------------------------------------


def _add_keyring_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
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
    from reelvault.keys.local import init_keyring  # noqa: PLC0415 - startup time

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
    from reelvault.keys.local import rotate_keyring  # noqa: PLC0415 - startup time

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
