"""TenantService and ApiKeyService through the server: the platform admin bootstraps a
tenant, tenant admins manage their own tenant's keys and nothing else."""

from __future__ import annotations

import grpc
import pytest
from rpc_harness import Stubs, bearer

from reelvault.auth import Role
from reelvault.rpc.convert import ROLE_FROM_PROTO, ROLE_TO_PROTO
from reelvault.v1 import apikey_pb2, asset_pb2, tenant_pb2

pytestmark = pytest.mark.db


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_every_role_has_a_proto_value_and_back():
    assert set(ROLE_TO_PROTO) == set(Role)
    assert {ROLE_FROM_PROTO[v] for v in ROLE_TO_PROTO.values()} == set(Role)
    assert apikey_pb2.ROLE_UNSPECIFIED not in ROLE_FROM_PROTO


def test_bootstrap_a_tenant_end_to_end(api: Stubs, platform_token):
    platform = bearer(platform_token)
    tenant = api.tenants.CreateTenant(
        tenant_pb2.CreateTenantRequest(name="Acme"), metadata=platform
    )
    assert len(tenant.id) == 32
    assert tenant.name == "Acme"
    assert tenant.create_time.seconds > 0
    assert (
        api.tenants.GetTenant(tenant_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=platform)
        == tenant
    )
    listed = api.tenants.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=platform)
    assert [t.id for t in listed.tenants] == [tenant.id]

    created = api.keys.CreateApiKey(
        apikey_pb2.CreateApiKeyRequest(
            tenant_id=tenant.id, role=apikey_pb2.ROLE_ADMIN, description="first admin"
        ),
        metadata=platform,
    )
    assert created.api_key.role == apikey_pb2.ROLE_ADMIN
    assert created.api_key.tenant_id == tenant.id
    assert not created.api_key.HasField("revoke_time")
    admin = bearer(created.secret)

    # The tenant admin makes an ingest key for its own tenant (tenant_id may be left out).
    ingest = api.keys.CreateApiKey(
        apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_INGEST), metadata=admin
    )
    assert ingest.api_key.tenant_id == tenant.id
    asset = api.assets.Upload(
        iter(
            [
                asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path="hello.txt")),
                asset_pb2.UploadRequest(chunk=b"hello"),
                asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()),
            ]
        ),
        metadata=bearer(ingest.secret),
    )
    assert asset.size == 5

    keys = api.keys.ListApiKeys(apikey_pb2.ListApiKeysRequest(), metadata=admin)
    assert {k.id for k in keys.api_keys} == {created.api_key.id, ingest.api_key.id}
    assert created.secret not in str(keys)

    revoked = api.keys.RevokeApiKey(
        apikey_pb2.RevokeApiKeyRequest(api_key_id=ingest.api_key.id), metadata=admin
    )
    assert revoked.HasField("revoke_time")
    again = api.keys.RevokeApiKey(
        apikey_pb2.RevokeApiKeyRequest(api_key_id=ingest.api_key.id), metadata=admin
    )
    assert again.revoke_time == revoked.revoke_time  # idempotent
    error = rpc_error(
        lambda: api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=bearer(ingest.secret))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_platform_admin_manages_platform_keys(api: Stubs, platform_token):
    platform = bearer(platform_token)
    created = api.keys.CreateApiKey(
        apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_PLATFORM_ADMIN), metadata=platform
    )
    assert created.api_key.tenant_id == ""
    listed = api.keys.ListApiKeys(apikey_pb2.ListApiKeysRequest(), metadata=platform)
    assert created.api_key.id in [k.id for k in listed.api_keys]


def test_tenant_roles_read_only_their_own_tenant(api: Stubs, acme, globex):
    own = api.tenants.GetTenant(
        tenant_pb2.GetTenantRequest(tenant_id=acme.id), metadata=acme.md(Role.RENDERER)
    )
    assert own.id == acme.id
    other = rpc_error(
        lambda: api.tenants.GetTenant(
            tenant_pb2.GetTenantRequest(tenant_id=globex.id), metadata=acme.md(Role.ADMIN)
        )
    )
    missing = rpc_error(
        lambda: api.tenants.GetTenant(
            tenant_pb2.GetTenantRequest(tenant_id="f" * 32), metadata=acme.md(Role.ADMIN)
        )
    )
    assert (other.code(), other.details()) == (missing.code(), missing.details())
    assert other.code() == grpc.StatusCode.NOT_FOUND


