"""gc deletes only what the catalog knows to be garbage (issue #11).

The symptom this reproduces: the documented restore drill, run against a restored catalog
and the shared bucket, let ``gc`` delete a production object, since every object of an asset
created after the backup had "neither an asset row nor an upload row". Now an object the
catalog has no record of is reported and kept; deleted assets and abandoned uploads leave a
``deleted_objects`` record, which is what gc collects.
"""

from __future__ import annotations

import os

import pytest
from asset_helpers import get, put
from sqlalchemy import delete, func, select

from reelvault import errors
from reelvault.assets import MAX_CHUNK, Assets, UploadSpec
from reelvault.catalog.tables import AssetRow, DeletedObjectRow, UploadRow
from reelvault.storage import MemoryObjectStore

pytestmark = pytest.mark.db

MiB = 1024 * 1024
HOUR = 3600.0


@pytest.fixture
def store(clock) -> MemoryObjectStore:
    """Multipart uploads stamped by the test's clock, so they age with it."""
    return MemoryObjectStore(part_size=5 * MiB, max_in_flight=2, clock=clock)


def _object_key(database, asset_id: str) -> str:
    with database.transaction(readonly=True) as session:
        key = session.scalar(select(AssetRow.object_key).where(AssetRow.id == asset_id))
    assert key is not None
    return key


def _forget_asset(database, asset_id: str) -> str:
    """Make the catalog older than the asset: its row is gone without any trace, as in a
    catalog restored from a backup taken before the asset was uploaded."""
    key = _object_key(database, asset_id)
    with database.transaction() as session:
        session.execute(delete(AssetRow).where(AssetRow.id == asset_id))
    return key


def _records(database) -> set[str]:
    with database.transaction(readonly=True) as session:
        return set(session.scalars(select(DeletedObjectRow.object_key)))


def _upload_rows(database) -> int:
    with database.transaction(readonly=True) as session:
        return int(session.scalar(select(func.count()).select_from(UploadRow)) or 0)


def _fail_next_delete(monkeypatch, store: MemoryObjectStore) -> None:
    real = store.delete

    def failing(key: str) -> None:
        monkeypatch.setattr(store, "delete", real)
        raise errors.Unavailable("object store unavailable")

    monkeypatch.setattr(store, "delete", failing)


def test_objects_of_assets_a_restored_catalog_never_saw_survive_gc_and_are_reported(
    assets, tenant, database, store, clock
):
    old = put(assets, tenant, os.urandom(3000), path="old")
    newer = [put(assets, tenant, os.urandom(3000), path=f"new-{i}") for i in range(3)]
    unknown = sorted(_forget_asset(database, info.id) for info in newer)
    clock.advance(2 * HOUR)

    report = assets.gc(older_than_seconds=HOUR)

    assert report.unknown_keys == tuple(unknown)
    assert report.unknown_objects == 3
    assert (report.deleted_keys, report.multipart_uploads, report.stale_upload_keys) == (
        (),
        (),
        (),
    )
    assert set(store.list_keys()) == {_object_key(database, old.id), *unknown}
    assert get(assets, tenant, old.id)


def test_delete_unknown_deletes_what_the_catalog_has_no_record_of(
    assets, tenant, database, store, clock
):
    kept = put(assets, tenant, os.urandom(3000), path="kept")
    gone = _forget_asset(database, put(assets, tenant, os.urandom(3000), path="gone").id)
    clock.advance(2 * HOUR)

    report = assets.gc(older_than_seconds=HOUR, delete_unknown=True)

    assert (report.unknown_keys, report.deleted_keys) == ((gone,), (gone,))
    assert set(store.list_keys()) == {_object_key(database, kept.id)}
    assert get(assets, tenant, kept.id)


def test_a_deleted_asset_whose_store_delete_failed_is_collected(
    assets, tenant, database, store, monkeypatch
):
    info = put(assets, tenant, os.urandom(3000), path="doomed")
    key = _object_key(database, info.id)
    _fail_next_delete(monkeypatch, store)

    with pytest.raises(errors.Unavailable):
        assets.delete(tenant, info.id)

    with pytest.raises(errors.NotFound):  # the row went at once
        assets.stat(tenant, info.id)
    assert key in set(store.list_keys())
    assert _records(database) == {key}
    report = assets.gc(older_than_seconds=HOUR)  # no age needed: the record says garbage
    assert (report.deleted_keys, report.unknown_keys) == ((key,), ())
    assert list(store.list_keys()) == []
    assert _records(database) == set()


def test_a_successful_delete_leaves_no_record(assets, tenant, database, store):
    info = put(assets, tenant, os.urandom(3000), path="a")
    assets.delete(tenant, info.id)
    assert (list(store.list_keys()), _records(database)) == ([], set())


