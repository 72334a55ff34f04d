"""What an operator sees of a running service: the KEK version on an asset, a key's last use,
the access line's bytes, asset and client identity, reflection switched off, and
``reelvault health`` over plaintext, TLS and mutual TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rpc_harness import CHANNEL_OPTIONS, ServerThread, Stubs, Tenancy, wait_for
from structlog.testing import capture_logs
from test_rpc_tls import Pki, pki  # noqa: F401 - the certificates fixture

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.cli import main
from reelvault.config import Settings
from reelvault.v1 import apikey_pb2, asset_pb2

pytestmark = pytest.mark.db

_CLIENT_ENV = (
    "REELVAULT_ADDR",
    "REELVAULT_TOKEN",
    "REELVAULT_TLS",
    "REELVAULT_TLS_ROOTS_FILE",
    "REELVAULT_TLS_CLIENT_CERT_FILE",
    "REELVAULT_TLS_CLIENT_KEY_FILE",
)


@pytest.fixture(autouse=True)
def _no_client_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _server_logs_off_stdout() -> Iterator[None]:
    """The in-process server's log lines would otherwise mix with the CLI's output."""
    with capture_logs():
        yield


def _requests(data: bytes, path: str) -> Iterator[asset_pb2.UploadRequest]:
    yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path))
    yield asset_pb2.UploadRequest(chunk=data)
    yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())


def _upload(api: Stubs, tenant: Tenancy, data: bytes, path: str = "a.ts") -> asset_pb2.Asset:
    result: asset_pb2.Asset = api.assets.Upload(
        _requests(data, path), metadata=tenant.md(Role.INGEST)
    )
    return result


def _cli(*argv: str) -> int:
    return main(list(argv))


def _serve(vault: Vault, **settings: object) -> Iterator[ServerThread]:
    thread = ServerThread(vault, Settings(grpc_port=0, shutdown_grace=1.0, **settings))  # type: ignore[arg-type]
    try:
        yield thread
    finally:
        thread.close()


# -- asset stat: the KEK version ---------------------------------------------------------


def test_an_asset_shows_its_kek_version_which_a_rewrap_raises(
    api: Stubs, vault: Vault, acme: Tenancy
) -> None:
    asset = _upload(api, acme, b"frames")
    assert asset.kek_version == 1

    vault.tenant_keys.rotate(acme.id)
    stat = api.assets.StatAsset(
        asset_pb2.StatAssetRequest(asset_id=asset.id), metadata=acme.md(Role.RENDERER)
    )
    assert stat.kek_version == 1  # rotation alone moves nothing

    assert vault.assets.rewrap_keys(acme.id) == 1
    stat = api.assets.StatAsset(
        asset_pb2.StatAssetRequest(asset_id=asset.id), metadata=acme.md(Role.RENDERER)
    )
    assert stat.kek_version == 2
    listed = api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md(Role.RENDERER))
    assert [a.kek_version for a in listed.assets] == [2]


def test_asset_stat_prints_the_kek_version(
    api: Stubs,
    server: ServerThread,
    acme: Tenancy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asset = _upload(api, acme, b"frames")
    monkeypatch.setenv("REELVAULT_ADDR", server.address)
    monkeypatch.setenv("REELVAULT_TOKEN", acme.tokens[Role.RENDERER])

    assert _cli("asset", "stat", asset.id) == 0
    assert "kek version   1" in capsys.readouterr().out.splitlines()
    assert _cli("asset", "stat", "--json", asset.id) == 0
    assert json.loads(capsys.readouterr().out)["kek_version"] == 1


# -- apikey ls: last use -------------------------------------------------------------------


def _keys(api: Stubs, tenant: Tenancy) -> dict[str, apikey_pb2.ApiKey]:
    listed = api.keys.ListApiKeys(
        apikey_pb2.ListApiKeysRequest(tenant_id=tenant.id), metadata=tenant.md(Role.ADMIN)
    )
    return {key.id: key for key in listed.api_keys}


def _used_soon(api: Stubs, tenant: Tenancy, key_id: str) -> bool:
    used = wait_for(
        lambda: [key_id] if _keys(api, tenant)[key_id].HasField("last_use_time") else [],
        count=1,
    )
    return bool(used)


def test_a_key_shows_its_last_use_once_it_has_made_a_call(
    api: Stubs,
    server: ServerThread,
    acme: Tenancy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    renderer = acme.tokens[Role.RENDERER].split("_")[1]
    ingest = acme.tokens[Role.INGEST].split("_")[1]
    admin = acme.tokens[Role.ADMIN].split("_")[1]
    before = _keys(api, acme)
    assert not before[renderer].HasField("last_use_time")
    # A last use is written in the background, just after the call's authentication.
    assert _used_soon(api, acme, admin)

    api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md(Role.RENDERER))
    assert _used_soon(api, acme, renderer)
    assert not _keys(api, acme)[ingest].HasField("last_use_time")

    monkeypatch.setenv("REELVAULT_ADDR", server.address)
    monkeypatch.setenv("REELVAULT_TOKEN", acme.tokens[Role.ADMIN])
    assert _cli("apikey", "ls", "--tenant", acme.id) == 0
    table = capsys.readouterr().out.splitlines()
    assert "LAST USED" in table[0]
    assert "never" in next(line for line in table if line.startswith(ingest))
    assert "never" not in next(line for line in table if line.startswith(renderer))
    assert _cli("apikey", "ls", "--json", "--tenant", acme.id) == 0
    shown = {k["id"]: k for k in json.loads(capsys.readouterr().out)["api_keys"]}
    assert shown[ingest]["last_used_at"] is None
    assert shown[renderer]["last_used_at"] is not None


# -- the access line -----------------------------------------------------------------------


def _rpc_lines(logs: list[dict[str, object]], count: int) -> list[dict[str, object]]:
    # The line is written once the status has gone out, so it may trail the reply.
    return wait_for(lambda: [e for e in logs if e["event"] == "rpc"], count=count)


def test_the_access_line_has_bytes_and_the_asset(api: Stubs, acme: Tenancy) -> None:
    data = b"v" * 200_000
    with capture_logs() as logs:
        asset = _upload(api, acme, data)
        responses = list(
            api.assets.Download(
                asset_pb2.DownloadRequest(asset_id=asset.id), metadata=acme.md(Role.RENDERER)
            )
        )
        api.assets.StatAsset(
            asset_pb2.StatAssetRequest(asset_id=asset.id), metadata=acme.md(Role.RENDERER)
        )
        api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md(Role.RENDERER))
        upload, download, stat, listing = _rpc_lines(logs, 4)

    sent_up = sum(len(r.SerializeToString()) for r in _requests(data, "a.ts"))
    assert upload["bytes_in"] == sent_up
    assert upload["bytes_out"] == asset.ByteSize()
    assert download["bytes_out"] == sum(r.ByteSize() for r in responses)
    assert download["bytes_in"] == asset_pb2.DownloadRequest(asset_id=asset.id).ByteSize()
    for line in (upload, download, stat):
        assert line["asset_id"] == asset.id
    assert stat["bytes_out"] == asset.ByteSize()
    assert listing["asset_id"] is None
    assert all(line["client"] is None for line in (upload, download, stat, listing))


def test_a_refused_call_names_the_asset_it_asked_for(api: Stubs, acme: Tenancy) -> None:
    asset_id = "f" * 32
    with capture_logs() as logs:
        with pytest.raises(grpc.RpcError) as caught:
            api.assets.DeleteAsset(
                asset_pb2.DeleteAssetRequest(asset_id=asset_id), metadata=acme.md(Role.RENDERER)
            )
        (line,) = _rpc_lines(logs, 1)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert line["asset_id"] == asset_id


def test_the_access_line_names_the_mtls_client(vault: Vault, pki: Pki, acme: Tenancy) -> None:  # noqa: F811
    for server in _serve(
        vault,
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        tls_client_ca_file=pki.ca_file,
    ):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert_pem,
            private_key=pki.client.key_pem,
            certificate_chain=pki.client.cert_pem,
        )
        target = f"localhost:{server.port}"
        with capture_logs() as logs, grpc.secure_channel(target, credentials) as channel:
            Stubs(channel).assets.ListAssets(
                asset_pb2.ListAssetsRequest(), metadata=acme.md(Role.RENDERER)
            )
            (line,) = _rpc_lines(logs, 1)
    assert line["client"] == "renderer-1"


# -- reflection ------------------------------------------------------------------------------


def test_reflection_can_be_switched_off(vault: Vault) -> None:
    for server in _serve(vault, reflection=False):
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.ServerReflectionInfo(iter([request])))
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            health = Stubs(channel).health.Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- reelvault health --------------------------------------------------------------------------


def test_health_exits_0_while_serving_and_1_otherwise(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REELVAULT_ADDR", server.address)
    assert _cli("health") == 0
    assert capsys.readouterr().out == f"{server.address}: SERVING\n"
    assert _cli("health", "--service", "reelvault.v1.AssetService") == 0
    capsys.readouterr()

    server.run(server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
    assert _cli("health", "--json") == 1
    assert json.loads(capsys.readouterr().out)["status"] == "NOT_SERVING"

    assert _cli("health", "--service", "no.such.Service") == 1
    err = capsys.readouterr().err
    assert err.startswith("reelvault: error: ") and err.count("\n") == 1


def test_health_with_nothing_listening_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REELVAULT_ADDR", "127.0.0.1:1")
    assert _cli("health", "--timeout", "5") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("reelvault: error: ") and captured.err.count("\n") == 1


def test_health_over_tls(
    vault: Vault,
    pki: Pki,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for server in _serve(vault, tls_cert_file=pki.cert_file, tls_key_file=pki.key_file):
        monkeypatch.setenv("REELVAULT_ADDR", f"localhost:{server.port}")
        monkeypatch.setenv("REELVAULT_TLS_ROOTS_FILE", str(pki.ca_file))
        assert _cli("health") == 0
        assert capsys.readouterr().out.endswith(": SERVING\n")


def test_health_over_mutual_tls_needs_the_client_certificate(
    vault: Vault,
    pki: Pki,  # noqa: F811
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_bytes(pki.client.cert_pem)
    key.write_bytes(pki.client.key_pem)
    for server in _serve(
        vault,
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        tls_client_ca_file=pki.ca_file,
    ):
        monkeypatch.setenv("REELVAULT_ADDR", f"localhost:{server.port}")
        monkeypatch.setenv("REELVAULT_TLS_ROOTS_FILE", str(pki.ca_file))
        assert _cli("health") == 1
        err = capsys.readouterr().err
        assert err.startswith("reelvault: error: ") and err.count("\n") == 1

        monkeypatch.setenv("REELVAULT_TLS_CLIENT_CERT_FILE", str(cert))
        monkeypatch.setenv("REELVAULT_TLS_CLIENT_KEY_FILE", str(key))
        assert _cli("health") == 0
        assert capsys.readouterr().out.endswith(": SERVING\n")
