"""The access audit log over a real gRPC server: every RPC leaves an event before it
releases anything; the log fails closed; auditors read their own log and nothing else."""

from __future__ import annotations

import json

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from rpc_harness import MiB, Stubs, Tenancy, bearer

from reelvault.app import Vault
from reelvault.audit import PLATFORM_LOG, StoredEvent, merkle
from reelvault.audit.verify import verify_export
from reelvault.auth import Role
from reelvault.catalog.audit import AuditFilter
from reelvault.lifecycle import EXPORT_KEY_MIN_AGE
from reelvault.rpc.actions import METHOD_ACTIONS
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


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def events(vault: Vault, log_id: str, **filters) -> list[StoredEvent]:
    page = vault.audit_log.list_events(
        log_id,
        start_us=0,
        end_us=2**62,
        where=AuditFilter(**filters),
        page_size=1000,
    )
    return page.events


def upload(api: Stubs, tenant: Tenancy, data: bytes, path: str = "a.ts") -> asset_pb2.Asset:
    messages = [asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path))]
    messages += [asset_pb2.UploadRequest(chunk=data[i : i + MiB]) for i in range(0, len(data), MiB)]
    messages.append(asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()))
    return api.assets.Upload(iter(messages), metadata=tenant.md(Role.INGEST))


@pytest.fixture
def audit(channel: grpc.Channel) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(channel)


