"""A tenant leaves with its keys: the two-party key export over gRPC (a tenant admin asks
with a public key of its own, a platform admin approves, the tenant admin collects once),
then the official aws-encryption-sdk decrypts the raw bytes reelvault stored, with a Raw AES
master key (provider id ``reelvault``) per exported key and nothing of reelvault's code:
an asset sealed before a rotation and rewrap (its stored header still names the old KEK
version), one sealed after, a personalized rendition and a payload (under the exported
subject key). Sealed to an RSA-3072 key and to an X25519 key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aws_encryption_sdk
import grpc
import pytest
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.catalog.tables import AssetRow, PayloadRow
from reelvault.config import Settings
from reelvault.crypto.recipient import open_from_recipient
from reelvault.errors import DecryptionError
from reelvault.lifecycle import EXPORT_KEY_MIN_AGE, export_aad
from reelvault.rpc.server import HealthServicer, create_server, shutdown
from reelvault.storage.memory import MemoryObjectStore
from reelvault.v1 import (
    asset_pb2,
    asset_pb2_grpc,
    key_pb2,
    key_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
)

pytestmark = pytest.mark.db

FP = grpc.StatusCode.FAILED_PRECONDITION
ADA = "ada@example.com"
SDK = aws_encryption_sdk.EncryptionSDKClient(
    commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
)


# -- a server and its clients ----------------------------------------------------------------


@dataclass
class Api:
    keys: Any
    assets: Any
    payloads: Any


@contextmanager
def serving(vault: Vault) -> Iterator[Api]:
    """The production server (interceptors and all) on port 0, on a loop of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    health = HealthServicer()

    async def start() -> tuple[Any, int]:
        settings = Settings(grpc_port=0, shutdown_grace=5.0)
        server, port = await create_server(vault, settings, health_servicer=health)
        await server.start()
        return server, port

    try:
        server, port = run(start())
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield Api(
                    key_pb2_grpc.KeyServiceStub(channel),
                    asset_pb2_grpc.AssetServiceStub(channel),
                    privacy_pb2_grpc.PayloadServiceStub(channel),
                )
        finally:
            run(shutdown(server, health, None))
    finally:
        run(loop.shutdown_default_executor())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@dataclass
class Tenant:
    id: str
    tokens: dict[Role, str]

    def md(self, role: Role = Role.ADMIN) -> tuple[tuple[str, str], ...]:
        return bearer(self.tokens[role])


def make_tenant(vault: Vault, name: str) -> Tenant:
    tenant_id = vault.tenant_keys.create_tenant(name).id
    roles = (Role.ADMIN, Role.INGEST)
    return Tenant(
        tenant_id, {r: vault.api_keys.create(tenant_id=tenant_id, role=r)[1] for r in roles}
    )


def upload(api: Api, tenant: Tenant, data: bytes, path: str, subject: str = "") -> str:
    requests = [
        asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path, subject_id=subject)),
        *(
            asset_pb2.UploadRequest(chunk=data[at : at + 256 * 1024])
            for at in range(0, len(data), 256 * 1024)
        ),
        asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()),
    ]
    return str(api.assets.Upload(iter(requests), metadata=tenant.md(Role.INGEST)).id)


# -- recipient keys ----------------------------------------------------------------------


def rsa_3072() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def x25519() -> Any:
    return X25519PrivateKey.generate()


def pems(private: Any) -> tuple[bytes, bytes]:
    """(private PKCS#8, public SubjectPublicKeyInfo) PEM."""
    return (
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def fingerprint(private: Any) -> str:
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


# -- the official SDK ---------------------------------------------------------------------


def master_key(name: str, key: bytes) -> RawMasterKey:
    """The SDK's Raw AES master key under reelvault's provider id and a key name."""
    return RawMasterKey(
        provider_id="reelvault",
        key_id=name.encode(),
        wrapping_key=WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=key,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        ),
    )


def exported_keys(document: dict[str, Any]) -> dict[str, bytes]:
    return {
        entry["key_name"]: base64.b64decode(entry["key"])
        for entry in document["kek_versions"] + document["subject_keys"]
    }


