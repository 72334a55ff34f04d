"""``reelvault tenant``: create and list tenants, through the service."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reelvault import _files, errors
from reelvault.cli import _common
from reelvault.cli._common import Groups, Output, table, when
from reelvault.cli.key import status_data, status_text
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
    create.add_argument(
        "--kms-key-arn",
        default=None,
        help="bring your own key: the tenant's own AWS KMS key wraps its KEKs",
    )
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
    delete = commands.add_parser(
        "delete",
        parents=[common],
        help="schedule (or cancel) the destruction of a tenant's keys and data",
    )
    delete.add_argument("--tenant", default=None, metavar="ID", help="default: the key's own")
    when_ = delete.add_mutually_exclusive_group(required=True)
    when_.add_argument(
        "--schedule", type=int, metavar="DAYS", help="disable now, destroy after 7-30 days"
    )
    when_.add_argument("--cancel", action="store_true", help="cancel a scheduled deletion")
    delete.set_defaults(handler=_tenant_delete)
    for name, help_text in (
        ("disable", "refuse every use of the tenant's keys (reversible)"),
        ("enable", "let a disabled tenant's keys work again"),
    ):
        parser = commands.add_parser(name, parents=[common], help=help_text)
        parser.add_argument("--tenant", default=None, metavar="ID", help="default: the key's own")
        parser.set_defaults(handler=_tenant_disable if name == "disable" else _tenant_enable)
    export = commands.add_parser(
        "export-keys",
        parents=[common],
        help="leave with the keys: request (tenant admin), approve (platform admin), collect",
    )
    export.add_argument("--tenant", default=None, metavar="ID", help="default: the key's own")
    step = export.add_mutually_exclusive_group(required=True)
    step.add_argument(
        "--request",
        type=Path,
        metavar="PUBLIC_KEY_PEM",
        help="ask for an export sealed to this RSA (3072+) or X25519 public key",
    )
    step.add_argument("--approve", metavar="EXPORT_ID", help="approve a request (platform admin)")
    step.add_argument("--collect", metavar="EXPORT_ID", help="collect an approved export, once")
    export.add_argument(
        "--out", type=Path, help="where to write the collected envelope (default: <id>.rvx)"
    )
    export.set_defaults(handler=_tenant_export)


def _tenant_create(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        tenant = client.create_tenant(args.name, kms_key_arn=args.kms_key_arn)
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


def _tenant_delete(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        if args.cancel:
            status = client.cancel_tenant_deletion(args.tenant)
        else:
            status = client.schedule_tenant_deletion(args.schedule, args.tenant)
    return Output(data=status_data(status), text=status_text(status))


def _tenant_disable(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        status = client.disable_tenant(args.tenant)
    return Output(data=status_data(status), text=status_text(status))


def _tenant_enable(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        status = client.enable_tenant(args.tenant)
    return Output(data=status_data(status), text=status_text(status))


def _tenant_export(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        if args.request is not None:
            try:
                pem = args.request.read_bytes()
            except OSError as exc:
                raise errors.InvalidArgument(_common.describe_os_error(exc)) from None
            export = client.request_key_export(pem, args.tenant)
            text = (
                f"key export {export.id} requested ({export.algorithm}, recipient "
                f"{export.recipient_fingerprint[:16]}); a platform admin approves it with\n"
                f"  reelvault tenant export-keys --tenant {export.tenant_id} --approve {export.id}"
            )
            envelope = None
        elif args.approve is not None:
            if args.tenant is None:
                raise errors.InvalidArgument("name the tenant (--tenant) whose export to approve")
            export = client.approve_key_export(args.tenant, args.approve)
            text = f"approved key export {export.id}; the tenant admin collects it once"
            envelope = None
        else:
            export, envelope = client.export_tenant_keys(args.collect, args.tenant)
            out = args.out or Path(f"{export.id}.rvx")
            fd = _files.create_private(out)
            with open(fd, "wb") as file:
                file.write(envelope)
            text = f"wrote the sealed key export to {out} (docs/key-export.md opens it)"
    data: dict[str, Any] = {
        "id": export.id,
        "tenant_id": export.tenant_id,
        "algorithm": export.algorithm,
        "recipient_fingerprint": export.recipient_fingerprint,
        "approved": export.approved_at is not None,
        "collected": export.collected_at is not None,
    }
    if envelope is not None:
        data["written"] = str(args.out or Path(f"{export.id}.rvx"))
    return Output(data=data, text=text)
