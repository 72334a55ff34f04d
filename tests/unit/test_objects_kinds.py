"""gc and rewrap over every kind of sealed object: shared assets, personalized renditions
(subject-bound assets) and payloads.

gc must never take a subject-bound asset's object or anything of a live payload, however
old, whatever its options; an erased subject's renditions leave the store, at once or, when
the store failed during the erasure, by the next gc. Rewrap moves every kind's keys to the
active KEK version (assets' key slots and subject keys, counted by kind) without changing a
byte of what is stored, so the older version can be disabled and everything still reads.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.catalog.tables import AssetRow, DeletedObjectRow, PayloadRow, SubjectRow
from reelvault.clock import FakeClock
from reelvault.errors import InvalidArgument, KeyUnavailable, Unavailable
from reelvault.objects import MIN_GC_AGE, RewrapProgress
from reelvault.storage import MemoryObjectStore

pytestmark = pytest.mark.db

ADA, BOB, EVE = "ada@example.com", "bob@example.com", "eve@example.com"
PURPOSE = "personalization"
DAY = 86_400.0


@pytest.fixture
def object_store() -> MemoryObjectStore:
    return MemoryObjectStore()


@pytest.fixture
def vault(database, root_provider, clock, object_store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=object_store, clock=clock)


@pytest.fixture
def acme(vault: Vault) -> str:
    return vault.tenant_keys.create_tenant("acme").id


def upload(vault: Vault, tenant_id: str, path: str, data: bytes, subject_id: str | None = None):
    pending = vault.assets.begin_upload(tenant_id, UploadSpec(path=path, subject_id=subject_id))
    pending.write(data)
    return pending.complete()


def read_all(vault: Vault, tenant_id: str, asset_id: str) -> bytes:
    return b"".join(vault.assets.open_download(tenant_id, asset_id).pieces)


def object_key(vault: Vault, asset_id: str) -> str:
    with vault.database.transaction(readonly=True) as session:
        return session.scalars(select(AssetRow.object_key).where(AssetRow.id == asset_id)).one()


def snapshot(store: MemoryObjectStore) -> dict[str, bytes]:
    out = {}
    for key in store.list_keys(""):
        info = store.head(key)
        assert info is not None
        out[key] = store.get_range(key, 0, info.size)
    return out


def payload_messages(vault: Vault) -> dict[str, bytes]:
    with vault.database.transaction(readonly=True) as session:
        return {r.id: r.message for r in session.scalars(select(PayloadRow))}


def consent(vault: Vault, tenant_id: str, subject_id: str) -> None:
    vault.consents.record(tenant_id, subject_id, PURPOSE, granted=True, source="form")


# -- gc -------------------------------------------------------------------------------------


def test_gc_refuses_a_threshold_below_the_minimum(vault: Vault):
    with pytest.raises(InvalidArgument):
        vault.objects.gc(older_than_seconds=MIN_GC_AGE - 1)
    assert vault.objects.gc(older_than_seconds=MIN_GC_AGE, dry_run=True).deleted_objects == 0


@pytest.mark.parametrize("delete_unknown", [False, True])
def test_gc_never_takes_a_rendition_or_a_live_payload_however_old(
    vault: Vault, acme: str, clock: FakeClock, object_store: MemoryObjectStore, delete_unknown
):
    shared = upload(vault, acme, "intro.mp4", b"intro" * 1000)
    rendition = upload(vault, acme, "ada.mp4", b"ada frames" * 1000, subject_id=ADA)
    payload = vault.payloads.put(acme, ADA, purpose=PURPOSE, data=b'{"n": "Ada"}')
    consent(vault, acme, ADA)
    before, messages = snapshot(object_store), payload_messages(vault)
    assert len(before) == 2
    clock.advance(30 * DAY)
    for dry_run in (True, False):
        report = vault.objects.gc(
            older_than_seconds=MIN_GC_AGE, dry_run=dry_run, delete_unknown=delete_unknown
        )
        assert report.deleted_keys == () and report.unknown_keys == ()
        assert report.stale_upload_keys == () and report.multipart_uploads == ()
    assert snapshot(object_store) == before
    assert payload_messages(vault) == messages
    assert read_all(vault, acme, rendition.id) == b"ada frames" * 1000
    assert read_all(vault, acme, shared.id) == b"intro" * 1000
    assert vault.payloads.get(acme, payload.id, PURPOSE)[1] == b'{"n": "Ada"}'
    # every kind that keeps objects in the store is asked
    assert "asset" in vault.objects.kinds


def test_gc_spares_a_rendition_upload_that_is_still_running(
    vault: Vault, acme: str, clock: FakeClock, object_store: MemoryObjectStore
):
    pending = vault.assets.begin_upload(acme, UploadSpec(path="ada.mp4", subject_id=ADA))
    pending.write(b"frames" * 1000)
    for _ in range(10):  # the heartbeat keeps it alive past any threshold
        clock.advance(MIN_GC_AGE / 2)
        vault.objects.refresh_uploads()
        assert vault.objects.gc(older_than_seconds=MIN_GC_AGE).stale_uploads == 0
    info = pending.complete()
    assert read_all(vault, acme, info.id) == b"frames" * 1000


def test_erasure_removes_the_renditions_objects_and_leaves_the_rest(
    vault: Vault, acme: str, object_store: MemoryObjectStore
):
    shared = upload(vault, acme, "intro.mp4", b"intro" * 100)
    mine = [upload(vault, acme, f"ada-{i}.mp4", b"ada" * 100, subject_id=ADA) for i in range(3)]
    bobs = upload(vault, acme, "bob.mp4", b"bob" * 100, subject_id=BOB)
    keys = [object_key(vault, r.id) for r in mine]
    erased = vault.privacy.erase(acme, ADA)
    assert erased.assets_deleted == 3
    assert set(object_store.list_keys("t/")) == {
        object_key(vault, shared.id),
        object_key(vault, bobs.id),
    }
    assert not set(keys) & set(object_store.list_keys(""))
    with vault.database.transaction(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(DeletedObjectRow)) == 0
    assert read_all(vault, acme, bobs.id) == b"bob" * 100


def test_renditions_the_store_failed_to_delete_during_erasure_are_collected_by_gc(
    vault: Vault,
    acme: str,
    clock: FakeClock,
    object_store: MemoryObjectStore,
    monkeypatch: pytest.MonkeyPatch,
):
    renditions = [upload(vault, acme, f"ada-{i}.mp4", b"ada" * 100, subject_id=ADA) for i in (1, 2)]
    keys = {object_key(vault, r.id) for r in renditions}
    shared = upload(vault, acme, "intro.mp4", b"intro" * 100)
    failing = {"left": 1}  # the first delete fails, the second goes through
    real_delete = object_store.delete

    def flaky(key: str) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise Unavailable("store unavailable")
        real_delete(key)

    monkeypatch.setattr(object_store, "delete", flaky)
    erased = vault.privacy.erase(acme, ADA)
    assert erased.key_destroyed and erased.assets_deleted == 2
    left = keys & set(object_store.list_keys(""))
    assert len(left) == 1  # one object outlived the erasure, under a shredded key
    with vault.database.transaction(readonly=True) as session:
        assert set(session.scalars(select(DeletedObjectRow.object_key))) == left
    # gc deletes it at once (whatever the threshold), then forgets the record once old
    report = vault.objects.gc(older_than_seconds=MIN_GC_AGE)
    assert set(report.deleted_keys) == left and report.unknown_keys == ()
    assert not keys & set(object_store.list_keys(""))
    clock.advance(MIN_GC_AGE + 1)
    vault.objects.gc(older_than_seconds=MIN_GC_AGE)
    with vault.database.transaction(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(DeletedObjectRow)) == 0
    assert read_all(vault, acme, shared.id) == b"intro" * 100


# -- rewrap ---------------------------------------------------------------------------------


def test_rewrap_moves_asset_slots_and_subject_keys_and_leaves_stored_bytes_alone(
    vault: Vault, acme: str, clock: FakeClock, object_store: MemoryObjectStore
):
    shared = [upload(vault, acme, f"intro-{i}.mp4", b"intro %d" % i * 500) for i in range(3)]
    ada_rendition = upload(vault, acme, "ada.mp4", b"ada frames" * 500, subject_id=ADA)
    ada = vault.payloads.put(acme, ADA, purpose=PURPOSE, data=b'{"n": "Ada"}')
    bob = vault.payloads.put(acme, BOB, purpose=PURPOSE, data=b'{"n": "Bob"}')
    vault.payloads.put(acme, EVE, purpose=PURPOSE, data=b"{}")
    vault.privacy.erase(acme, EVE)  # an erased subject has no key to move
    for who in (ADA, BOB):
        consent(vault, acme, who)
    globex = vault.tenant_keys.create_tenant("globex").id
    elsewhere = upload(vault, globex, "intro.mp4", b"globex" * 100)
    stored, messages = snapshot(object_store), payload_messages(vault)

    vault.tenant_keys.rotate(acme)
    steps: list[RewrapProgress] = []
    moved = vault.objects.rewrap_tenant(acme, batch=2, progress=steps.append)
    assert moved == {"subject": 2, "asset": 3}
    assert {s.kind for s in steps} == {"subject", "asset"}
    assert [s for s in steps if s.done] == [
        RewrapProgress("subject", 2, True),
        RewrapProgress("asset", 3, True),
    ]
    # stored objects and sealed payloads: byte for byte what they were
    assert snapshot(object_store) == stored
    assert payload_messages(vault) == messages
    with vault.database.transaction(readonly=True) as session:
        versions = dict(
            session.execute(
                select(AssetRow.id, AssetRow.kek_version).where(AssetRow.tenant_id == acme)
            ).all()
        )
        subjects = dict(
            session.execute(
                select(SubjectRow.pseudonym, SubjectRow.kek_version).where(
                    SubjectRow.tenant_id == acme
                )
            ).all()
        )
        other = session.get(AssetRow, elsewhere.id).kek_version
    assert set(versions.values()) == {2}  # the rendition's too: its subject key moved
    assert subjects == {
        ada.pseudonym: 2,
        bob.pseudonym: 2,
        vault.subjects.pseudonym(acme, EVE): None,
    }
    assert other == 1  # another tenant's keys are not this rewrap's
    assert vault.objects.rewrap_tenant(acme) == {"subject": 0, "asset": 0}

    # version 1 can go: everything still reads under version 2 only
    vault.tenant_keys.disable(acme, 1)
    clock.advance(61)  # past the KEK cache
    for info in shared:
        assert read_all(vault, acme, info.id).startswith(b"intro")
    assert read_all(vault, acme, ada_rendition.id) == b"ada frames" * 500
    assert vault.payloads.get(acme, ada.id, PURPOSE)[1] == b'{"n": "Ada"}'
    assert vault.payloads.get(acme, bob.id, PURPOSE)[1] == b'{"n": "Bob"}'
    assert vault.payloads.put(acme, ADA, purpose=PURPOSE, data=b"{}").pseudonym == ada.pseudonym


def test_without_the_rewrap_a_disabled_version_locks_subjects_out(
    vault: Vault, acme: str, clock: FakeClock
):
    """The control for the test above: subject keys really are under the KEK, so what
    makes them readable after disabling version 1 is the rewrap."""
    payload = vault.payloads.put(acme, ADA, purpose=PURPOSE, data=b"{}")
    rendition = upload(vault, acme, "ada.mp4", b"frames" * 100, subject_id=ADA)
    consent(vault, acme, ADA)
    vault.tenant_keys.rotate(acme)
    vault.tenant_keys.disable(acme, 1)
    clock.advance(61)
    with pytest.raises(KeyUnavailable):
        vault.payloads.get(acme, payload.id, PURPOSE)
    with pytest.raises(KeyUnavailable):
        read_all(vault, acme, rendition.id)


def test_a_rendition_upload_straddling_a_rewrap_commits_under_its_subject_keys_version(
    vault: Vault, acme: str, clock: FakeClock
):
    """The subject key moved to version 2 while the rendition was uploading: the asset
    must say so (it said version 1 for ever, since no later rewrap touches it)."""
    pending = vault.assets.begin_upload(acme, UploadSpec(path="ada.mp4", subject_id=ADA))
    pending.write(b"frames" * 1000)
    vault.tenant_keys.rotate(acme)
    assert vault.objects.rewrap_tenant(acme) == {"subject": 1, "asset": 0}
    info = pending.complete()
    assert info.kek_version == 2
    with vault.database.transaction(readonly=True) as session:
        assert session.get(AssetRow, info.id).kek_version == 2
    assert vault.lifecycle.status(acme).keys_to_rewrap == {"asset": 0, "subject": 0}
    vault.tenant_keys.disable(acme, 1)
    clock.advance(61)
    assert read_all(vault, acme, info.id) == b"frames" * 1000
