"""KeyService end to end over a real server: status, rotation and a resumable rewrap that
never touches stored bytes, version states, the tenant's own states (disable, scheduled
deletion, destruction by crypto-shredding), root key rotation over the local keyring, and a
tenant on its own KMS key (BYOK) whose revocation locks reelvault out with a clear error.

Each refusal is paired with a control (the same read works before the change, or once it is
undone), so every test can fail."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from moto import mock_aws
from rpc_harness import ServerThread, Stubs, Tenancy, bearer, make_tenancy, rpc_error
from sqlalchemy import func, select

import reelvault.assets
from reelvault.app import Vault
from reelvault.auth import PLATFORM_ROLES, Role
from reelvault.catalog.tables import (
    AssetRow,
    PayloadRow,
    SubjectRow,
    TenantKeyVersionRow,
    TenantRow,
)
from reelvault.config import Settings
from reelvault.crypto import EncryptedDataKey, EncryptionContext, decrypt_stream, unwrap_key
from reelvault.crypto.format import parse_header
from reelvault.errors import DecryptionError, Unavailable
from reelvault.keys.kms import KmsRootKeyProvider
from reelvault.keys.local import LocalKeyring, init_keyring, rotate_keyring
from reelvault.keys.provider import WrappedKey
from reelvault.keys.tenant import _wrapping_context
from reelvault.objects import object_context
from reelvault.v1 import asset_pb2, key_pb2, privacy_pb2, tenant_pb2

pytestmark = pytest.mark.db

FP = grpc.StatusCode.FAILED_PRECONDITION
TTL = 60.0  # the KEK cache TTL of Vault.from_parts (the vault fixture's)
DAY = 86400.0
ADA = "ada@example.com"
BOB = "bob@example.com"
REGION = "us-east-1"


# -- helpers -------------------------------------------------------------------------------


def upload(api: Stubs, tenant: Tenancy, data: bytes, path: str, **metadata: Any) -> str:
    def requests() -> Iterator[asset_pb2.UploadRequest]:
        yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path, **metadata))
        for at in range(0, len(data), 256 * 1024):
            yield asset_pb2.UploadRequest(chunk=data[at : at + 256 * 1024])
        yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())

    return str(api.assets.Upload(requests(), metadata=tenant.md(Role.INGEST)).id)


def download(api: Stubs, tenant: Tenancy, asset_id: str) -> bytes:
    stream = api.assets.Download(
        asset_pb2.DownloadRequest(asset_id=asset_id), metadata=tenant.md(Role.RENDERER)
    )
    return b"".join(r.chunk for r in stream if r.WhichOneof("payload") == "chunk")


def put_payload(api: Stubs, tenant: Tenancy, subject: str, data: bytes) -> str:
    payload = api.payloads.PutPayload(
        privacy_pb2.PutPayloadRequest(subject_id=subject, purpose="greeting", data=data),
        metadata=tenant.md(Role.INGEST),
    )
    return str(payload.id)


def consent(api: Stubs, tenant: Tenancy, subject: str) -> None:
    api.consent.RecordConsent(
        privacy_pb2.RecordConsentRequest(
            subject_id=subject, purpose="greeting", granted=True, source="signup-form"
        ),
        metadata=tenant.md(Role.INGEST),
    )


def get_payload(api: Stubs, tenant: Tenancy, payload_id: str) -> bytes:
    reply = api.payloads.GetPayload(
        privacy_pb2.GetPayloadRequest(id=payload_id, purpose="greeting"),
        metadata=tenant.md(Role.RENDERER),
    )
    return bytes(reply.data)


def status(api: Stubs, tenant: Tenancy) -> key_pb2.KeyStatus:
    reply: key_pb2.KeyStatus = api.tenant_keys.GetKeyStatus(
        key_pb2.GetKeyStatusRequest(), metadata=tenant.md()
    )
    return reply


def states(reply: key_pb2.KeyStatus) -> dict[int, str]:
    return {v.version: v.state for v in reply.versions}


def rotate(api: Stubs, tenant: Tenancy) -> key_pb2.KeyStatus:
    reply: key_pb2.KeyStatus = api.tenant_keys.RotateTenantKey(
        key_pb2.RotateTenantKeyRequest(), metadata=tenant.md()
    )
    return reply


def rewrap(api: Stubs, tenant: Tenancy) -> list[key_pb2.RewrapProgress]:
    return list(api.tenant_keys.RewrapTenant(key_pb2.RewrapTenantRequest(), metadata=tenant.md()))


def version_call(
    method: Callable[..., key_pb2.KeyStatus], tenant: Tenancy, version: int
) -> key_pb2.KeyStatus:
    return method(key_pb2.KeyVersionRequest(version=version), metadata=tenant.md())


def stored_objects(vault: Vault, tenant_id: str) -> dict[str, bytes]:
    """Every stored object of the tenant, its raw bytes by object key."""
    out = {}
    for key in vault.store.list_keys(f"t/{tenant_id}/"):
        info = vault.store.head(key)
        assert info is not None
        out[key] = vault.store.get_range(key, 0, info.size)
    return out


def payload_messages(vault: Vault, tenant_id: str) -> dict[str, bytes]:
    with vault.database.transaction(readonly=True) as session:
        rows = session.scalars(select(PayloadRow).where(PayloadRow.tenant_id == tenant_id))
        return {row.id: bytes(row.message) for row in rows}


def stored_kek(vault: Vault, tenant_id: str, version: int = 1) -> tuple[WrappedKey, dict[str, str]]:
    """A KEK version as the catalog stores it, and the context its root provider wants."""
    with vault.database.transaction(readonly=True) as session:
        row = session.get(TenantKeyVersionRow, (tenant_id, version))
        assert row is not None and row.wrapped_key is not None
        wrapped = WrappedKey(row.root_key_id, bytes(row.wrapped_key))
    return wrapped, _wrapping_context(tenant_id, version)


@dataclass
class Library:
    """What a tenant stored: assets (plain and a personalized rendition) and payloads, with
    their plaintexts."""

    assets: dict[str, bytes] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)


def populate(api: Stubs, tenant: Tenancy) -> Library:
    library = Library()
    for path, data in [
        ("master.mp4", os.urandom(300 * 1024)),  # several frames
        ("trailer.mp4", b"a trailer " * 100),
    ]:
        library.assets[upload(api, tenant, data, path)] = data
    rendition = b"frames for Ada " * 3000
    library.assets[upload(api, tenant, rendition, "p/ada.mp4", subject_id=ADA)] = rendition
    for subject in (ADA, BOB):
        data = json.dumps({"name": subject}).encode()
        library.payloads[put_payload(api, tenant, subject, data)] = data
        consent(api, tenant, subject)
    return library


def assert_everything_reads(api: Stubs, tenant: Tenancy, library: Library) -> None:
    for asset_id, data in library.assets.items():
        assert download(api, tenant, asset_id) == data
    for payload_id, data in library.payloads.items():
        assert get_payload(api, tenant, payload_id) == data


def assert_nothing_reads(api: Stubs, tenant: Tenancy, library: Library, reason: str) -> None:
    for asset_id in library.assets:
        error = rpc_error(lambda: download(api, tenant, asset_id))  # noqa: B023
        assert (error.code(), reason in error.details()) == (FP, True), error.details()
    for payload_id in library.payloads:
        error = rpc_error(lambda: get_payload(api, tenant, payload_id))  # noqa: B023
        assert (error.code(), reason in error.details()) == (FP, True), error.details()


@contextmanager
def serving(vault: Vault) -> Iterator[Stubs]:
    """A server over ``vault`` (for tests that need a vault the fixtures do not build)."""
    thread = ServerThread(vault, Settings(grpc_port=0, shutdown_grace=5.0))
    try:
        with thread.channel() as channel:
            yield Stubs(channel)
    finally:
        thread.close()


# -- status, rotation, rewrap --------------------------------------------------------------


def test_key_status_shows_versions_states_and_keys_to_rewrap(
    api: Stubs, acme: Tenancy, platform_token: str, clock
):
    own = status(api, acme)
    assert own.tenant_id == acme.id
    assert own.state == "active"
    assert own.min_decryption_version == 1
    assert states(own) == {1: "active"}
    assert own.versions[0].root_key_id == "fake:1"
    assert own.versions[0].create_time.seconds == int(clock.now())
    assert not own.HasField("deletion_due_time")
    assert own.kms_key_arn == ""
    assert dict(own.keys_to_rewrap) == {"asset": 0, "subject": 0}
    named = api.tenant_keys.GetKeyStatus(
        key_pb2.GetKeyStatusRequest(tenant_id=acme.id), metadata=bearer(platform_token)
    )
    assert named == own


def test_rotate_and_rewrap_move_every_key_and_leave_stored_bytes_identical(
    api: Stubs, acme: Tenancy, vault: Vault, clock
):
    library = populate(api, acme)
    objects, messages = stored_objects(vault, acme.id), payload_messages(vault, acme.id)
    assert (len(objects), len(messages)) == (3, 2)

    rotated = rotate(api, acme)
    assert states(rotated) == {1: "decrypt-only", 2: "active"}
    # two plain assets; two subjects (the rendition's data key moves with Ada's key)
    assert dict(rotated.keys_to_rewrap) == {"asset": 2, "subject": 2}

    # Control: everything is still under version 1 alone, so disabling it stops every read.
    version_call(api.tenant_keys.DisableKeyVersion, acme, 1)
    assert_nothing_reads(api, acme, library, "KEK version 1 is disabled")
    assert states(version_call(api.tenant_keys.EnableKeyVersion, acme, 1))[1] == "decrypt-only"

    steps = rewrap(api, acme)
    by_kind: dict[str, list[key_pb2.RewrapProgress]] = {}
    for step in steps:
        by_kind.setdefault(step.kind, []).append(step)
    assert set(by_kind) == {"asset", "subject"}
    for kind_steps in by_kind.values():
        assert kind_steps[-1].done
        assert not any(step.done for step in kind_steps[:-1])
        assert [s.moved for s in kind_steps] == sorted(s.moved for s in kind_steps)
    assert {kind: s[-1].moved for kind, s in by_kind.items()} == {"asset": 2, "subject": 2}
    assert dict(status(api, acme).keys_to_rewrap) == {"asset": 0, "subject": 0}

    # Only catalog key slots moved: stored objects and sealed payloads are byte-identical.
    assert stored_objects(vault, acme.id) == objects
    assert payload_messages(vault, acme.id) == messages
    with vault.database.transaction(readonly=True) as session:
        assert set(
            session.scalars(select(AssetRow.kek_version).where(AssetRow.tenant_id == acme.id))
        ) == {2}
        assert set(
            session.scalars(select(SubjectRow.kek_version).where(SubjectRow.tenant_id == acme.id))
        ) == {2}
    # a rerun has nothing left to move
    assert all(step.done and step.moved == 0 for step in rewrap(api, acme))

    # Retiring version 1 waits for every replica's cache to forget it was active...
    error = rpc_error(lambda: version_call(api.tenant_keys.SetMinDecryptionVersion, acme, 2))
    assert error.code() == FP and "allowed from" in error.details()
    clock.advance(TTL + 1)
    raised = version_call(api.tenant_keys.SetMinDecryptionVersion, acme, 2)
    assert raised.min_decryption_version == 2
    assert_everything_reads(api, acme, library)
    # ... and with version 1 disabled instead, everything still reads too.
    version_call(api.tenant_keys.SetMinDecryptionVersion, acme, 1)
    assert states(version_call(api.tenant_keys.DisableKeyVersion, acme, 1))[1] == "disabled"
    assert_everything_reads(api, acme, library)
    assert stored_objects(vault, acme.id) == objects
    assert payload_messages(vault, acme.id) == messages


def test_a_rewrap_that_fails_midway_resumes_and_loses_no_key(
    api: Stubs, acme: Tenancy, vault: Vault, monkeypatch: pytest.MonkeyPatch
):
    library = Library()
    for n in range(5):
        data = f"clip {n} ".encode() * 500
        library.assets[upload(api, acme, data, f"clips/{n}.ts")] = data
    rendition = b"for Ada " * 1000
    library.assets[upload(api, acme, rendition, "p/ada.ts", subject_id=ADA)] = rendition
    library.payloads[put_payload(api, acme, ADA, b"hello Ada")] = b"hello Ada"
    consent(api, acme, ADA)
    objects = stored_objects(vault, acme.id)
    rotate(api, acme)
    assert dict(status(api, acme).keys_to_rewrap) == {"asset": 5, "subject": 1}

    real = reelvault.assets.rewrap_data_key
    calls: list[int] = []

    def failing_after_two(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 2:
            raise Unavailable("the catalog went away (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(reelvault.assets, "rewrap_data_key", failing_after_two)
    error = rpc_error(lambda: rewrap(api, acme))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    left = dict(status(api, acme).keys_to_rewrap)
    assert left["asset"] == 3  # the two moved before the failure stay moved
    # what is half done still reads
    assert_everything_reads(api, acme, library)

    monkeypatch.undo()
    steps = rewrap(api, acme)
    finals = {step.kind: step.moved for step in steps if step.done}
    assert finals["asset"] == 3
    assert finals["subject"] == left["subject"]
    assert dict(status(api, acme).keys_to_rewrap) == {"asset": 0, "subject": 0}
    # no key lost: with version 1 out of use, every asset and payload still opens
    version_call(api.tenant_keys.DisableKeyVersion, acme, 1)
    assert_everything_reads(api, acme, library)
    assert stored_objects(vault, acme.id) == objects


def test_disable_and_enable_a_version(api: Stubs, acme: Tenancy):
    data = b"frames" * 1000
    asset = upload(api, acme, data, "a.ts")
    disabled = version_call(api.tenant_keys.DisableKeyVersion, acme, 1)
    assert states(disabled) == {1: "disabled"}
    error = rpc_error(lambda: download(api, acme, asset))
    assert (error.code(), error.details()) == (FP, "KEK version 1 is disabled")
    # no version is active: nothing new can be sealed
    error = rpc_error(lambda: upload(api, acme, b"x", "b.ts"))
    assert (error.code(), error.details()) == (FP, "the tenant has no active KEK version")

    enabled = version_call(api.tenant_keys.EnableKeyVersion, acme, 1)
    assert states(enabled) == {1: "decrypt-only"}  # never active again
    assert download(api, acme, asset) == data
    assert rpc_error(lambda: upload(api, acme, b"x", "b.ts")).code() == FP
    assert states(rotate(api, acme)) == {1: "decrypt-only", 2: "active"}
    assert download(api, acme, upload(api, acme, b"new", "b.ts")) == b"new"

    for method, version, code in [
        (api.tenant_keys.EnableKeyVersion, 1, FP),  # not disabled
        (api.tenant_keys.EnableKeyVersion, 2, FP),  # active
        (api.tenant_keys.DisableKeyVersion, 9, grpc.StatusCode.NOT_FOUND),
        (api.tenant_keys.EnableKeyVersion, 0, grpc.StatusCode.NOT_FOUND),
    ]:
        error = rpc_error(lambda: version_call(method, acme, version))  # noqa: B023
        assert error.code() == code, (method, version, error.details())
    assert states(status(api, acme)) == {1: "decrypt-only", 2: "active"}


def test_min_decryption_version_refusals(api: Stubs, acme: Tenancy, clock):
    data = b"old frames" * 100
    asset = upload(api, acme, data, "old.ts")
    set_min = api.tenant_keys.SetMinDecryptionVersion
    for version, code in [
        (0, grpc.StatusCode.INVALID_ARGUMENT),
        (-1, grpc.StatusCode.INVALID_ARGUMENT),
        (2, FP),  # above the active version
    ]:
        error = rpc_error(lambda: version_call(set_min, acme, version))  # noqa: B023
        assert error.code() == code, (version, error.details())
    rotate(api, acme)
    assert rpc_error(lambda: version_call(set_min, acme, 3)).code() == FP
    early = rpc_error(lambda: version_call(set_min, acme, 2))
    assert early.code() == FP
    assert "KEK version 1 was the active version" in early.details()
    assert status(api, acme).min_decryption_version == 1
    clock.advance(TTL + 1)
    assert version_call(set_min, acme, 2).min_decryption_version == 2
    # not rewrapped: the asset is under version 1 only, which is now refused
    error = rpc_error(lambda: download(api, acme, asset))
    assert error.code() == FP
    assert "below the tenant's minimum decryption version" in error.details()
    # lowering it is a policy switch, never held back
    assert version_call(set_min, acme, 1).min_decryption_version == 1
    assert download(api, acme, asset) == data


def _key_calls(api: Stubs, tenant_id: str) -> dict[str, Callable[[Any], Any]]:
    """Every KeyService method a tenant admin may call, on ``tenant_id``."""
    keys = api.tenant_keys
    ref = key_pb2.TenantRef(tenant_id=tenant_id)
    version = key_pb2.KeyVersionRequest(tenant_id=tenant_id, version=1)
    pem = (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {
        "GetKeyStatus": lambda md: keys.GetKeyStatus(
            key_pb2.GetKeyStatusRequest(tenant_id=tenant_id), metadata=md
        ),
        "RotateTenantKey": lambda md: keys.RotateTenantKey(
            key_pb2.RotateTenantKeyRequest(tenant_id=tenant_id), metadata=md
        ),
        "RewrapTenant": lambda md: list(
            keys.RewrapTenant(key_pb2.RewrapTenantRequest(tenant_id=tenant_id), metadata=md)
        ),
        "DisableKeyVersion": lambda md: keys.DisableKeyVersion(version, metadata=md),
        "EnableKeyVersion": lambda md: keys.EnableKeyVersion(version, metadata=md),
        "SetMinDecryptionVersion": lambda md: keys.SetMinDecryptionVersion(version, metadata=md),
        "ScheduleTenantDeletion": lambda md: keys.ScheduleTenantDeletion(
            key_pb2.ScheduleTenantDeletionRequest(tenant_id=tenant_id, waiting_days=7),
            metadata=md,
        ),
        "CancelTenantDeletion": lambda md: keys.CancelTenantDeletion(ref, metadata=md),
        "DisableTenant": lambda md: keys.DisableTenant(ref, metadata=md),
        "EnableTenant": lambda md: keys.EnableTenant(ref, metadata=md),
        "RequestKeyExport": lambda md: keys.RequestKeyExport(
            key_pb2.RequestKeyExportRequest(tenant_id=tenant_id, recipient_public_key=pem),
            metadata=md,
        ),
        "ExportTenantKeys": lambda md: keys.ExportTenantKeys(
            key_pb2.ExportTenantKeysRequest(tenant_id=tenant_id, export_id="0" * 32),
            metadata=md,
        ),
    }


def test_a_tenant_admin_acts_on_its_own_tenant_only(
    api: Stubs, acme: Tenancy, globex: Tenancy, platform_token: str
):
    globex_before = status(api, globex)
    theirs = _key_calls(api, globex.id)
    nobodys = _key_calls(api, "f" * 32)
    for name, call in theirs.items():
        error = rpc_error(lambda: call(acme.md()))  # noqa: B023
        missing = rpc_error(lambda: nobodys[name](acme.md()))  # noqa: B023
        assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "tenant not found"), (
            name
        )
        assert (missing.code(), missing.details()) == (error.code(), error.details()), name
    # nothing happened to globex
    assert status(api, globex) == globex_before

    # naming its own tenant is the same as naming none
    assert _key_calls(api, acme.id)["GetKeyStatus"](acme.md()).tenant_id == acme.id
    # a platform admin names the tenant, and must name one
    platform = bearer(platform_token)
    rotated = theirs["RotateTenantKey"](platform)
    assert (rotated.tenant_id, states(rotated)) == (globex.id, {1: "decrypt-only", 2: "active"})
    assert states(status(api, acme)) == {1: "active"}
    error = rpc_error(
        lambda: api.tenant_keys.GetKeyStatus(key_pb2.GetKeyStatusRequest(), metadata=platform)
    )
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "name the tenant")


def test_roles_without_key_management_are_denied(
    api: Stubs, acme: Tenancy, vault: Vault, platform_token: str
):
    auditor = vault.api_keys.create(tenant_id=None, role=Role.PLATFORM_AUDITOR)[1]
    calls = _key_calls(api, acme.id)
    for role in Role:
        if role in PLATFORM_ROLES or role is Role.ADMIN:
            continue
        for name, call in calls.items():
            error = rpc_error(lambda: call(acme.md(role)))  # noqa: B023
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (role, name)
    for name, call in calls.items():
        error = rpc_error(lambda: call(bearer(auditor)))  # noqa: B023
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, name
    root = key_pb2.RewrapRootKeysRequest()
    for md in (acme.md(), bearer(auditor)):
        error = rpc_error(lambda: api.tenant_keys.RewrapRootKeys(root, metadata=md))  # noqa: B023
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # nothing changed
    assert (states(status(api, acme)), status(api, acme).state) == ({1: "active"}, "active")


# -- the tenant's own state ----------------------------------------------------------------


def test_a_disabled_tenant_is_refused_at_once_though_the_root_provider_would_unwrap(
    api: Stubs, acme: Tenancy, vault: Vault, root_provider
):
    library = populate(api, acme)
    assert_everything_reads(api, acme, library)  # its KEK is cached now

    disabled = api.tenant_keys.DisableTenant(key_pb2.TenantRef(), metadata=acme.md())
    assert disabled.state == "disabled"
    assert states(disabled) == {1: "active"}  # the versions keep their own states
    unwraps = root_provider.unwrap_calls
    assert_nothing_reads(api, acme, library, "the tenant is disabled")
    for call in [
        lambda: put_payload(api, acme, ADA, b"more"),
        lambda: put_payload(api, acme, "carol@example.com", b"new viewer"),
        lambda: upload(api, acme, b"new", "new.ts"),
        lambda: rewrap(api, acme),
    ]:
        error = rpc_error(call)
        assert (error.code(), error.details()) == (FP, "the tenant is disabled")
    # refused in the catalog, before the root provider was asked ...
    assert root_provider.unwrap_calls == unwraps
    # ... which would have unwrapped the stored KEK
    assert len(root_provider.unwrap(*stored_kek(vault, acme.id))) == 32

    error = rpc_error(
        lambda: api.tenant_keys.DisableTenant(key_pb2.TenantRef(), metadata=acme.md())
    )
    assert (error.code(), error.details()) == (FP, "the tenant is disabled")
    enabled = api.tenant_keys.EnableTenant(key_pb2.TenantRef(), metadata=acme.md())
    assert enabled.state == "active"
    assert_everything_reads(api, acme, library)
    error = rpc_error(lambda: api.tenant_keys.EnableTenant(key_pb2.TenantRef(), metadata=acme.md()))
    assert (error.code(), error.details()) == (FP, "the tenant is active")


def schedule(api: Stubs, tenant: Tenancy, days: int) -> key_pb2.KeyStatus:
    reply: key_pb2.KeyStatus = api.tenant_keys.ScheduleTenantDeletion(
        key_pb2.ScheduleTenantDeletionRequest(waiting_days=days), metadata=tenant.md()
    )
    return reply


def legal_hold(api: Stubs, tenant: Tenancy, subject: str, hold: bool) -> None:
    api.privacy.SetLegalHold(
        privacy_pb2.SetLegalHoldRequest(subject_id=subject, hold=hold),
        metadata=tenant.md(Role.PRIVACY),
    )


def test_scheduled_deletion_bounds_legal_hold_and_cancel(
    api: Stubs, acme: Tenancy, vault: Vault, clock, root_provider
):
    library = populate(api, acme)
    for days in (0, 6, 31, -7):
        error = rpc_error(lambda: schedule(api, acme, days))  # noqa: B023
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, days
        assert error.details() == "the waiting period is 7 to 30 days"
    assert status(api, acme).state == "active"

    legal_hold(api, acme, ADA, True)
    error = rpc_error(lambda: schedule(api, acme, 7))
    assert error.code() == FP and "legal hold" in error.details()
    assert status(api, acme).state == "active"
    assert_everything_reads(api, acme, library)
    legal_hold(api, acme, ADA, False)

    scheduled = schedule(api, acme, 30)
    assert scheduled.state == "pending-deletion"
    assert scheduled.deletion_due_time.seconds == int(clock.now() + 30 * DAY)
    unwraps = root_provider.unwrap_calls
    assert_nothing_reads(api, acme, library, "the tenant is pending-deletion")
    assert root_provider.unwrap_calls == unwraps  # refused before the provider is asked
    assert len(root_provider.unwrap(*stored_kek(vault, acme.id))) == 32  # which would unwrap
    for call in [
        lambda: schedule(api, acme, 7),
        lambda: api.tenant_keys.EnableTenant(key_pb2.TenantRef(), metadata=acme.md()),
        lambda: api.tenant_keys.DisableTenant(key_pb2.TenantRef(), metadata=acme.md()),
    ]:
        assert rpc_error(call).code() == FP
    cancelled = api.tenant_keys.CancelTenantDeletion(key_pb2.TenantRef(), metadata=acme.md())
    assert cancelled.state == "disabled"
    assert not cancelled.HasField("deletion_due_time")
    assert_nothing_reads(api, acme, library, "the tenant is disabled")
    error = rpc_error(
        lambda: api.tenant_keys.CancelTenantDeletion(key_pb2.TenantRef(), metadata=acme.md())
    )
    assert error.code() == FP
    api.tenant_keys.EnableTenant(key_pb2.TenantRef(), metadata=acme.md())
    assert_everything_reads(api, acme, library)
    # scheduling from disabled works too
    api.tenant_keys.DisableTenant(key_pb2.TenantRef(), metadata=acme.md())
    assert schedule(api, acme, 7).state == "pending-deletion"


class _Any:
    """A reelvault KeyResolver answering every key name with one candidate key."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def wrapping_key(self, key_name: str) -> bytes | None:
        return self.key


