"""Servicers of viewer data and the key lifecycle: PayloadService, ConsentService,
PrivacyService (the caller's tenant, from its API key) and KeyService (tenant admins: their
own tenant; platform admins: the tenant they name). Catalog and key provider calls, run in
worker threads like the other catalog-only calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from reelvault.app import Vault
from reelvault.errors import InvalidArgument, NotFound
from reelvault.keys.tenant import KekVersion
from reelvault.lifecycle import KeyExport, KeyStatus
from reelvault.objects import RewrapProgress
from reelvault.privacy import ConsentDecision, PayloadInfo
from reelvault.privacy.consent import current_states
from reelvault.privacy.subjects import SubjectInfo
from reelvault.rpc import convert
from reelvault.rpc.interceptors import current_principal
from reelvault.rpc.servicers import _caller_tenant, _check_tenant_id, _require_access
from reelvault.v1 import key_pb2, key_pb2_grpc, privacy_pb2, privacy_pb2_grpc

__all__ = ["ConsentServicer", "KeyServicer", "PayloadServicer", "PrivacyServicer"]

_EXPORT_CHUNK: Final = 64 * 1024


def _payload_to_proto(info: PayloadInfo) -> privacy_pb2.Payload:
    message = privacy_pb2.Payload(
        id=info.id,
        tenant_id=info.tenant_id,
        subject=info.pseudonym,
        purpose=info.purpose,
        content_type=info.content_type,
        labels=dict(info.labels),
        size=info.size,
        create_time=convert.timestamp(info.created_at),
    )
    if info.expires_at is not None:
        message.expire_time.CopyFrom(convert.timestamp(info.expires_at))
    return message


def _decision_to_proto(d: ConsentDecision) -> privacy_pb2.ConsentDecision:
    return privacy_pb2.ConsentDecision(
        subject=d.subject,
        purpose=d.purpose,
        granted=d.granted,
        source=d.source,
        effective_time=convert.timestamp(d.effective_at),
        record_time=convert.timestamp(d.recorded_at),
    )


def _subject_to_proto(info: SubjectInfo) -> privacy_pb2.SubjectStatus:
    message = privacy_pb2.SubjectStatus(
        subject=info.pseudonym,
        legal_hold=info.legal_hold,
        create_time=convert.timestamp(info.created_at),
    )
    if info.erased_at is not None:
        message.erase_time.CopyFrom(convert.timestamp(info.erased_at))
    return message


class PayloadServicer(privacy_pb2_grpc.PayloadServiceServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, vault: Vault) -> None:
        self._payloads = vault.payloads

    async def PutPayload(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.PutPayloadRequest, context: Any
    ) -> privacy_pb2.Payload:
        tenant_id = _caller_tenant()
        if request.ttl_seconds < 0:
            raise InvalidArgument("a TTL is not negative (0: no expiry)")
        info = await asyncio.to_thread(
            self._payloads.put,
            tenant_id,
            request.subject_id,
            purpose=request.purpose,
            data=request.data,
            content_type=request.content_type,
            ttl_seconds=request.ttl_seconds or None,
            labels=dict(request.labels),
        )
        return _payload_to_proto(info)

    async def GetPayload(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.GetPayloadRequest, context: Any
    ) -> privacy_pb2.PayloadData:
        tenant_id = _caller_tenant()
        info, data = await asyncio.to_thread(
            self._payloads.get, tenant_id, request.id, request.purpose
        )
        return privacy_pb2.PayloadData(payload=_payload_to_proto(info), data=data)

    async def ListPayloads(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.ListPayloadsRequest, context: Any
    ) -> privacy_pb2.ListPayloadsResponse:
        tenant_id = _caller_tenant()
        infos, token = await asyncio.to_thread(
            self._payloads.list,
            tenant_id,
            request.subject_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return privacy_pb2.ListPayloadsResponse(
            payloads=[_payload_to_proto(i) for i in infos], next_page_token=token
        )

    async def DeletePayload(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.DeletePayloadRequest, context: Any
    ) -> privacy_pb2.DeletePayloadResponse:
        tenant_id = _caller_tenant()
        await asyncio.to_thread(self._payloads.delete, tenant_id, request.id)
        return privacy_pb2.DeletePayloadResponse()


class ConsentServicer(privacy_pb2_grpc.ConsentServiceServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, vault: Vault) -> None:
        self._consents = vault.consents

    async def RecordConsent(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.RecordConsentRequest, context: Any
    ) -> privacy_pb2.ConsentDecision:
        tenant_id = _caller_tenant()
        effective = None
        if request.HasField("effective_time"):
            micros = convert.micros(request.effective_time)
            try:
                effective = datetime.fromtimestamp(micros / 1e6, UTC)
            except (OverflowError, OSError, ValueError):
                raise InvalidArgument("the effective time is out of range") from None
        decision = await asyncio.to_thread(
            self._consents.record,
            tenant_id,
            request.subject_id,
            request.purpose,
            granted=request.granted,
            source=request.source,
            effective_at=effective,
        )
        return _decision_to_proto(decision)

    async def GetConsent(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.GetConsentRequest, context: Any
    ) -> privacy_pb2.GetConsentResponse:
        tenant_id = _caller_tenant()
        pseudonym, history = await asyncio.to_thread(
            self._consents.history, tenant_id, request.subject_id, request.purpose or None
        )
        return privacy_pb2.GetConsentResponse(
            subject=pseudonym,
            granted=current_states(history),
            history=[_decision_to_proto(d) for d in history],
        )


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, vault: Vault) -> None:
        self._privacy = vault.privacy

    async def HashSubject(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.HashSubjectRequest, context: Any
    ) -> privacy_pb2.HashSubjectResponse:
        tenant_id = _caller_tenant()
        pseudonym = await asyncio.to_thread(
            self._privacy.hash_subject, tenant_id, request.subject_id
        )
        return privacy_pb2.HashSubjectResponse(subject=pseudonym)

    async def EraseSubject(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.EraseSubjectRequest, context: Any
    ) -> privacy_pb2.EraseSubjectResponse:
        tenant_id = _caller_tenant()
        erased = await asyncio.to_thread(self._privacy.erase, tenant_id, request.subject_id)
        return privacy_pb2.EraseSubjectResponse(
            subject=erased.pseudonym,
            key_destroyed=erased.key_destroyed,
            payloads_deleted=erased.payloads_deleted,
            assets_deleted=erased.assets_deleted,
        )

    async def ExportSubject(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.ExportSubjectRequest, context: Any
    ) -> AsyncIterator[privacy_pb2.ExportChunk]:
        tenant_id = _caller_tenant()
        pieces = await asyncio.to_thread(self._privacy.export, tenant_id, request.subject_id)
        while True:
            chunk = await asyncio.to_thread(_gather, pieces)
            if not chunk:
                return
            yield privacy_pb2.ExportChunk(data=chunk)

    async def SetLegalHold(  # noqa: N802 - gRPC method names
        self, request: privacy_pb2.SetLegalHoldRequest, context: Any
    ) -> privacy_pb2.SubjectStatus:
        tenant_id = _caller_tenant()
        info = await asyncio.to_thread(
            self._privacy.set_legal_hold, tenant_id, request.subject_id, request.hold
        )
        return _subject_to_proto(info)


def _gather(pieces: Iterator[bytes]) -> bytes:
    """Up to about 64 KiB of the export's next pieces (b"" at the end)."""
    out = bytearray()
    for piece in pieces:
        out += piece
        if len(out) >= _EXPORT_CHUNK:
            break
    return bytes(out)


