"""``reelvault apikey``: create, list and revoke API keys through the service, and
``apikey bootstrap``, which makes the first platform-admin key in the catalog itself."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from reelvault import errors
from reelvault.cli import _common
from reelvault.cli._common import (
    Groups,
    Output,
    add_dev_flag,
    deployment_settings,
    table,
    when,
)
from reelvault.client import ADDR_ENV, ROLES, TOKEN_ENV, ApiKey

if TYPE_CHECKING:
    from reelvault.auth import ApiKeyInfo

__all__ = ["add_commands"]


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
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
            "(REELVAULT_DATABASE_URL, --config), and migrates the catalog if needed; it "
            "refuses the dev defaults (a new .reelvault/catalog.sqlite3 here) unless --dev. "
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
    add_dev_flag(bootstrap)
    bootstrap.set_defaults(handler=_apikey_bootstrap)


def _apikey_create(args: argparse.Namespace) -> Output:
    with _common.client() as client:
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
    settings = deployment_settings(args, "apikey bootstrap")
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
    with _common.client() as client:
        keys = client.list_api_keys(args.tenant)
    rows = [
        (
            k.id,
            k.role,
            when(k.created_at),
            when(k.revoked_at) if k.revoked_at else "-",
            when(k.last_used_at) if k.last_used_at else "never",
            k.description,
        )
        for k in keys
    ]
    return Output(
        data={"api_keys": [_api_key_data(k) for k in keys]},
        text=table(
            ("ID", "ROLE", "CREATED", "REVOKED", "LAST USED", "DESCRIPTION"), rows, empty="no keys"
        ),
    )


def _apikey_revoke(args: argparse.Namespace) -> Output:
    with _common.client() as client:
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
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }
