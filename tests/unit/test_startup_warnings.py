"""``serve`` warns, without refusing to start, about plaintext on a non-loopback address
and about a config file holding secrets that others may read."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from reelvault.config import Settings
from reelvault.startup_warnings import startup_warnings, warn_at_startup

SECRET = "s3cr3t-value-never-logged"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_plaintext_on_loopback_is_fine(host: str) -> None:
    assert startup_warnings(Settings(grpc_host=host), environ={}) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "vault.internal"])
def test_plaintext_elsewhere_names_the_tls_setting(host: str) -> None:
    (line,) = startup_warnings(Settings(grpc_host=host), environ={})
    assert host in line
    assert "REELVAULT_TLS_CERT_FILE" in line


def test_tls_on_any_address_is_fine(tmp_path: Path) -> None:
    settings = Settings(
        grpc_host="0.0.0.0", tls_cert_file=tmp_path / "c.pem", tls_key_file=tmp_path / "k.pem"
    )
    assert startup_warnings(settings, environ={}) == []


def _config(tmp_path: Path, content: str, mode: int) -> Path:
    path = tmp_path / "reelvault.toml"
    path.write_text(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("content", "secret"),
    [
        (
            f's3_access_key_id = "AKID"\ns3_secret_access_key = "{SECRET}"\n',
            "s3_secret_access_key",
        ),
        (f'database_url = "postgresql+psycopg://vault:{SECRET}@db/vault"\n', "database_url"),
    ],
)
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_readable_config_holding_secrets_says_chmod_600(
    tmp_path: Path, content: str, secret: str, mode: int
) -> None:
    path = _config(tmp_path, content, mode)
    settings = Settings.load({}, config_file=path)
    (line,) = startup_warnings(settings, path, environ={})
    assert str(path) in line
    assert secret in line
    assert f"chmod 600 {path}" in line
    assert SECRET not in line


def test_the_config_file_named_by_the_environment_is_checked(tmp_path: Path) -> None:
    path = _config(tmp_path, f's3_access_key_id = "A"\ns3_secret_access_key = "{SECRET}"\n', 0o644)
    (line,) = startup_warnings(Settings(), environ={"REELVAULT_CONFIG": str(path)})
    assert f"chmod 600 {path}" in line


@pytest.mark.parametrize(
    ("content", "mode"),
    [
        (f's3_access_key_id = "A"\ns3_secret_access_key = "{SECRET}"\n', 0o600),
        (f's3_access_key_id = "A"\ns3_secret_access_key = "{SECRET}"\n', 0o400),
        ('database_url = "postgresql+psycopg://vault@db/vault"\n', 0o644),
        ('s3_bucket = "videos"\n', 0o644),
    ],
)
def test_a_private_or_secret_free_config_is_fine(tmp_path: Path, content: str, mode: int) -> None:
    path = _config(tmp_path, content, mode)
    assert startup_warnings(Settings(), path, environ={}) == []


def test_warnings_are_logged_at_warning_level(tmp_path: Path) -> None:
    path = _config(tmp_path, f's3_access_key_id = "A"\ns3_secret_access_key = "{SECRET}"\n', 0o644)
    with capture_logs() as logs:
        warn_at_startup(Settings(grpc_host="0.0.0.0"), path)
    assert [entry["log_level"] for entry in logs] == ["warning", "warning"]
    assert SECRET not in repr(logs)


def test_a_password_in_a_query_parameter_counts_as_a_secret():
    from reelvault.startup_warnings import _has_password  # noqa: PLC0415

    assert _has_password("postgresql+psycopg://rv@db/reelvault?password=s3cret")
    assert _has_password("postgresql+psycopg://rv@db/reelvault?host=x&PGPASSWORD=s3cret")
    assert not _has_password("postgresql+psycopg://rv@db/reelvault?sslmode=require")
