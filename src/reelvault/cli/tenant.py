"""``reelvault tenant``: create and list tenants, through the service."""

from __future__ import annotations

import argparse
from typing import Any

from reelvault.cli import _common
from reelvault.cli._common import Groups, Output, table, when
from reelvault.client import ADDR_ENV, TOKEN_ENV, Tenant

__all__ = ["add_commands"]


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
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
    policy = commands.add_parser(
        "policy",
        parents=[common],
        help="set a tenant's policies (tenant admin: its own; platform admin: any)",
    )
    policy.add_argument(
        "--tenant", default=None, metavar="ID", help="the tenant (default: the key's own)"
    )
    policy.add_argument(
        "--direct-reads",
        choices=("on", "off"),
        default=None,
        help="let readers fetch ciphertext from the store with read grants (docs/direct-reads.md)",
    )
    policy.set_defaults(handler=_tenant_policy)


def _tenant_create(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        tenant = client.create_tenant(args.name)
    return Output(
        data=_tenant_data(tenant),
        text=(
            f"created tenant {tenant.name} ({tenant.id})\n"
            f"next: reelvault apikey create --tenant {tenant.id} --role ingest"
        ),
    )


def _tenant_policy(args: argparse.Namespace) -> Output:
    direct = None if args.direct_reads is None else args.direct_reads == "on"
    with _common.client() as client:
        tenant = client.set_tenant_policy(args.tenant, direct_reads=direct)
    state = "on" if tenant.direct_reads else "off"
    return Output(data=_tenant_data(tenant), text=f"{tenant.name}: direct reads {state}")


def _tenant_ls(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        tenants = client.list_tenants()
    rows = [(t.id, when(t.created_at), t.name) for t in tenants]
    return Output(
        data={"tenants": [_tenant_data(t) for t in tenants]},
        text=table(("ID", "CREATED", "NAME"), rows, empty="no tenants"),
    )


def _tenant_data(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "created_at": tenant.created_at.isoformat(),
        "direct_reads": tenant.direct_reads,
    }