def test_an_abort_whose_cleanup_failed_is_collected_without_waiting(
    assets, tenant, database, store, monkeypatch
):
    upload = assets.begin_upload(tenant, UploadSpec(path="x", expected_size=1))
    upload.write(b"a")
    upload._target.complete()  # as if the object had completed before the commit failed
    upload._object_completed = True
    _fail_next_delete(monkeypatch, store)

    with pytest.raises(errors.Unavailable):
        upload.abort()

    assert _upload_rows(database) == 0
    assert _records(database) == {upload.object_key}
    report = assets.gc(older_than_seconds=HOUR)
    assert report.deleted_keys == (upload.object_key,)
    assert list(store.list_keys()) == []


def test_abandoned_uploads_are_collected_and_unknown_multipart_uploads_kept(
    assets, tenant, database, store, clock
):
    # a process that died mid-upload: a stale row and its multipart upload
    midway = assets.begin_upload(tenant, UploadSpec(path="midway"))
    for _ in range(6):
        midway.write(os.urandom(MAX_CHUNK))
    # a process that died after the object completed, before the commit
    crashed = assets.begin_upload(tenant, UploadSpec(path="crashed"))
    crashed.write(b"bytes")
    crashed._target.complete()
    # another deployment's upload, running in the same bucket: no row here
    foreign_key = f"t/{tenant}/{'e' * 32}"
    foreign = store.begin(foreign_key)
    foreign.write(os.urandom(6 * MiB))
    clock.advance(2 * HOUR)

    report = assets.gc(older_than_seconds=HOUR)

    assert set(report.stale_upload_keys) == {midway.object_key, crashed.object_key}
    assert {key for key, _ in report.multipart_uploads} == {midway.object_key}
    assert report.deleted_keys == (crashed.object_key,)
    assert [key for key, _ in report.unknown_multipart_uploads] == [foreign_key]
    assert [u.key for u in store.list_multipart_uploads()] == [foreign_key]
    assert (_upload_rows(database), _records(database)) == (0, set())
    foreign.write(b"tail")
    foreign.complete()  # untouched: it still completes

    report = assets.gc(older_than_seconds=HOUR, delete_unknown=True)
    assert report.deleted_keys == (foreign_key,)


def test_dry_run_deletes_nothing_and_lists_what_a_run_then_deletes(
    assets, tenant, database, store, clock, monkeypatch
):
    kept = put(assets, tenant, os.urandom(3000), path="kept")
    unknown = _forget_asset(database, put(assets, tenant, os.urandom(3000), path="new").id)
    failed = put(assets, tenant, os.urandom(3000), path="failed")
    _fail_next_delete(monkeypatch, store)
    with pytest.raises(errors.Unavailable):
        assets.delete(tenant, failed.id)
    midway = assets.begin_upload(tenant, UploadSpec(path="midway"))
    for _ in range(6):
        midway.write(os.urandom(MAX_CHUNK))
    crashed = assets.begin_upload(tenant, UploadSpec(path="crashed"))
    crashed.write(b"bytes")
    crashed._target.complete()
    clock.advance(2 * HOUR)
    before = (
        set(store.list_keys()),
        list(store.list_multipart_uploads()),
        _upload_rows(database),
        _records(database),
    )

    dry = assets.gc(older_than_seconds=HOUR, dry_run=True)

    after = (
        set(store.list_keys()),
        list(store.list_multipart_uploads()),
        _upload_rows(database),
        _records(database),
    )
    assert after == before
    assert dry.dry_run
    assert dry.deleted_objects == 2 and dry.stale_uploads == 2
    assert dry.unknown_keys == (unknown,)
    real = assets.gc(older_than_seconds=HOUR)
    assert not real.dry_run
    assert (
        set(real.stale_upload_keys),
        set(real.multipart_uploads),
        set(real.deleted_keys),
        real.unknown_keys,
    ) == (
        set(dry.stale_upload_keys),
        set(dry.multipart_uploads),
        set(dry.deleted_keys),
        dry.unknown_keys,
    )
    assert set(store.list_keys()) == {_object_key(database, kept.id), unknown}


def test_a_running_upload_is_never_taken_for_unknown(
    assets: Assets, tenant, database, store, clock
):
    running = assets.begin_upload(tenant, UploadSpec(path="running"))
    running.write(b"still going")
    clock.advance(2 * HOUR)
    assets.refresh_uploads()
    report = assets.gc(older_than_seconds=HOUR, delete_unknown=True)
    assert (report.stale_uploads, report.unknown_keys, report.unknown_multipart_uploads) == (
        0,
        (),
        (),
    )
    info = running.complete()
    assert get(assets, tenant, info.id) == b"still going"
