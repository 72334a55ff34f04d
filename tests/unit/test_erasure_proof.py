"""Erasure is crypto-shredding, proven by trying every key that is left.

Before erasing a viewer, the test captures what an adversary would have kept: the sealed
payload (its catalog row), the personalized rendition's stored object, and the data keys
wrapped in their headers. After the erasure it collects every key anything left can yield:
the root keys of the keyring file, every tenant KEK version they unwrap, every subject key
those unwrap; then it tries each of them, with reelvault's own code and with the official
aws-encryption-sdk, on each captured ciphertext and wrapped data key. None opens anything;
the same procedure opened everything before the erasure (so the test can fail).

A copy of the subject's *wrapped key* itself, taken before the erasure (a catalog backup),
is the documented gap (docs/privacy.md): the live tenant KEK still unwraps it. The last test
shows the gap and how an operator closes it: rotate, rewrap, destroy the older versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aws_encryption_sdk
import pytest
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
from sqlalchemy import select

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.catalog.tables import AssetRow, PayloadRow, SubjectRow, TenantKeyVersionRow
from reelvault.crypto import EncryptedDataKey, EncryptionContext, decrypt_stream, unwrap_key
from reelvault.crypto.format import parse_header
from reelvault.errors import DecryptionError
from reelvault.keys.local import LocalKeyring, init_keyring
from reelvault.keys.provider import WrappedKey
from reelvault.keys.tenant import _wrapping_context
from reelvault.objects import object_context
from reelvault.storage.memory import MemoryObjectStore

pytestmark = pytest.mark.db

VIEWER = "ada@example.com"
PAYLOAD = b'{"name": "Ada", "team": "Analytical Engines"}'
RENDITION = b"personalized frames for Ada " * 4000


class _AnyName(RawMasterKeyProvider):  # type: ignore[misc]
    """The SDK's Raw AES keyring holding one candidate key under whatever name is asked."""

    provider_id = "reelvault"
    candidate: bytes

    def _get_raw_key(self, key_id: bytes | str) -> WrappingKey:
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=self.candidate,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )


class _Any:
    """A reelvault KeyResolver answering every name with one candidate key."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def wrapping_key(self, key_name: str) -> bytes | None:
        return self.key


@dataclass
class Captured:
    tenant_id: str
    pseudonym: str
    payload_id: str
    payload_message: bytes
    rendition_id: str
    rendition_object: bytes
    wrapped_data_keys: list[tuple[EncryptedDataKey, EncryptionContext]]
    wrapped_subject_key: bytes


def _sdk_opens(message: bytes, key: bytes) -> bool:
    provider = _AnyName()
    provider.candidate = key
    header = parse_header(message)
    for edk in header.data_keys:
        name = edk.provider_info[: -(4 + 4 + 12)].decode()
        provider.add_master_key(name)
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    try:
        client.decrypt(source=message, key_provider=provider)
    except Exception:
        return False
    return True


def _reelvault_opens(message: bytes, key: bytes, context: EncryptionContext) -> bool:
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


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    init_keyring(path)
    return path


@pytest.fixture
def vault(database, keyring, clock) -> Vault:
    return Vault.from_parts(
        database=database, root=LocalKeyring.load(keyring), store=MemoryObjectStore(), clock=clock
    )


def _stored(vault: Vault, asset_id: str) -> bytes:
    with vault.database.transaction(readonly=True) as session:
        key = session.scalars(select(AssetRow.object_key).where(AssetRow.id == asset_id)).one()
    size = vault.store.head(key).size
    return vault.store.get_range(key, 0, size)


def _capture(vault: Vault) -> Captured:
    tenant_id = vault.tenant_keys.create_tenant("acme").id
    payload = vault.payloads.put(tenant_id, VIEWER, purpose="greeting", data=PAYLOAD)
    upload = vault.assets.begin_upload(tenant_id, UploadSpec(path="ada.mp4", subject_id=VIEWER))
    upload.write(RENDITION)
    rendition = upload.complete()
    with vault.database.transaction(readonly=True) as session:
        message = session.get(PayloadRow, payload.id).message
        subject = session.get(SubjectRow, (tenant_id, payload.pseudonym))
        wrapped_subject_key = subject.wrapped_key
    stored = _stored(vault, rendition.id)
    edks = [
        (edk, object_context(tenant_id, payload.id, "payload"))
        for edk in parse_header(message).data_keys
    ] + [
        (edk, object_context(tenant_id, rendition.id, "asset"))
        for edk in parse_header(stored).data_keys
    ]
    return Captured(
        tenant_id=tenant_id,
        pseudonym=payload.pseudonym,
        payload_id=payload.id,
        payload_message=message,
        rendition_id=rendition.id,
        rendition_object=stored,
        wrapped_data_keys=edks,
        wrapped_subject_key=wrapped_subject_key,
    )


def _every_key_left(vault: Vault, keyring: Path) -> list[bytes]:
    """Everything key-shaped that the keyring file and the catalog can still yield."""
    root = LocalKeyring.load(keyring)
    keks: list[bytes] = []
    with vault.database.transaction(readonly=True) as session:
        versions = list(session.scalars(select(TenantKeyVersionRow)))
        for row in versions:
            if row.wrapped_key is not None:
                keks.append(
                    root.unwrap(
                        WrappedKey(row.root_key_id, row.wrapped_key),
                        _wrapping_context(row.tenant_id, row.version),
                    )
                )
    subject_keys: list[bytes] = []
    with vault.database.transaction(readonly=True) as session:
        rows = list(session.scalars(select(SubjectRow)))
    for row in rows:
        if row.wrapped_key is None:
            continue
        context = EncryptionContext(
            {
                "reelvault:tenant": row.tenant_id,
                "reelvault:subject": row.pseudonym,
                "reelvault:kind": "subject-key",
            }
        )
        for kek in keks:
            edk = EncryptedDataKey.parse(row.wrapped_key)
            if _unwraps(edk, kek, context):
                subject_keys.append(unwrap_key(edk, _Any(kek), context))
    return keks + subject_keys


def _opened_by(captured: Captured, keys: list[bytes]) -> list[str]:
    """What each candidate key opens among the captured ciphertexts and wrapped keys."""
    opened = []
    payload_context = object_context(captured.tenant_id, captured.payload_id, "payload")
    rendition_context = object_context(captured.tenant_id, captured.rendition_id, "asset")
    for key in keys:
        if _sdk_opens(captured.payload_message, key):
            opened.append("payload (sdk)")
        if _reelvault_opens(captured.payload_message, key, payload_context):
            opened.append("payload (reelvault)")
        if _sdk_opens(captured.rendition_object, key):
            opened.append("rendition (sdk)")
        if _reelvault_opens(captured.rendition_object, key, rendition_context):
            opened.append("rendition (reelvault)")
        for edk, context in captured.wrapped_data_keys:
            if _unwraps(edk, key, context):
                opened.append("a wrapped data key")
    return opened


def test_after_erasure_nothing_left_decrypts_what_was_captured(vault: Vault, keyring: Path):
    captured = _capture(vault)
    other = vault.payloads.put(
        captured.tenant_id, "bob@example.com", purpose="greeting", data=b"{}"
    )
    before = _opened_by(captured, _every_key_left(vault, keyring))
    assert {
        "payload (sdk)",
        "payload (reelvault)",
        "rendition (sdk)",
        "rendition (reelvault)",
    } <= set(before)  # the procedure finds the subject key while it exists

    erased = vault.privacy.erase(captured.tenant_id, VIEWER)
    assert (erased.key_destroyed, erased.payloads_deleted, erased.assets_deleted) == (True, 1, 1)

    assert _opened_by(captured, _every_key_left(vault, keyring)) == []
    # nothing of it is left in the catalog or the store; the pseudonym row stays, keyless
    with vault.database.transaction(readonly=True) as session:
        assert session.get(PayloadRow, captured.payload_id) is None
        assert session.get(AssetRow, captured.rendition_id) is None
        subject = session.get(SubjectRow, (captured.tenant_id, captured.pseudonym))
        assert subject.wrapped_key is None and subject.erased_at is not None
    assert captured.rendition_object not in [
        vault.store.get_range(k, 0, vault.store.head(k).size) for k in vault.store.list_keys("t/")
    ]
    # another viewer of the same tenant is untouched
    ((_, data),) = list(vault.payloads.rows_of(captured.tenant_id, other.pseudonym))
    assert data == b"{}"


def test_a_wrapped_subject_key_copied_before_erasure_dies_with_the_kek_versions_it_was_under(
    vault: Vault, keyring: Path, clock
):
    captured = _capture(vault)
    vault.privacy.erase(captured.tenant_id, VIEWER)
    context = EncryptionContext(
        {
            "reelvault:tenant": captured.tenant_id,
            "reelvault:subject": captured.pseudonym,
            "reelvault:kind": "subject-key",
        }
    )
    copy = EncryptedDataKey.parse(captured.wrapped_subject_key)
    keks = _every_key_left(vault, keyring)
    # the documented gap: a catalog backup's copy still unwraps under the live KEK
    assert any(_unwraps(copy, kek, context) for kek in keks)
    # closing it: rotate, rewrap, raise the minimum, destroy the older version
    keys = vault.tenant_keys
    keys.rotate(captured.tenant_id)
    vault.lifecycle.rewrap(captured.tenant_id)
    clock.advance(61)
    keys.set_min_decryption_version(captured.tenant_id, 2)
    keys.schedule_deletion(captured.tenant_id, 1, waiting_period_seconds=86400)
    clock.advance(86401)
    keys.destroy(captured.tenant_id, 1)
    assert not any(_unwraps(copy, kek, context) for kek in _every_key_left(vault, keyring))
