"""``reelvault health``: ask a running service's standard health service, as probes do.

It connects exactly as the client commands do (``$REELVAULT_ADDR`` and the
``REELVAULT_TLS*`` variables, so TLS and mutual TLS work), needs no API key, and prints one
line. Exit 0 when the service answers ``SERVING``, 1 for any other answer or none.
"""

from __future__ import annotations

import argparse
import math

from reelvault.cli._common import EXIT_ERROR, EXIT_OK, Groups, Output
from reelvault.client import ADDR_ENV, Client

__all__ = ["add_commands"]

_DEFAULT_TIMEOUT = 5.0


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    health = groups.add_parser(
        "health",
        parents=[common],
        help="check that a running service is SERVING (exit 0) or not (exit 1)",
        description=(
            f"Calls grpc.health.v1.Health/Check on the service at ${ADDR_ENV}, with the same "
            "TLS settings as the client commands; no API key is needed."
        ),
    )
    health.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help='the service to ask about, e.g. reelvault.v1.AssetService (default "": the server)',
    )
    health.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=_DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long (default {_DEFAULT_TIMEOUT:g})",
    )
    health.set_defaults(handler=_health)


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return seconds


def _health(args: argparse.Namespace) -> Output:
    with Client(timeout=args.timeout) as client:
        status = client.check_health(args.service)
        addr = client.addr
    subject = f"{addr} {args.service}" if args.service else addr
    return Output(
        data={"addr": addr, "service": args.service, "status": status},
        text=f"{subject}: {status}",
        exit_code=EXIT_OK if status == "SERVING" else EXIT_ERROR,
    )
