"""TenantLifecycle and the root side of TenantKeys through the domain: KMS root rotation by
ReEncrypt (every root-wrapped key, no plaintext key leaving KMS), a BYOK tenant whose
revocation takes effect when the cached KEKs expire, a legal hold that appears during a
tenant's waiting period, what status counts, and what an export holds when a version was
destroyed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from moto import mock_aws
from sqlalchemy import select

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.auth import Role
from reelvault.catalog.tables import (
    AuditSigningKeyRow,
    TenantKeyVersionRow,
    TenantRow,
    UrlSigningKeyRow,
)
from reelvault.clock import FakeClock
from reelvault.crypto.recipient import open_from_recipient
from reelvault.errors import FailedPrecondition, KeyUnavailable
from reelvault.keys.kms import KmsRootKeyProvider
from reelvault.lifecycle import EXPORT_KEY_MIN_AGE, export_aad
from reelvault.storage.memory import MemoryObjectStore

pytestmark = pytest.mark.db

REGION = "us-east-1"
ADA = "ada@example.com"
BOB = "bob@example.com"
DAY = 86400.0


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's KMS; never real AWS with whatever credentials the machine has."""
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


class KmsCalls:
    """Records each KMS operation and its parameters; denies every call naming a revoked
    key id with AccessDeniedException, as real KMS does after a key policy or grant change
    or DisableKey (moto 5.2 enforces none of these on Decrypt)."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.revoked: set[str] = set()
        client.meta.events.register("before-parameter-build.kms", self._hook)

    def _hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))
        named = {params.get(k) for k in ("KeyId", "SourceKeyId", "DestinationKeyId")}
        if named & self.revoked:
            error = {"Code": "AccessDeniedException", "Message": "not authorized"}
            raise ClientError({"Error": error}, model.name)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def new_key(kms: Any) -> str:
    arn: str = kms.create_key(Description="reelvault root")["KeyMetadata"]["Arn"]
    return arn


def vault_over(database, clock, store, root, **kwargs: Any) -> Vault:
    return Vault.from_parts(database=database, root=root, store=store, clock=clock, **kwargs)


def put_asset(vault: Vault, tenant_id: str, data: bytes, path: str, subject: str | None = None):
    upload = vault.assets.begin_upload(tenant_id, UploadSpec(path=path, subject_id=subject))
    upload.write(data)
    return upload.complete().id


def read_asset(vault: Vault, tenant_id: str, asset_id: str) -> bytes:
    return b"".join(vault.assets.open_download(tenant_id, asset_id).pieces)


def populate(vault: Vault, tenant_id: str) -> dict[str, bytes]:
    """Assets of the tenant (one under Ada's subject key) and a payload Ada consented to;
    returns asset ids -> plaintext."""
    assets = {
        put_asset(vault, tenant_id, b"master " * 9000, "master.mp4"): b"master " * 9000,
        put_asset(vault, tenant_id, b"for Ada " * 500, "p/ada.mp4", ADA): b"for Ada " * 500,
    }
    vault.payloads.put(tenant_id, ADA, purpose="greeting", data=b"hello Ada")
    vault.consents.record(tenant_id, ADA, "greeting", granted=True, source="form")
    return assets


def assert_reads(vault: Vault, tenant_id: str, assets: dict[str, bytes]) -> None:
    for asset_id, data in assets.items():
        assert read_asset(vault, tenant_id, asset_id) == data
    [payload] = vault.payloads.list(tenant_id, ADA)[0]
    assert vault.payloads.get(tenant_id, payload.id, "greeting")[1] == b"hello Ada"


def root_key_ids(vault: Vault) -> dict[str, set[str]]:
    """The root key id of every root-wrapped key in the catalog, by kind."""
    with vault.database.transaction(readonly=True) as session:
        return {
            "kek": {r.root_key_id for r in session.scalars(select(TenantKeyVersionRow))},
            "audit": {r.root_key_id for r in session.scalars(select(AuditSigningKeyRow))},
            "url": {r.root_key_id for r in session.scalars(select(UrlSigningKeyRow))},
        }


# -- root key rotation with KMS ----------------------------------------------------------


def test_root_rewrap_with_kms_reencrypts_every_root_wrapped_key_to_the_new_key(
    database, clock: FakeClock, kms
):
    """Moving to another KMS key: every KEK version, pseudonym key, audit signing key and
    URL signing secret moves by ReEncrypt (no key in plaintext outside KMS), after which
    the old key is not needed for anything."""
    store = MemoryObjectStore()
    old, new = new_key(kms), new_key(kms)
    first = vault_over(database, clock, store, KmsRootKeyProvider(kms, old))
    acme = first.tenant_keys.create_tenant("acme").id
    globex = first.tenant_keys.create_tenant("globex").id
    assets = populate(first, acme)
    first.tenant_keys.rotate(acme)
    first.distribution.keys.rotate(acme)
    first.audit_log.checkpoint(acme)
    other = {put_asset(first, globex, b"globex", "g.mp4"): b"globex"}
    assert root_key_ids(first) == {"kek": {old}, "audit": {old}, "url": {old}}

    calls = KmsCalls(kms)
    moving = vault_over(
        database, clock, store, KmsRootKeyProvider(kms, new, previous_key_ids=[old])
    )
    assert moving.tenant_keys.rewrap_root() == (3, 1)
    # 3 KEK versions, 1 pseudonym key, the audit signing key, 1 URL signing key
    assert calls.names() == ["ReEncrypt"] * 6
    assert {(p["SourceKeyId"], p["DestinationKeyId"]) for _, p in calls.calls} == {(old, new)}
    assert root_key_ids(moving) == {"kek": {new}, "audit": {new}, "url": {new}}

    # the old key is out of the picture: a provider that only knows the new one does it all
    calls.revoked.add(old)
    calls.calls.clear()
    after = vault_over(database, clock, store, KmsRootKeyProvider(kms, new))
    assert_reads(after, acme, assets)
    assert read_asset(after, globex, next(iter(other))) == b"globex"
    after.payloads.put(acme, ADA, purpose="greeting", data=b"again")  # the pseudonym key
    after.audit_log.checkpoint(acme)  # the audit signing key
    assert after.distribution.keys.signing_key(acme).kid  # the URL signing secret
    assert {p.get("KeyId") for name, p in calls.calls if name == "Decrypt"} == {new}


def test_root_rewrap_after_automatic_kms_rotation_reencrypts_under_the_same_key(
    database, clock: FakeClock, kms
):
    """With automatic rotation the key id stays: ReEncrypt moves each wrapped key to the
    newest backing key, and the data reads as before."""
    store = MemoryObjectStore()
    key = new_key(kms)
    vault = vault_over(database, clock, store, KmsRootKeyProvider(kms, key))
    acme = vault.tenant_keys.create_tenant("acme").id
    assets = populate(vault, acme)
    with database.transaction(readonly=True) as session:
        before = bytes(session.scalars(select(TenantKeyVersionRow.wrapped_key)).one())
    calls = KmsCalls(kms)
    assert vault.tenant_keys.rewrap_root() == (1, 1)
    assert calls.names() == ["ReEncrypt", "ReEncrypt"]
    assert all(p["DestinationKeyId"] == key for _, p in calls.calls)
    with database.transaction(readonly=True) as session:
        row = session.scalars(select(TenantKeyVersionRow)).one()
        assert (row.root_key_id, bytes(row.wrapped_key) != before) == (key, True)
    assert_reads(vault, acme, assets)


# -- bring your own key ------------------------------------------------------------------


def test_a_byok_revocation_takes_effect_when_the_cached_keks_expire(
    database, clock: FakeClock, kms, root_provider
):
    """docs/keys.md: revoking access makes the tenant's data unreadable "once cached KEKs
    expire" (the TTL, 60 s here), and restoring it restores access."""
    tenant_key = new_key(kms)
    calls = KmsCalls(kms)
    vault = vault_over(
        database,
        clock,
        MemoryObjectStore(),
        root_provider,
        byok=lambda arn: KmsRootKeyProvider(kms, arn),
    )
    acme = vault.tenant_keys.create_tenant("acme", kms_key_arn=tenant_key)
    assert acme.kms_key_arn == tenant_key
    assets = populate(vault, acme.id)
    generated = [p for name, p in calls.calls if name == "GenerateDataKey"]
    assert [p["KeyId"] for p in generated] == [tenant_key] * 2  # KEK v1, pseudonym key
    assert root_provider.generate_calls == 0

    calls.revoked.add(tenant_key)
    assert_reads(vault, acme.id, assets)  # from the cache, for now
    clock.advance(60)
    for read in [
        lambda: read_asset(vault, acme.id, next(iter(assets))),
        lambda: vault.payloads.put(acme.id, BOB, purpose="greeting", data=b"new"),
    ]:
        with pytest.raises(KeyUnavailable, match="the root key in AWS KMS is not available"):
            read()
    calls.revoked.clear()
    assert_reads(vault, acme.id, assets)


# -- deletion, status, export ------------------------------------------------------------


def test_a_legal_hold_during_the_waiting_period_postpones_the_destruction(
    database, clock: FakeClock, root_provider
):
    vault = vault_over(database, clock, MemoryObjectStore(), root_provider)
    acme = vault.tenant_keys.create_tenant("acme").id
    assets = populate(vault, acme)
    vault.tenant_keys.schedule_tenant_deletion(acme, 7)
    vault.privacy.set_legal_hold(acme, ADA, True)
    clock.advance(8 * DAY)
    assert vault.lifecycle.destroy_due() == []
    assert vault.tenant_keys.get_tenant(acme).state == "pending-deletion"
    assert all(v.state != "destroyed" for v in vault.tenant_keys.list_versions(acme))
    assert len(list(vault.store.list_keys(f"t/{acme}/"))) == len(assets)

    vault.privacy.set_legal_hold(acme, ADA, False)
    assert vault.lifecycle.destroy_due() == [acme]
    assert vault.tenant_keys.get_tenant(acme).state == "destroyed"
    assert list(vault.store.list_keys(f"t/{acme}/")) == []
    with pytest.raises(FailedPrecondition, match="the tenant was destroyed"):
        vault.tenant_keys.rotate(acme)
    with database.transaction(readonly=True) as session:
        assert session.get(TenantRow, acme).pseudonym_key is None
        versions = session.scalars(
            select(TenantKeyVersionRow).where(TenantKeyVersionRow.tenant_id == acme)
        )
        assert [v.wrapped_key for v in versions] == [None]


def test_status_counts_what_a_rewrap_would_move(database, clock: FakeClock, root_provider):
    vault = vault_over(database, clock, MemoryObjectStore(), root_provider)
    acme = vault.tenant_keys.create_tenant("acme").id
    populate(vault, acme)
    put_asset(vault, acme, b"bob's", "p/bob.mp4", BOB)
    assert vault.lifecycle.status(acme).keys_to_rewrap == {"asset": 0, "subject": 0}
    vault.tenant_keys.rotate(acme)
    # one plain asset; two subjects (their renditions move with them, not counted as assets)
    assert vault.lifecycle.status(acme).keys_to_rewrap == {"asset": 1, "subject": 2}
    vault.privacy.erase(acme, BOB)  # an erased subject has nothing left to move
    assert vault.lifecycle.status(acme).keys_to_rewrap == {"asset": 1, "subject": 1}
    assert vault.lifecycle.rewrap(acme) == {"asset": 1, "subject": 1}
    assert vault.lifecycle.status(acme).keys_to_rewrap == {"asset": 0, "subject": 0}


def _export(vault: Vault, tenant_id: str) -> dict[str, Any]:
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
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    document: dict[str, Any] = json.loads(
        open_from_recipient(private_pem, envelope, export_aad(tenant_id, request.id))
    )
    return document


def test_an_export_holds_live_keys_only_and_the_keys_reelvault_uses(
    database, clock: FakeClock, root_provider
):
    """A subject key under a destroyed KEK version was shredded with it: the export leaves
    it out (and still holds everything else); a live subject key is exported as the very
    key reelvault wraps data keys with, whatever the state of its version."""
    vault = vault_over(database, clock, MemoryObjectStore(), root_provider)
    acme = vault.tenant_keys.create_tenant("acme").id
    vault.payloads.put(acme, ADA, purpose="greeting", data=b"under v1, never rewrapped")
    vault.tenant_keys.rotate(acme)
    vault.payloads.put(acme, BOB, purpose="greeting", data=b"under v2")
    clock.advance(61)
    vault.tenant_keys.schedule_deletion(acme, 1, 60)
    clock.advance(60)
    vault.tenant_keys.destroy(acme, 1)
    bob = vault.subjects.subject_key(acme, BOB)
    vault.tenant_keys.disable(acme, 2)

    document = _export(vault, acme)
    assert [(v["version"], v["state"]) for v in document["kek_versions"]] == [(2, "disabled")]
    [subject] = document["subject_keys"]
    assert (subject["subject"], subject["key_name"]) == (bob.pseudonym, bob.key.name)
    assert base64.b64decode(subject["key"]) == bob.key.key


def _week_old_admin(vault: Vault, tenant_id: str) -> str:
    """A tenant admin key old enough to request a key export."""
    key, _ = vault.api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    vault.clock.advance(EXPORT_KEY_MIN_AGE.total_seconds())  # type: ignore[attr-defined]
    return key.id
