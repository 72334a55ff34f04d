"""The installed package's version, for ``reelvault --version`` and the ``listening`` line."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_version"]


def package_version() -> str:
    """The version pip installed; ``"unknown"`` when run from a tree that was never installed."""
    try:
        return metadata.version("reelvault")
    except metadata.PackageNotFoundError:
        return "unknown"
