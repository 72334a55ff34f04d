"""`reelvault apikey bootstrap`: the first platform-admin key of a deployment, made in the
catalog without a running service."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from reelvault.auth import ApiKeys, Role
from reelvault.catalog import Database
from reelvault.cli import main
from reelvault.clock import SystemClock
from reelvault.errors import Unauthenticated


def authenticate(url: str, token: str) -> Role:
    database = Database(url)
    try:
        return ApiKeys(database, SystemClock()).authenticate(token).role
    finally:
        database.dispose()


def test_writes_a_working_platform_admin_secret_to_a_private_file(
    catalog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "admin.token"
    assert main(["apikey", "bootstrap", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    token = out.read_text().strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert token not in printed  # with --out the secret is only in the file
    # the catalog did not exist before: the command migrated it
    assert authenticate(catalog_url, token) is Role.PLATFORM_ADMIN


def test_never_overwrites_a_file_and_makes_no_key_then(
    catalog_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "admin.token"
    out.write_text("keep me\n")
    assert main(["apikey", "bootstrap", "--out", str(out)]) == 1
    assert "File exists" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    assert not catalog_path.exists()  # nothing was created


def test_json_prints_the_secret_once_when_no_file_is_given(
    catalog_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apikey", "bootstrap", "--json", "--description", "ops on-call"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["api_key"]["role"] == "platform-admin"
    assert data["api_key"]["tenant_id"] is None
    assert data["api_key"]["description"] == "ops on-call"
    assert authenticate(catalog_url, data["secret"]) is Role.PLATFORM_ADMIN


def test_each_run_makes_a_new_independent_key(
    catalog_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = []
    for _ in range(2):
        assert main(["apikey", "bootstrap", "--json"]) == 0
        secrets.append(json.loads(capsys.readouterr().out)["secret"])
    assert secrets[0] != secrets[1]
    database = Database(catalog_url)
    try:
        keys = ApiKeys(database, SystemClock())
        first = keys.authenticate(secrets[0])
        keys.revoke(first.key_id)
        with pytest.raises(Unauthenticated):
            keys.authenticate(secrets[0])
        assert keys.authenticate(secrets[1]).role is Role.PLATFORM_ADMIN
    finally:
        database.dispose()
