"""The tenant key lifecycle beyond one KEK version: tenant states enforced by reelvault
itself, scheduled deletion with crypto-shredding and purge, rewrap over every kind of
sealed object without touching stored bytes, gc over every kind, root key rewrap, and a
tenant's own KMS key (bring your own key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
    AssetRow,
    DeletedObjectRow,
    PayloadRow,
    SubjectRow,
    TenantKeyVersionRow,
)
from reelvault.errors import (
    FailedPrecondition,
    InvalidArgument,
    KeyUnavailable,
    NotFound,
    Unavailable,
)
from reelvault.keys.kms import KmsRootKeyProvider
from reelvault.keys.local import LocalKeyring, _read_document, init_keyring, rotate_keyring
from reelvault.keys.provider import WrappedKey
from reelvault.keys.tenant import _wrapping_context
from reelvault.lifecycle import EXPORT_KEY_MIN_AGE
from reelvault.objects import MIN_GC_AGE, RewrapProgress
from reelvault.storage.memory import MemoryObjectStore

pytestmark = pytest.mark.db

VIEWER = "ada@example.com"


@pytest.fixture
def store() -> MemoryObjectStore:
    return MemoryObjectStore()


@pytest.fixture
def vault(database, root_provider, clock, store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)


def _upload(vault: Vault, tenant_id: str, path: str, data: bytes, subject: str | None = None):
    upload = vault.assets.begin_upload(tenant_id, UploadSpec(path=path, subject_id=subject))
    upload.write(data)
    return upload.complete()


def _read(vault: Vault, tenant_id: str, asset_id: str) -> bytes:
    download = vault.assets.open_download(tenant_id, asset_id)
    return b"".join(download.chunks)


def _stored_bytes(store: MemoryObjectStore) -> dict[str, bytes]:
    return {key: store.get_range(key, 0, store.head(key).size) for key in store.list_keys("t/")}


def _populate(vault: Vault, tenant_id: str) -> tuple[str, str, str]:
    plain = _upload(vault, tenant_id, "master.mp4", b"m" * 200_000).id
    personal = _upload(vault, tenant_id, "ada.mp4", b"a" * 70_000, subject=VIEWER).id
    payload = vault.payloads.put(tenant_id, VIEWER, purpose="greeting", data=b'{"n":1}').id
    vault.consents.record(tenant_id, VIEWER, "greeting", granted=True, source="form")
    return plain, personal, payload


# -- rewrap covers every kind and never touches stored bytes ---------------------------------


def test_rewrap_moves_asset_slots_and_subject_keys_and_leaves_stored_objects_identical(
    vault: Vault, store: MemoryObjectStore, clock
):
    tenant = vault.tenant_keys.create_tenant("acme").id
    plain, personal, payload = _populate(vault, tenant)
    before = _stored_bytes(store)
    vault.tenant_keys.rotate(tenant)
    assert vault.lifecycle.status(tenant).keys_to_rewrap == {"asset": 1, "subject": 1}
    steps: list[RewrapProgress] = []
    moved = vault.lifecycle.rewrap(tenant, steps.append)
    assert moved == {"asset": 1, "subject": 1}
    assert {s.kind for s in steps if s.done} == {"asset", "subject"}
    assert all(s.moved == 1 for s in steps if s.done)
    assert vault.lifecycle.status(tenant).keys_to_rewrap == {"asset": 0, "subject": 0}
    assert _stored_bytes(store) == before  # byte for byte
    # version 1 retired: everything still reads, through version 2 only
    clock.advance(61)
    vault.tenant_keys.set_min_decryption_version(tenant, 2)
    vault.tenant_keys.disable(tenant, 1)
    vault.tenant_keys.clear_cache()
    assert _read(vault, tenant, plain) == b"m" * 200_000
    assert _read(vault, tenant, personal) == b"a" * 70_000
    assert vault.payloads.get(tenant, payload, "greeting")[1] == b'{"n":1}'
    assert vault.assets.stat(tenant, personal).kek_version == 2


def test_rewrap_is_resumable_after_a_failure(vault: Vault, monkeypatch):
    tenant = vault.tenant_keys.create_tenant("acme").id
    ids = [_upload(vault, tenant, f"a/{i}", bytes([i]) * 100).id for i in range(5)]
    for i in range(3):
        vault.payloads.put(tenant, f"viewer-{i}", purpose="p", data=b"x")
    vault.tenant_keys.rotate(tenant)
    subjects = vault.subjects
    original = subjects.rewrap_batch
    calls = {"n": 0}

    def failing(tenant_id: str, batch: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            original(tenant_id, 1)  # one key moved, then the process "dies"
            raise RuntimeError("killed mid-rewrap")
        return original(tenant_id, batch)

    monkeypatch.setattr(subjects, "rewrap_batch", failing)
    with pytest.raises(RuntimeError):
        vault.lifecycle.rewrap(tenant)
    assert vault.lifecycle.status(tenant).keys_to_rewrap == {"asset": 5, "subject": 2}
    assert vault.lifecycle.rewrap(tenant) == {"asset": 5, "subject": 2}
    assert vault.lifecycle.status(tenant).keys_to_rewrap == {"asset": 0, "subject": 0}
    assert [_read(vault, tenant, i) for i in ids] == [bytes([i]) * 100 for i in range(5)]


# -- gc asks every kind ----------------------------------------------------------------------


def test_gc_keeps_every_kinds_objects_and_collects_an_erased_renditions_leftover(
    vault: Vault, store: MemoryObjectStore, clock, monkeypatch
):
    tenant = vault.tenant_keys.create_tenant("acme").id
    plain, _, _ = _populate(vault, tenant)
    assert vault.objects.kinds == ("asset",)
    clock.advance(MIN_GC_AGE + 10)
    report = vault.objects.gc(older_than_seconds=MIN_GC_AGE)
    assert report.deleted_keys == () and report.unknown_keys == ()
    assert len(_stored_bytes(store)) == 2
    # the store refuses the rendition's delete during the erasure: its record stays for gc
    real_delete = store.delete
    monkeypatch.setattr(store, "delete", lambda key: (_ for _ in ()).throw(OSError("down")))
    vault.privacy.erase(tenant, VIEWER)
    monkeypatch.setattr(store, "delete", real_delete)
    with vault.database.transaction(readonly=True) as session:
        leftovers = list(session.scalars(select(DeletedObjectRow.object_key)))
    assert len(leftovers) == 1 and leftovers[0] in _stored_bytes(store)
    report = vault.objects.gc(older_than_seconds=MIN_GC_AGE)
    assert report.deleted_keys == tuple(leftovers)
    assert (
        list(_stored_bytes(store)) == [k for k in _stored_bytes(store) if k not in leftovers]
        and len(_stored_bytes(store)) == 1
    )
    assert _read(vault, tenant, plain) == b"m" * 200_000


# -- tenant states are reelvault's, whatever the root provider does --------------------------


def test_a_disabled_tenant_is_refused_without_asking_the_root_provider(vault: Vault, root_provider):
    tenant = vault.tenant_keys.create_tenant("acme").id
    plain, _, payload = _populate(vault, tenant)
    vault.tenant_keys.disable_tenant(tenant)
    calls = root_provider.unwrap_calls
    with pytest.raises(KeyUnavailable, match="disabled"):
        _read(vault, tenant, plain)
    with pytest.raises(KeyUnavailable):
        vault.payloads.get(tenant, payload, "greeting")
    with pytest.raises(KeyUnavailable):
        vault.payloads.put(tenant, VIEWER, purpose="greeting", data=b"{}")
    assert root_provider.unwrap_calls == calls  # refused before the provider was asked
    # the provider would have unwrapped it: the refusal is reelvault's own
    with vault.database.transaction(readonly=True) as session:
        row = session.get(TenantKeyVersionRow, (tenant, 1))
        assert root_provider.unwrap(
            WrappedKey(row.root_key_id, row.wrapped_key), _wrapping_context(tenant, 1)
        )
    vault.tenant_keys.enable_tenant(tenant)
    assert _read(vault, tenant, plain) == b"m" * 200_000


def test_scheduled_deletion_bounds_holds_cancel_and_destruction(
    vault: Vault, store: MemoryObjectStore, clock
):
    keys = vault.tenant_keys
    tenant = keys.create_tenant("leaving").id
    other = keys.create_tenant("staying").id
    plain, personal, _ = _populate(vault, tenant)
    kept = _upload(vault, other, "x.mp4", b"kept").id
    for days in (0, 6, 31):
        with pytest.raises(InvalidArgument):
            keys.schedule_tenant_deletion(tenant, days)
    vault.privacy.set_legal_hold(tenant, VIEWER, True)
    with pytest.raises(FailedPrecondition, match="legal hold"):
        keys.schedule_tenant_deletion(tenant, 7)
    vault.privacy.set_legal_hold(tenant, VIEWER, False)
    scheduled = keys.schedule_tenant_deletion(tenant, 7)
    assert scheduled.state == "pending-deletion"
    with pytest.raises(KeyUnavailable, match="pending-deletion"):
        _read(vault, tenant, plain)
    assert keys.cancel_tenant_deletion(tenant).state == "disabled"
    keys.schedule_tenant_deletion(tenant, 7)
    clock.advance(6 * 86400)
    assert vault.lifecycle.destroy_due() == []  # not due yet
    clock.advance(86400 + 1)
    assert vault.lifecycle.destroy_due() == [tenant]
    with vault.database.transaction(readonly=True) as session:
        versions = list(
            session.scalars(
                select(TenantKeyVersionRow).where(TenantKeyVersionRow.tenant_id == tenant)
            )
        )
        assert versions and all(v.wrapped_key is None and v.state == "destroyed" for v in versions)
        subjects = list(session.scalars(select(SubjectRow).where(SubjectRow.tenant_id == tenant)))
        assert subjects and all(s.wrapped_key is None for s in subjects)
        assert session.scalars(select(PayloadRow).where(PayloadRow.tenant_id == tenant)).all() == []
        assert session.scalars(select(AssetRow).where(AssetRow.tenant_id == tenant)).all() == []
    assert [k for k in store.list_keys(f"t/{tenant}/")] == []
    assert keys.get_tenant(tenant).state == "destroyed"
    with pytest.raises(FailedPrecondition):
        vault.subjects.pseudonym(tenant, VIEWER)  # never a new pseudonym key
    assert _read(vault, other, kept) == b"kept"  # another tenant is untouched
    with pytest.raises(NotFound):
        vault.assets.stat(tenant, personal)


# -- root key rotation -----------------------------------------------------------------------


def test_root_rewrap_moves_every_kek_and_pseudonym_key_to_the_new_root_version(
    database, clock, tmp_path: Path
):
    path = tmp_path / "keyring.json"
    init_keyring(path)
    store = MemoryObjectStore()
    vault = Vault.from_parts(
        database=database, root=LocalKeyring.load(path), store=store, clock=clock
    )
    tenant = vault.tenant_keys.create_tenant("acme").id
    plain, _, payload = _populate(vault, tenant)
    rotate_keyring(path)
    rotated = Vault.from_parts(
        database=database, root=LocalKeyring.load(path), store=store, clock=clock
    )
    assert rotated.tenant_keys.rewrap_root() == (1, 1)
    with database.transaction(readonly=True) as session:
        (row,) = session.scalars(select(TenantKeyVersionRow)).all()
    assert row.root_key_id == "local:2"
    # a process that only knows the new root version reads everything
    fresh = Vault.from_parts(
        database=database, root=_only_version(path, 2), store=store, clock=clock
    )
    assert _read(fresh, tenant, plain) == b"m" * 200_000
    assert fresh.payloads.get(tenant, payload, "greeting")[1] == b'{"n":1}'


def _only_version(path: Path, version: int) -> LocalKeyring:
    """The keyring as it would be once the older root versions were dropped."""
    document = _read_document(path)
    (entry,) = [e for e in document.entries if e.version == version]
    return LocalKeyring({version: entry.material}, version)


def test_root_rewrap_with_kms_reencrypts(database, clock, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        key = client.create_key()["KeyMetadata"]["Arn"]
        calls: list[str] = []
        client.meta.events.register(
            "before-call.kms.*", lambda model, **_: calls.append(model.name)
        )
        vault = Vault.from_parts(
            database=database,
            root=KmsRootKeyProvider(client, key),
            store=MemoryObjectStore(),
            clock=clock,
        )
        tenant = vault.tenant_keys.create_tenant("acme").id
        plain = _upload(vault, tenant, "m.mp4", b"kms" * 1000).id
        calls.clear()
        assert vault.tenant_keys.rewrap_root() == (1, 0)
        assert calls == ["ReEncrypt"]  # no plaintext KEK came out of KMS for the move
        vault.tenant_keys.clear_cache()
        assert _read(vault, tenant, plain) == b"kms" * 1000


# -- bring your own key ----------------------------------------------------------------------


@pytest.fixture
def kms(monkeypatch) -> Iterator[object]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("kms", region_name="us-east-1")


def test_a_tenants_own_kms_key_wraps_its_keys_and_revoking_it_locks_reelvault_out(
    database, clock, kms
):
    """moto's KMS keeps decrypting with a disabled key, so the revocation (a key policy
    change on the tenant's side) is simulated with a botocore hook answering
    AccessDeniedException for that key, as KMS does."""
    service_key = kms.create_key()["KeyMetadata"]["Arn"]
    tenant_key = kms.create_key()["KeyMetadata"]["Arn"]
    vault = Vault.from_parts(
        database=database,
        root=KmsRootKeyProvider(kms, service_key),
        store=MemoryObjectStore(),
        clock=clock,
        key_cache_ttl=0,
        byok=lambda arn: KmsRootKeyProvider(kms, arn),
    )
    tenant = vault.tenant_keys.create_tenant("own-key", kms_key_arn=tenant_key)
    assert tenant.kms_key_arn == tenant_key
    plain, _, payload = _populate(vault, tenant.id)
    with database.transaction(readonly=True) as session:
        (row,) = session.scalars(select(TenantKeyVersionRow)).all()
    assert row.root_key_id == tenant_key

    def revoked(params, **_):  # before-parameter-build: the API call's own parameters
        if params.get("KeyId") == tenant_key:
            raise ClientError(
                {"Error": {"Code": "AccessDeniedException", "Message": "revoked"}}, "Decrypt"
            )

    kms.meta.events.register("before-parameter-build.kms.Decrypt", revoked)
    with pytest.raises(KeyUnavailable, match="KMS"):
        _read(vault, tenant.id, plain)
    with pytest.raises(KeyUnavailable):
        vault.payloads.get(tenant.id, payload, "greeting")
    kms.meta.events.unregister("before-parameter-build.kms.Decrypt", revoked)
    assert _read(vault, tenant.id, plain) == b"m" * 200_000
    assert vault.payloads.get(tenant.id, payload, "greeting")[1] == b'{"n":1}'
    # the service's own root rewrap leaves the tenant's keys where they are
    assert vault.tenant_keys.rewrap_root() == (0, 0)


def test_byok_needs_a_well_formed_arn_and_kms_settings(vault: Vault):
    with pytest.raises(InvalidArgument):
        vault.tenant_keys.create_tenant("bad", kms_key_arn="not-an-arn")
    with pytest.raises(FailedPrecondition, match="KMS"):
        vault.tenant_keys.create_tenant(
            "no-kms", kms_key_arn="arn:aws:kms:us-east-1:111122223333:key/abc"
        )


# -- legal holds and viewer ids ---------------------------------------------------------------


def test_a_legal_hold_blocks_single_deletions_of_the_subjects_data(vault: Vault):
    tenant = vault.tenant_keys.create_tenant("acme").id
    _, personal, payload = _populate(vault, tenant)
    vault.privacy.set_legal_hold(tenant, VIEWER, True)
    with pytest.raises(FailedPrecondition, match="legal hold"):
        vault.payloads.delete(tenant, payload)
    with pytest.raises(FailedPrecondition, match="legal hold"):
        vault.assets.delete(tenant, personal)
    assert vault.payloads.get(tenant, payload, "greeting")[1] == b'{"n":1}'
    assert _read(vault, tenant, personal) == b"a" * 70_000
    vault.privacy.set_legal_hold(tenant, VIEWER, False)
    vault.payloads.delete(tenant, payload)
    vault.assets.delete(tenant, personal)
    with pytest.raises(NotFound):
        vault.payloads.get(tenant, payload, "greeting")


def test_one_viewer_id_in_two_unicode_forms_is_one_subject(vault: Vault):
    tenant = vault.tenant_keys.create_tenant("acme").id
    composed, decomposed = "Zo\u00eb", "Zoe\u0308"  # the same name, NFC and NFD
    assert composed != decomposed
    assert vault.subjects.pseudonym(tenant, composed) == vault.subjects.pseudonym(
        tenant, decomposed
    )
    vault.payloads.put(tenant, composed, purpose="greeting", data=b"{}")
    erased = vault.privacy.erase(tenant, decomposed)
    assert erased.payloads_deleted == 1


# -- key export needs two people, and releases once -------------------------------------------


def _pem() -> bytes:
    return (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_a_freshly_minted_admin_key_cannot_request_a_key_export(vault: Vault, clock):
    """A platform admin can mint a tenant admin key; if that key could request at once,
    one person would both request and approve. It has to be a week old first, a week in
    which the tenant's audit log shows it (apikey.create) and the tenant can revoke it."""
    tenant = vault.tenant_keys.create_tenant("acme").id
    minted, _ = vault.api_keys.create(tenant_id=tenant, role=Role.ADMIN)
    with pytest.raises(FailedPrecondition, match="7 days old"):
        vault.lifecycle.request_export(tenant, _pem(), minted.id)
    with pytest.raises(FailedPrecondition, match="tenant's keys"):
        vault.lifecycle.request_export(tenant, _pem(), "f" * 16)
    clock.advance(EXPORT_KEY_MIN_AGE.total_seconds())
    request = vault.lifecycle.request_export(tenant, _pem(), minted.id)
    with pytest.raises(FailedPrecondition, match="approve its own"):
        vault.lifecycle.approve_export(tenant, request.id, minted.id)
    vault.lifecycle.approve_export(tenant, request.id, "b" * 16)
    vault.tenant_keys.disable_tenant(tenant)  # the emergency stop holds exports too
    with pytest.raises(FailedPrecondition, match="disabled"):
        vault.lifecycle.collect_export(tenant, request.id)
    vault.tenant_keys.enable_tenant(tenant)
    _, envelope = vault.lifecycle.collect_export(tenant, request.id)
    assert envelope.startswith(b"RVX1")
    with pytest.raises(FailedPrecondition, match="collected already"):
        vault.lifecycle.collect_export(tenant, request.id)


def test_a_collection_that_fails_to_be_recorded_releases_nothing_and_can_be_retried(
    vault: Vault, clock, monkeypatch
):
    tenant = vault.tenant_keys.create_tenant("acme").id
    minted, _ = vault.api_keys.create(tenant_id=tenant, role=Role.ADMIN)
    clock.advance(EXPORT_KEY_MIN_AGE.total_seconds())
    request = vault.lifecycle.request_export(tenant, _pem(), minted.id)
    vault.lifecycle.approve_export(tenant, request.id, "b" * 16)

    def down() -> None:
        raise Unavailable("the audit log is down")

    monkeypatch.setattr(vault.auditor, "release", down)
    with pytest.raises(Unavailable):
        vault.lifecycle.collect_export(tenant, request.id)
    monkeypatch.undo()
    _, envelope = vault.lifecycle.collect_export(tenant, request.id)  # the claim was undone
    assert envelope.startswith(b"RVX1")
