"""``reelvault serve`` and ``reelvault dev``: run the service."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Final

from reelvault import allocator
from reelvault.cli._common import Groups, Output
from reelvault.config import CONFIG_FILE_ENV, Settings

__all__ = ["add_commands"]


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
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