def sdk_opens(message: bytes, keys: dict[str, bytes]) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Which of ``keys`` the official SDK decrypts ``message`` with: name -> (plaintext,
    encryption context)."""
    opened = {}
    for name, key in keys.items():
        try:
            plaintext, header = SDK.decrypt(source=message, key_provider=master_key(name, key))
        except aws_encryption_sdk.exceptions.AWSEncryptionSDKClientError:
            continue
        opened[name] = (plaintext, dict(header.encryption_context))
    return opened


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def vault(database, root_provider, clock) -> Vault:
    return Vault.from_parts(
        database=database, root=root_provider, store=MemoryObjectStore(), clock=clock
    )


@pytest.fixture
def api(vault: Vault) -> Iterator[Api]:
    with serving(vault) as api:
        yield api


@pytest.fixture
def platform(vault: Vault) -> tuple[tuple[str, str], ...]:
    return bearer(vault.api_keys.create(tenant_id=None, role=Role.PLATFORM_ADMIN)[1])


def stored(vault: Vault, asset_id: str) -> bytes:
    """The raw bytes the store holds for an asset."""
    with vault.database.transaction(readonly=True) as session:
        key = session.scalars(select(AssetRow.object_key).where(AssetRow.id == asset_id)).one()
    info = vault.store.head(key)
    assert info is not None
    return vault.store.get_range(key, 0, info.size)


def sealed_payload(vault: Vault, payload_id: str) -> bytes:
    with vault.database.transaction(readonly=True) as session:
        row = session.get(PayloadRow, payload_id)
        assert row is not None
        return bytes(row.message)


KEY_AGE = EXPORT_KEY_MIN_AGE.total_seconds()


def request_export(api: Api, tenant: Tenant, public_pem: bytes) -> key_pb2.KeyExport:
    export: key_pb2.KeyExport = api.keys.RequestKeyExport(
        key_pb2.RequestKeyExportRequest(recipient_public_key=public_pem), metadata=tenant.md()
    )
    return export


def approve(api: Api, md: Any, tenant: Tenant, export_id: str) -> key_pb2.KeyExport:
    export: key_pb2.KeyExport = api.keys.ApproveKeyExport(
        key_pb2.ApproveKeyExportRequest(tenant_id=tenant.id, export_id=export_id), metadata=md
    )
    return export


def collect(api: Api, md: Any, export_id: str, tenant_id: str = "") -> key_pb2.TenantKeyExport:
    reply: key_pb2.TenantKeyExport = api.keys.ExportTenantKeys(
        key_pb2.ExportTenantKeysRequest(tenant_id=tenant_id, export_id=export_id), metadata=md
    )
    return reply


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_key", "algorithm"), [(rsa_3072, "rsa-oaep-sha256"), (x25519, "x25519")]
)
def test_an_approved_export_lets_the_official_sdk_decrypt_every_stored_object(
    api: Api, vault: Vault, platform, clock, make_key, algorithm
):
    acme, globex = make_tenant(vault, "acme"), make_tenant(vault, "globex")
    before = b"sealed under KEK version 1 " * 12_000  # several frames
    before_id = upload(api, acme, before, "before.mp4")
    api.keys.RotateTenantKey(key_pb2.RotateTenantKeyRequest(), metadata=acme.md())
    rendition = b"personalized frames for Ada " * 2000
    rendition_id = upload(api, acme, rendition, "p/ada.mp4", subject=ADA)
    payload = b'{"name": "Ada"}'
    payload_id = api.payloads.PutPayload(
        privacy_pb2.PutPayloadRequest(subject_id=ADA, purpose="greeting", data=payload),
        metadata=acme.md(Role.INGEST),
    ).id
    moved = list(api.keys.RewrapTenant(key_pb2.RewrapTenantRequest(), metadata=acme.md()))
    assert {(p.kind, p.moved) for p in moved if p.done} == {("asset", 1), ("subject", 0)}
    after = b"sealed under KEK version 2"
    after_id = upload(api, acme, after, "after.mp4")
    foreign_id = upload(api, globex, b"globex's own", "g.mp4")

    private = make_key()
    private_pem, public_pem = pems(private)
    vault.clock.advance(KEY_AGE)  # the requesting key must be a week old
    requested = request_export(api, acme, public_pem)
    assert (requested.tenant_id, requested.algorithm) == (acme.id, algorithm)
    assert requested.recipient_fingerprint == fingerprint(private)
    assert requested.request_time.seconds == int(clock.now())
    assert not requested.HasField("approve_time")

    # nothing leaves before a platform admin approves, and a tenant admin cannot approve
    early = rpc_error(lambda: collect(api, acme.md(), requested.id))
    assert (early.code(), early.details()) == (
        FP,
        "the key export waits for a platform admin's approval",
    )
    denied = rpc_error(lambda: approve(api, acme.md(), acme, requested.id))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    # another tenant's admin sees no such export, under either tenant
    for tenant_id in (acme.id, ""):
        other = rpc_error(lambda: collect(api, globex.md(), requested.id, tenant_id))  # noqa: B023
        assert other.code() == grpc.StatusCode.NOT_FOUND

    approved = approve(api, platform, acme, requested.id)
    assert approved.HasField("approve_time") and not approved.HasField("collect_time")
    assert rpc_error(lambda: approve(api, platform, acme, requested.id)).code() == FP
    # the platform admin approves but never collects
    taken = rpc_error(lambda: collect(api, platform, requested.id, acme.id))
    assert taken.code() == grpc.StatusCode.PERMISSION_DENIED

    reply = collect(api, acme.md(), requested.id)
    assert reply.export.HasField("collect_time")
    again = rpc_error(lambda: collect(api, acme.md(), requested.id))
    assert (again.code(), again.details()) == (FP, "the key export was collected already")

    # the envelope opens with the private key and this export's aad only
    with pytest.raises(DecryptionError):
        open_from_recipient(private_pem, reply.envelope, export_aad(globex.id, requested.id))
    document = json.loads(
        open_from_recipient(private_pem, reply.envelope, export_aad(acme.id, requested.id))
    )
    assert (document["tenant_id"], document["export_id"]) == (acme.id, requested.id)
    assert document["provider_id"] == "reelvault"
    # every version that still has material, whatever its state
    assert [(v["version"], v["state"]) for v in document["kek_versions"]] == [
        (1, "decrypt-only"),
        (2, "active"),
    ]
    [subject] = document["subject_keys"]
    keys = exported_keys(document)
    v1, v2 = (v["key_name"] for v in document["kek_versions"])

    # The official SDK, over the raw stored bytes: each object opens with exactly the key
    # its stored header names, to the plaintext reelvault was given.
    expected = [
        (stored(vault, before_id), before, v1, before_id, "asset"),
        (stored(vault, after_id), after, v2, after_id, "asset"),
        (stored(vault, rendition_id), rendition, subject["key_name"], rendition_id, "asset"),
        (sealed_payload(vault, payload_id), payload, subject["key_name"], payload_id, "payload"),
    ]
    for message, plaintext, name, object_id, kind in expected:
        opened = sdk_opens(message, keys)
        assert list(opened) == [name], object_id
        data, context = opened[name]
        assert data == plaintext
        assert context["reelvault:tenant"] == acme.id
        assert (context["reelvault:object"], context["reelvault:kind"]) == (object_id, kind)
    # Control: the stored header of the asset sealed before the rotation names version 1,
    # rewrapped or not; without version 1 in the export, the SDK could not open it.
    assert sdk_opens(stored(vault, before_id), {v2: keys[v2]}) == {}
    # nothing of another tenant's opens with these keys
    assert sdk_opens(stored(vault, foreign_id), keys) == {}


def test_a_leaving_tenant_collects_its_keys_while_its_deletion_is_pending(
    api: Api, vault: Vault, platform
):
    """The waiting period is when a leaving tenant takes its keys: an export approved and
    collected while the tenant is disabled or pending deletion holds every key, subject
    keys included; once the tenant is destroyed there is nothing to export."""
    acme = make_tenant(vault, "acme")
    rendition = b"for Ada " * 500
    rendition_id = upload(api, acme, rendition, "p/ada.mp4", subject=ADA)
    plain = b"plain" * 100
    plain_id = upload(api, acme, plain, "plain.mp4")
    private_pem, public_pem = pems(x25519())

    vault.clock.advance(KEY_AGE)  # the requesting key must be a week old
    requested = request_export(api, acme, public_pem)
    approve(api, platform, acme, requested.id)
    api.keys.DisableKeyVersion(key_pb2.KeyVersionRequest(version=1), metadata=acme.md())
    scheduled = api.keys.ScheduleTenantDeletion(
        key_pb2.ScheduleTenantDeletionRequest(waiting_days=7), metadata=acme.md()
    )
    assert (scheduled.state, scheduled.versions[0].state) == ("pending-deletion", "disabled")
    reply = collect(api, acme.md(), requested.id)
    document = json.loads(
        open_from_recipient(private_pem, reply.envelope, export_aad(acme.id, requested.id))
    )
    assert [(v["version"], v["state"]) for v in document["kek_versions"]] == [(1, "disabled")]
    keys = exported_keys(document)
    assert len(document["subject_keys"]) == 1
    assert [v[0] for v in sdk_opens(stored(vault, rendition_id), keys).values()] == [rendition]
    assert [v[0] for v in sdk_opens(stored(vault, plain_id), keys).values()] == [plain]

    # a request made now is refused once the tenant is destroyed
    late = request_export(api, acme, public_pem)
    approve(api, platform, acme, late.id)
    vault.clock.advance(7 * 86400)
    assert vault.lifecycle.destroy_due() == [acme.id]
    error = rpc_error(lambda: collect(api, acme.md(), late.id))
    assert (error.code(), error.details()) == (FP, "the tenant was destroyed")
