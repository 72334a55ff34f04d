"""The gRPC servicers: protobuf in, a domain call in a worker thread, protobuf out.

Nothing here authenticates, maps errors or logs: :mod:`reelvault.rpc.interceptors` does
that for every call, and hands the caller over as :func:`current_principal`. Servicers
raise :mod:`reelvault.errors` like the domain does; they never abort a call themselves.

The domain is synchronous and may block (catalog, object store, key provider), so every
call into it goes through :func:`asyncio.to_thread`. The streaming methods own the
lifetime of the domain's upload and download objects: whatever ends the call (success,
an error, the client cancelling, the deadline, server shutdown), an upload is completed or
aborted and a download's chunk iterator is closed before the call is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from reelvault import auth, deadline
from reelvault.admission import Admission
from reelvault.app import Vault
from reelvault.assets import MAX_CHUNK, AssetInfo, AssetUpload
from reelvault.audit import PLATFORM_LOG
from reelvault.auth import Principal
from reelvault.config import Settings
from reelvault.crypto.names import valid_tenant_id
from reelvault.distribution.keys import KeyInfo
from reelvault.distribution.service import Issued
from reelvault.distribution.tokens import ALG_ED25519, ALG_HMAC_SHA256
from reelvault.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from reelvault.rpc import bulkhead, convert
from reelvault.rpc.bulkhead import StorePool, admitted
from reelvault.rpc.interceptors import check_deadline, current_principal
from reelvault.v1 import (
    apikey_pb2,
    apikey_pb2_grpc,
    asset_pb2,
    asset_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    distribution_pb2,
    distribution_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)

__all__ = [
    "ApiKeyServicer",
    "AssetServicer",
    "AuditServicer",
    "DistributionServicer",
    "TenantServicer",
]

_T = TypeVar("_T")


def _require_access(principal: Principal, tenant_id: str | None, missing: NotFound) -> None:
    """:func:`auth.require_tenant_access`, refusing with exactly the error a missing resource
    gets, so another tenant's resource cannot be told from one that does not exist."""
    try:
        auth.require_tenant_access(principal, tenant_id)
    except NotFound:
        raise missing from None


class TenantServicer(tenant_pb2_grpc.TenantServiceServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self, vault: Vault) -> None:
        self._keys = vault.tenant_keys

    async def CreateTenant(  # noqa: N802 - gRPC method names
        self, request: tenant_pb2.CreateTenantRequest, context: Any
    ) -> tenant_pb2.Tenant:
        tenant = await asyncio.to_thread(
            self._keys.create_tenant, request.name, kms_key_arn=request.kms_key_arn or None
        )
        return convert.tenant_to_proto(tenant)

    async def GetTenant(  # noqa: N802 - gRPC method names
        self, request: tenant_pb2.GetTenantRequest, context: Any
    ) -> tenant_pb2.Tenant:
        _check_tenant_id(request.tenant_id)
        _require_access(current_principal(), request.tenant_id, NotFound("tenant not found"))
        tenant = await asyncio.to_thread(self._keys.get_tenant, request.tenant_id)
        return convert.tenant_to_proto(tenant)

    async def ListTenants(  # noqa: N802 - gRPC method names
        self, request: tenant_pb2.ListTenantsRequest, context: Any
    ) -> tenant_pb2.ListTenantsResponse:
        tenants = await asyncio.to_thread(self._keys.list_tenants)
        return tenant_pb2.ListTenantsResponse(tenants=[convert.tenant_to_proto(t) for t in tenants])

    async def SetTenantPolicy(  # noqa: N802 - gRPC method names
        self, request: tenant_pb2.SetTenantPolicyRequest, context: Any
    ) -> tenant_pb2.Tenant:
        principal = current_principal()
        _check_tenant_id(request.tenant_id)
        tenant_id = _tenant_scope(principal, request.tenant_id)
        if tenant_id is None:
            raise InvalidArgument("name the tenant whose policy to set")
        _require_access(principal, tenant_id, NotFound("tenant not found"))
        direct_reads = request.direct_reads if request.HasField("direct_reads") else None
        tenant = await asyncio.to_thread(
            self._keys.set_policy, tenant_id, direct_reads=direct_reads
        )
        return convert.tenant_to_proto(tenant)


