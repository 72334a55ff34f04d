"""Errors that say why: the cause of a dependency failure reaches the operator's log (never
a client, never with a password or a store's message), and the client-side TLS mistakes
each end in one line naming what to set."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import boto3
import grpc
import pytest
import structlog
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from reelvault.catalog import Database, db
from reelvault.catalog.db import describe_failure
from reelvault.cli import main
from reelvault.client import (
    TLS_CLIENT_CERT_ENV,
    TLS_CLIENT_KEY_ENV,
    TLS_ENV,
    TLS_ROOTS_ENV,
    Client,
)
from reelvault.errors import ConfigurationError, KeyUnavailable, Unavailable
from reelvault.keys import KmsRootKeyProvider, kms
from reelvault.storage import s3
from reelvault.storage.s3 import map_error
from reelvault.v1 import tenant_pb2_grpc


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, object]]]:
    """What the modules under test log. Their loggers get fresh proxies: one another test
    used after ``configure_logging`` (which caches loggers) would not see capture_logs."""
    with capture_logs() as captured:
        for module, name in ((db, "catalog"), (s3, "storage"), (kms, "keys")):
            monkeypatch.setattr(module, "_log", structlog.get_logger(f"reelvault.{name}"))
        yield captured


# -- the catalog ---------------------------------------------------------------------------


def test_an_unreachable_catalog_logs_the_drivers_reason_once_without_the_password(
    logs: list[dict[str, object]],
) -> None:
    password = "hunter2-secret"
    database = Database(f"postgresql+psycopg://reelvault:{password}@127.0.0.1:1/x", timeout=2)
    try:
        with (
            pytest.raises(Unavailable) as caught,
            database.transaction(readonly=True) as session,
        ):
            session.execute(text("SELECT 1"))
    finally:
        database.dispose()
    assert caught.value.message == "catalog database unavailable"  # what a client sees
    warnings = [line for line in logs if line["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "catalog database unavailable"
    assert "refused" in str(warnings[0]["cause"]).lower()
    assert str(warnings[0]["database"]).startswith("postgresql+psycopg://reelvault:***@127.0.0.1:1")
    assert password not in repr(logs)


def test_the_drivers_reason_never_carries_a_password() -> None:
    failure = OperationalError(
        "SELECT 1",
        {},
        Exception("connection failed: host=db user=rv password=s3cret\nFATAL:  no such user"),
    )
    assert describe_failure(failure) == (
        "connection failed: host=db user=rv password=*** FATAL: no such user"
    )
    wrapped = Unavailable("catalog database unavailable")
    wrapped.__cause__ = failure
    assert describe_failure(wrapped) == describe_failure(failure)
    assert describe_failure(Unavailable("object store unavailable")) is None


# -- the object store ----------------------------------------------------------------------


def _client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "Access Key AKIA-SECRET-MESSAGE is not valid"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


def test_a_store_failure_logs_its_code_status_and_operation_not_its_message(
    logs: list[dict[str, object]],
) -> None:
    error = map_error(_client_error("InvalidAccessKeyId", 403))
    assert isinstance(error, ConfigurationError)
    assert logs == [
        {
            "event": "object store request failed",
            "log_level": "warning",
            "operation": "PutObject",
            "aws_error_code": "InvalidAccessKeyId",
            "http_status": 403,
            "error": "ConfigurationError",
        }
    ]
    assert "AKIA-SECRET-MESSAGE" not in repr(logs)


def test_a_missing_object_is_not_a_warning(logs: list[dict[str, object]]) -> None:
    map_error(_client_error("NoSuchKey", 404, "GetObject"))
    assert logs == []


# -- the root key provider (AWS KMS, moto) --------------------------------------------------


@pytest.fixture
def kms_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("kms", region_name="us-east-1")


def test_a_wrong_kms_key_logs_the_aws_error_code_at_warning(
    kms_client: object, logs: list[dict[str, object]]
) -> None:
    wrong = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    provider = KmsRootKeyProvider(kms_client, wrong)  # type: ignore[arg-type]
    with pytest.raises(KeyUnavailable):
        provider.generate_key({"tenant": "t"})
    assert logs == [
        {
            "event": "AWS KMS request failed",
            "log_level": "warning",
            "operation": "GenerateDataKey",
            "aws_error_code": "NotFoundException",
            "http_status": 400,
        }
    ]


# -- client-side TLS mistakes ----------------------------------------------------------------


@dataclass
class Pki:
    ca_file: Path
    cert_pem: bytes
    key_pem: bytes
    client_cert_file: Path
    client_key_file: Path


def _issue(
    common_name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = _issue("reelvault test CA", None)
    cert_pem, key_pem = _pem(*_issue("127.0.0.1", ca))
    client_cert, client_key = _pem(*_issue("renderer-1", ca))
    pki = Pki(
        ca_file=directory / "ca.pem",
        cert_pem=cert_pem,
        key_pem=key_pem,
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client.key",
    )
    pki.ca_file.write_bytes(_pem(*ca)[0])
    pki.client_cert_file.write_bytes(client_cert)
    pki.client_key_file.write_bytes(client_key)
    return pki


def _server(pki: Pki, mode: str) -> Iterator[str]:
    """A server with no services: every call fails, and how it fails is the point."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tenant_pb2_grpc.add_TenantServiceServicer_to_server(
        tenant_pb2_grpc.TenantServiceServicer(),  # type: ignore[no-untyped-call]
        server,
    )
    if mode == "plaintext":
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [(pki.key_pem, pki.cert_pem)],
            root_certificates=pki.ca_file.read_bytes() if mode == "mtls" else None,
            require_client_auth=mode == "mtls",
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[str]:
    yield from _server(pki, "tls")


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[str]:
    yield from _server(pki, "mtls")


