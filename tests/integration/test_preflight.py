"""Start-up checks against real dependencies: SeaweedFS, the catalog (PostgreSQL when
REELVAULT_TEST_DATABASE_URL is set), AWS KMS (moto, in process) and TLS files made here.

What an operator depends on: ``serve --check`` and ``serve`` stop with one line naming the
setting and the cause, never create the bucket, never print a secret, and leave nothing
behind in the bucket when everything is fine.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws

from reelvault import preflight
from reelvault.catalog import Database
from reelvault.cli import main
from reelvault.config import Settings
from reelvault.errors import ConfigurationError, KeyUnavailable, Unavailable
from reelvault.keys.local import init_keyring
from reelvault.rpc.server import serve
from reelvault.storage.seaweed import SeaweedServer

TEST_DATABASE_URL_ENV = "REELVAULT_TEST_DATABASE_URL"


@pytest.fixture
def bucket(seaweed: SeaweedServer) -> str:
    name = f"preflight-{secrets.token_hex(4)}"
    seaweed.object_store(name, create=True)
    return name


@pytest.fixture
def environ(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seaweed: SeaweedServer, bucket: str
) -> dict[str, str]:
    """A good configuration, as REELVAULT_* variables (what serve and serve --check read)."""
    for name in list(os.environ):
        if name.startswith("REELVAULT_"):
            monkeypatch.delenv(name)
    init_keyring(tmp_path / "keyring.json")
    values = {
        "REELVAULT_DATA_DIR": str(tmp_path),
        "REELVAULT_S3_ENDPOINT_URL": seaweed.endpoint_url,
        "REELVAULT_S3_BUCKET": bucket,
        "REELVAULT_S3_REGION": seaweed.region,
        "REELVAULT_S3_ACCESS_KEY_ID": seaweed.access_key,
        "REELVAULT_S3_SECRET_ACCESS_KEY": seaweed.secret_key,
        "REELVAULT_S3_MAX_ATTEMPTS": "1",
        "REELVAULT_GRPC_PORT": "0",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _check(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, list[str]]:
    code = main(["serve", "--check", "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err.strip().splitlines()


def _bucket_exists(seaweed: SeaweedServer, name: str) -> bool:
    client = seaweed.object_store(name, create=False).client
    try:
        client.head_bucket(Bucket=name)
    except ClientError:
        return False
    return True


def test_a_good_configuration_passes_and_leaves_nothing_behind(
    environ: dict[str, str], seaweed: SeaweedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, errors = _check(capsys)
    assert (code, errors) == (0, [])
    assert report["ok"] is True
    assert report["checks"] == dict.fromkeys(preflight.CHECKS, "ok")
    assert report["settings"]["REELVAULT_S3_BUCKET"] == environ["REELVAULT_S3_BUCKET"]
    assert report["settings"]["REELVAULT_S3_SECRET_ACCESS_KEY"] == "********"
    store = seaweed.object_store(environ["REELVAULT_S3_BUCKET"], create=False)
    assert list(store.list_keys("t/.probe/")) == []


def test_the_effective_settings_never_show_a_secret(
    environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--check"]) == 0
    out = capsys.readouterr().out
    assert environ["REELVAULT_S3_SECRET_ACCESS_KEY"] not in out
    assert "REELVAULT_KEYRING" in out
    assert out.strip().splitlines()[-1].split() == ["key_provider", "ok"]


def test_a_missing_bucket_is_named_and_never_created(
    environ: dict[str, str],
    seaweed: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = f"missing-{secrets.token_hex(4)}"
    monkeypatch.setenv("REELVAULT_S3_BUCKET", missing)
    code, report, errors = _check(capsys)
    assert code == 1
    assert len(errors) == 1
    assert errors[0].startswith("reelvault: error: store: REELVAULT_S3_BUCKET: bucket")
    assert "does not exist" in errors[0]
    assert report["checks"]["catalog"] == "ok"
    assert report["checks"]["key_provider"] == "ok"
    assert not _bucket_exists(seaweed, missing)


def test_serve_refuses_to_start_on_a_missing_bucket(
    environ: dict[str, str],
    seaweed: SeaweedServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = f"missing-{secrets.token_hex(4)}"
    monkeypatch.setenv("REELVAULT_S3_BUCKET", missing)
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("reelvault: error: start-up check failed: store: REELVAULT_S3_BUCKET")
    assert "Traceback" not in err
    assert "listening" not in err
    assert not _bucket_exists(seaweed, missing)


def test_refused_credentials_are_named_without_the_secret(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("REELVAULT_S3_SECRET_ACCESS_KEY", wrong)
    code, report, errors = _check(capsys)
    assert code == 1
    assert len(errors) == 1
    assert "REELVAULT_S3_ACCESS_KEY_ID, REELVAULT_S3_SECRET_ACCESS_KEY" in errors[0]
    assert "AWS error code" in errors[0]
    assert wrong not in json.dumps(report) + "".join(errors)


# -- the root key provider: AWS KMS (moto) -----------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


def _kms_settings(tmp_path: Path, key_id: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        root_key_provider="aws-kms",
        kms_key_id=key_id,
        kms_region="us-east-1",
    )


def test_a_wrong_kms_key_is_named_with_the_aws_error_code(aws: None, tmp_path: Path) -> None:
    wrong = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    vault = preflight.open_vault(_kms_settings(tmp_path, wrong))
    try:
        with pytest.raises(KeyUnavailable, match="REELVAULT_KMS_KEY_ID") as caught:
            preflight.check_key_provider(vault.root, _kms_settings(tmp_path, wrong))
    finally:
        vault.close()
    assert "AWS error code NotFoundException" in caught.value.message
    assert "\n" not in caught.value.message


def test_a_usable_kms_key_passes(aws: None, tmp_path: Path) -> None:
    arn = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    settings = _kms_settings(tmp_path, arn)
    vault = preflight.open_vault(settings)
    try:
        preflight.check_key_provider(vault.root, settings)
    finally:
        vault.close()


# -- TLS files ---------------------------------------------------------------------------


def _self_signed(common_name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "other_key", "ca")}
    cert, key = _self_signed("localhost")
    ca, _ = _self_signed("reelvault test CA")
    _, other_key = _self_signed("someone else")
    files["cert"].write_bytes(cert)
    files["key"].write_bytes(key)
    files["other_key"].write_bytes(other_key)
    files["ca"].write_bytes(ca)
    return files


def test_matching_tls_files_pass(tls_files: dict[str, Path]) -> None:
    preflight.check_tls(
        Settings(
            tls_cert_file=tls_files["cert"],
            tls_key_file=tls_files["key"],
            tls_client_ca_file=tls_files["ca"],
        )
    )


def test_a_certificate_that_does_not_match_its_key_is_named(
    environ: dict[str, str],
    tls_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REELVAULT_TLS_CERT_FILE", str(tls_files["cert"]))
    monkeypatch.setenv("REELVAULT_TLS_KEY_FILE", str(tls_files["other_key"]))
    code, report, errors = _check(capsys)
    assert code == 1
    assert errors == [
        "reelvault: error: tls: REELVAULT_TLS_CERT_FILE, REELVAULT_TLS_KEY_FILE: the "
        f"certificate in {tls_files['cert']} does not match the private key in "
        f"{tls_files['other_key']}"
    ]
    assert report["checks"]["store"] == "ok"


@pytest.mark.parametrize(
    ("ca_content", "problem"),
    [("key", "holds a private key"), ("nothing", "holds no PEM certificate")],
)
def test_a_client_ca_file_must_hold_certificates_only(
    tls_files: dict[str, Path], tmp_path: Path, ca_content: str, problem: str
) -> None:
    ca = tmp_path / "bundle.pem"
    if ca_content == "key":
        ca.write_bytes(tls_files["ca"].read_bytes() + tls_files["other_key"].read_bytes())
    else:
        ca.write_bytes(b"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n")
    settings = Settings(
        tls_cert_file=tls_files["cert"], tls_key_file=tls_files["key"], tls_client_ca_file=ca
    )
    with pytest.raises(ConfigurationError) as caught:
        preflight.check_tls(settings)
    assert caught.value.message == f"REELVAULT_TLS_CLIENT_CA_FILE: {ca} {problem}" + (
        "; it must hold only CA certificates" if ca_content == "key" else ""
    )


# -- the catalog -------------------------------------------------------------------------


def test_a_sqlite_catalog_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{blocker}/sub/catalog.db")
    with pytest.raises(ConfigurationError, match=r"^REELVAULT_DATABASE_URL: cannot create"):
        preflight.open_vault(settings)


def test_a_wrong_postgresql_database_name_is_named_without_the_password(tmp_path: Path) -> None:
    url = os.environ.get(TEST_DATABASE_URL_ENV)
    if not url or not url.startswith("postgresql"):
        pytest.skip(f"{TEST_DATABASE_URL_ENV} does not name a PostgreSQL database")
    password = "pw-" + secrets.token_hex(6)
    wrong = sa.make_url(url).set(database=f"no_such_db_{secrets.token_hex(4)}", password=password)
    settings = Settings(data_dir=tmp_path, database_url=wrong.render_as_string(hide_password=False))
    with pytest.raises(Unavailable) as caught:
        preflight.open_vault(settings)
    message = caught.value.message
    assert message.startswith("REELVAULT_DATABASE_URL (")
    assert f'database "{wrong.database}" does not exist' in message
    assert password not in message
    assert "\n" not in message


def test_serve_reports_an_unreachable_catalog_in_one_line(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "pw-" + secrets.token_hex(6)
    monkeypatch.setenv(
        "REELVAULT_DATABASE_URL", f"postgresql+psycopg://reelvault:{password}@127.0.0.1:1/x"
    )
    monkeypatch.setenv("REELVAULT_CATALOG_TIMEOUT", "2")
    with pytest.raises(Unavailable) as caught:
        asyncio.run(serve(Settings.load()))
    message = caught.value.message
    assert message.startswith("REELVAULT_DATABASE_URL (postgresql+psycopg://reelvault:***@")
    assert "refused" in message.lower()
    assert password not in message + capsys.readouterr().err


def test_check_never_migrates_and_a_newer_schema_is_one_line(
    environ: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """``serve --check`` looks and never changes what it checks (a new version's check in
    a deployment pipeline must not migrate production); a catalog at a revision this
    version does not know stops ``--check`` and ``serve`` with one line each, no alembic
    traceback (review findings)."""
    database = Database(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    try:
        code, _report, errors = _check(capsys)
        assert (code, errors) == (0, []), errors
        assert database.schema_revision() is None  # nothing migrated
        database.migrate()
        with database.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
        code, _report, errors = _check(capsys)
        assert code == 1
        assert len(errors) == 1 and "unknown to this reelvault" in errors[0], errors
        assert main(["serve"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert "newer version" in err[-1] and err[-1].startswith("reelvault: error:"), err
        assert not any("Traceback" in line for line in err), err
    finally:
        database.dispose()