class ApiKeyServicer(apikey_pb2_grpc.ApiKeyServiceServicer):  # type: ignore[misc, unused-ignore]
    """Tenant admins act on their own tenant (an empty ``tenant_id`` means it); platform
    admins name the tenant, or none for platform-admin keys."""

    def __init__(self, vault: Vault) -> None:
        self._api_keys = vault.api_keys

    async def CreateApiKey(  # noqa: N802 - gRPC method names
        self, request: apikey_pb2.CreateApiKeyRequest, context: Any
    ) -> apikey_pb2.CreateApiKeyResponse:
        principal = current_principal()
        role = convert.role_from_proto(request.role)
        _check_tenant_id(request.tenant_id)
        tenant_id = _tenant_scope(principal, request.tenant_id)
        try:
            auth.require_can_create_key(principal, tenant_id=tenant_id, role=role)
        except NotFound:
            raise NotFound("tenant not found") from None  # as for a missing tenant
        info, token = await asyncio.to_thread(
            self._api_keys.create,
            tenant_id=tenant_id,
            role=role,
            description=request.description,
        )
        return apikey_pb2.CreateApiKeyResponse(api_key=convert.api_key_to_proto(info), secret=token)

    async def ListApiKeys(  # noqa: N802 - gRPC method names
        self, request: apikey_pb2.ListApiKeysRequest, context: Any
    ) -> apikey_pb2.ListApiKeysResponse:
        principal = current_principal()
        _check_tenant_id(request.tenant_id)
        tenant_id = _tenant_scope(principal, request.tenant_id)
        _require_access(principal, tenant_id, NotFound("tenant not found"))
        keys = await asyncio.to_thread(self._api_keys.list, tenant_id)
        return apikey_pb2.ListApiKeysResponse(api_keys=[convert.api_key_to_proto(k) for k in keys])

    async def RevokeApiKey(  # noqa: N802 - gRPC method names
        self, request: apikey_pb2.RevokeApiKeyRequest, context: Any
    ) -> apikey_pb2.ApiKey:
        principal = current_principal()
        if not auth.valid_key_id(request.api_key_id):
            raise InvalidArgument("API key id must be 16 lowercase hex digits")
        info = await asyncio.to_thread(self._api_keys.get, request.api_key_id)
        # A key's tenant never changes, so checking before revoking is race-free.
        _require_access(principal, info.tenant_id, NotFound("API key not found"))
        revoked = await asyncio.to_thread(self._api_keys.revoke, info.id)
        return convert.api_key_to_proto(revoked)


def _check_tenant_id(tenant_id: str) -> None:
    """A malformed id is refused as such, before any access check: ids are public in
    form, so saying so tells the caller nothing about other tenants."""
    if tenant_id and not valid_tenant_id(tenant_id):
        raise InvalidArgument("tenant id must be 32 lowercase hex digits")


def _tenant_scope(principal: Principal, requested: str) -> str | None:
    """The tenant a key-management request is about: the named one, else the caller's
    own (None, the platform scope, for a platform admin)."""
    return requested or principal.tenant_id


