"""`reelvault apikey bootstrap`: the first platform-admin key of a deployment, made in the
catalog without a running service."""

from __future__ import annotations

import json
import os
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


@pytest.fixture
def empty_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory and no setting naming a deployment."""
    for name in list(os.environ):
        if name.startswith("REELVAULT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_refuses_the_dev_defaults_in_an_empty_directory(
    empty_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue #11: this quietly made .reelvault/catalog.sqlite3 here, and a key the
    production service rejected."""
    assert main(["apikey", "bootstrap", "--out", "admin.token"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reelvault: error: apikey bootstrap ")
    assert "REELVAULT_DATABASE_URL" in err and "--dev" in err
    assert list(empty_cwd.iterdir()) == []  # no catalog, no secret file


def test_dev_allows_the_dev_defaults_and_says_so(
    empty_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apikey", "bootstrap", "--dev", "--out", "admin.token"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("reelvault apikey bootstrap: catalog sqlite:///.reelvault/")
    token = (empty_cwd / "admin.token").read_text().strip()
    url = f"sqlite:///{empty_cwd / '.reelvault' / 'catalog.sqlite3'}"
    assert authenticate(url, token) is Role.PLATFORM_ADMIN


def test_a_config_naming_the_catalog_is_enough_and_is_announced(
    empty_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{empty_cwd / 'prod.sqlite3'}"
    config = empty_cwd / "reelvault.toml"
    config.write_text(
        f'database_url = "{url}"\nroot_key_provider = "aws-kms"\n'
        'kms_key_id = "alias/prod"\ns3_bucket = "prod-media"\n'
    )
    assert main(["apikey", "bootstrap", "--config", str(config), "--json"]) == 0
    printed = capsys.readouterr()
    assert printed.err == (
        f"reelvault apikey bootstrap: catalog {url}, bucket prod-media at AWS S3, "
        "root keys aws-kms key alias/prod\n"
    )
    assert authenticate(url, json.loads(printed.out)["secret"]) is Role.PLATFORM_ADMIN


def test_the_announced_catalog_hides_its_password(
    empty_cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "REELVAULT_DATABASE_URL",
        "postgresql+psycopg://admin:hunter2-db-pass@127.0.0.1:1/vault?connect_timeout=3",
    )
    assert main(["apikey", "bootstrap", "--out", "admin.token"]) == 1
    err = capsys.readouterr().err
    assert "reelvault apikey bootstrap: catalog postgresql+psycopg://admin:***@" in err
    assert "hunter2" not in err


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_database_url_does_not_name_the_catalog(
    empty_cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """REELVAULT_DATABASE_URL="" reads as unset: it named nothing, and the command made
    .reelvault/catalog.sqlite3 here."""
    monkeypatch.setenv("REELVAULT_DATABASE_URL", value)
    assert main(["apikey", "bootstrap", "--out", "admin.token"]) == 1
    err = capsys.readouterr().err
    assert "would act on the dev defaults" in err
    assert list(empty_cwd.iterdir()) == []  # no catalog, no secret file


def test_an_empty_database_url_in_the_environment_hides_the_configs(
    empty_cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment's empty value wins over the file's, so the defaults would be used."""
    config = empty_cwd / "reelvault.toml"
    config.write_text(f'database_url = "sqlite:///{empty_cwd / "prod.sqlite3"}"\n')
    monkeypatch.setenv("REELVAULT_DATABASE_URL", "")
    assert main(["apikey", "bootstrap", "--config", str(config), "--out", "admin.token"]) == 1
    assert "would act on the dev defaults" in capsys.readouterr().err
    assert sorted(path.name for path in empty_cwd.iterdir()) == ["reelvault.toml"]