def test_every_rpc_leaves_an_event_with_what_the_domain_knows(
    api: Stubs, audit, vault: Vault, acme: Tenancy, platform_token: str
):
    data = b"x" * (MiB + 17)
    asset = upload(api, acme, data)
    renderer = acme.md(Role.RENDERER)
    chunks = list(
        api.assets.Download(
            asset_pb2.DownloadRequest(
                asset_id=asset.id, byte_range=asset_pb2.ByteRange(offset=5, length=100)
            ),
            metadata=renderer,
        )
    )
    assert b"".join(c.chunk for c in chunks[1:]) == data[5:105]
    api.assets.StatAsset(asset_pb2.StatAssetRequest(asset_id=asset.id), metadata=renderer)
    api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=renderer)
    api.tenants.GetTenant(tenant_pb2.GetTenantRequest(tenant_id=acme.id), metadata=acme.md())
    api.keys.ListApiKeys(apikey_pb2.ListApiKeysRequest(), metadata=acme.md())
    created = api.keys.CreateApiKey(
        apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_RENDERER), metadata=acme.md()
    )
    api.keys.RevokeApiKey(
        apikey_pb2.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=acme.md()
    )
    platform = bearer(platform_token)
    api.tenants.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=platform)
    other = api.tenants.CreateTenant(tenant_pb2.CreateTenantRequest(name="new"), metadata=platform)
    auditor = acme.md(Role.AUDITOR)
    window = {"start_time": {"seconds": 0}, "end_time": {"seconds": 2**40}}
    audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(**window), metadata=auditor)
    list(audit.ExportAuditEvents(audit_pb2.ExportAuditEventsRequest(), metadata=auditor))
    audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=auditor)
    audit.GetInclusionProof(
        audit_pb2.GetInclusionProofRequest(sequence=0, tree_size=1), metadata=auditor
    )
    audit.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(old_size=1, new_size=2), metadata=auditor
    )
    audit.SetAuditRetention(
        audit_pb2.SetAuditRetentionRequest(retention_days=400), metadata=acme.md()
    )
    api.tenants.SetTenantPolicy(
        tenant_pb2.SetTenantPolicyRequest(direct_reads=True), metadata=acme.md()
    )
    # this vault's in-memory store cannot presign: a failed grant, recorded all the same
    refused = rpc_error(
        lambda: api.assets.OpenAsset(
            asset_pb2.OpenAssetRequest(asset_id=asset.id), metadata=renderer
        )
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    urls = distribution_pb2_grpc.DistributionServiceStub(api.channel)
    distributor = acme.md(Role.DISTRIBUTOR)
    issued = urls.IssueUrl(
        distribution_pb2.IssueRequest(asset_id=asset.id, session_id="viewer-7"),
        metadata=distributor,
    )
    urls.IssueCookie(distribution_pb2.IssueRequest(prefix="show/"), metadata=distributor)
    urls.RevokeSession(
        distribution_pb2.RevokeSessionRequest(session_id="viewer-7"), metadata=distributor
    )
    urls.RevokeAsset(distribution_pb2.RevokeAssetRequest(asset_id=asset.id), metadata=distributor)
    urls.ListSigningKeys(distribution_pb2.ListSigningKeysRequest(), metadata=distributor)
    urls.RotateSigningKey(distribution_pb2.RotateSigningKeyRequest(), metadata=acme.md())
    _privacy_and_key_calls(api, vault, acme, platform, other.id)
    api.assets.DeleteAsset(asset_pb2.DeleteAssetRequest(asset_id=asset.id), metadata=acme.md())

    recorded = events(vault, acme.id) + events(vault, PLATFORM_LOG) + events(vault, other.id)
    methods = {e.method for e in recorded}
    assert set(METHOD_ACTIONS) <= methods, set(METHOD_ACTIONS) - methods
    for event in recorded:
        # key operations inside a call are events of their own (a first URL makes a key)
        # (and so are what erasure, rewrap and tenant changes did, with their counts)
        if event.method in METHOD_ACTIONS and not (
            event.action.startswith(("key.", "url.key-")) or event.action in _DOMAIN_RECORDS
        ):
            assert event.action == METHOD_ACTIONS[event.method].value
    (issue,) = [e for e in recorded if e.action == "url.issue" and e.method.endswith("/IssueUrl")]
    assert issued.token.encode() not in issue.record  # the token is a bearer credential
    assert json.loads(issue.record)["unmapped"]["reelvault"]["detail"]["session"] == "viewer-7"
    (read,) = [e for e in recorded if e.action == "asset.read"]
    record = json.loads(read.record)
    assert record["resources"] == [{"name": "a.ts", "type": "asset", "uid": asset.id}]
    assert record["unmapped"]["reelvault"]["range"] == {"offset": 5, "length": 100}
    assert record["unmapped"]["reelvault"]["kek_version"] == 1
    assert record["http_request"]["user_agent"].startswith("grpc-python/")
    assert record["actor"]["user"]["uid"] == acme.tokens[Role.RENDERER].split("_")[1]
    assert record["src_endpoint"]["ip"] == "127.0.0.1"
    assert read.outcome == "allowed" and read.status == "OK"
    (write,) = [e for e in recorded if e.action == "asset.write"]
    assert json.loads(write.record)["unmapped"]["reelvault"]["range"]["length"] == len(data)
    # The platform admin's key creation in a tenant goes to that tenant's log.
    assert {e.log_id for e in recorded if e.action == "tenant.list"} == {PLATFORM_LOG}
    assert any(e.action == "key.create" and e.log_id == other.id for e in recorded)


_DOMAIN_RECORDS = {
    "subject.erased",
    "tenant.disable",
    "tenant.enable",
    "tenant.schedule-deletion",
    "tenant.cancel-deletion",
}


def _privacy_and_key_calls(
    api: Stubs, vault: Vault, acme: Tenancy, platform, other_id: str
) -> None:
    viewer = "viewer-7@example.com"
    payload = api.payloads.PutPayload(
        privacy_pb2.PutPayloadRequest(subject_id=viewer, purpose="greeting", data=b'{"n":1}'),
        metadata=acme.md(Role.INGEST),
    )
    api.consent.RecordConsent(
        privacy_pb2.RecordConsentRequest(
            subject_id=viewer, purpose="greeting", granted=True, source="form"
        ),
        metadata=acme.md(Role.INGEST),
    )
    api.consent.GetConsent(
        privacy_pb2.GetConsentRequest(subject_id=viewer), metadata=acme.md(Role.PRIVACY)
    )
    api.payloads.GetPayload(
        privacy_pb2.GetPayloadRequest(id=payload.id, purpose="greeting"),
        metadata=acme.md(Role.RENDERER),
    )
    api.payloads.ListPayloads(
        privacy_pb2.ListPayloadsRequest(subject_id=viewer), metadata=acme.md(Role.INGEST)
    )
    api.privacy.HashSubject(
        privacy_pb2.HashSubjectRequest(subject_id=viewer), metadata=acme.md(Role.AUDITOR)
    )
    list(
        api.privacy.ExportSubject(
            privacy_pb2.ExportSubjectRequest(subject_id=viewer), metadata=acme.md(Role.PRIVACY)
        )
    )
    api.privacy.SetLegalHold(
        privacy_pb2.SetLegalHoldRequest(subject_id=viewer, hold=False),
        metadata=acme.md(Role.PRIVACY),
    )
    api.payloads.DeletePayload(
        privacy_pb2.DeletePayloadRequest(id=payload.id), metadata=acme.md(Role.INGEST)
    )
    api.privacy.EraseSubject(
        privacy_pb2.EraseSubjectRequest(subject_id=viewer), metadata=acme.md(Role.PRIVACY)
    )
    keys = api.tenant_keys
    admin = acme.md()
    keys.GetKeyStatus(key_pb2.GetKeyStatusRequest(), metadata=admin)
    keys.RotateTenantKey(key_pb2.RotateTenantKeyRequest(), metadata=admin)
    list(keys.RewrapTenant(key_pb2.RewrapTenantRequest(), metadata=admin))
    keys.SetMinDecryptionVersion(key_pb2.KeyVersionRequest(version=1), metadata=admin)
    keys.DisableKeyVersion(key_pb2.KeyVersionRequest(version=1), metadata=admin)
    keys.EnableKeyVersion(key_pb2.KeyVersionRequest(version=1), metadata=admin)
    keys.RewrapRootKeys(key_pb2.RewrapRootKeysRequest(), metadata=platform)
    keys.DisableTenant(key_pb2.TenantRef(), metadata=admin)
    keys.EnableTenant(key_pb2.TenantRef(), metadata=admin)
    keys.ScheduleTenantDeletion(
        key_pb2.ScheduleTenantDeletionRequest(tenant_id=other_id, waiting_days=7),
        metadata=platform,
    )
    keys.CancelTenantDeletion(key_pb2.TenantRef(tenant_id=other_id), metadata=platform)
    recipient = X25519PrivateKey.generate().public_key()
    pem = recipient.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    vault.clock.advance(EXPORT_KEY_MIN_AGE.total_seconds())  # a week-old admin key asks
    export = keys.RequestKeyExport(
        key_pb2.RequestKeyExportRequest(recipient_public_key=pem), metadata=admin
    )
    keys.ApproveKeyExport(
        key_pb2.ApproveKeyExportRequest(tenant_id=acme.id, export_id=export.id),
        metadata=platform,
    )
    collected = keys.ExportTenantKeys(
        key_pb2.ExportTenantKeysRequest(export_id=export.id), metadata=admin
    )
    assert collected.envelope


def test_denied_failed_and_unauthenticated_calls_are_recorded_without_secrets(
    api: Stubs, vault: Vault, acme: Tenancy
):
    asset = upload(api, acme, b"abc")
    denied = rpc_error(
        lambda: api.assets.DeleteAsset(
            asset_pb2.DeleteAssetRequest(asset_id=asset.id), metadata=acme.md(Role.RENDERER)
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    missing = rpc_error(
        lambda: api.assets.StatAsset(
            asset_pb2.StatAssetRequest(asset_id="f" * 32), metadata=acme.md(Role.RENDERER)
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    forged = acme.tokens[Role.ADMIN][:-5] + "AAAAA"
    unauthenticated = rpc_error(
        lambda: api.assets.StatAsset(
            asset_pb2.StatAssetRequest(asset_id=asset.id), metadata=bearer(forged)
        )
    )
    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED
    tenant_log = events(vault, acme.id)
    assert [(e.action, e.outcome, e.status) for e in tenant_log[-2:]] == [
        ("asset.delete", "denied", "PERMISSION_DENIED"),
        ("asset.stat", "failed", "NOT_FOUND"),
    ]
    # The refused call never reached the domain; the record still names its target.
    assert tenant_log[-2].resource_id == asset.id
    (refused,) = events(vault, PLATFORM_LOG, outcomes=["denied"])
    assert (refused.action, refused.status, refused.actor_key_id) == (
        "asset.stat",
        "UNAUTHENTICATED",
        None,
    )
    with vault.database.transaction(readonly=True) as session:
        bodies = "".join(session.scalars(sa.text("SELECT body FROM audit_events")))
    for token in [*acme.tokens.values(), forged]:
        assert token[len("rvk_") + 17 :] not in bodies  # the secret (it may hold "_")


def test_the_log_fails_closed_when_the_database_breaks_mid_run(
    api: Stubs, vault: Vault, acme: Tenancy
):
    data = b"secret footage" * 1000
    asset = upload(api, acme, data)
    renderer = acme.md(Role.RENDERER)
    download = asset_pb2.DownloadRequest(asset_id=asset.id)
    assert b"".join(m.chunk for m in api.assets.Download(download, metadata=renderer)) == data

    with vault.database.engine.begin() as connection:  # the audit table can no longer be written
        connection.execute(sa.text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        received: list[asset_pb2.DownloadResponse] = []

        def read_all() -> None:
            for message in api.assets.Download(download, metadata=renderer):
                received.append(message)

        assert rpc_error(read_all).code() == grpc.StatusCode.UNAVAILABLE
        assert received == []  # not even the header
        stat = rpc_error(
            lambda: api.assets.StatAsset(
                asset_pb2.StatAssetRequest(asset_id=asset.id), metadata=renderer
            )
        )
        assert stat.code() == grpc.StatusCode.UNAVAILABLE
        keys_before = len(vault.api_keys.list(acme.id))
        create = rpc_error(
            lambda: api.keys.CreateApiKey(
                apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_RENDERER), metadata=acme.md()
            )
        )
        assert create.code() == grpc.StatusCode.UNAVAILABLE
        assert len(vault.api_keys.list(acme.id)) == keys_before  # no key made unaudited
        written = rpc_error(lambda: upload(api, acme, b"new", path="b.ts"))
        assert written.code() == grpc.StatusCode.UNAVAILABLE
        assert [a.path for a in vault.assets.list(acme.id)[0]] == ["a.ts"]
        deleted = rpc_error(
            lambda: api.assets.DeleteAsset(
                asset_pb2.DeleteAssetRequest(asset_id=asset.id), metadata=acme.md()
            )
        )
        assert deleted.code() == grpc.StatusCode.UNAVAILABLE
        assert vault.assets.stat(acme.id, asset.id).path == "a.ts"
    finally:
        with vault.database.engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert b"".join(m.chunk for m in api.assets.Download(download, metadata=renderer)) == data
    checkpoint = vault.audit_log.checkpoint(acme.id)
    lines = [e.record for e in vault.audit_log.export(acme.id, 0, checkpoint.size)]
    assert verify_export(lines, checkpoint.note, checkpoint.verifier_key).ok


def test_auditors_read_their_own_log_and_nothing_else(
    api: Stubs, audit, vault: Vault, acme: Tenancy, globex: Tenancy, platform_token: str
):
    asset = upload(api, acme, b"abc")
    auditor = acme.md(Role.AUDITOR)
    window = {"start_time": {"seconds": 0}, "end_time": {"seconds": 2**40}}
    mine = audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(**window), metadata=auditor)
    assert mine.events and {e.log_id for e in mine.events} == {acme.id}
    other = rpc_error(
        lambda: audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(tenant_id=globex.id, **window), metadata=auditor
        )
    )
    assert other.code() == grpc.StatusCode.NOT_FOUND
    no_data = rpc_error(
        lambda: list(
            api.assets.Download(asset_pb2.DownloadRequest(asset_id=asset.id), metadata=auditor)
        )
    )
    assert no_data.code() == grpc.StatusCode.PERMISSION_DENIED
    for role in (Role.ADMIN, Role.RENDERER, Role.INGEST, Role.DISTRIBUTOR, Role.PRIVACY):
        refused = rpc_error(
            lambda role=role: audit.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(**window), metadata=acme.md(role)
            )
        )
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    refused = rpc_error(
        lambda: audit.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(), metadata=bearer(platform_token)
        )
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED

    platform_auditor = vault.api_keys.create(tenant_id=None, role=Role.PLATFORM_AUDITOR)[1]
    theirs = audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(tenant_id=globex.id, **window),
        metadata=bearer(platform_auditor),
    )
    assert {e.log_id for e in theirs.events} == {globex.id}
    platform = audit.GetCheckpoint(
        audit_pb2.GetCheckpointRequest(), metadata=bearer(platform_auditor)
    )
    assert platform.log_id == PLATFORM_LOG
    refused = rpc_error(
        lambda: list(
            api.assets.ListAssets(asset_pb2.ListAssetsRequest(), metadata=bearer(platform_auditor))
        )
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    # Reading the log is itself on record, in the log read.
    assert events(vault, globex.id, actions=["audit.read"])


def test_checkpoints_and_proofs_over_the_wire_verify(audit, api: Stubs, acme: Tenancy):
    for n in range(5):
        upload(api, acme, b"x", path=f"{n}.ts")
    auditor = acme.md(Role.AUDITOR)
    first = audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=auditor)
    records = [
        r.record
        for r in audit.ExportAuditEvents(
            audit_pb2.ExportAuditEventsRequest(to_sequence=first.size), metadata=auditor
        )
    ]
    assert len(records) == first.size
    assert merkle.root([merkle.leaf_hash(r) for r in records]) == first.root_hash
    later = audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=auditor)
    assert later.size > first.size  # the export itself was recorded
    proof = audit.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(old_size=first.size, new_size=later.size),
        metadata=auditor,
    )
    assert merkle.verify_consistency(
        first.size, later.size, first.root_hash, later.root_hash, list(proof.hashes)
    )
    inclusion = audit.GetInclusionProof(
        audit_pb2.GetInclusionProofRequest(sequence=2, tree_size=later.size), metadata=auditor
    )
    assert inclusion.leaf_hash == merkle.leaf_hash(records[2])
    assert merkle.verify_inclusion(
        inclusion.leaf_hash, 2, later.size, list(inclusion.hashes), later.root_hash
    )
    window = {"start_time": {"seconds": 0}, "end_time": {"seconds": 1}}
    bad = rpc_error(
        lambda: audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_token="garbage", **window), metadata=auditor
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    no_range = rpc_error(
        lambda: audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(), metadata=auditor)
    )
    assert no_range.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_export_follows_new_events(audit, api: Stubs, acme: Tenancy):
    auditor = acme.md(Role.AUDITOR)
    stream = audit.ExportAuditEvents(
        audit_pb2.ExportAuditEventsRequest(follow=True), metadata=auditor, timeout=30
    )
    seen = [next(stream).sequence]  # the tenant's creation
    upload(api, acme, b"late", path="late.ts")
    while True:
        record = next(stream)
        seen.append(record.sequence)
        if json.loads(record.record)["unmapped"]["reelvault"]["action"] == "asset.write":
            break
    stream.cancel()
    assert seen == list(range(len(seen)))
