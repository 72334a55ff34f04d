"""The client's TLS settings from REELVAULT_TLS* variables: every mistake is a clear
ConfigurationError naming the variable, before any connection is tried."""

from __future__ import annotations

from pathlib import Path

import pytest

from reelvault.cli import main
from reelvault.client import (
    TLS_CLIENT_CERT_ENV,
    TLS_CLIENT_KEY_ENV,
    TLS_ENV,
    TLS_ROOTS_ENV,
    Client,
)
from reelvault.errors import ConfigurationError

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(PEM)
    return path


@pytest.mark.parametrize("value", ["1", "true", "YES", "on", "0", "false", "", "off"])
def test_the_tls_flag_accepts_the_usual_spellings(value: str) -> None:
    Client("127.0.0.1:1", environ={TLS_ENV: value}).close()


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({TLS_ENV: "maybe"}, TLS_ENV),
        ({TLS_ROOTS_ENV: "/nonexistent/ca.pem"}, TLS_ROOTS_ENV),
        ({TLS_CLIENT_CERT_ENV: "PEM"}, TLS_CLIENT_KEY_ENV),  # one without the other
        ({TLS_CLIENT_KEY_ENV: "PEM"}, TLS_CLIENT_CERT_ENV),
        ({TLS_CLIENT_CERT_ENV: "PEM", TLS_CLIENT_KEY_ENV: "/nonexistent"}, TLS_CLIENT_KEY_ENV),
    ],
)
def test_mistakes_name_the_variable(environ: dict[str, str], variable: str, pem: Path) -> None:
    environ = {k: str(pem) if v == "PEM" else v for k, v in environ.items()}
    with pytest.raises(ConfigurationError, match=variable):
        Client("127.0.0.1:1", environ=environ)


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    der = tmp_path / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(ConfigurationError, match="not a PEM file"):
        Client("127.0.0.1:1", environ={TLS_ROOTS_ENV: str(der)})


def test_the_cli_reports_a_bad_tls_setting_as_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TLS_ROOTS_ENV, "/nonexistent/ca.pem")
    monkeypatch.setenv("REELVAULT_ADDR", "127.0.0.1:1")
    assert main(["asset", "ls"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("reelvault: error: REELVAULT_TLS_ROOTS_FILE: cannot read")
