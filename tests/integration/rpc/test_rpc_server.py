"""The server's cross-cutting behaviour: health, reflection, authentication,
authorization, request ids, error mapping and the access log."""

from __future__ import annotations

import logging

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rpc_harness import Stubs, bearer, wait_for
from structlog.testing import capture_logs

from reelvault.auth import Role
from reelvault.errors import ConfigurationError, Unavailable
from reelvault.logging import configure_logging
from reelvault.rpc import SERVICE_NAMES
from reelvault.v1 import apikey_pb2, asset_pb2, tenant_pb2

pytestmark = pytest.mark.db


# -- health and reflection --------------------------------------------------------------


def test_health_reports_serving_for_the_server_and_each_service(api: Stubs):
    for service in ("", *SERVICE_NAMES):
        response = api.health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        api.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_our_services(channel: grpc.Channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request])))
    names = {service.name for service in response.list_services_response.service}
    assert {
        "reelvault.v1.TenantService",
        "reelvault.v1.ApiKeyService",
        "reelvault.v1.AssetService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_reflection_describes_our_messages(channel: grpc.Channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="reelvault.v1.AssetService"
    )
    (response,) = list(stub.ServerReflectionInfo(iter([request])))
    assert response.file_descriptor_response.file_descriptor_proto


# -- authentication and authorization ---------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer not-a-token"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "rvk_0123456789abcdef_" + "A" * 43),),
        (("authorization", "Bearer rvk_0123456789abcdef_" + "A" * 43),),
    ],
    ids=["none", "empty", "garbage", "basic", "no-scheme", "unknown-key"],
)
def test_calls_without_a_valid_key_are_unauthenticated(api: Stubs, metadata):
    with pytest.raises(grpc.RpcError) as caught:
        api.tenants.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "rvk_" not in caught.value.details()


def test_every_protected_method_needs_a_key(api: Stubs):
    calls = [
        lambda: api.tenants.GetTenant(tenant_pb2.GetTenantRequest(tenant_id="0" * 32)),
        lambda: api.keys.ListApiKeys(apikey_pb2.ListApiKeysRequest()),
        lambda: api.assets.StatAsset(asset_pb2.StatAssetRequest(asset_id="0" * 32)),
        lambda: list(api.assets.Download(asset_pb2.DownloadRequest(asset_id="0" * 32))),
        lambda: api.assets.Upload(iter([asset_pb2.UploadRequest(chunk=b"x")])),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_revoked_key_is_unauthenticated(api: Stubs, vault, acme):
    token = acme.tokens[Role.RENDERER]
    api.tenants.GetTenant(tenant_pb2.GetTenantRequest(tenant_id=acme.id), metadata=bearer(token))
    key_id = token.split("_")[1]
    vault.api_keys.revoke(key_id)
    with pytest.raises(grpc.RpcError) as caught:
        api.tenants.GetTenant(
            tenant_pb2.GetTenantRequest(tenant_id=acme.id), metadata=bearer(token)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("role", "call"),
    [
        (Role.RENDERER, "upload"),
        (Role.RENDERER, "delete"),
        (Role.DISTRIBUTOR, "download"),
        (Role.AUDITOR, "stat"),
        (Role.INGEST, "create_tenant"),
        (Role.ADMIN, "list_tenants"),
        (Role.INGEST, "create_key"),
        (Role.PRIVACY, "list_keys"),
    ],
)
def test_a_role_without_the_permission_is_denied(api: Stubs, acme, role, call):
    md = acme.md(role)
    calls = {
        "upload": lambda: api.assets.Upload(
            iter([asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="a"))]),
            metadata=md,
        ),
        "delete": lambda: api.assets.DeleteAsset(
            asset_pb2.DeleteAssetRequest(asset_id="0" * 32), metadata=md
        ),
        "download": lambda: list(
            api.assets.Download(asset_pb2.DownloadRequest(asset_id="0" * 32), metadata=md)
        ),
        "stat": lambda: api.assets.StatAsset(
            asset_pb2.StatAssetRequest(asset_id="0" * 32), metadata=md
        ),
        "create_tenant": lambda: api.tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(name="x"), metadata=md
        ),
        "list_tenants": lambda: api.tenants.ListTenants(
            tenant_pb2.ListTenantsRequest(), metadata=md
        ),
        "create_key": lambda: api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_INGEST), metadata=md
        ),
        "list_keys": lambda: api.keys.ListApiKeys(apikey_pb2.ListApiKeysRequest(), metadata=md),
    }
    with pytest.raises(grpc.RpcError) as caught:
        calls[call]()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_platform_admin_has_no_access_to_assets(api: Stubs, platform_token):
    with pytest.raises(grpc.RpcError) as caught:
        api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=bearer(platform_token))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- request ids ------------------------------------------------------------------------