def test_a_tenant_admin_cannot_reach_another_tenants_keys(api: Stubs, acme, globex, vault):
    admin = acme.md(Role.ADMIN)
    for call in [
        lambda: api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(tenant_id=globex.id, role=apikey_pb2.ROLE_INGEST),
            metadata=admin,
        ),
        lambda: api.keys.ListApiKeys(
            apikey_pb2.ListApiKeysRequest(tenant_id=globex.id), metadata=admin
        ),
    ]:
        error = rpc_error(call)
        assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "tenant not found")

    [globex_key, *_] = vault.api_keys.list(globex.id)
    theirs = rpc_error(
        lambda: api.keys.RevokeApiKey(
            apikey_pb2.RevokeApiKeyRequest(api_key_id=globex_key.id), metadata=admin
        )
    )
    nobodys = rpc_error(
        lambda: api.keys.RevokeApiKey(
            apikey_pb2.RevokeApiKeyRequest(api_key_id="0123456789abcdef"), metadata=admin
        )
    )
    assert (theirs.code(), theirs.details()) == (nobodys.code(), nobodys.details())
    assert theirs.code() == grpc.StatusCode.NOT_FOUND
    assert vault.api_keys.get(globex_key.id).revoked_at is None


def test_a_tenant_admin_cannot_touch_platform_keys(api: Stubs, acme, platform_token, vault):
    admin = acme.md(Role.ADMIN)
    error = rpc_error(
        lambda: api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_PLATFORM_ADMIN), metadata=admin
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    platform_key_id = platform_token.split("_")[1]
    error = rpc_error(
        lambda: api.keys.RevokeApiKey(
            apikey_pb2.RevokeApiKeyRequest(api_key_id=platform_key_id), metadata=admin
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert vault.api_keys.get(platform_key_id).revoked_at is None


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_UNSPECIFIED), "INVALID_ARGUMENT"),
        (apikey_pb2.CreateApiKeyRequest(role=99), "INVALID_ARGUMENT"),
        (apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_ADMIN), "INVALID_ARGUMENT"),
        (
            apikey_pb2.CreateApiKeyRequest(tenant_id="nope", role=apikey_pb2.ROLE_ADMIN),
            "INVALID_ARGUMENT",
        ),
        (
            apikey_pb2.CreateApiKeyRequest(tenant_id="a" * 32, role=apikey_pb2.ROLE_ADMIN),
            "NOT_FOUND",
        ),
        (
            apikey_pb2.CreateApiKeyRequest(
                role=apikey_pb2.ROLE_PLATFORM_ADMIN, description="line\nbreak"
            ),
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_bad_key_requests(api: Stubs, platform_token, request_, code):
    error = rpc_error(lambda: api.keys.CreateApiKey(request_, metadata=bearer(platform_token)))
    assert error.code() == getattr(grpc.StatusCode, code)


@pytest.mark.parametrize(
    ("name", "code"),
    [("", "INVALID_ARGUMENT"), ("x" * 129, "INVALID_ARGUMENT"), ("tab\there", "INVALID_ARGUMENT")],
)
def test_bad_tenant_names(api: Stubs, platform_token, name, code):
    error = rpc_error(
        lambda: api.tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(name=name), metadata=bearer(platform_token)
        )
    )
    assert error.code() == getattr(grpc.StatusCode, code)


def test_a_duplicate_tenant_name_already_exists(api: Stubs, platform_token):
    request = tenant_pb2.CreateTenantRequest(name="Same")
    api.tenants.CreateTenant(request, metadata=bearer(platform_token))
    error = rpc_error(lambda: api.tenants.CreateTenant(request, metadata=bearer(platform_token)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