# --- keys --------------------------------------------------------------------------------


def _key_tenant(requested: str) -> str:
    """The tenant a key request acts on: a tenant admin's own (an empty field means it),
    or the one a platform admin names; another tenant looks missing."""
    principal = current_principal()
    _check_tenant_id(requested)
    tenant_id = requested or principal.tenant_id
    if tenant_id is None:
        raise InvalidArgument("name the tenant")
    _require_access(principal, tenant_id, NotFound("tenant not found"))
    return tenant_id


def _version_to_proto(v: KekVersion) -> key_pb2.KeyVersion:
    message = key_pb2.KeyVersion(
        version=v.version,
        state=str(v.state),
        root_key_id=v.root_key_id,
        create_time=convert.timestamp(v.created_at),
        state_change_time=convert.timestamp(v.state_changed_at),
    )
    if v.deletion_due_at is not None:
        message.deletion_due_time.CopyFrom(convert.timestamp(v.deletion_due_at))
    return message


def _status_to_proto(status: KeyStatus) -> key_pb2.KeyStatus:
    tenant = status.tenant
    message = key_pb2.KeyStatus(
        tenant_id=tenant.id,
        state=str(tenant.state),
        min_decryption_version=tenant.min_decryption_version,
        versions=[_version_to_proto(v) for v in status.versions],
        kms_key_arn=tenant.kms_key_arn or "",
        keys_to_rewrap=status.keys_to_rewrap,
    )
    if tenant.deletion_due_at is not None:
        message.deletion_due_time.CopyFrom(convert.timestamp(tenant.deletion_due_at))
    return message


