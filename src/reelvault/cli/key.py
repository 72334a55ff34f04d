"""``reelvault key``: the tenant KEK lifecycle through the service (tenant admins: their own
tenant; platform admins: ``--tenant``), docs/keys.md."""

from __future__ import annotations

import argparse
from typing import Any

from reelvault.cli import _common
from reelvault.cli._common import Groups, Output, table, when
from reelvault.client import ADDR_ENV, TOKEN_ENV
from reelvault.client_privacy import KeyStatus

__all__ = ["add_commands", "status_data", "status_text"]


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    key = groups.add_parser(
        "key",
        help="tenant key rotation, rewrap and states (tenant admin, platform admin)",
        description=(
            f"The tenant KEK lifecycle, through the service at ${ADDR_ENV} with the key in "
            f"${TOKEN_ENV}. Stored bytes are never rewritten."
        ),
    )
    commands = key.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[common], help=help_text)
        parser.add_argument(
            "--tenant", default=None, metavar="ID", help="the tenant (default: the key's own)"
        )
        return parser

    command("status", "versions, states, keys still to rewrap").set_defaults(handler=_status)
    command("rotate", "a new active version (the old one decrypts)").set_defaults(handler=_rotate)
    command("rewrap", "move every data and subject key to the active version").set_defaults(
        handler=_rewrap
    )
    for name, help_text, handler in (
        ("disable", "stop all use of a version (reversible)", _disable),
        ("enable", "let a disabled version decrypt again", _enable),
        ("min-version", "refuse decryption below this version", _min_version),
    ):
        parser = command(name, help_text)
        parser.add_argument("version", type=int, metavar="VERSION")
        parser.set_defaults(handler=handler)
    root = commands.add_parser(
        "rewrap-root",
        parents=[common],
        help="after a root key rotation: rewrap every tenant's KEKs (platform admin)",
    )
    root.set_defaults(handler=_rewrap_root)


def status_data(status: KeyStatus) -> dict[str, Any]:
    return {
        "tenant_id": status.tenant_id,
        "state": status.state,
        "min_decryption_version": status.min_decryption_version,
        "deletion_due_at": status.deletion_due_at.isoformat() if status.deletion_due_at else None,
        "kms_key_arn": status.kms_key_arn or None,
        "keys_to_rewrap": dict(status.keys_to_rewrap),
        "versions": [
            {
                "version": v.version,
                "state": v.state,
                "root_key_id": v.root_key_id,
                "created_at": v.created_at.isoformat(),
                "state_changed_at": v.state_changed_at.isoformat(),
            }
            for v in status.versions
        ],
    }


def status_text(status: KeyStatus) -> str:
    head = f"tenant {status.tenant_id}: {status.state}"
    if status.deletion_due_at:
        head += f", deletion due {when(status.deletion_due_at)}"
    if status.kms_key_arn:
        head += f", KEKs under the tenant's KMS key {status.kms_key_arn}"
    head += f"; minimum decryption version {status.min_decryption_version}"
    pending = ", ".join(f"{k} {n}" for k, n in sorted(status.keys_to_rewrap.items()) if n)
    head += f"; to rewrap: {pending or 'none'}"
    rows = [
        (str(v.version), v.state, v.root_key_id, when(v.created_at), when(v.state_changed_at))
        for v in status.versions
    ]
    return (
        head
        + "\n"
        + table(("VERSION", "STATE", "ROOT KEY", "CREATED", "CHANGED"), rows, empty="no versions")
    )


def _show(status: KeyStatus) -> Output:
    return Output(data=status_data(status), text=status_text(status))


def _status(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        return _show(client.key_status(args.tenant))


def _rotate(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        return _show(client.rotate_tenant_key(args.tenant))


def _rewrap(args: argparse.Namespace) -> Output:
    moved: dict[str, int] = {}
    with _common.client() as client:
        for step in client.rewrap_tenant(args.tenant):
            moved[step.kind] = step.moved
            if not args.json:
                state = "done" if step.done else "..."
                print(f"{step.kind}: {step.moved} keys moved {state}", flush=True)
        status = client.key_status(args.tenant)
    text = "rewrap complete: " + ", ".join(f"{k} {n}" for k, n in sorted(moved.items()))
    return Output(data={"moved": moved, "status": status_data(status)}, text=text)


def _disable(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        return _show(client.disable_key_version(args.version, args.tenant))


def _enable(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        return _show(client.enable_key_version(args.version, args.tenant))


def _min_version(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        return _show(client.set_min_decryption_version(args.version, args.tenant))


def _rewrap_root(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        keks, pseudonyms = client.rewrap_root_keys()
    return Output(
        data={"kek_versions": keks, "pseudonym_keys": pseudonyms},
        text=f"rewrapped {keks} KEK versions and {pseudonyms} pseudonym keys under the root key",
    )
