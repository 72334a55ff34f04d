"""Warnings ``serve`` logs at start for a configuration that works but exposes something.

Neither stops the start: a plaintext listener on a private network behind a TLS-terminating
proxy, or a config file in a directory only the service can enter, may be deliberate. Each
warning says what is exposed and the one thing to change.

* gRPC without TLS on an address other than loopback: API keys and video cross the network
  in the clear.
* A config file holding a secret (``s3_secret_access_key``, a ``database_url`` with a
  password) that its group or others may read.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from reelvault.config import CONFIG_FILE_ENV, Settings

__all__ = ["startup_warnings", "warn_at_startup"]

_log = structlog.get_logger("reelvault.startup")

_SECRET_SETTINGS: Final = frozenset(
    item.name for item in dataclasses.fields(Settings) if item.metadata["secret"]
)


def startup_warnings(
    settings: Settings,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per exposure in ``settings`` and the config file they were read from.

    Args:
        config_file: the file ``Settings.load`` was given; None: ``$REELVAULT_CONFIG``, as
            there.
    """
    env = os.environ if environ is None else environ
    if config_file is None and (named := env.get(CONFIG_FILE_ENV, "").strip()):
        config_file = named
    found = []
    if not settings.tls_enabled and not _is_loopback(settings.grpc_host):
        found.append(
            f"gRPC listens without TLS on {settings.grpc_host}, which is not a loopback "
            "address: API keys and video cross the network unencrypted; set "
            "REELVAULT_TLS_CERT_FILE and REELVAULT_TLS_KEY_FILE"
        )
    if config_file is not None:
        path = Path(config_file)
        secrets = _secrets_in(path)
        mode = _mode(path)
        if secrets and mode is not None and mode & (stat.S_IRGRP | stat.S_IROTH):
            found.append(
                f"config file {path} holds secrets ({', '.join(secrets)}) and its group or "
                f"others may read it (mode {mode:04o}): chmod 600 {path}"
            )
    return found


def warn_at_startup(settings: Settings, config_file: str | os.PathLike[str] | None = None) -> None:
    """Log each of :func:`startup_warnings` at warning level."""
    for line in startup_warnings(settings, config_file):
        _log.warning(line)


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _secrets_in(path: Path) -> list[str]:
    """The names of the secret settings the file sets, in the file's order."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):  # Settings.load has reported it already
        return []
    return [key for key, value in document.items() if value and _is_secret(key, value)]


def _is_secret(key: str, value: object) -> bool:
    if key == "database_url":
        return isinstance(value, str) and _has_password(value)
    return key in _SECRET_SETTINGS


def _has_password(url: str) -> bool:
    """A password in the user part or in any ``*password*`` query parameter."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    return bool(parsed.password) or any(
        "password" in name.lower() and value for name, value in parsed.query.items()
    )


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
