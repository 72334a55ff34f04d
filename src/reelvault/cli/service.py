"""``reelvault serve`` and ``reelvault dev``: run the service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Final

from reelvault import allocator
from reelvault.cli._common import EXIT_ERROR, EXIT_OK, Groups, Output
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
    serve.add_argument(
        "--check",
        action="store_true",
        help="run the start-up checks (catalog, bucket, root key provider, TLS files), print "
        "the effective settings with secrets masked, and exit: 0 if the service would start",
    )
    serve.set_defaults(handler=_serve)

    origin = groups.add_parser(
        "origin",
        parents=[common],
        help="run the HTTP origin that serves signed distribution URLs (docs/urls.md)",
        description=(
            "Run the HTTP origin (uvicorn, REELVAULT_ORIGIN_WORKERS processes) on\n"
            "REELVAULT_ORIGIN_HOST:REELVAULT_ORIGIN_PORT until SIGTERM or SIGINT. It shares the\n"
            "catalog, the object store, the root key provider and the audit log with serve;\n"
            "the same settings apply (--config, REELVAULT_*)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    origin.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML file of settings (default: ${CONFIG_FILE_ENV}, else none)",
    )
    origin.set_defaults(handler=_origin)

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
    if args.check:
        return _check(settings)
    asyncio.run(serve(settings, config_file=args.config))
    return Output(data={"stopped": True}, text="")


def _origin(args: argparse.Namespace) -> Output:
    from reelvault.logging import configure_logging  # noqa: PLC0415 - startup time
    from reelvault.origin.server import run  # noqa: PLC0415 - startup time

    settings = Settings.load(config_file=args.config)
    configure_logging(settings.log_level, settings.log_format)
    run(settings, config_file=str(args.config) if args.config else None)
    return Output(data={"stopped": True}, text="")


def _check(settings: Settings) -> Output:
    """``serve --check``: the settings on stdout, one ``reelvault: error:`` line per failed
    check on stderr (the causes are in those lines, so only errors are logged)."""
    from reelvault import preflight  # noqa: PLC0415 - startup time
    from reelvault.logging import configure_logging  # noqa: PLC0415 - startup time

    configure_logging("error", settings.log_format)
    report = preflight.check(settings)
    for failure in report.failures:
        print(f"reelvault: error: {failure.line}", file=sys.stderr)
    rows = preflight.effective_settings(settings)
    outcome = report.outcome()
    width = max(len(name) for name, _ in [*rows, *outcome.items()])
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    lines += ["", *(f"{name.ljust(width)}  {result}" for name, result in outcome.items())]
    return Output(
        data={"ok": report.ok, "settings": dict(rows), "checks": outcome},
        text="\n".join(lines),
        exit_code=EXIT_OK if report.ok else EXIT_ERROR,
    )


def _dev(args: argparse.Namespace) -> Output:
    allocator.tune()  # before any thread starts
    from reelvault import dev  # noqa: PLC0415 - startup time

    settings = Settings.load(config_file=args.config)
    dev.run(settings, json_output=args.json)
    return Output(data={"stopped": True}, text="reelvault dev stopped")
