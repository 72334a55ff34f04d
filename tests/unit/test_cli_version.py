"""``reelvault --version`` prints the installed package's version."""

from __future__ import annotations

from importlib import metadata

import pytest

from reelvault.cli import main


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"reelvault {metadata.version('reelvault')}\n"


def test_version_needs_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    # --version wins over the required COMMAND, as with argparse's own version action
    assert main(["--version", "asset"]) == 0
    assert capsys.readouterr().out.startswith("reelvault ")
