"""TLS and mutual TLS, with a throwaway CA, server and client certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2
from rpc_harness import CHANNEL_OPTIONS, ServerThread, Stubs

from reelvault.auth import Role
from reelvault.client import (
    TLS_CLIENT_CERT_ENV,
    TLS_CLIENT_KEY_ENV,
    TLS_ENV,
    TLS_ROOTS_ENV,
    Asset,
    Client,
)
from reelvault.config import Settings
from reelvault.errors import ConfigurationError, Unavailable
from reelvault.rpc import create_server
from reelvault.v1 import asset_pb2

pytestmark = pytest.mark.db


@dataclass
class Issued:
    key_pem: bytes
    cert_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    common_name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer[0].subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    signing_key = issuer[1] if issuer else key
    return builder.sign(signing_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    return Issued(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
    )


@dataclass
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    stranger: Issued  # a client certificate from another CA
    cert_file: Path
    key_file: Path
    ca_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = _issue("reelvault test CA", None)
    server = _issue("localhost", ca, server=True)
    client = _issue("renderer-1", ca)
    other_ca = _issue("someone else's CA", None)
    stranger = _issue("stranger", other_ca)
    directory = tmp_path_factory.mktemp("pki")
    pki = Pki(
        ca=_pem(*ca),
        server=_pem(*server),
        client=_pem(*client),
        stranger=_pem(*stranger),
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
        ca_file=directory / "ca.pem",
    )
    pki.cert_file.write_bytes(pki.server.cert_pem)
    pki.key_file.write_bytes(pki.server.key_pem)
    pki.ca_file.write_bytes(pki.ca.cert_pem)
    return pki


def _serve(vault, **tls) -> Iterator[ServerThread]:
    thread = ServerThread(vault, Settings(grpc_port=0, shutdown_grace=1.0, **tls))
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture
def tls_server(vault, pki: Pki) -> Iterator[ServerThread]:
    yield from _serve(vault, tls_cert_file=pki.cert_file, tls_key_file=pki.key_file)


@pytest.fixture
def mtls_server(vault, pki: Pki) -> Iterator[ServerThread]:
    yield from _serve(
        vault,
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        tls_client_ca_file=pki.ca_file,
    )


def _healthy(channel: grpc.Channel) -> bool:
    try:
        response = Stubs(channel).health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _secure(server: ServerThread, pki: Pki, client: Issued | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(server.address, credentials, options=CHANNEL_OPTIONS)


def test_tls_serves_clients_that_trust_the_ca(tls_server, pki, acme):
    with _secure(tls_server, pki) as channel:
        assert _healthy(channel)
        Stubs(channel).assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md())


def test_tls_refuses_plaintext_and_untrusting_clients(tls_server, pki):
    with tls_server.channel() as plaintext:
        assert not _healthy(plaintext)
    untrusting = grpc.ssl_channel_credentials(root_certificates=pki.stranger.cert_pem)
    with grpc.secure_channel(tls_server.address, untrusting) as channel:
        assert not _healthy(channel)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(mtls_server, pki):
    with _secure(mtls_server, pki, pki.client) as channel:
        assert _healthy(channel)
    with _secure(mtls_server, pki) as channel:  # no client certificate
        assert not _healthy(channel)
    with _secure(mtls_server, pki, pki.stranger) as channel:  # signed by another CA
        assert not _healthy(channel)


def test_unreadable_or_non_pem_tls_files_are_configuration_errors(vault, pki, tmp_path, server):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cases = [
        ({"tls_cert_file": tmp_path / "missing.pem", "tls_key_file": pki.key_file}, "CERT"),
        ({"tls_cert_file": pki.cert_file, "tls_key_file": garbage}, "KEY"),
        (
            {
                "tls_cert_file": pki.cert_file,
                "tls_key_file": pki.key_file,
                "tls_client_ca_file": garbage,
            },
            "CLIENT_CA",
        ),
    ]
    for tls, variable in cases:
        settings = Settings(grpc_port=0, **tls)
        with pytest.raises(ConfigurationError, match=f"REELVAULT_TLS_{variable}"):
            server.run(create_server(vault, settings))


def test_a_port_in_use_is_a_configuration_error(vault, server):
    settings = Settings(grpc_port=server.port)
    with pytest.raises(ConfigurationError, match="REELVAULT_GRPC_PORT"):
        server.run(create_server(vault, settings))


# --- the client, configured as the CLI is: by REELVAULT_TLS* variables ------------------


@pytest.fixture
def client_files(pki: Pki, tmp_path: Path) -> dict[str, Path]:
    files = {"cert": tmp_path / "client.pem", "key": tmp_path / "client.key"}
    files["cert"].write_bytes(pki.client.cert_pem)
    files["key"].write_bytes(pki.client.key_pem)
    return files


def _list_with(server: ServerThread, token: str, environ: dict[str, str]) -> list[Asset]:
    with Client(server.address, token, timeout=10, environ=environ) as client:
        return list(client.list())


def test_the_client_verifies_the_server_with_the_roots_its_environment_names(tls_server, pki, acme):
    token = acme.tokens[Role.INGEST]
    assert _list_with(tls_server, token, {TLS_ROOTS_ENV: str(pki.ca_file)}) == []
    with pytest.raises(Unavailable):  # plaintext to a TLS server
        _list_with(tls_server, token, {})
    with pytest.raises(Unavailable):  # the system's roots do not know the test CA
        _list_with(tls_server, token, {TLS_ENV: "1"})


def test_the_client_presents_the_certificate_its_environment_names(
    mtls_server, pki, acme, client_files
):
    token = acme.tokens[Role.INGEST]
    environ = {
        TLS_ROOTS_ENV: str(pki.ca_file),
        TLS_CLIENT_CERT_ENV: str(client_files["cert"]),
        TLS_CLIENT_KEY_ENV: str(client_files["key"]),
    }
    assert _list_with(mtls_server, token, environ) == []
    with pytest.raises(Unavailable):  # TLS, but no client certificate
        _list_with(mtls_server, token, {TLS_ROOTS_ENV: str(pki.ca_file)})


def test_explicit_tls_arguments_win_over_the_environment(tls_server, pki, acme):
    broken = {TLS_ROOTS_ENV: "/nonexistent/ca.pem"}
    with Client(
        tls_server.address,
        acme.tokens[Role.INGEST],
        root_certificates=pki.ca.cert_pem,
        timeout=10,
        environ=broken,
    ) as client:
        assert list(client.list()) == []