@pytest.fixture(scope="module")
def plaintext_server(pki: Pki) -> Iterator[str]:
    yield from _server(pki, "plaintext")


def _error(address: str, environ: dict[str, str]) -> str:
    client = Client(address, "rvk_test", timeout=10, environ=environ)
    with client, pytest.raises(Unavailable) as caught:
        client.list_tenants()
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith(f"cannot connect to {address}: ")
    return message


def test_a_plaintext_client_to_a_tls_server_is_told_to_set_tls(tls_server: str) -> None:
    assert f"set {TLS_ENV}=1 (or {TLS_ROOTS_ENV}" in _error(tls_server, {})


def test_a_tls_client_to_a_plaintext_server_is_told_to_unset_tls(
    plaintext_server: str, pki: Pki
) -> None:
    message = _error(plaintext_server, {TLS_ROOTS_ENV: str(pki.ca_file)})
    assert "does not speak TLS" in message
    assert f"unset {TLS_ENV}, {TLS_ROOTS_ENV}" in message


def test_an_untrusted_server_certificate_names_the_roots_variable(tls_server: str) -> None:
    message = _error(tls_server, {TLS_ENV: "1"})  # the system's roots: no test CA
    assert f"set {TLS_ROOTS_ENV} to the CA bundle" in message


def test_a_missing_client_certificate_is_told_to_set_one(mtls_server: str, pki: Pki) -> None:
    message = _error(mtls_server, {TLS_ROOTS_ENV: str(pki.ca_file)})
    assert f"set {TLS_CLIENT_CERT_ENV} and {TLS_CLIENT_KEY_ENV}" in message


def test_a_refused_connection_keeps_grpcs_own_reason() -> None:
    client = Client("127.0.0.1:1", timeout=5, environ={})
    with client, pytest.raises(Unavailable, match="Connection refused"):
        client.list_tenants()


def test_a_roots_file_holding_a_private_key_is_one_error_line_naming_it(
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_bytes(pki.ca_file.read_bytes() + pki.client_key_file.read_bytes())
    monkeypatch.setenv(TLS_ROOTS_ENV, str(roots))
    monkeypatch.setenv("REELVAULT_ADDR", "127.0.0.1:1")
    assert main(["tenant", "ls"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"reelvault: error: {TLS_ROOTS_ENV}: {roots} holds a private key; "
        "it must hold only certificates"
    ]
