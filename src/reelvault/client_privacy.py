"""The client's calls for viewer data and the key lifecycle: payloads, consent, privacy
operations and KeyService. Mixed into :class:`reelvault.client.Client`; speaks only the
wire API (the generated code), like the rest of the client."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.timestamp_pb2 import Timestamp

from reelvault.v1 import key_pb2, key_pb2_grpc, privacy_pb2, privacy_pb2_grpc

__all__ = [
    "ConsentDecision",
    "ConsentState",
    "Erasure",
    "KeyExport",
    "KeyStatus",
    "KeyVersion",
    "Payload",
    "PrivacyCalls",
    "RewrapStep",
    "SubjectStatus",
]


@dataclass(frozen=True, slots=True)
class Payload:
    id: str
    tenant_id: str
    subject: str
    """The subject's pseudonym; the viewer id is never stored."""
    purpose: str
    content_type: str
    labels: Mapping[str, str] = field(hash=False)
    size: int
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    subject: str
    purpose: str
    granted: bool
    source: str
    effective_at: datetime
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ConsentState:
    subject: str
    granted: Mapping[str, bool] = field(hash=False)
    history: tuple[ConsentDecision, ...]


@dataclass(frozen=True, slots=True)
class Erasure:
    subject: str
    key_destroyed: bool
    payloads_deleted: int
    assets_deleted: int


@dataclass(frozen=True, slots=True)
class SubjectStatus:
    subject: str
    legal_hold: bool
    created_at: datetime
    erased_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyVersion:
    version: int
    state: str
    root_key_id: str
    created_at: datetime
    state_changed_at: datetime
    deletion_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyStatus:
    tenant_id: str
    state: str
    min_decryption_version: int
    versions: tuple[KeyVersion, ...]
    deletion_due_at: datetime | None
    kms_key_arn: str
    keys_to_rewrap: Mapping[str, int] = field(hash=False)


@dataclass(frozen=True, slots=True)
class RewrapStep:
    kind: str
    moved: int
    done: bool


@dataclass(frozen=True, slots=True)
class KeyExport:
    id: str
    tenant_id: str
    algorithm: str
    recipient_fingerprint: str
    requested_at: datetime
    approved_at: datetime | None
    collected_at: datetime | None