class AssetServicer(asset_pb2_grpc.AssetServiceServicer):  # type: ignore[misc, unused-ignore]
    """Assets of the caller's tenant, taken from its API key, never from the request."""

    def __init__(
        self,
        vault: Vault,
        *,
        admission: Admission | None = None,
        store_pool: StorePool | None = None,
        idle_timeout: float = 60.0,
    ) -> None:
        self._assets = vault.assets
        if admission is None:
            admission = Admission.from_settings(Settings())
        self._admission = admission
        self._store_pool = store_pool  # None: asyncio's default executor (unit tests)
        self._idle_timeout = idle_timeout

    @admitted("upload", lambda: _caller_tenant())  # noqa: PLW0108 - defined below
    async def Upload(  # noqa: N802 - gRPC method names
        self, request_iterator: AsyncIterator[asset_pb2.UploadRequest], context: Any
    ) -> asset_pb2.Asset:
        """Metadata, chunks, then the end message; the upload commits only once the
        stream has closed after it.

        grpc.aio ends the request stream of a cancelled call (client cancel, lost
        connection, shutdown) exactly as it ends one the client closed, so the stream's end
        alone says nothing about whether the client finished: only the end message does.
        A stream that ends without it is aborted, never committed.
        """
        tenant_id = _caller_tenant()
        messages = aiter(request_iterator)
        first = await self._next(messages)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidArgument("the first upload message must carry the asset metadata")
        spec = convert.upload_spec(first.metadata)
        pool = self._store_pool
        # Run to its end even if the caller leaves meanwhile, and then aborted: the row
        # and the heartbeat it starts must not outlive a call nobody will finish.
        upload = await bulkhead.run_to_end(
            self._assets.begin_upload, tenant_id, spec, pool=pool, undo=AssetUpload.abort
        )
        lock = threading.Lock()
        completed: list[AssetInfo] = []

        def complete() -> AssetInfo:
            completed.append(upload.complete())
            return completed[0]

        try:
            end: asset_pb2.UploadEnd | None = None
            while (message := await self._next(messages)) is not None:
                check_deadline(context)
                kind = message.WhichOneof("payload")
                if kind == "end":
                    end = message.end
                    break
                if kind != "chunk":
                    raise InvalidArgument(
                        "after the metadata, every upload message must carry a chunk or the end"
                    )
                await _run_locked(lock, pool, upload.write, message.chunk)
            if end is None:
                raise InvalidArgument("the upload stream ended without its end message")
            if await self._next(messages) is not None:
                raise InvalidArgument("no upload message may follow the end message")
            if end.HasField("size") and end.size != upload.size:
                raise InvalidArgument("the upload's size differs from its end message")
            if end.sha256:
                promised = upload.spec.expected_sha256
                if promised is not None and promised != end.sha256:
                    raise InvalidArgument("the end message's SHA-256 differs from the metadata's")
                # complete() checks the plaintext's digest against the spec, as it does for
                # an expected_sha256 given up front.
                upload.spec = dataclasses.replace(upload.spec, expected_sha256=end.sha256)
            check_deadline(context)
            info = await _run_locked(lock, pool, complete)
        except BaseException:
            # Shielded: a second cancellation must not leave anything behind either.
            await asyncio.shield(_run_locked(lock, pool, self._undo, upload, completed))
            raise
        return convert.asset_to_proto(info)

    async def _next(self, messages: AsyncIterator[_T]) -> _T | None:
        """The next request message, None at the stream's end. A client that sends
        nothing for ``idle_timeout`` seconds loses its upload (DEADLINE_EXCEEDED): an idle
        stream would hold its admission slot for as long as the client liked."""
        # asyncio.timeout, not wait_for: on 3.11, wait_for can swallow the call's own
        # cancellation when the read finishes at the same moment (a cancelled call's
        # stream ends like a closed one), and the upload would then commit unseen.
        try:
            async with asyncio.timeout(self._idle_timeout):
                return await anext(messages, None)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the upload stream sent nothing for {self._idle_timeout:g} s"
            ) from None

    def _undo(self, upload: AssetUpload, completed: list[AssetInfo]) -> None:
        """Leave nothing of a failed upload behind: abort it or, if it completed after
        all, delete the asset it made.

        The second case is real, though only after the end message: a call cancelled
        once the client sent it ends its request stream just as a close would, so the
        handler goes on to complete. The cancellation reaches the handler a moment later,
        while completing; the client is told CANCELLED, so the asset must not stay.

        Cleanup is not bound by the call's deadline: it runs after a deadline has passed.
        """
        with deadline.bound(None):
            if completed:
                self._assets.delete(upload.tenant_id, completed[0].id)
            else:
                upload.abort()

    async def Download(  # noqa: N802 - gRPC method names
        self, request: asset_pb2.DownloadRequest, context: Any
    ) -> AsyncIterator[asset_pb2.DownloadResponse | bytes]:
        tenant_id = _caller_tenant()
        with self._admission.acquire("download", tenant_id):
            # closed here, in this generator's own finally, whoever finalizes it
            async with contextlib.aclosing(self._download(tenant_id, request, context)) as stream:
                async for message in stream:
                    yield message

    async def _download(
        self, tenant_id: str, request: asset_pb2.DownloadRequest, context: Any
    ) -> AsyncGenerator[asset_pb2.DownloadResponse | bytes, None]:
        # Everything refusable (range, missing asset, key state, a tampered header, and a
        # tampered final frame if the range reaches it) is refused here, before the first
        # message, as a plain status.
        pool = self._store_pool
        download = await bulkhead.run_to_end(
            functools.partial(
                self._assets.open_download,
                tenant_id,
                request.asset_id,
                **convert.download_range(request),
            ),
            pool=pool,
            undo=lambda opened: _close(opened.pieces),
        )
        # serialized here, in the worker thread, so the event loop only hands bytes to grpc
        messages = convert.download_chunk_messages(download.pieces, MAX_CHUNK)
        lock = threading.Lock()
        fetch: asyncio.Future[list[bytes]] | None = None
        try:
            yield asset_pb2.DownloadResponse(
                header=asset_pb2.DownloadHeader(
                    asset=convert.asset_to_proto(download.asset),
                    offset=download.offset,
                    length=download.length,
                )
            )
            check_deadline(context)
            fetch = _submit_locked(lock, pool, _take, messages, _FETCH_BYTES)
            while batch := await fetch:
                # Fetch (read, authenticate, serialize) the next batch while gRPC sends
                # this one: one fetch in flight at a time, as before, but it overlaps the
                # sending instead of waiting for it.
                check_deadline(context)
                fetch = _submit_locked(lock, pool, _take, messages, _FETCH_BYTES)
                batch.reverse()
                while batch:  # each message dropped once gRPC has it
                    yield batch.pop()  # see add_servicers: Download's serializer passes bytes on
        finally:
            if fetch is not None:
                _forget(fetch)  # its error, if any, is no longer anyone's to report
            # Releases the object store's response body; waits for a fetch in flight.
            await asyncio.shield(_run_locked(lock, pool, _close, download.pieces))

    async def StatAsset(  # noqa: N802 - gRPC method names
        self, request: asset_pb2.StatAssetRequest, context: Any
    ) -> asset_pb2.Asset:
        info = await asyncio.to_thread(self._assets.stat, _caller_tenant(), request.asset_id)
        return convert.asset_to_proto(info)

    async def ListAssets(  # noqa: N802 - gRPC method names
        self, request: asset_pb2.ListAssetsRequest, context: Any
    ) -> asset_pb2.ListAssetsResponse:
        assets, next_token = await asyncio.to_thread(
            self._assets.list,
            _caller_tenant(),
            prefix=request.prefix,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return asset_pb2.ListAssetsResponse(
            assets=[convert.asset_to_proto(a) for a in assets], next_page_token=next_token
        )

    async def OpenAsset(  # noqa: N802 - gRPC method names
        self, request: asset_pb2.OpenAssetRequest, context: Any
    ) -> asset_pb2.ReadGrant:
        # Catalog and key provider only (the URL is signed locally): no store slot.
        grant = await asyncio.to_thread(
            functools.partial(
                self._assets.grant_read,
                _caller_tenant(),
                request.asset_id,
                lifetime=request.lifetime_seconds or None,
                **convert.download_range(request),
            )
        )
        return convert.read_grant_to_proto(grant)

    async def DeleteAsset(  # noqa: N802 - gRPC method names
        self, request: asset_pb2.DeleteAssetRequest, context: Any
    ) -> asset_pb2.DeleteAssetResponse:
        tenant_id = _caller_tenant()
        with self._admission.acquire("delete", tenant_id):
            await bulkhead.run_to_end(
                self._assets.delete, tenant_id, request.asset_id, pool=self._store_pool
            )
        return asset_pb2.DeleteAssetResponse()


def _caller_tenant() -> str:
    tenant_id = current_principal().tenant_id
    if tenant_id is None:  # platform admins hold no tenant's assets (auth.PERMISSIONS)
        raise PermissionDenied("platform admin keys have no access to assets")
    return tenant_id


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


_FETCH_BYTES: Final = 2 * MAX_CHUNK
"""What a download fetches per worker call: whole messages, at least one. Two 1 MiB
messages per call halve the thread hand-offs, each tens of microseconds of CPU on both
threads. With the next batch fetched while one is sent, a download holds about 6 MiB
(measured with 8 and 16 at once; 5 MiB when it fetched one message at a time)."""


def _take(messages: Iterator[bytes], size: int) -> list[bytes]:
    """The next messages, ``size`` bytes or just over (fewer only at the end)."""
    batch: list[bytes] = []
    have = 0
    for message in messages:
        batch.append(message)
        have += len(message)
        if have >= size:
            break
    return batch


def _submit_locked(
    lock: threading.Lock, pool: StorePool | None, function: Callable[..., _T], *args: Any
) -> asyncio.Future[_T]:
    """:func:`_run_locked`, started now and awaited later (:func:`bulkhead.submit`)."""

    def locked() -> _T:
        with lock:
            return function(*args)

    return bulkhead.submit(locked, pool=pool)


def _forget(future: asyncio.Future[Any]) -> None:
    """Retrieve ``future``'s outcome whenever it comes, so that an error nobody awaits
    is not logged as never retrieved."""

    def retrieve(done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()

    future.add_done_callback(retrieve)


async def _run_locked(
    lock: threading.Lock, pool: StorePool | None, function: Callable[..., _T], *args: Any
) -> _T:
    """Run ``function(*args)`` in a worker thread while holding ``lock``.

    Cancelling the awaiting task does not stop a function already running in a thread.
    Serializing every blocking call on one object (an upload, a download's chunk
    iterator) through one lock therefore lets a cleanup step (abort, close) that goes
    through the lock too wait for the call in flight instead of racing it.
    """

    def locked() -> _T:
        with lock:
            return function(*args)

    return await bulkhead.run(locked, pool=pool)


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):  # type: ignore[misc, unused-ignore]
    """The access log. Tenant auditors read their own tenant's log (an empty ``tenant_id``
    means it); platform auditors name a tenant, or none for the platform log."""

    _FOLLOW_POLL: float = 0.5
    _EXPORT_BATCH: int = 1000

    def __init__(self, vault: Vault) -> None:
        self._audit = vault.audit
        self._api_keys = vault.api_keys

    async def ListAuditEvents(  # noqa: N802 - gRPC method names
        self, request: audit_pb2.ListAuditEventsRequest, context: Any
    ) -> audit_pb2.ListAuditEventsResponse:
        log_id = _audit_log(request.tenant_id)
        if not (request.HasField("start_time") and request.HasField("end_time")):
            raise InvalidArgument("a time range is required (start_time and end_time)")
        page = await asyncio.to_thread(
            self._audit.list_events,
            log_id,
            start_us=convert.micros(request.start_time),
            end_us=convert.micros(request.end_time),
            actors=list(request.actor_key_ids),
            resources=list(request.resource_ids),
            actions=list(request.actions),
            outcomes=list(request.outcomes),
            methods=list(request.methods),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return audit_pb2.ListAuditEventsResponse(
            events=[convert.audit_event_to_proto(event) for event in page.events],
            next_page_token=page.next_page_token,
        )

    async def ExportAuditEvents(  # noqa: N802 - gRPC method names
        self, request: audit_pb2.ExportAuditEventsRequest, context: Any
    ) -> AsyncIterator[audit_pb2.AuditRecord]:
        log_id = _audit_log(request.tenant_id)
        if request.to_sequence < 0 or (
            request.to_sequence and request.to_sequence < request.from_sequence
        ):
            raise InvalidArgument("to_sequence must be 0 or at least from_sequence")
        await asyncio.to_thread(self._audit.open_export, log_id, request.from_sequence)
        end = request.to_sequence or None
        if end is None and not request.follow:
            end = await asyncio.to_thread(self._audit.log.tree_size, log_id)
        position = request.from_sequence
        key_id = current_principal().key_id
        while end is None or position < end:
            check_deadline(context)
            # A stream can outlive its key: one revoked since the call began stops here.
            if (await asyncio.to_thread(self._api_keys.get, key_id)).revoked_at is not None:
                raise Unauthenticated("invalid API key")
            limit = self._EXPORT_BATCH if end is None else min(self._EXPORT_BATCH, end - position)
            events = await asyncio.to_thread(self._audit.export_batch, log_id, position, limit)
            for event in events:
                yield convert.audit_record_to_proto(event)
            position += len(events)
            if not events:
                if end is not None and not request.follow:
                    raise InvalidArgument("to_sequence is beyond the log's integrated size")
                await asyncio.sleep(self._FOLLOW_POLL)

    async def GetCheckpoint(  # noqa: N802 - gRPC method names
        self, request: audit_pb2.GetCheckpointRequest, context: Any
    ) -> audit_pb2.Checkpoint:
        info = await asyncio.to_thread(self._audit.checkpoint, _audit_log(request.tenant_id))
        return audit_pb2.Checkpoint(
            log_id=info.log_id,
            origin=info.origin,
            size=info.size,
            root_hash=info.root_hash,
            note=info.note,
            verifier_key=info.verifier_key,
        )

    async def GetInclusionProof(  # noqa: N802 - gRPC method names
        self, request: audit_pb2.GetInclusionProofRequest, context: Any
    ) -> audit_pb2.InclusionProof:
        leaf, hashes = await asyncio.to_thread(
            self._audit.inclusion_proof,
            _audit_log(request.tenant_id),
            request.sequence,
            request.tree_size,
        )
        return audit_pb2.InclusionProof(
            sequence=request.sequence, tree_size=request.tree_size, leaf_hash=leaf, hashes=hashes
        )

    async def GetConsistencyProof(  # noqa: N802 - gRPC method names
        self, request: audit_pb2.GetConsistencyProofRequest, context: Any
    ) -> audit_pb2.ConsistencyProof:
        hashes = await asyncio.to_thread(
            self._audit.consistency_proof,
            _audit_log(request.tenant_id),
            request.old_size,
            request.new_size,
        )
        return audit_pb2.ConsistencyProof(
            old_size=request.old_size, new_size=request.new_size, hashes=hashes
        )

    async def SetAuditRetention(  # noqa: N802 - gRPC method names
        self, request: audit_pb2.SetAuditRetentionRequest, context: Any
    ) -> audit_pb2.AuditRetention:
        principal = current_principal()
        _check_tenant_id(request.tenant_id)
        tenant_id = _tenant_scope(principal, request.tenant_id)
        if tenant_id is None:
            raise InvalidArgument("name the tenant whose retention to set")
        _require_access(principal, tenant_id, NotFound("tenant not found"))
        if request.retention_days < 0:
            raise InvalidArgument("retention days must not be negative")
        policy = await asyncio.to_thread(
            self._audit.set_retention,
            tenant_id,
            retention_days=request.retention_days or None,
            legal_hold=request.legal_hold,
        )
        return audit_pb2.AuditRetention(
            tenant_id=policy.tenant_id,
            retention_days=policy.retention_days or 0,
            legal_hold=policy.legal_hold,
        )


def _audit_log(requested: str) -> str:
    """The log an audit request is about: the named tenant's, else the caller's own (the
    platform log for platform auditors). Another tenant's log looks missing."""
    principal = current_principal()
    _check_tenant_id(requested)
    tenant_id = _tenant_scope(principal, requested)
    _require_access(principal, tenant_id, NotFound("audit log not found"))
    return tenant_id if tenant_id is not None else PLATFORM_LOG


_ALGORITHM_TO_PROTO: Final[dict[str, Any]] = {
    ALG_ED25519: distribution_pb2.TOKEN_ALGORITHM_ED25519,
    ALG_HMAC_SHA256: distribution_pb2.TOKEN_ALGORITHM_HMAC_SHA256,
}
_ALGORITHM_FROM_PROTO: Final[dict[int, str]] = {
    distribution_pb2.TOKEN_ALGORITHM_UNSPECIFIED: ALG_ED25519,
    distribution_pb2.TOKEN_ALGORITHM_ED25519: ALG_ED25519,
    distribution_pb2.TOKEN_ALGORITHM_HMAC_SHA256: ALG_HMAC_SHA256,
}


def _algorithm(value: int) -> str:
    algorithm = _ALGORITHM_FROM_PROTO.get(value)
    if algorithm is None:
        raise InvalidArgument("unknown token algorithm")
    return algorithm


def _signing_key_to_proto(key: KeyInfo) -> distribution_pb2.SigningKey:
    message = distribution_pb2.SigningKey(
        key_id=key.kid,
        algorithm=_ALGORITHM_TO_PROTO[key.algorithm],
        state=key.state,
        public_key=key.public_key or b"",
        create_time=convert.timestamp(key.created_at),
        state_change_time=convert.timestamp(key.state_changed_at),
    )
    if key.verify_until is not None:
        message.verify_until.CopyFrom(convert.timestamp(key.verify_until))
    return message


class DistributionServicer(distribution_pb2_grpc.DistributionServiceServicer):  # type: ignore[misc, unused-ignore]
    """Signed distribution URLs: catalog and key provider only, no store slot."""

    def __init__(self, vault: Vault) -> None:
        self._distribution = vault.distribution

    def _issue(self, request: distribution_pb2.IssueRequest, *, cookie: bool) -> Issued:
        not_before = (
            convert.micros(request.not_before) // 1_000_000
            if request.HasField("not_before")
            else None
        )
        return self._distribution.issue(
            _caller_tenant(),
            asset_id=request.asset_id,
            prefix=request.prefix,
            ttl=request.ttl_seconds or None,
            not_before=not_before,
            audience=request.audience,
            client_ip=request.client_ip_prefix,
            session_id=request.session_id,
            algorithm=_algorithm(request.algorithm),
            cookie=cookie,
            cloudfront_mode=request.cloudfront,
        )

    async def IssueUrl(  # noqa: N802 - gRPC method names
        self, request: distribution_pb2.IssueRequest, context: Any
    ) -> distribution_pb2.IssuedUrl:
        issued = await asyncio.to_thread(self._issue, request, cookie=False)
        return distribution_pb2.IssuedUrl(
            url=issued.url,
            token=issued.token,
            expire_time=convert.timestamp(_utc(issued.claims.expires_at)),
            key_id=issued.kid,
            resource=issued.claims.resource,
        )

    async def IssueCookie(  # noqa: N802 - gRPC method names
        self, request: distribution_pb2.IssueRequest, context: Any
    ) -> distribution_pb2.IssuedCookie:
        issued = await asyncio.to_thread(self._issue, request, cookie=True)
        return distribution_pb2.IssuedCookie(
            set_cookie=issued.cookie,
            url=issued.url,
            expire_time=convert.timestamp(_utc(issued.claims.expires_at)),
            key_id=issued.kid,
            resource=issued.claims.resource,
            cloudfront_cookies=dict(issued.cloudfront_cookies),
        )

    async def RevokeSession(  # noqa: N802 - gRPC method names
        self, request: distribution_pb2.RevokeSessionRequest, context: Any
    ) -> distribution_pb2.Revocation:
        cutoff = await asyncio.to_thread(
            self._distribution.revoke_session, _caller_tenant(), request.session_id
        )
        return distribution_pb2.Revocation(cutoff_time=convert.timestamp(cutoff))

    async def RevokeAsset(  # noqa: N802 - gRPC method names
        self, request: distribution_pb2.RevokeAssetRequest, context: Any
    ) -> distribution_pb2.Revocation:
        cutoff = await asyncio.to_thread(
            self._distribution.revoke_asset, _caller_tenant(), request.asset_id
        )
        return distribution_pb2.Revocation(cutoff_time=convert.timestamp(cutoff))

    async def ListSigningKeys(  # noqa: N802 - gRPC method names
        self, request: distribution_pb2.ListSigningKeysRequest, context: Any
    ) -> distribution_pb2.ListSigningKeysResponse:
        tenant_id = _caller_tenant()
        keys = await asyncio.to_thread(self._distribution.keys.list, tenant_id)
        return distribution_pb2.ListSigningKeysResponse(
            keys=[_signing_key_to_proto(k) for k in keys]
        )

    async def RotateSigningKey(  # noqa: N802 - gRPC method names
        self, request: distribution_pb2.RotateSigningKeyRequest, context: Any
    ) -> distribution_pb2.RotateSigningKeyResponse:
        tenant_id = _caller_tenant()
        algorithm = _algorithm(request.algorithm)
        key, secret = await asyncio.to_thread(self._distribution.keys.rotate, tenant_id, algorithm)
        return distribution_pb2.RotateSigningKeyResponse(
            key=_signing_key_to_proto(key), hmac_secret=secret or b""
        )


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