def _opens(message: bytes, key: bytes, context: EncryptionContext) -> bool:
    try:
        b"".join(decrypt_stream([message], _Any(key), context))
    except DecryptionError:
        return False
    return True


def _unwraps(edk: EncryptedDataKey, key: bytes, context: EncryptionContext) -> bool:
    try:
        unwrap_key(edk, _Any(key), context)
    except DecryptionError:
        return False
    return True


def _every_key_left(vault: Vault, root_provider) -> list[bytes]:
    """Every KEK the catalog and the root provider still yield, and every subject key those
    unwrap: everything key-shaped that is left."""
    with vault.database.transaction(readonly=True) as session:
        versions = [
            (row.tenant_id, row.version, row.root_key_id, bytes(row.wrapped_key))
            for row in session.scalars(select(TenantKeyVersionRow))
            if row.wrapped_key is not None
        ]
        subjects = [
            (row.tenant_id, row.pseudonym, bytes(row.wrapped_key))
            for row in session.scalars(select(SubjectRow))
            if row.wrapped_key is not None
        ]
    keks = [
        root_provider.unwrap(WrappedKey(root, wrapped), _wrapping_context(tenant, version))
        for tenant, version, root, wrapped in versions
    ]
    subject_keys = []
    for tenant, pseudonym, wrapped in subjects:
        context = EncryptionContext(
            {
                "reelvault:tenant": tenant,
                "reelvault:subject": pseudonym,
                "reelvault:kind": "subject-key",
            }
        )
        edk = EncryptedDataKey.parse(wrapped)
        subject_keys += [
            unwrap_key(edk, _Any(k), context) for k in keks if _unwraps(edk, k, context)
        ]
    return keks + subject_keys