def test_the_request_id_is_echoed_in_initial_and_trailing_metadata(api: Stubs, acme):
    md = acme.md(Role.ADMIN, ("x-request-id", "req-42.a:b"))
    _, call = api.assets.ListAssets.with_call(asset_pb2.ListAssetsRequest(), metadata=md)
    assert ("x-request-id", "req-42.a:b") in call.initial_metadata()
    assert ("x-request-id", "req-42.a:b") in call.trailing_metadata()


def test_a_request_id_is_generated_when_none_or_an_unsafe_one_is_sent(api: Stubs, acme):
    seen = set()
    for extra in [
        (),
        (("x-request-id", "spaces are not allowed"),),
        (("x-request-id", "x" * 129),),
    ]:
        _, call = api.assets.ListAssets.with_call(
            asset_pb2.ListAssetsRequest(), metadata=acme.md(Role.ADMIN, *extra)
        )
        (request_id,) = [v for k, v in call.initial_metadata() if k == "x-request-id"]
        assert len(request_id) == 32
        assert int(request_id, 16) >= 0
        seen.add(request_id)
    assert len(seen) == 3


def test_failed_calls_carry_the_request_id_too(api: Stubs):
    with pytest.raises(grpc.RpcError) as caught:
        api.tenants.ListTenants(
            tenant_pb2.ListTenantsRequest(), metadata=(("x-request-id", "failing-1"),)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ("x-request-id", "failing-1") in caught.value.initial_metadata()
    assert ("x-request-id", "failing-1") in caught.value.trailing_metadata()


# -- error mapping ------------------------------------------------------------------------


def test_an_unexpected_exception_is_internal_without_details(api: Stubs, acme, vault, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(vault.assets, "list", explode)
    with capture_logs() as logs, pytest.raises(grpc.RpcError) as caught:
        api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md())
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    errors = [entry for entry in logs if entry["event"] == "unexpected error"]
    assert errors and isinstance(errors[0]["exc_info"], RuntimeError)


def test_an_internal_reelvault_error_hides_its_message(api: Stubs, acme, vault, monkeypatch):
    def misconfigured(*args, **kwargs):
        raise ConfigurationError("cannot read keyring file /srv/keys/keyring.json")

    monkeypatch.setattr(vault.assets, "stat", misconfigured)
    with pytest.raises(grpc.RpcError) as caught:
        api.assets.StatAsset(asset_pb2.StatAssetRequest(asset_id="0" * 32), metadata=acme.md())
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"


def test_a_dependency_outage_is_unavailable(api: Stubs, acme, vault, monkeypatch):
    def down(*args, **kwargs):
        raise Unavailable("catalog database unavailable")

    monkeypatch.setattr(vault.assets, "stat", down)
    with pytest.raises(grpc.RpcError) as caught:
        api.assets.StatAsset(asset_pb2.StatAssetRequest(asset_id="0" * 32), metadata=acme.md())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "catalog database unavailable"


@pytest.mark.parametrize(
    "asset_id", ["", "x", "0" * 31, "0" * 33, "G" * 32, "../../etc/passwd", "é" * 32, "0" * 4096]
)
def test_malformed_asset_ids_are_invalid_arguments_never_unknown(api: Stubs, acme, asset_id):
    md = acme.md()
    calls = [
        lambda: api.assets.StatAsset(asset_pb2.StatAssetRequest(asset_id=asset_id), metadata=md),
        lambda: api.assets.DeleteAsset(
            asset_pb2.DeleteAssetRequest(asset_id=asset_id), metadata=md
        ),
        lambda: list(
            api.assets.Download(asset_pb2.DownloadRequest(asset_id=asset_id), metadata=md)
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_access_log_has_one_line_per_call_without_secrets(api: Stubs, acme):
    token = acme.tokens[Role.ADMIN]
    with capture_logs() as logs:
        api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(), metadata=acme.md(Role.ADMIN, ("x-request-id", "r-1"))
        )
        with pytest.raises(grpc.RpcError):
            api.assets.StatAsset(
                asset_pb2.StatAssetRequest(asset_id="0" * 32),
                metadata=acme.md(Role.ADMIN, ("x-request-id", "r-2")),
            )
        # The line is written once the status has gone out, so it may trail the reply.
        lines = wait_for(lambda: [e for e in logs if e["event"] == "rpc"], count=2)
    assert [(line["request_id"], line["status"]) for line in lines] == [
        ("r-1", "OK"),
        ("r-2", "NOT_FOUND"),
    ]
    for line in lines:
        assert line["tenant_id"] == acme.id
        assert line["key_id"] == token.split("_")[1]
        assert line["duration_ms"] >= 0
        assert line["method"].startswith("/reelvault.v1.AssetService/")
    assert token.split("_", 2)[2] not in repr(logs)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_logged_tracebacks_never_include_local_variables(log_format, capsys):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("info", log_format)
    try:
        token = "rvk_0123456789abcdef_" + "S" * 43
        try:
            raise RuntimeError(f"failed after {len(token)} characters")
        except RuntimeError as exc:
            structlog.get_logger("reelvault.rpc").error("unexpected error", exc_info=exc)
        logged = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    assert "RuntimeError" in logged
    assert "S" * 43 not in logged
