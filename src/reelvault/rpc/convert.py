"""Protobuf messages <-> domain dataclasses; nothing else.

Every function here is pure. Values the domain validates (ids, paths, labels, ranges) are
passed through unchanged so the domain's error is the one the caller sees; only what is
a property of the wire format is decided here: an unset proto enum, an unset optional
field, which member of a ``oneof`` is present.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from reelvault.assets import AssetInfo, ReadGrant, UploadSpec
from reelvault.audit import StoredEvent
from reelvault.auth import ApiKeyInfo, Role
from reelvault.crypto import rechunk
from reelvault.errors import InvalidArgument
from reelvault.keys.tenant import Tenant
from reelvault.v1 import apikey_pb2, asset_pb2, audit_pb2, tenant_pb2

__all__ = [
    "DOWNLOAD_CHUNK_TAG",
    "ROLE_FROM_PROTO",
    "ROLE_TO_PROTO",
    "api_key_to_proto",
    "asset_to_proto",
    "download_chunk_messages",
    "download_response_bytes",
    "download_range",
    "role_from_proto",
    "tenant_to_proto",
    "timestamp",
    "upload_spec",
]

ROLE_TO_PROTO: Final[Mapping[Role, apikey_pb2.Role]] = MappingProxyType(
    {
        Role.PLATFORM_ADMIN: apikey_pb2.ROLE_PLATFORM_ADMIN,
        Role.ADMIN: apikey_pb2.ROLE_ADMIN,
        Role.INGEST: apikey_pb2.ROLE_INGEST,
        Role.RENDERER: apikey_pb2.ROLE_RENDERER,
        Role.DISTRIBUTOR: apikey_pb2.ROLE_DISTRIBUTOR,
        Role.AUDITOR: apikey_pb2.ROLE_AUDITOR,
        Role.PRIVACY: apikey_pb2.ROLE_PRIVACY,
        Role.PLATFORM_AUDITOR: apikey_pb2.ROLE_PLATFORM_AUDITOR,
    }
)
ROLE_FROM_PROTO: Final[Mapping[int, Role]] = MappingProxyType(
    {value: role for role, value in ROLE_TO_PROTO.items()}
)


def timestamp(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def micros(value: Timestamp) -> int:
    """A protobuf timestamp as microseconds since the epoch."""
    return int(value.seconds) * 1_000_000 + int(value.nanos) // 1000


def audit_event_to_proto(event: StoredEvent) -> audit_pb2.AuditEvent:
    message = audit_pb2.AuditEvent(
        event_id=event.event_id,
        log_id=event.log_id,
        action=event.action,
        outcome=event.outcome,
        status=event.status,
        method=event.method,
        actor_key_id=event.actor_key_id or "",
        resource_type=event.resource_type or "",
        resource_id=event.resource_id or "",
        record=event.record or b"",
    )
    message.time.FromMicroseconds(event.time_us)
    if event.seq is not None:
        message.sequence = event.seq
    return message


def audit_record_to_proto(event: StoredEvent) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(
        sequence=event.seq or 0,
        record=event.record or b"",
        leaf_hash=event.leaf_hash or b"",
        purged=event.record is None,
    )


def role_from_proto(value: int) -> Role:
    """Raises InvalidArgument for ``ROLE_UNSPECIFIED`` or a number this version does not know."""
    role = ROLE_FROM_PROTO.get(value)
    if role is None:
        raise InvalidArgument("a role is required")
    return role


def tenant_to_proto(tenant: Tenant) -> tenant_pb2.Tenant:
    return tenant_pb2.Tenant(
        id=tenant.id,
        name=tenant.name,
        create_time=timestamp(tenant.created_at),
        direct_reads=tenant.direct_reads,
    )


def api_key_to_proto(key: ApiKeyInfo) -> apikey_pb2.ApiKey:
    message = apikey_pb2.ApiKey(
        id=key.id,
        tenant_id=key.tenant_id or "",
        role=ROLE_TO_PROTO[key.role],
        description=key.description,
        create_time=timestamp(key.created_at),
    )
    if key.revoked_at is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoked_at))
    if key.last_used_at is not None:
        message.last_use_time.CopyFrom(timestamp(key.last_used_at))
    return message


def asset_to_proto(asset: AssetInfo) -> asset_pb2.Asset:
    return asset_pb2.Asset(
        id=asset.id,
        tenant_id=asset.tenant_id,
        path=asset.path,
        content_type=asset.content_type,
        labels=dict(asset.labels),
        size=asset.size,
        sha256=asset.sha256,
        etag=asset.etag,
        create_time=timestamp(asset.created_at),
        kek_version=asset.kek_version,
        subject=asset.subject or "",
    )


def upload_spec(metadata: asset_pb2.AssetMetadata) -> UploadSpec:
    """The domain's view of an upload's first message. An empty ``expected_sha256`` means
    "not given": in proto3 the two cannot be told apart."""
    return UploadSpec(
        path=metadata.path,
        content_type=metadata.content_type,  # empty: the domain's default
        labels=dict(metadata.labels),
        expected_size=metadata.expected_size if metadata.HasField("expected_size") else None,
        expected_sha256=metadata.expected_sha256 or None,
        subject_id=metadata.subject_id or None,
    )


def read_grant_to_proto(grant: ReadGrant) -> asset_pb2.ReadGrant:
    return asset_pb2.ReadGrant(
        asset=asset_to_proto(grant.asset),
        header=grant.header,
        frame_key=grant.frame_key,
        object_size=grant.object_size,
        url=grant.url,
        expire_time=timestamp(grant.expires_at),
        offset=grant.offset,
        length=grant.length,
    )


def download_range(
    request: asset_pb2.DownloadRequest | asset_pb2.OpenAssetRequest,
) -> dict[str, int]:
    """Keyword arguments for ``Assets.open_download`` (or ``grant_read``): ``offset`` and
    ``length``, or ``suffix``, or none for the whole asset."""
    which = request.WhichOneof("range")
    if which == "byte_range":
        return {"offset": request.byte_range.offset, "length": request.byte_range.length}
    if which == "suffix_length":
        return {"suffix": request.suffix_length}
    return {}


# --- download chunks, serialized by hand -----------------------------------------------

DOWNLOAD_CHUNK_TAG: Final = bytes([asset_pb2.DownloadResponse.CHUNK_FIELD_NUMBER << 3 | 2])
"""The key of ``DownloadResponse.chunk``: field 2, wire type 2 (length-delimited)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def download_chunk_messages(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Serialized ``DownloadResponse(chunk=...)`` messages of ``size`` bytes of data each
    (the last may be shorter; none if ``pieces`` is empty).

    The same bytes as building the message and calling ``SerializeToString``, but each
    message costs one copy (the join of the pieces behind its key and length) instead of
    three (join into a chunk, copy into the message, serialize). The download is CPU
    bound on the event loop's thread, where the message would otherwise be built.
    """
    return rechunk(pieces, size, prefix=lambda n: DOWNLOAD_CHUNK_TAG + _varint(n))


def download_response_bytes(message: asset_pb2.DownloadResponse | bytes) -> bytes:
    """The response serializer of ``AssetService.Download``: messages from
    :func:`download_chunk_messages` pass through; anything else is serialized."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()