def _time(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def _maybe(message: Any, name: str) -> datetime | None:
    return _time(getattr(message, name)) if message.HasField(name) else None


def _payload(m: privacy_pb2.Payload) -> Payload:
    return Payload(
        id=m.id,
        tenant_id=m.tenant_id,
        subject=m.subject,
        purpose=m.purpose,
        content_type=m.content_type,
        labels=dict(m.labels),
        size=m.size,
        created_at=_time(m.create_time),
        expires_at=_maybe(m, "expire_time"),
    )


def _decision(m: privacy_pb2.ConsentDecision) -> ConsentDecision:
    return ConsentDecision(
        subject=m.subject,
        purpose=m.purpose,
        granted=m.granted,
        source=m.source,
        effective_at=_time(m.effective_time),
        recorded_at=_time(m.record_time),
    )


def _subject(m: privacy_pb2.SubjectStatus) -> SubjectStatus:
    return SubjectStatus(
        subject=m.subject,
        legal_hold=m.legal_hold,
        created_at=_time(m.create_time),
        erased_at=_maybe(m, "erase_time"),
    )


def _status(m: key_pb2.KeyStatus) -> KeyStatus:
    return KeyStatus(
        tenant_id=m.tenant_id,
        state=m.state,
        min_decryption_version=m.min_decryption_version,
        versions=tuple(
            KeyVersion(
                version=v.version,
                state=v.state,
                root_key_id=v.root_key_id,
                created_at=_time(v.create_time),
                state_changed_at=_time(v.state_change_time),
                deletion_due_at=_maybe(v, "deletion_due_time"),
            )
            for v in m.versions
        ),
        deletion_due_at=_maybe(m, "deletion_due_time"),
        kms_key_arn=m.kms_key_arn,
        keys_to_rewrap=dict(m.keys_to_rewrap),
    )


def _export(m: key_pb2.KeyExport) -> KeyExport:
    return KeyExport(
        id=m.id,
        tenant_id=m.tenant_id,
        algorithm=m.algorithm,
        recipient_fingerprint=m.recipient_fingerprint,
        requested_at=_time(m.request_time),
        approved_at=_maybe(m, "approve_time"),
        collected_at=_maybe(m, "collect_time"),
    )


class PrivacyCalls:
    """Payloads, consent, privacy operations and the key lifecycle (see docs/privacy.md
    and docs/keys.md). Tenant-scoped calls act on the caller's tenant; key calls take a
    ``tenant_id`` for platform admins (tenant admins: their own, ``None``)."""

    _channel: Any
    _metadata: tuple[tuple[str, str], ...]
    _timeout: float | None

    def _unary(self, method: Any, request: Any) -> Any:  # pragma: no cover - Client's
        raise NotImplementedError

    def _error(self, exc: Any) -> Exception:  # pragma: no cover - Client's
        raise NotImplementedError

    def _stubs(self) -> tuple[Any, Any, Any, Any]:
        stubs = getattr(self, "_privacy_stubs", None)
        if stubs is None:
            channel = self._channel
            stubs = (
                privacy_pb2_grpc.PayloadServiceStub(channel),  # type: ignore[no-untyped-call]
                privacy_pb2_grpc.ConsentServiceStub(channel),  # type: ignore[no-untyped-call]
                privacy_pb2_grpc.PrivacyServiceStub(channel),  # type: ignore[no-untyped-call]
                key_pb2_grpc.KeyServiceStub(channel),  # type: ignore[no-untyped-call]
            )
            self._privacy_stubs = stubs
        return stubs

    # -- payloads -----------------------------------------------------------------------

    def put_payload(
        self,
        subject_id: str,
        purpose: str,
        data: bytes,
        *,
        content_type: str = "application/json",
        ttl: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> Payload:
        """Seal and store a payload for a viewer and a purpose (ttl 0: no expiry)."""
        request = privacy_pb2.PutPayloadRequest(
            subject_id=subject_id,
            purpose=purpose,
            data=data,
            content_type=content_type,
            ttl_seconds=ttl,
            labels=dict(labels or {}),
        )
        return _payload(self._unary(self._stubs()[0].PutPayload, request))

    def get_payload(self, payload_id: str, purpose: str) -> tuple[Payload, bytes]:
        """A payload's data for ``purpose``; FailedPrecondition without active consent."""
        request = privacy_pb2.GetPayloadRequest(id=payload_id, purpose=purpose)
        reply = self._unary(self._stubs()[0].GetPayload, request)
        return _payload(reply.payload), reply.data

    def list_payloads(
        self, subject_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[builtins.list[Payload], str]:
        request = privacy_pb2.ListPayloadsRequest(
            subject_id=subject_id, page_size=page_size, page_token=page_token
        )
        reply = self._unary(self._stubs()[0].ListPayloads, request)
        return [_payload(p) for p in reply.payloads], reply.next_page_token

    def delete_payload(self, payload_id: str) -> None:
        self._unary(self._stubs()[0].DeletePayload, privacy_pb2.DeletePayloadRequest(id=payload_id))

    # -- consent ------------------------------------------------------------------------

    def record_consent(
        self,
        subject_id: str,
        purpose: str,
        *,
        granted: bool,
        source: str,
        effective_at: datetime | None = None,
    ) -> ConsentDecision:
        request = privacy_pb2.RecordConsentRequest(
            subject_id=subject_id, purpose=purpose, granted=granted, source=source
        )
        if effective_at is not None:
            request.effective_time.FromDatetime(effective_at.astimezone(UTC))
        return _decision(self._unary(self._stubs()[1].RecordConsent, request))

    def get_consent(self, subject_id: str, purpose: str = "") -> ConsentState:
        request = privacy_pb2.GetConsentRequest(subject_id=subject_id, purpose=purpose)
        reply = self._unary(self._stubs()[1].GetConsent, request)
        return ConsentState(
            subject=reply.subject,
            granted=dict(reply.granted),
            history=tuple(_decision(d) for d in reply.history),
        )

    # -- privacy operations -------------------------------------------------------------

    def hash_subject(self, subject_id: str) -> str:
        request = privacy_pb2.HashSubjectRequest(subject_id=subject_id)
        return str(self._unary(self._stubs()[2].HashSubject, request).subject)

    def erase_subject(self, subject_id: str) -> Erasure:
        request = privacy_pb2.EraseSubjectRequest(subject_id=subject_id)
        reply = self._unary(self._stubs()[2].EraseSubject, request)
        return Erasure(
            subject=reply.subject,
            key_destroyed=reply.key_destroyed,
            payloads_deleted=reply.payloads_deleted,
            assets_deleted=reply.assets_deleted,
        )

    def export_subject(self, subject_id: str) -> Iterator[bytes]:
        """The subject's export document, in pieces (JSON once joined)."""
        request = privacy_pb2.ExportSubjectRequest(subject_id=subject_id)
        try:
            for chunk in self._stubs()[2].ExportSubject(request, metadata=self._metadata):
                yield chunk.data
        except grpc.RpcError as exc:
            raise self._error(exc) from exc

    def set_legal_hold(self, subject_id: str, hold: bool) -> SubjectStatus:
        request = privacy_pb2.SetLegalHoldRequest(subject_id=subject_id, hold=hold)
        return _subject(self._unary(self._stubs()[2].SetLegalHold, request))

    # -- keys ---------------------------------------------------------------------------

    def key_status(self, tenant_id: str | None = None) -> KeyStatus:
        request = key_pb2.GetKeyStatusRequest(tenant_id=tenant_id or "")
        return _status(self._unary(self._stubs()[3].GetKeyStatus, request))

    def rotate_tenant_key(self, tenant_id: str | None = None) -> KeyStatus:
        request = key_pb2.RotateTenantKeyRequest(tenant_id=tenant_id or "")
        return _status(self._unary(self._stubs()[3].RotateTenantKey, request))

    def rewrap_tenant(self, tenant_id: str | None = None) -> Iterator[RewrapStep]:
        """Progress of the rewrap, kind by kind; resumable (call again after a failure)."""
        request = key_pb2.RewrapTenantRequest(tenant_id=tenant_id or "")
        try:
            for step in self._stubs()[3].RewrapTenant(request, metadata=self._metadata):
                yield RewrapStep(step.kind, step.moved, step.done)
        except grpc.RpcError as exc:
            raise self._error(exc) from exc

    def _version_call(self, name: str, version: int, tenant_id: str | None) -> KeyStatus:
        request = key_pb2.KeyVersionRequest(tenant_id=tenant_id or "", version=version)
        return _status(self._unary(getattr(self._stubs()[3], name), request))

    def disable_key_version(self, version: int, tenant_id: str | None = None) -> KeyStatus:
        return self._version_call("DisableKeyVersion", version, tenant_id)

    def enable_key_version(self, version: int, tenant_id: str | None = None) -> KeyStatus:
        return self._version_call("EnableKeyVersion", version, tenant_id)

    def set_min_decryption_version(self, version: int, tenant_id: str | None = None) -> KeyStatus:
        return self._version_call("SetMinDecryptionVersion", version, tenant_id)

    def rewrap_root_keys(self) -> tuple[int, int]:
        """(KEK versions, pseudonym keys) rewrapped under the current root key."""
        reply = self._unary(self._stubs()[3].RewrapRootKeys, key_pb2.RewrapRootKeysRequest())
        return reply.kek_versions, reply.pseudonym_keys

    def _tenant_call(self, name: str, tenant_id: str | None) -> KeyStatus:
        request = key_pb2.TenantRef(tenant_id=tenant_id or "")
        return _status(self._unary(getattr(self._stubs()[3], name), request))

    def schedule_tenant_deletion(
        self, waiting_days: int, tenant_id: str | None = None
    ) -> KeyStatus:
        request = key_pb2.ScheduleTenantDeletionRequest(
            tenant_id=tenant_id or "", waiting_days=waiting_days
        )
        return _status(self._unary(self._stubs()[3].ScheduleTenantDeletion, request))

    def cancel_tenant_deletion(self, tenant_id: str | None = None) -> KeyStatus:
        return self._tenant_call("CancelTenantDeletion", tenant_id)

    def disable_tenant(self, tenant_id: str | None = None) -> KeyStatus:
        return self._tenant_call("DisableTenant", tenant_id)

    def enable_tenant(self, tenant_id: str | None = None) -> KeyStatus:
        return self._tenant_call("EnableTenant", tenant_id)

    def request_key_export(
        self, recipient_public_key_pem: bytes, tenant_id: str | None = None
    ) -> KeyExport:
        request = key_pb2.RequestKeyExportRequest(
            tenant_id=tenant_id or "", recipient_public_key=recipient_public_key_pem
        )
        return _export(self._unary(self._stubs()[3].RequestKeyExport, request))

    def approve_key_export(self, tenant_id: str, export_id: str) -> KeyExport:
        request = key_pb2.ApproveKeyExportRequest(tenant_id=tenant_id, export_id=export_id)
        return _export(self._unary(self._stubs()[3].ApproveKeyExport, request))

    def export_tenant_keys(
        self, export_id: str, tenant_id: str | None = None
    ) -> tuple[KeyExport, bytes]:
        """The approved export's envelope (docs/key-export.md); collected once."""
        request = key_pb2.ExportTenantKeysRequest(tenant_id=tenant_id or "", export_id=export_id)
        reply = self._unary(self._stubs()[3].ExportTenantKeys, request)
        return _export(reply.export), reply.envelope