def test_a_due_deletion_destroys_the_tenant_and_nothing_left_opens_its_data(
    api: Stubs, acme: Tenancy, globex: Tenancy, vault: Vault, clock, root_provider
):
    library = populate(api, acme)
    rotate(api, acme)
    late = b"sealed under version 2" * 50
    library.assets[upload(api, acme, late, "late.ts")] = late
    rewrap(api, acme)
    kept = upload(api, globex, b"globex stays", "g.ts")

    # What an adversary might have kept: stored objects, sealed payloads, key slots.
    objects = stored_objects(vault, acme.id)
    with vault.database.transaction(readonly=True) as session:
        rows = list(session.scalars(select(AssetRow).where(AssetRow.tenant_id == acme.id)))
        ids = {row.object_key: row.id for row in rows}
        slots = [(bytes(row.key_slot), row.id) for row in rows if row.key_slot]
    captured = [
        (message, object_context(acme.id, ids[key], "asset")) for key, message in objects.items()
    ] + [
        (message, object_context(acme.id, pid, "payload"))
        for pid, message in payload_messages(vault, acme.id).items()
    ]
    edks = [(edk, ctx) for message, ctx in captured for edk in parse_header(message).data_keys]
    edks += [(EncryptedDataKey.parse(s), object_context(acme.id, i, "asset")) for s, i in slots]
    assert len(captured) == 6 and len(slots) == 2

    def anything_opens() -> tuple[list[bool], list[bool]]:
        keys = _every_key_left(vault, root_provider)
        opened = [any(_opens(m, k, c) for k in keys) for m, c in captured]
        unwrapped = [any(_unwraps(e, k, c) for k in keys) for e, c in edks]
        return opened, unwrapped

    # Control: today, what is left opens every captured object and every wrapped data key
    # that the keys still in use wrap (the rewrapped assets' headers name version 2's
    # predecessor, which is still there too).
    opened, unwrapped = anything_opens()
    assert all(opened) and all(unwrapped)

    scheduled = schedule(api, acme, 7)
    assert vault.lifecycle.destroy_due() == []
    clock.advance(7 * DAY - 1)
    assert vault.lifecycle.destroy_due() == []
    assert status(api, acme).state == "pending-deletion"
    clock.advance(1)
    assert clock.now() == scheduled.deletion_due_time.seconds
    assert vault.lifecycle.destroy_due() == [acme.id]
    assert vault.lifecycle.destroy_due() == []

    destroyed = status(api, acme)
    assert destroyed.state == "destroyed"
    assert states(destroyed) == {1: "destroyed", 2: "destroyed"}
    with vault.database.transaction(readonly=True) as session:
        assert [
            row.wrapped_key
            for row in session.scalars(
                select(TenantKeyVersionRow).where(TenantKeyVersionRow.tenant_id == acme.id)
            )
        ] == [None, None]
        assert session.get(TenantRow, acme.id).pseudonym_key is None
        subjects = list(session.scalars(select(SubjectRow).where(SubjectRow.tenant_id == acme.id)))
        assert len(subjects) == 2
        assert all(s.wrapped_key is None and s.erased_at is not None for s in subjects)
        for table in (PayloadRow, AssetRow):
            count = session.scalar(
                select(func.count()).select_from(table).where(table.tenant_id == acme.id)
            )
            assert count == 0, table
    assert list(vault.store.list_keys(f"t/{acme.id}/")) == []

    opened, unwrapped = anything_opens()
    assert not any(opened) and not any(unwrapped)

    # the other tenant is untouched; the destroyed one takes nothing back
    assert download(api, globex, kept) == b"globex stays"
    for call in [
        lambda: download(api, acme, next(iter(library.assets))),
        lambda: put_payload(api, acme, ADA, b"again"),
        lambda: put_payload(api, acme, "carol@example.com", b"new viewer"),
        lambda: upload(api, acme, b"x", "x.ts"),
        lambda: api.tenant_keys.EnableTenant(key_pb2.TenantRef(), metadata=acme.md()),
        lambda: api.tenant_keys.CancelTenantDeletion(key_pb2.TenantRef(), metadata=acme.md()),
        lambda: rotate(api, acme),
    ]:
        error = rpc_error(call)
        assert error.code() in (FP, grpc.StatusCode.NOT_FOUND), error.details()
    assert states(status(api, acme)) == {1: "destroyed", 2: "destroyed"}


