"""Attacks on the gRPC surface: bearer tokens, roles and tenant scope over the wire,
malformed wire messages, hostile upload streams and ranges, listings, and object storage
tampered with under a real SeaweedFS.

Every failed call is checked for hygiene as well as for its status: never ``UNKNOWN``,
never a traceback, an exception class or a token in the details. Several tests began as
findings of an adversarial review (malformed wire messages answered UNKNOWN, nested page
tokens, unvalidated prefixes) and pin their fixes.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from rpc_harness import MiB, Stubs, Tenancy, bearer, leftovers, wait_for
from sqlalchemy import select

from reelvault.app import Vault
from reelvault.auth import PERMISSIONS, PLATFORM_ROLES, Role
from reelvault.catalog.tables import AssetRow
from reelvault.rpc.actions import METHOD_ACTIONS
from reelvault.rpc.convert import ROLE_TO_PROTO
from reelvault.v1 import (
    apikey_pb2,
    asset_pb2,
    audit_pb2,
    audit_pb2_grpc,
    distribution_pb2,
    distribution_pb2_grpc,
    key_pb2,
    privacy_pb2,
    tenant_pb2,
)

pytestmark = pytest.mark.db

ON_POSTGRES = bool(os.environ.get("REELVAULT_TEST_DATABASE_URL"))
F = 64 * 1024
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
Metadata = tuple[tuple[str, str], ...]

# What must never reach a client in a status message.
LEAKS = (
    "Traceback",
    'File "',
    "<class",
    "Error parsing",
    "DecodeError",
    "rvk_",
    "sqlite",
    "psycopg",
)


@pytest.fixture
def vault(request, database, root_provider, clock, memory_store) -> Vault:
    """In-memory storage, or SeaweedFS for tests parametrized with ``on_seaweed``."""
    backend = getattr(request, "param", "memory")
    store = request.getfixturevalue("seaweed_store") if backend == "seaweed" else memory_store
    return Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)


on_seaweed = pytest.mark.parametrize("vault", ["seaweed"], indirect=True)


def assert_clean(error: grpc.RpcError, *secrets: str) -> None:
    assert error.code() != grpc.StatusCode.UNKNOWN, error.details()
    details = error.details() or ""
    for leak in (*LEAKS, *secrets):
        assert leak not in details, details


def rpc_error(call: Callable[[], Any], *secrets: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert_clean(caught.value, *secrets)
    return caught.value


def outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        assert_clean(error)
        return error.code()
    return grpc.StatusCode.OK


def meta(path: str = "p", **kwargs: Any) -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path, **kwargs))


def chunk(data: bytes) -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(chunk=data)


def finish() -> asset_pb2.UploadRequest:
    return asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())


def upload(api: Stubs, tenant: Tenancy, data: bytes, path: str = "p") -> asset_pb2.Asset:
    messages = [meta(path)] + [chunk(data[i : i + MiB]) for i in range(0, len(data), MiB)]
    messages.append(finish())
    return api.assets.Upload(iter(messages), metadata=tenant.md(Role.INGEST))


def download(
    api: Stubs, md: Metadata, asset_id: str, **range_: Any
) -> tuple[list[asset_pb2.DownloadResponse], grpc.RpcError | None]:
    """Everything received, and the error that ended the stream (None: status OK)."""
    received: list[asset_pb2.DownloadResponse] = []
    stream = api.assets.Download(
        asset_pb2.DownloadRequest(asset_id=asset_id, **range_), metadata=md
    )
    try:
        received.extend(stream)
    except grpc.RpcError as error:
        assert_clean(error)
        return received, error
    return received, None


def body(received: list[asset_pb2.DownloadResponse]) -> bytes:
    return b"".join(r.chunk for r in received[1:])


def settled(vault: Vault, tenant: Tenancy, expected: tuple[int, int, int]) -> tuple[int, int, int]:
    """Leftovers once the server has cleaned up (the status can precede the cleanup)."""
    found = wait_for(lambda: [1] if leftovers(vault, tenant) == expected else [], count=1)
    return expected if found else leftovers(vault, tenant)


# -- authentication ------------------------------------------------------------------------


def test_every_kind_of_bad_token_gets_one_indistinguishable_answer(api: Stubs, vault, acme):
    token = acme.tokens[Role.ADMIN]
    _, key_id, secret = token.split("_", 2)
    other_id, other_secret = acme.tokens[Role.INGEST].split("_", 2)[1:]
    revoked = acme.tokens[Role.PRIVACY]
    vault.api_keys.revoke(revoked.split("_")[1])
    flipped = "A" if secret[0] != "A" else "B"
    last = {"A": "B", "B": "A"}.get(secret[-1], "B")  # a non-canonical last character
    bad_tokens = {
        "unknown key id": f"rvk_{'0' * 16}_{secret}",
        "wrong secret": f"rvk_{key_id}_{flipped}{secret[1:]}",
        "another key's secret": f"rvk_{key_id}_{other_secret}",
        "another key's id": f"rvk_{other_id}_{secret}",
        "revoked": revoked,
        "non-canonical base64": f"rvk_{key_id}_{secret[:-1]}{last}",
        "upper-case key id": f"rvk_{key_id.upper()}_{secret}",
        "upper-case prefix": f"RVK_{key_id}_{secret}",
        "one character short": token[:-1],
        "one character long": token + "A",
        "padded secret": token + "=",
        "secret only": secret,
        "random bytes": base64.urlsafe_b64encode(os.urandom(48)).decode(),
        "four KiB": "A" * 4096,
    }
    answers = {}
    for name, bad in bad_tokens.items():
        error = rpc_error(
            lambda bad=bad: api.tenants.GetTenant(
                tenant_pb2.GetTenantRequest(tenant_id=acme.id), metadata=bearer(bad)
            ),
            secret,
            other_secret,
        )
        answers[name] = (error.code(), error.details())
    assert set(answers.values()) == {(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")}, answers


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer{token}",
        "Token {token}",
        "Basic {token}",
        "{token}",
        "Bearer Bearer {token}",
        "Bearer {token} {token}",
        "Bearer {token},{token}",
    ],
)
def test_malformed_authorization_headers_are_unauthenticated(api: Stubs, acme, header):
    token = acme.tokens[Role.ADMIN]
    error = rpc_error(
        lambda: api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(),
            metadata=(("authorization", header.format(token=token)),),
        ),
        token.split("_", 2)[2],
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_second_authorization_header_is_refused_even_if_both_are_valid(api: Stubs, acme, globex):
    for pair in [
        (acme.tokens[Role.ADMIN], acme.tokens[Role.ADMIN]),
        (acme.tokens[Role.RENDERER], globex.tokens[Role.ADMIN]),
    ]:
        error = rpc_error(
            lambda pair=pair: api.assets.ListAssets(
                asset_pb2.ListAssetsRequest(),
                metadata=tuple(("authorization", f"Bearer {t}") for t in pair),
            )
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_huge_authorization_header_is_refused_without_echo(api: Stubs):
    for size in (15_000, 100_000):
        marker = "Z" * size
        error = rpc_error(
            lambda marker=marker: api.tenants.ListTenants(
                tenant_pb2.ListTenantsRequest(), metadata=(("authorization", f"Bearer {marker}"),)
            ),
            "ZZZZZZZZ",
        )
        # Above grpc's metadata limit the transport refuses it before the vault sees it.
        assert error.code() in {
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }


# -- roles and tenant scope over the wire --------------------------------------------------


def _calls(api: Stubs, md: Metadata, tenant_id: str, tag: str) -> dict[str, Callable[[], Any]]:
    """One harmless call per method of the method -> action table."""
    svc = "/reelvault.v1."
    audit = audit_pb2_grpc.AuditServiceStub(api.channel)
    urls = distribution_pb2_grpc.DistributionServiceStub(api.channel)
    start, end = Timestamp(seconds=0), Timestamp(seconds=2**33)
    return {
        f"{svc}TenantService/CreateTenant": lambda: api.tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(name=f"made by {tag}"), metadata=md
        ),
        f"{svc}TenantService/GetTenant": lambda: api.tenants.GetTenant(
            tenant_pb2.GetTenantRequest(tenant_id=tenant_id), metadata=md
        ),
        f"{svc}TenantService/ListTenants": lambda: api.tenants.ListTenants(
            tenant_pb2.ListTenantsRequest(), metadata=md
        ),
        f"{svc}TenantService/SetTenantPolicy": lambda: api.tenants.SetTenantPolicy(
            tenant_pb2.SetTenantPolicyRequest(tenant_id=tenant_id), metadata=md
        ),
        f"{svc}ApiKeyService/CreateApiKey": lambda: api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(tenant_id=tenant_id, role=apikey_pb2.ROLE_RENDERER),
            metadata=md,
        ),
        f"{svc}ApiKeyService/ListApiKeys": lambda: api.keys.ListApiKeys(
            apikey_pb2.ListApiKeysRequest(tenant_id=tenant_id), metadata=md
        ),
        f"{svc}ApiKeyService/RevokeApiKey": lambda: api.keys.RevokeApiKey(
            apikey_pb2.RevokeApiKeyRequest(api_key_id="0" * 16), metadata=md
        ),
        f"{svc}AssetService/Upload": lambda: api.assets.Upload(
            iter([meta(f"by/{tag}"), chunk(tag.encode()), finish()]), metadata=md
        ),
        f"{svc}AssetService/Download": lambda: list(
            api.assets.Download(asset_pb2.DownloadRequest(asset_id="0" * 32), metadata=md)
        ),
        f"{svc}AssetService/StatAsset": lambda: api.assets.StatAsset(
            asset_pb2.StatAssetRequest(asset_id="0" * 32), metadata=md
        ),
        f"{svc}AssetService/ListAssets": lambda: api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(), metadata=md
        ),
        f"{svc}AssetService/DeleteAsset": lambda: api.assets.DeleteAsset(
            asset_pb2.DeleteAssetRequest(asset_id="0" * 32), metadata=md
        ),
        f"{svc}AssetService/OpenAsset": lambda: api.assets.OpenAsset(
            asset_pb2.OpenAssetRequest(asset_id="0" * 32), metadata=md
        ),
        f"{svc}AuditService/ListAuditEvents": lambda: audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(tenant_id=tenant_id, start_time=start, end_time=end),
            metadata=md,
        ),
        f"{svc}AuditService/ExportAuditEvents": lambda: list(
            audit.ExportAuditEvents(
                audit_pb2.ExportAuditEventsRequest(tenant_id=tenant_id), metadata=md
            )
        ),
        f"{svc}AuditService/GetCheckpoint": lambda: audit.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(tenant_id=tenant_id), metadata=md
        ),
        f"{svc}AuditService/GetInclusionProof": lambda: audit.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(tenant_id=tenant_id, sequence=0, tree_size=1),
            metadata=md,
        ),
        f"{svc}AuditService/GetConsistencyProof": lambda: audit.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(tenant_id=tenant_id, old_size=1, new_size=1),
            metadata=md,
        ),
        f"{svc}AuditService/SetAuditRetention": lambda: audit.SetAuditRetention(
            audit_pb2.SetAuditRetentionRequest(tenant_id=tenant_id, retention_days=7),
            metadata=md,
        ),
        f"{svc}DistributionService/IssueUrl": lambda: urls.IssueUrl(
            distribution_pb2.IssueRequest(prefix="by/", ttl_seconds=60), metadata=md
        ),
        f"{svc}DistributionService/IssueCookie": lambda: urls.IssueCookie(
            distribution_pb2.IssueRequest(prefix="by/", ttl_seconds=60), metadata=md
        ),
        f"{svc}DistributionService/RevokeSession": lambda: urls.RevokeSession(
            distribution_pb2.RevokeSessionRequest(session_id=f"s-{tag}"), metadata=md
        ),
        f"{svc}DistributionService/RevokeAsset": lambda: urls.RevokeAsset(
            distribution_pb2.RevokeAssetRequest(asset_id="0" * 32), metadata=md
        ),
        f"{svc}DistributionService/ListSigningKeys": lambda: urls.ListSigningKeys(
            distribution_pb2.ListSigningKeysRequest(), metadata=md
        ),
        f"{svc}DistributionService/RotateSigningKey": lambda: urls.RotateSigningKey(
            distribution_pb2.RotateSigningKeyRequest(), metadata=md
        ),
        **_privacy_calls(api, md, tag),
        **_key_calls(api, md, tenant_id),
    }


def _privacy_calls(api: Stubs, md: Metadata, tag: str) -> dict[str, Callable[[], Any]]:
    svc = "/reelvault.v1."
    viewer = f"viewer-of-{tag}"
    return {
        f"{svc}PayloadService/PutPayload": lambda: api.payloads.PutPayload(
            privacy_pb2.PutPayloadRequest(subject_id=viewer, purpose="p", data=b"{}"),
            metadata=md,
        ),
        f"{svc}PayloadService/GetPayload": lambda: api.payloads.GetPayload(
            privacy_pb2.GetPayloadRequest(id="0" * 32, purpose="p"), metadata=md
        ),
        f"{svc}PayloadService/ListPayloads": lambda: api.payloads.ListPayloads(
            privacy_pb2.ListPayloadsRequest(subject_id=viewer), metadata=md
        ),
        f"{svc}PayloadService/DeletePayload": lambda: api.payloads.DeletePayload(
            privacy_pb2.DeletePayloadRequest(id="0" * 32), metadata=md
        ),
        f"{svc}ConsentService/RecordConsent": lambda: api.consent.RecordConsent(
            privacy_pb2.RecordConsentRequest(
                subject_id=viewer, purpose="p", granted=True, source="test"
            ),
            metadata=md,
        ),
        f"{svc}ConsentService/GetConsent": lambda: api.consent.GetConsent(
            privacy_pb2.GetConsentRequest(subject_id=viewer), metadata=md
        ),
        f"{svc}PrivacyService/HashSubject": lambda: api.privacy.HashSubject(
            privacy_pb2.HashSubjectRequest(subject_id=viewer), metadata=md
        ),
        f"{svc}PrivacyService/EraseSubject": lambda: api.privacy.EraseSubject(
            privacy_pb2.EraseSubjectRequest(subject_id=f"erased-{tag}"), metadata=md
        ),
        f"{svc}PrivacyService/ExportSubject": lambda: list(
            api.privacy.ExportSubject(
                privacy_pb2.ExportSubjectRequest(subject_id=viewer), metadata=md
            )
        ),
        f"{svc}PrivacyService/SetLegalHold": lambda: api.privacy.SetLegalHold(
            privacy_pb2.SetLegalHoldRequest(subject_id=viewer, hold=False), metadata=md
        ),
    }


def _key_calls(api: Stubs, md: Metadata, tenant_id: str) -> dict[str, Callable[[], Any]]:
    """Harmless key calls: each either changes nothing others depend on or is refused
    for its arguments after authorization."""
    svc = "/reelvault.v1."
    keys = api.tenant_keys
    missing = "f" * 32
    return {
        f"{svc}KeyService/GetKeyStatus": lambda: keys.GetKeyStatus(
            key_pb2.GetKeyStatusRequest(tenant_id=tenant_id), metadata=md
        ),
        f"{svc}KeyService/RotateTenantKey": lambda: keys.RotateTenantKey(
            key_pb2.RotateTenantKeyRequest(tenant_id=tenant_id), metadata=md
        ),
        f"{svc}KeyService/RewrapTenant": lambda: list(
            keys.RewrapTenant(key_pb2.RewrapTenantRequest(tenant_id=tenant_id), metadata=md)
        ),
        f"{svc}KeyService/DisableKeyVersion": lambda: keys.DisableKeyVersion(
            key_pb2.KeyVersionRequest(tenant_id=tenant_id, version=99), metadata=md
        ),
        f"{svc}KeyService/EnableKeyVersion": lambda: keys.EnableKeyVersion(
            key_pb2.KeyVersionRequest(tenant_id=tenant_id, version=1), metadata=md
        ),
        f"{svc}KeyService/SetMinDecryptionVersion": lambda: keys.SetMinDecryptionVersion(
            key_pb2.KeyVersionRequest(tenant_id=tenant_id, version=1), metadata=md
        ),
        f"{svc}KeyService/RewrapRootKeys": lambda: keys.RewrapRootKeys(
            key_pb2.RewrapRootKeysRequest(), metadata=md
        ),
        f"{svc}KeyService/ScheduleTenantDeletion": lambda: keys.ScheduleTenantDeletion(
            key_pb2.ScheduleTenantDeletionRequest(tenant_id=tenant_id, waiting_days=0),
            metadata=md,
        ),
        f"{svc}KeyService/CancelTenantDeletion": lambda: keys.CancelTenantDeletion(
            key_pb2.TenantRef(tenant_id=tenant_id), metadata=md
        ),
        f"{svc}KeyService/DisableTenant": lambda: keys.DisableTenant(
            key_pb2.TenantRef(tenant_id=missing), metadata=md
        ),
        f"{svc}KeyService/EnableTenant": lambda: keys.EnableTenant(
            key_pb2.TenantRef(tenant_id=tenant_id), metadata=md
        ),
        f"{svc}KeyService/RequestKeyExport": lambda: keys.RequestKeyExport(
            key_pb2.RequestKeyExportRequest(tenant_id=tenant_id, recipient_public_key=b"no"),
            metadata=md,
        ),
        f"{svc}KeyService/ApproveKeyExport": lambda: keys.ApproveKeyExport(
            key_pb2.ApproveKeyExportRequest(tenant_id=tenant_id, export_id="0" * 32),
            metadata=md,
        ),
        f"{svc}KeyService/ExportTenantKeys": lambda: keys.ExportTenantKeys(
            key_pb2.ExportTenantKeysRequest(tenant_id=tenant_id, export_id="0" * 32),
            metadata=md,
        ),
    }


def test_every_role_gets_exactly_the_permission_table_over_the_wire(
    api: Stubs, vault, acme, platform_token
):
    platform_auditor = vault.api_keys.create(tenant_id=None, role=Role.PLATFORM_AUDITOR)[1]
    tokens = {
        **acme.tokens,
        Role.PLATFORM_ADMIN: platform_token,
        Role.PLATFORM_AUDITOR: platform_auditor,
    }
    assert set(tokens) == set(Role)
    refused = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
    for role, token in tokens.items():
        calls = _calls(api, bearer(token), acme.id, role.value)
        assert set(calls) == set(METHOD_ACTIONS)
        for method, call in calls.items():
            code = outcome(call)
            if role in PERMISSIONS[METHOD_ACTIONS[method]]:
                assert code not in refused, (role, method, code)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (role, method, code)
    # Refused calls had no effect: one tenant made (by the platform admin), two uploads.
    assert {t.name for t in vault.tenant_keys.list_tenants()} == {"acme", "made by platform-admin"}
    assert sorted(a.path for a in vault.assets.list(acme.id)[0]) == ["by/admin", "by/ingest"]
    roles = sorted(k.role.value for k in vault.api_keys.list(acme.id))
    assert roles.count("renderer") == 3  # acme's own, + one each by admin and platform admin


@pytest.mark.parametrize("role", sorted(PLATFORM_ROLES))
@pytest.mark.parametrize("target", ["own", "empty", "other", "missing"])
def test_a_tenant_admin_never_mints_a_platform_key(api: Stubs, vault, acme, globex, target, role):
    tenant_id = {"own": acme.id, "empty": "", "other": globex.id, "missing": "f" * 32}[target]
    before = vault.api_keys.list(None)
    error = rpc_error(
        lambda: api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(tenant_id=tenant_id, role=ROLE_TO_PROTO[role]),
            metadata=acme.md(Role.ADMIN),
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert vault.api_keys.list(None) == before


@pytest.mark.parametrize("role", [r for r in Role if r not in PLATFORM_ROLES])
def test_a_tenant_admin_mints_no_key_in_another_tenant(api: Stubs, vault, acme, globex, role):
    before = vault.api_keys.list(globex.id)
    answers = set()
    for tenant_id in (globex.id, "f" * 32):  # another tenant, and none at all
        error = rpc_error(
            lambda tenant_id=tenant_id: api.keys.CreateApiKey(
                apikey_pb2.CreateApiKeyRequest(tenant_id=tenant_id, role=ROLE_TO_PROTO[role]),
                metadata=acme.md(Role.ADMIN),
            )
        )
        answers.add((error.code(), error.details()))
    assert answers == {(grpc.StatusCode.NOT_FOUND, "tenant not found")}
    assert vault.api_keys.list(globex.id) == before


def test_a_tenant_admin_lists_only_its_own_keys(api: Stubs, acme, globex, platform_token):
    listed = api.keys.ListApiKeys(apikey_pb2.ListApiKeysRequest(), metadata=acme.md(Role.ADMIN))
    assert {k.tenant_id for k in listed.api_keys} == {acme.id}
    assert platform_token.split("_")[1] not in {k.id for k in listed.api_keys}
    for secret in [*acme.tokens.values(), *globex.tokens.values(), platform_token]:
        assert secret.split("_", 2)[2] not in str(listed)


def test_a_revoked_tenant_admin_cannot_act_any_more(api: Stubs, vault, acme):
    admin_token = acme.tokens[Role.ADMIN]
    own_id = admin_token.split("_")[1]
    api.keys.RevokeApiKey(
        apikey_pb2.RevokeApiKeyRequest(api_key_id=own_id), metadata=acme.md(Role.ADMIN)
    )
    before = vault.api_keys.list(acme.id)
    error = rpc_error(
        lambda: api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_ADMIN), metadata=acme.md()
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert vault.api_keys.list(acme.id) == before


# -- malformed wire messages ---------------------------------------------------------------


def _raw(channel: grpc.Channel, method: str, kind: str) -> Any:
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    return getattr(channel, kind)(method, **identity)


CORRUPT = {
    "bad UTF-8 in a string": b"\x0a\x02\xff\xfe",
    "truncated field": b"\x0a\x20abc",
    "invalid wire type": b"\xff\xff\xff",
}


@pytest.mark.parametrize("corrupt", list(CORRUPT.values()), ids=list(CORRUPT))
@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("/reelvault.v1.AssetService/StatAsset", "unary_unary"),
        ("/reelvault.v1.AssetService/Download", "unary_stream"),
        ("/reelvault.v1.TenantService/GetTenant", "unary_unary"),
    ],
)
def test_a_corrupt_request_is_an_invalid_argument(channel, acme, method, kind, corrupt):
    call = _raw(channel, method, kind)
    for md, code in [
        (acme.md(Role.ADMIN), grpc.StatusCode.INVALID_ARGUMENT),
        ((), grpc.StatusCode.UNAUTHENTICATED),  # nothing is parsed before authentication
    ]:
        if kind == "unary_stream":
            error = rpc_error(lambda md=md: list(call(corrupt, metadata=md)))
        else:
            error = rpc_error(lambda md=md: call(corrupt, metadata=md))
        assert error.code() == code


def test_a_corrupt_upload_message_is_an_invalid_argument_and_leaves_nothing(channel, vault, acme):
    call = _raw(channel, "/reelvault.v1.AssetService/Upload", "stream_unary")
    first = meta("x").SerializeToString()
    try:
        error = rpc_error(
            lambda: call(
                iter([first, chunk(b"a").SerializeToString(), b"\xff\xff\xff"]),
                metadata=acme.md(Role.INGEST),
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        assert settled(vault, acme, (0, 0, 0)) == (0, 0, 0)


# -- hostile upload streams ----------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([meta(path="a\0b")], id="NUL in path"),
        pytest.param([meta(path="../../etc/passwd")], id="traversal"),
        pytest.param([meta(path="/etc/passwd")], id="absolute"),
        pytest.param([meta(path="é" * 513)], id="1026 bytes"),
        pytest.param([meta(labels={"k": "v" * 257})], id="long label value"),
        pytest.param([meta(labels={f"k{i}": "v" for i in range(65)})], id="65 labels"),
        pytest.param([meta(content_type="text/html\r\nx: y")], id="header injection"),
        pytest.param([meta(content_type="a/" + "b" * 254)], id="long content type"),
        pytest.param([meta(expected_size=-1)], id="negative size"),
        pytest.param([meta(expected_size=INT64_MIN)], id="int64 min size"),
        pytest.param([meta(expected_size=INT64_MAX), chunk(b"a"), finish()], id="int64 max size"),
        pytest.param([meta(expected_sha256=b"\0" * 33)], id="33-byte sha"),
        pytest.param([meta(), meta("other")], id="metadata twice, no chunk"),
    ],
)
def test_hostile_upload_streams_are_invalid_arguments_and_leave_nothing(
    api: Stubs, vault, acme, messages
):
    error = rpc_error(lambda: api.assets.Upload(iter(messages), metadata=acme.md(Role.INGEST)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert settled(vault, acme, (0, 0, 0)) == (0, 0, 0)
    assert api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md()).assets == []


def test_a_chunk_of_exactly_one_mib_and_empty_chunks_are_accepted(api: Stubs, acme):
    data = os.urandom(MiB)
    messages = [meta("edge"), chunk(b""), chunk(data), chunk(b""), chunk(b""), finish()]
    asset = api.assets.Upload(iter(messages), metadata=acme.md(Role.INGEST))
    assert asset.size == MiB
    received, error = download(api, acme.md(), asset.id)
    assert error is None and body(received) == data


def test_two_uploads_racing_for_one_path_leave_exactly_one_asset(api: Stubs, vault, acme):
    """Both pass the path check and stream; the second to commit loses and leaves nothing."""
    contents = {b"first " * 1000, b"second" * 1000}
    both_begun = threading.Event()  # latched: the first to finish removes its upload row

    def begun() -> list[int]:
        if not both_begun.is_set() and leftovers(vault, acme)[2] == 2:
            both_begun.set()
        return [1] if both_begun.is_set() else []

    def messages(data: bytes) -> Iterator[asset_pb2.UploadRequest]:
        yield meta("race/same-path")
        yield chunk(data)
        # finish only once the server has begun both uploads (both checked the path)
        assert wait_for(begun, count=1)
        yield finish()

    futures = [
        api.assets.Upload.future(messages(data), metadata=acme.md(Role.INGEST)) for data in contents
    ]
    outcomes = [outcome(f.result) for f in futures]
    assert sorted(outcomes, key=str) == sorted(
        [grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS], key=str
    )
    [winner] = [f.result() for f, code in zip(futures, outcomes, strict=True) if code.name == "OK"]
    listed = api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=acme.md())
    assert [a.id for a in listed.assets] == [winner.id]
    received, error = download(api, acme.md(), winner.id)
    assert error is None and body(received) in contents
    assert settled(vault, acme, (1, 0, 0)) == (1, 0, 0)


# -- hostile ranges ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_", "code"),
    [
        ({"byte_range": asset_pb2.ByteRange(offset=INT64_MAX, length=1)}, "OUT_OF_RANGE"),
        ({"byte_range": asset_pb2.ByteRange(offset=0, length=INT64_MAX)}, "OUT_OF_RANGE"),
        ({"byte_range": asset_pb2.ByteRange(offset=INT64_MAX, length=INT64_MAX)}, "OUT_OF_RANGE"),
        ({"byte_range": asset_pb2.ByteRange(offset=99, length=INT64_MAX)}, "OUT_OF_RANGE"),
        ({"byte_range": asset_pb2.ByteRange(offset=100, length=1)}, "OUT_OF_RANGE"),
        ({"byte_range": asset_pb2.ByteRange(offset=INT64_MIN, length=1)}, "INVALID_ARGUMENT"),
        ({"byte_range": asset_pb2.ByteRange(offset=1, length=INT64_MIN)}, "INVALID_ARGUMENT"),
        ({"byte_range": asset_pb2.ByteRange(offset=50, length=0)}, "INVALID_ARGUMENT"),
        ({"byte_range": asset_pb2.ByteRange()}, "INVALID_ARGUMENT"),
        ({"suffix_length": INT64_MIN}, "INVALID_ARGUMENT"),
    ],
)
def test_hostile_ranges_are_refused_before_any_message(api: Stubs, acme, range_, code):
    asset = upload(api, acme, os.urandom(100))
    received, error = download(api, acme.md(Role.RENDERER), asset.id, **range_)
    assert received == []
    assert error is not None and error.code() == getattr(grpc.StatusCode, code)


def test_extreme_but_valid_ranges_return_exactly_the_right_bytes(api: Stubs, acme):
    data = os.urandom(100)
    asset = upload(api, acme, data)
    for range_, expected in [
        ({"suffix_length": INT64_MAX}, data),
        ({"suffix_length": 100}, data),
        ({"byte_range": asset_pb2.ByteRange(offset=99, length=1)}, data[99:]),
        ({"byte_range": asset_pb2.ByteRange(offset=0, length=100)}, data),
    ]:
        received, error = download(api, acme.md(Role.RENDERER), asset.id, **range_)
        assert error is None
        assert body(received) == expected
        assert received[0].header.length == len(expected)


def test_any_range_of_an_empty_asset_is_out_of_range(api: Stubs, acme):
    asset = upload(api, acme, b"")
    received, error = download(api, acme.md(), asset.id)
    assert error is None and received[0].header.length == 0 and body(received) == b""
    for range_ in [
        {"suffix_length": 1},
        {"suffix_length": INT64_MAX},
        {"byte_range": asset_pb2.ByteRange(offset=0, length=1)},
    ]:
        received, error = download(api, acme.md(), asset.id, **range_)
        assert received == []
        assert error is not None and error.code() == grpc.StatusCode.OUT_OF_RANGE


# -- listings ------------------------------------------------------------------------------


def test_page_tokens_and_prefixes_never_cross_tenants(api: Stubs, acme, globex):
    for i in range(3):
        upload(api, acme, b"acme", path=f"shared/acme-{i}")
        upload(api, globex, b"globex", path=f"shared/globex-{i}")
    page = api.assets.ListAssets(
        asset_pb2.ListAssetsRequest(prefix="shared/", page_size=1), metadata=acme.md()
    )
    # globex replays acme's token, and tries every wildcard as a prefix
    replay = api.assets.ListAssets(
        asset_pb2.ListAssetsRequest(prefix="shared/", page_token=page.next_page_token),
        metadata=globex.md(),
    )
    assert {a.tenant_id for a in replay.assets} == {globex.id}
    for prefix in ["", "%", "_", "shared/%", "shared/_", "\\", "/", "%acme%"]:
        listed = api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(prefix=prefix, page_size=1000), metadata=globex.md()
        )
        assert all(a.tenant_id == globex.id for a in listed.assets), prefix
        assert all(a.path.startswith(prefix) for a in listed.assets), prefix


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (asset_pb2.ListAssetsRequest(page_size=-1), "INVALID_ARGUMENT"),
        (asset_pb2.ListAssetsRequest(page_size=2**31 - 1), "INVALID_ARGUMENT"),
        (asset_pb2.ListAssetsRequest(page_token="A" * 1_000_000), "INVALID_ARGUMENT"),
        (asset_pb2.ListAssetsRequest(page_token="eyJhIjoxfQ"), "INVALID_ARGUMENT"),  # {"a":1}
    ],
)
def test_bad_listing_requests_are_invalid_arguments(api: Stubs, acme, request_, code):
    error = rpc_error(lambda: api.assets.ListAssets(request_, metadata=acme.md()))
    assert error.code() == getattr(grpc.StatusCode, code)


def test_a_deeply_nested_page_token_is_an_invalid_argument_over_the_wire(api: Stubs, acme):
    forged = base64.urlsafe_b64encode(b"[" * 100_000).decode()
    error = rpc_error(
        lambda: api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(page_token=forged), metadata=acme.md()
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_overlong_prefix_is_not_reported_as_an_outage(api: Stubs, acme):
    upload(api, acme, b"x", path="a")
    code = outcome(
        lambda: api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(prefix="a" * 60_000), metadata=acme.md()
        )
    )
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


def test_a_nul_in_a_prefix_is_not_an_internal_error(api: Stubs, acme):
    upload(api, acme, b"x", path="a")
    code = outcome(
        lambda: api.assets.ListAssets(asset_pb2.ListAssetsRequest(prefix="a\0"), metadata=acme.md())
    )
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


# -- object storage tampered with (SeaweedFS) -----------------------------------------------


def _object_key(vault: Vault, asset_id: str) -> str:
    with vault.database.transaction(readonly=True) as session:
        key = session.scalar(select(AssetRow.object_key).where(AssetRow.id == asset_id))
    assert key is not None
    return key


def _read(vault: Vault, key: str) -> bytes:
    info = vault.store.head(key)
    assert info is not None
    return vault.store.get_range(key, 0, info.size) if info.size else b""


def _header_length(vault: Vault, asset_id: str) -> int:
    with vault.database.transaction(readonly=True) as session:
        header = session.scalar(select(AssetRow.header).where(AssetRow.id == asset_id))
    assert header is not None
    return len(header)


# (request, the plaintext slice it names, whether it reaches the final frame)
RANGES: list[tuple[dict[str, Any], slice, bool]] = [
    ({}, slice(None), True),
    ({"suffix_length": 1}, slice(-1, None), True),
    ({"byte_range": asset_pb2.ByteRange(offset=0, length=1)}, slice(0, 1), False),
    ({"byte_range": asset_pb2.ByteRange(offset=F + 10, length=100)}, slice(F + 10, F + 110), False),
]


def _no_wrong_byte(
    api: Stubs, md: Metadata, asset_id: str, data: bytes, *, prefix_intact: bool
) -> None:
    """Every range of a damaged object: DATA_LOSS, with no chunk at all. A range reaching
    the final frame is refused before any message (the final frame is authenticated
    first). One short of it may send its header first, and where the frames it touches
    are intact (``prefix_intact``) it may also succeed, with exactly the right bytes."""
    details = set()
    for range_, part, reaches_end in RANGES:
        received, error = download(api, md, asset_id, **range_)
        if error is None:
            assert prefix_intact and not reaches_end, range_
            assert body(received) == data[part], range_
            continue
        assert error.code() == grpc.StatusCode.DATA_LOSS, range_
        assert body(received) == b"", range_
        if reaches_end:
            assert received == [], range_
        details.add(error.details())
    # One fixed message whatever failed; which check it was stays in the server log.
    assert len(details) == 1


@on_seaweed
def test_two_assets_swapping_their_stored_objects_are_refused(api: Stubs, vault, acme):
    data = {name: os.urandom(3 * F + 100) for name in ("one", "two")}  # same size on purpose
    one, two = (upload(api, acme, data[name], path=name) for name in ("one", "two"))
    key_one, key_two = _object_key(vault, one.id), _object_key(vault, two.id)
    stored_one, stored_two = _read(vault, key_one), _read(vault, key_two)
    assert len(stored_one) == len(stored_two)
    vault.store.put(key_one, [stored_two])
    vault.store.put(key_two, [stored_one])
    for asset in (one, two):
        _no_wrong_byte(api, acme.md(Role.RENDERER), asset.id, data[asset.path], prefix_intact=False)


@on_seaweed
def test_another_tenants_object_copied_over_an_asset_is_refused(api: Stubs, vault, acme, globex):
    data = os.urandom(2 * F + 7)
    theirs = upload(api, globex, os.urandom(2 * F + 7), path="same/size")
    mine = upload(api, acme, data, path="same/size")
    vault.store.put(_object_key(vault, mine.id), [_read(vault, _object_key(vault, theirs.id))])
    _no_wrong_byte(api, acme.md(), mine.id, data, prefix_intact=False)


@on_seaweed
@pytest.mark.parametrize(
    "damage",
    ["missing", "empty", "header only", "one byte short", "final frame removed", "last tag cut"],
)
def test_a_truncated_or_missing_object_is_data_loss_before_any_byte(
    api: Stubs, vault, acme, damage
):
    data = os.urandom(3 * F + 100)
    asset = upload(api, acme, data, path="victim")
    key = _object_key(vault, asset.id)
    stored = _read(vault, key)
    header = _header_length(vault, asset.id)
    final_frame = 40 + 100
    if damage == "missing":
        vault.store.delete(key)
    else:
        keep = {
            "empty": 0,
            "header only": header,
            "one byte short": len(stored) - 1,
            "final frame removed": len(stored) - final_frame,
            "last tag cut": len(stored) - 16,
        }[damage]
        vault.store.put(key, [stored[:keep]])
    # the first two frames survive the last three kinds of damage
    intact = damage in {"one byte short", "final frame removed", "last tag cut"}
    _no_wrong_byte(api, acme.md(), asset.id, data, prefix_intact=intact)


@on_seaweed
def test_frames_swapped_inside_an_object_never_release_the_wrong_frame(api: Stubs, vault, acme):
    data = os.urandom(4 * F + 100)
    asset = upload(api, acme, data, path="frames")
    key = _object_key(vault, asset.id)
    stored = bytearray(_read(vault, key))
    h, step = _header_length(vault, asset.id), F + 32
    first, second = stored[h : h + step], stored[h + step : h + 2 * step]
    stored[h : h + step], stored[h + step : h + 2 * step] = second, first
    vault.store.put(key, [bytes(stored)])
    # a range inside the second frame: its ciphertext is now frame 1's
    received, error = download(
        api, acme.md(), asset.id, byte_range=asset_pb2.ByteRange(offset=F + 5, length=50)
    )
    assert error is not None and error.code() == grpc.StatusCode.DATA_LOSS
    assert body(received) == b""
    # the whole asset: the final frame is intact, so a header goes out, then DATA_LOSS
    # with no byte of the swapped frames
    received, error = download(api, acme.md(), asset.id)
    assert error is not None and error.code() == grpc.StatusCode.DATA_LOSS
    assert body(received) == b""


@on_seaweed
def test_bytes_appended_to_an_object_never_reach_a_client(api: Stubs, vault, acme):
    data = os.urandom(2 * F + 10)
    asset = upload(api, acme, data, path="extended")
    key = _object_key(vault, asset.id)
    stored = _read(vault, key)
    vault.store.put(key, [stored + stored[-200:] + os.urandom(F)])
    for range_, expected in [
        ({}, data),
        ({"suffix_length": 10}, data[-10:]),
        ({"suffix_length": INT64_MAX}, data),
    ]:
        received, error = download(api, acme.md(), asset.id, **range_)
        if error is None:
            assert body(received) == expected
        else:
            assert error.code() == grpc.StatusCode.DATA_LOSS and received == []
