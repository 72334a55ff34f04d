"""docs/key-export.md's SDK snippet, run as written: with an approved export, the official
aws-encryption-sdk decrypts what reelvault stored (an asset sealed before a rotation and
rewrap, a personalized rendition, a payload's message), and nothing of another tenant."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.auth import Role
from reelvault.catalog.tables import AssetRow, PayloadRow
from reelvault.crypto.recipient import open_from_recipient
from reelvault.lifecycle import EXPORT_KEY_MIN_AGE, export_aad
from reelvault.storage.memory import MemoryObjectStore

pytestmark = pytest.mark.db

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "key-export.md"


@pytest.fixture(scope="module")
def decrypt_stored_object() -> Callable[[bytes, bytes], bytes]:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    (source,) = [b for b in blocks if "def decrypt_stored_object" in b]
    namespace: dict[str, object] = {}
    exec(compile(source, str(DOCS), "exec"), namespace)
    function = namespace["decrypt_stored_object"]
    assert callable(function)
    return function  # type: ignore[return-value]


def _export(vault: Vault, tenant_id: str) -> bytes:
    private = X25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    request = vault.lifecycle.request_export(
        tenant_id, public_pem, _week_old_admin(vault, tenant_id)
    )
    vault.lifecycle.approve_export(tenant_id, request.id, "b" * 16)
    _, envelope = vault.lifecycle.collect_export(tenant_id, request.id)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return open_from_recipient(private_pem, envelope, export_aad(tenant_id, request.id))


def test_the_documented_sdk_code_decrypts_every_kind_of_stored_object(
    database, root_provider, clock, decrypt_stored_object
):
    store = MemoryObjectStore()
    vault = Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)
    tenant = vault.tenant_keys.create_tenant("leaving").id
    other = vault.tenant_keys.create_tenant("staying").id

    def upload(tenant_id: str, path: str, data: bytes, subject: str | None = None) -> str:
        upload = vault.assets.begin_upload(tenant_id, UploadSpec(path=path, subject_id=subject))
        upload.write(data)
        return upload.complete().id

    def stored(asset_id: str) -> bytes:
        with database.transaction(readonly=True) as session:
            key = session.get(AssetRow, asset_id).object_key
        return store.get_range(key, 0, store.head(key).size)

    master = b"master frames " * 20_000
    before = upload(tenant, "master.mp4", master)
    vault.tenant_keys.rotate(tenant)
    assert vault.lifecycle.rewrap(tenant) == {"asset": 1, "subject": 0}
    personal = upload(tenant, "ada.mp4", b"for Ada " * 5000, subject="ada@example.com")
    payload = vault.payloads.put(tenant, "ada@example.com", purpose="greeting", data=b'{"n":1}')
    foreign = upload(other, "x.mp4", b"not yours")
    document = _export(vault, tenant)

    assert decrypt_stored_object(document, stored(before)) == master
    assert decrypt_stored_object(document, stored(personal)) == b"for Ada " * 5000
    with database.transaction(readonly=True) as session:
        message = session.get(PayloadRow, payload.id).message
    assert decrypt_stored_object(document, message) == b'{"n":1}'
    with pytest.raises(Exception, match="Unable to decrypt"):
        decrypt_stored_object(document, stored(foreign))


def _week_old_admin(vault: Vault, tenant_id: str) -> str:
    """A tenant admin key old enough to request a key export."""
    key, _ = vault.api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    vault.clock.advance(EXPORT_KEY_MIN_AGE.total_seconds())  # type: ignore[attr-defined]
    return key.id