# -- root key rotation over the local keyring ----------------------------------------------


def _drop_root_version(path: Path, version: int) -> None:
    """Remove a root key version from the keyring file, as an operator would once nothing
    is wrapped under it any more (the file format allows any set of versions)."""
    document = json.loads(path.read_text())
    document["keys"] = [k for k in document["keys"] if k["version"] != version]
    path.write_text(json.dumps(document))
    path.chmod(0o600)


def test_rewrap_root_keys_after_a_keyring_rotation_lets_the_old_root_go(
    database, clock, memory_store, tmp_path: Path
):
    path = tmp_path / "keyring.json"
    init_keyring(path)
    first = Vault.from_parts(
        database=database, root=LocalKeyring.load(path), store=memory_store, clock=clock
    )
    platform = bearer(first.api_keys.create(tenant_id=None, role=Role.PLATFORM_ADMIN)[1])
    acme, globex = make_tenancy(first, "acme"), make_tenancy(first, "globex")
    with serving(first) as api:
        library = populate(api, acme)
        rotate(api, acme)
        late = b"under KEK version 2" * 20
        library.assets[upload(api, acme, late, "late.ts")] = late
        other = Library(assets={upload(api, globex, b"globex", "g.ts"): b"globex"})
    # what `serve` does in the background: sign audit checkpoints, and a URL signing key
    # (both root-wrapped as well)
    first.audit_log.checkpoint(acme.id)
    first.distribution.keys.rotate(acme.id)

    rotate_keyring(path)
    only_new = LocalKeyring(
        {2: base64.b64decode(json.loads(path.read_text())["keys"][1]["material"])}, 2
    )
    with database.transaction(readonly=True) as session:
        rows = list(session.scalars(select(TenantKeyVersionRow)))
    assert {row.root_key_id for row in rows} == {"local:1"}
    # control: the new root version alone cannot unwrap what the old one wrapped
    with pytest.raises(DecryptionError):
        only_new.unwrap(WrappedKey(rows[0].root_key_id, rows[0].wrapped_key), {})

    second = Vault.from_parts(
        database=database, root=LocalKeyring.load(path), store=memory_store, clock=clock
    )
    with serving(second) as api:
        request = key_pb2.RewrapRootKeysRequest()
        denied = rpc_error(lambda: api.tenant_keys.RewrapRootKeys(request, metadata=acme.md()))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = api.tenant_keys.RewrapRootKeys(request, metadata=platform)
        # acme: versions 1 and 2, globex: 1; only acme has subjects, so a pseudonym key
        assert (reply.kek_versions, reply.pseudonym_keys) == (3, 1)
        for tenant in (acme, globex):
            named = api.tenant_keys.GetKeyStatus(
                key_pb2.GetKeyStatusRequest(tenant_id=tenant.id), metadata=platform
            )
            assert {v.root_key_id for v in named.versions} == {"local:2"}
        # a rerun is harmless
        again = api.tenant_keys.RewrapRootKeys(request, metadata=platform)
        assert (again.kek_versions, again.pseudonym_keys) == (3, 1)

    _drop_root_version(path, 1)
    third = Vault.from_parts(
        database=database, root=LocalKeyring.load(path), store=memory_store, clock=clock
    )
    with serving(third) as api:
        assert_everything_reads(api, acme, library)
        assert_everything_reads(api, globex, other)
        # the pseudonym key moved too: the same viewer maps to the same subject
        put_payload(api, acme, ADA, b"after the root rotation")
        # the root rewrap moved KEKs only; the tenant's own rewrap is still to be done
        assert dict(status(api, acme).keys_to_rewrap) == {"asset": 2, "subject": 2}
        assert states(rotate(api, globex)) == {1: "decrypt-only", 2: "active"}
    # the service's other root-wrapped keys moved as well: checkpoints are still signed
    # and URLs still issued without the old root version
    third.audit_log.checkpoint(acme.id)
    assert third.distribution.keys.signing_key(acme.id).kid