def _export_to_proto(export: KeyExport) -> key_pb2.KeyExport:
    message = key_pb2.KeyExport(
        id=export.id,
        tenant_id=export.tenant_id,
        algorithm=export.algorithm,
        recipient_fingerprint=export.fingerprint,
        request_time=convert.timestamp(export.requested_at),
    )
    if export.approved_at is not None:
        message.approve_time.CopyFrom(convert.timestamp(export.approved_at))
    if export.collected_at is not None:
        message.collect_time.CopyFrom(convert.timestamp(export.collected_at))
    return message


class KeyServicer(key_pb2_grpc.KeyServiceServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, vault: Vault) -> None:
        self._keys = vault.tenant_keys
        self._lifecycle = vault.lifecycle

    async def _status(self, tenant_id: str) -> key_pb2.KeyStatus:
        status = await asyncio.to_thread(self._lifecycle.status, tenant_id)
        return _status_to_proto(status)

    async def GetKeyStatus(  # noqa: N802 - gRPC method names
        self, request: key_pb2.GetKeyStatusRequest, context: Any
    ) -> key_pb2.KeyStatus:
        return await self._status(_key_tenant(request.tenant_id))

    async def RotateTenantKey(  # noqa: N802 - gRPC method names
        self, request: key_pb2.RotateTenantKeyRequest, context: Any
    ) -> key_pb2.KeyStatus:
        tenant_id = _key_tenant(request.tenant_id)
        await asyncio.to_thread(self._keys.rotate, tenant_id)
        return await self._status(tenant_id)

    async def RewrapTenant(  # noqa: N802 - gRPC method names
        self, request: key_pb2.RewrapTenantRequest, context: Any
    ) -> AsyncIterator[key_pb2.RewrapProgress]:
        tenant_id = _key_tenant(request.tenant_id)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RewrapProgress | None] = asyncio.Queue()

        def report(step: RewrapProgress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, step)

        def run() -> None:
            try:
                self._lifecycle.rewrap(tenant_id, report)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        while True:
            step = await queue.get()
            if step is None:
                break
            yield key_pb2.RewrapProgress(kind=step.kind, moved=step.moved, done=step.done)
        await task  # raises what the rewrap raised

    async def DisableKeyVersion(  # noqa: N802 - gRPC method names
        self, request: key_pb2.KeyVersionRequest, context: Any
    ) -> key_pb2.KeyStatus:
        tenant_id = _key_tenant(request.tenant_id)
        await asyncio.to_thread(self._keys.disable, tenant_id, request.version)
        return await self._status(tenant_id)

    async def EnableKeyVersion(  # noqa: N802 - gRPC method names
        self, request: key_pb2.KeyVersionRequest, context: Any
    ) -> key_pb2.KeyStatus:
        tenant_id = _key_tenant(request.tenant_id)
        await asyncio.to_thread(self._keys.enable, tenant_id, request.version)
        return await self._status(tenant_id)

    async def SetMinDecryptionVersion(  # noqa: N802 - gRPC method names
        self, request: key_pb2.KeyVersionRequest, context: Any
    ) -> key_pb2.KeyStatus:
        tenant_id = _key_tenant(request.tenant_id)
        await asyncio.to_thread(self._keys.set_min_decryption_version, tenant_id, request.version)
        return await self._status(tenant_id)

    async def RewrapRootKeys(  # noqa: N802 - gRPC method names
        self, request: key_pb2.RewrapRootKeysRequest, context: Any
    ) -> key_pb2.RewrapRootKeysResponse:
        keks, pseudonyms = await asyncio.to_thread(self._keys.rewrap_root)
        return key_pb2.RewrapRootKeysResponse(kek_versions=keks, pseudonym_keys=pseudonyms)

    async def ScheduleTenantDeletion(  # noqa: N802 - gRPC method names
        self, request: key_pb2.ScheduleTenantDeletionRequest, context: Any
    ) -> key_pb2.KeyStatus:
        tenant_id = _key_tenant(request.tenant_id)
        await asyncio.to_thread(
            self._keys.schedule_tenant_deletion, tenant_id, request.waiting_days
        )
        return await self._status(tenant_id)

    async def CancelTenantDeletion(  # noqa: N802 - gRPC method names
        self, request: key_pb2.TenantRef, context: Any
    ) -> key_pb2.KeyStatus:
        tenant_id = _key_tenant(request.tenant_id)
        await asyncio.to_thread(self._keys.cancel_tenant_deletion, tenant_id)
        return await self._status(tenant_id)

    async def DisableTenant(  # noqa: N802 - gRPC method names
        self, request: key_pb2.TenantRef, context: Any
    ) -> key_pb2.KeyStatus:
        tenant_id = _key_tenant(request.tenant_id)
        await asyncio.to_thread(self._keys.disable_tenant, tenant_id)
        return await self._status(tenant_id)

    async def EnableTenant(  # noqa: N802 - gRPC method names
        self, request: key_pb2.TenantRef, context: Any
    ) -> key_pb2.KeyStatus:
        tenant_id = _key_tenant(request.tenant_id)
        await asyncio.to_thread(self._keys.enable_tenant, tenant_id)
        return await self._status(tenant_id)

    async def RequestKeyExport(  # noqa: N802 - gRPC method names
        self, request: key_pb2.RequestKeyExportRequest, context: Any
    ) -> key_pb2.KeyExport:
        tenant_id = _key_tenant(request.tenant_id)
        export = await asyncio.to_thread(
            self._lifecycle.request_export,
            tenant_id,
            request.recipient_public_key,
            current_principal().key_id,
        )
        return _export_to_proto(export)

    async def ApproveKeyExport(  # noqa: N802 - gRPC method names
        self, request: key_pb2.ApproveKeyExportRequest, context: Any
    ) -> key_pb2.KeyExport:
        tenant_id = _key_tenant(request.tenant_id)
        export = await asyncio.to_thread(
            self._lifecycle.approve_export,
            tenant_id,
            request.export_id,
            current_principal().key_id,
        )
        return _export_to_proto(export)

    async def ExportTenantKeys(  # noqa: N802 - gRPC method names
        self, request: key_pb2.ExportTenantKeysRequest, context: Any
    ) -> key_pb2.TenantKeyExport:
        tenant_id = _key_tenant(request.tenant_id)
        export, envelope = await asyncio.to_thread(
            self._lifecycle.collect_export, tenant_id, request.export_id
        )
        return key_pb2.TenantKeyExport(export=_export_to_proto(export), envelope=envelope)
