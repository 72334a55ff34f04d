"""Payloads, consent, erasure and export end to end over a real server, on the catalog the
environment selects, with the in-memory store and SeaweedFS."""

from __future__ import annotations

import json

import grpc
import pytest
from rpc_harness import Stubs, Tenancy, rpc_error

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.v1 import asset_pb2, privacy_pb2

pytestmark = pytest.mark.db

VIEWER = "viewer-42@example.com"


@pytest.fixture
def vault(database, root_provider, clock, store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)


def put(api: Stubs, tenant: Tenancy, data: bytes = b'{"name": "Ada"}', **kwargs):
    request = privacy_pb2.PutPayloadRequest(
        subject_id=kwargs.pop("subject_id", VIEWER),
        purpose=kwargs.pop("purpose", "personalization"),
        data=data,
        **kwargs,
    )
    return api.payloads.PutPayload(request, metadata=tenant.md(Role.INGEST))


def consent(api: Stubs, tenant: Tenancy, granted: bool, purpose: str = "personalization"):
    return api.consent.RecordConsent(
        privacy_pb2.RecordConsentRequest(
            subject_id=VIEWER, purpose=purpose, granted=granted, source="signup-form"
        ),
        metadata=tenant.md(Role.INGEST),
    )


def get(api: Stubs, tenant: Tenancy, payload_id: str, purpose: str = "personalization"):
    return api.payloads.GetPayload(
        privacy_pb2.GetPayloadRequest(id=payload_id, purpose=purpose),
        metadata=tenant.md(Role.RENDERER),
    )


def test_a_renderer_reads_a_payload_only_while_consent_is_active(api: Stubs, acme: Tenancy):
    payload = put(api, acme)
    assert len(payload.subject) == 32 and VIEWER not in payload.subject
    error = rpc_error(lambda: get(api, acme, payload.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    consent(api, acme, True)
    assert get(api, acme, payload.id).data == b'{"name": "Ada"}'
    error = rpc_error(lambda: get(api, acme, payload.id, purpose="marketing"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    consent(api, acme, False)
    error = rpc_error(lambda: get(api, acme, payload.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    history = api.consent.GetConsent(
        privacy_pb2.GetConsentRequest(subject_id=VIEWER), metadata=acme.md(Role.PRIVACY)
    )
    assert [d.granted for d in history.history] == [True, False]
    assert dict(history.granted) == {"personalization": False}


def test_another_tenant_sees_nothing(api: Stubs, acme: Tenancy, globex: Tenancy):
    payload = put(api, acme)
    consent(api, acme, True)
    error = rpc_error(lambda: get(api, globex, payload.id))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_erasure_removes_payloads_and_personalized_renditions(
    api: Stubs, acme: Tenancy, vault: Vault
):
    payload = put(api, acme)
    consent(api, acme, True)
    rendition = api.assets.Upload(
        iter(
            [
                asset_pb2.UploadRequest(
                    metadata=asset_pb2.AssetMetadata(path="p/ada.mp4", subject_id=VIEWER)
                ),
                asset_pb2.UploadRequest(chunk=b"frames" * 1000),
                asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()),
            ]
        ),
        metadata=acme.md(Role.INGEST),
    )
    assert rendition.subject == payload.subject
    erased = api.privacy.EraseSubject(
        privacy_pb2.EraseSubjectRequest(subject_id=VIEWER), metadata=acme.md(Role.PRIVACY)
    )
    assert (erased.key_destroyed, erased.payloads_deleted, erased.assets_deleted) == (True, 1, 1)
    assert rpc_error(lambda: get(api, acme, payload.id)).code() == grpc.StatusCode.NOT_FOUND
    error = rpc_error(
        lambda: api.assets.StatAsset(
            asset_pb2.StatAssetRequest(asset_id=rendition.id), metadata=acme.md(Role.INGEST)
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # an erased subject takes no new data
    assert rpc_error(lambda: put(api, acme)).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_legal_hold_blocks_erasure(api: Stubs, acme: Tenancy):
    put(api, acme)
    api.privacy.SetLegalHold(
        privacy_pb2.SetLegalHoldRequest(subject_id=VIEWER, hold=True),
        metadata=acme.md(Role.PRIVACY),
    )
    error = rpc_error(
        lambda: api.privacy.EraseSubject(
            privacy_pb2.EraseSubjectRequest(subject_id=VIEWER), metadata=acme.md(Role.PRIVACY)
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_export_returns_the_whole_picture(api: Stubs, acme: Tenancy):
    payload = put(api, acme)
    consent(api, acme, True)
    get(api, acme, payload.id)
    chunks = api.privacy.ExportSubject(
        privacy_pb2.ExportSubjectRequest(subject_id=VIEWER), metadata=acme.md(Role.PRIVACY)
    )
    document = json.loads(b"".join(c.data for c in chunks))
    assert document["subject"] == payload.subject
    assert document["payloads"][0]["data"] == {"name": "Ada"}
    assert [c["granted"] for c in document["consent"]] == [True]
    actions = {e["action"] for e in document["audit_events"]}
    assert {"payload.write", "payload.read", "consent.write"} <= actions
    assert VIEWER not in json.dumps(document)