# -- bring your own key --------------------------------------------------------------------


class Revocation:
    """The tenant revoking the service's access to its own KMS key (in real KMS: a key
    policy or grant change, DisableKey, ScheduleKeyDeletion).

    moto's KMS mock does not enforce any of these on Decrypt (moto 5.2: a disabled or
    pending-deletion key keeps decrypting, and key policies are only checked on
    DescribeKey), so a botocore hook on the service's client answers what real KMS would:
    ``AccessDeniedException`` for every call naming a revoked key, with an AWS-style
    message carrying the ARN and account id, which must never reach a client."""

    def __init__(self, client: Any) -> None:
        self.revoked: set[str] = set()
        self.calls: list[str] = []
        client.meta.events.register("before-parameter-build.kms", self._check)

    def _check(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append(model.name)
        named = {params.get(k) for k in ("KeyId", "SourceKeyId", "DestinationKeyId")}
        if named & self.revoked:
            arn = next(iter(named & self.revoked))
            raise ClientError(
                {
                    "Error": {
                        "Code": "AccessDeniedException",
                        "Message": f"User: arn:aws:sts::123456789012:assumed-role/vault is "
                        f"not authorized to perform: kms:{model.name} on resource: {arn}",
                    },
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                model.name,
            )


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


def _received_before_error(stream: Iterator[asset_pb2.DownloadResponse]) -> tuple[int, Any]:
    """Chunks a Download stream delivered before it failed, and the error."""
    chunks = 0
    try:
        for response in stream:
            chunks += response.WhichOneof("payload") == "chunk"
    except grpc.RpcError as error:
        return chunks, error
    raise AssertionError("the download succeeded")


def test_a_byok_tenant_is_under_its_own_kms_key_and_revoking_it_locks_reelvault_out(
    database, clock, memory_store, root_provider, kms
):
    tenant_arn = kms.create_key(Description="acme's own key")["KeyMetadata"]["Arn"]
    revocation = Revocation(kms)
    vault = Vault.from_parts(
        database=database,
        root=root_provider,
        store=memory_store,
        clock=clock,
        key_cache_ttl=0,  # every read asks KMS (the TTL's effect is another test's)
        byok=lambda arn: KmsRootKeyProvider(kms, arn),
    )
    platform = bearer(vault.api_keys.create(tenant_id=None, role=Role.PLATFORM_ADMIN)[1])
    with serving(vault) as api:
        created = api.tenants.CreateTenant(
            tenant_pb2.CreateTenantRequest(name="acme", kms_key_arn=tenant_arn), metadata=platform
        )
        acme = Tenancy(
            created.id,
            {
                role: vault.api_keys.create(tenant_id=created.id, role=role)[1]
                for role in (Role.ADMIN, Role.INGEST, Role.RENDERER)
            },
        )
        library = populate(api, acme)
        rotated = rotate(api, acme)
        assert rotated.kms_key_arn == tenant_arn
        assert {v.root_key_id for v in rotated.versions} == {tenant_arn}
        late = b"under version 2" * 10
        library.assets[upload(api, acme, late, "late.ts")] = late
        assert_everything_reads(api, acme, library)
        # the service's root key never saw this tenant
        assert not any(c.get("reelvault:tenant") == acme.id for c in root_provider.contexts)
        # each stored KEK is a KMS ciphertext that the tenant's key decrypts, with the
        # tenant and version as encryption context
        with vault.database.transaction(readonly=True) as session:
            rows = list(
                session.scalars(
                    select(TenantKeyVersionRow).where(TenantKeyVersionRow.tenant_id == acme.id)
                )
            )
        for row in rows:
            plain = kms.decrypt(
                CiphertextBlob=row.wrapped_key,
                EncryptionContext=_wrapping_context(acme.id, row.version),
                KeyId=tenant_arn,
            )["Plaintext"]
            assert len(plain) == 32
        # RewrapRootKeys leaves it alone: its keys never were under the service's root
        api.tenant_keys.RewrapRootKeys(key_pb2.RewrapRootKeysRequest(), metadata=platform)
        assert {v.root_key_id for v in status(api, acme).versions} == {tenant_arn}

        revocation.revoked.add(tenant_arn)
        asset_id = next(iter(library.assets))
        chunks, error = _received_before_error(
            api.assets.Download(
                asset_pb2.DownloadRequest(asset_id=asset_id), metadata=acme.md(Role.RENDERER)
            )
        )
        assert chunks == 0
        failures = [error] + [
            rpc_error(call)
            for call in [
                lambda: get_payload(api, acme, next(iter(library.payloads))),
                lambda: put_payload(api, acme, ADA, b"more"),
                lambda: upload(api, acme, b"new", "new.ts"),
            ]
        ]
        for failure in failures:
            assert (failure.code(), failure.details()) == (
                FP,
                "the root key in AWS KMS is not available",
            )
            assert "123456789012" not in failure.details()
        assert_nothing_reads(api, acme, library, "the root key in AWS KMS is not available")
        assert "Decrypt" in revocation.calls  # KMS was asked, and said no

        revocation.revoked.clear()
        assert_everything_reads(api, acme, library)
        assert download(api, acme, upload(api, acme, b"new", "new.ts")) == b"new"
