"""gc deletes only what the catalog knows to be garbage (issue #11).

The symptom this reproduces: the documented restore drill, run against a restored catalog
and the shared bucket, let ``gc`` delete a production object, since every object of an asset
created after the backup had "neither an asset row nor an upload row". Now an object the
catalog has no record of is reported and kept; deleted assets and abandoned uploads leave a
``deleted_objects`` record, which is what gc collects.
"""

from __future__ import annotations

import os
import sqlite3

import pytest
from asset_helpers import get, put
from sqlalchemy import delete, func, select

from reelvault import errors
from reelvault.assets import MAX_CHUNK, Assets, UploadSpec
from reelvault.catalog import Database
from reelvault.catalog.tables import AssetRow, DeletedObjectRow, UploadRow
from reelvault.instrument import InstrumentedStore
from reelvault.keys.tenant import TenantKeys
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

    report = assets.objects.gc(older_than_seconds=HOUR)

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

    report = assets.objects.gc(older_than_seconds=HOUR, delete_unknown=True)

    assert (report.unknown_keys, report.deleted_keys) == ((gone,), (gone,))
    assert set(store.list_keys()) == {_object_key(database, kept.id)}
    assert get(assets, tenant, kept.id)


def test_a_deleted_asset_whose_store_delete_failed_is_collected(
    assets, tenant, database, store, clock, monkeypatch
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
    report = assets.objects.gc(older_than_seconds=HOUR)  # no age needed: the record says garbage
    assert (report.deleted_keys, report.unknown_keys) == ((key,), ())
    assert list(store.list_keys()) == []
    assert _records(database) == {key}  # kept until older than the threshold
    clock.advance(2 * HOUR)
    assert assets.objects.gc(older_than_seconds=HOUR).deleted_keys == ()
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
    report = assets.objects.gc(older_than_seconds=HOUR)
    assert report.deleted_keys == (upload.object_key,)
    assert list(store.list_keys()) == []


def test_abandoned_uploads_are_collected_and_unknown_multipart_uploads_kept(
    assets, tenant, database, store, clock
):
    # a process that died mid-upload: a stale row and its multipart upload
    midway = assets.begin_upload(tenant, UploadSpec(path="midway"))
    for _ in range(6):
        midway.write(os.urandom(MAX_CHUNK))
    # a process that died after the object completed, before the commit: its object is
    # kept as unknown (a restored catalog sees a later commit so)
    crashed = assets.begin_upload(tenant, UploadSpec(path="crashed"))
    crashed.write(b"bytes")
    crashed._target.complete()
    # another deployment's upload, running in the same bucket: no row here
    foreign_key = f"t/{tenant}/{'e' * 32}"
    foreign = store.begin(foreign_key)
    foreign.write(os.urandom(6 * MiB))
    clock.advance(2 * HOUR)

    report = assets.objects.gc(older_than_seconds=HOUR)

    assert set(report.stale_upload_keys) == {midway.object_key, crashed.object_key}
    assert {key for key, _ in report.multipart_uploads} == {midway.object_key}
    assert (report.deleted_keys, report.unknown_keys) == ((), (crashed.object_key,))
    assert [key for key, _ in report.unknown_multipart_uploads] == [foreign_key]
    assert [u.key for u in store.list_multipart_uploads()] == [foreign_key]
    # the claimed row's record stays until older than the threshold; the crashed one has none
    assert (_upload_rows(database), _records(database)) == (0, {midway.object_key})
    foreign.write(b"tail")
    foreign.complete()  # untouched: it still completes

    report = assets.objects.gc(older_than_seconds=HOUR, delete_unknown=True)
    assert set(report.deleted_keys) == {crashed.object_key, foreign_key}


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

    dry = assets.objects.gc(older_than_seconds=HOUR, dry_run=True)

    after = (
        set(store.list_keys()),
        list(store.list_multipart_uploads()),
        _upload_rows(database),
        _records(database),
    )
    assert after == before
    assert dry.dry_run
    assert dry.deleted_objects == 1 and dry.stale_uploads == 2
    assert set(dry.unknown_keys) == {unknown, crashed.object_key}
    real = assets.objects.gc(older_than_seconds=HOUR)
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
    assert set(store.list_keys()) == {
        _object_key(database, kept.id),
        unknown,
        crashed.object_key,
    }


def test_a_running_upload_is_never_taken_for_unknown(
    assets: Assets, tenant, database, store, clock
):
    running = assets.begin_upload(tenant, UploadSpec(path="running"))
    running.write(b"still going")
    clock.advance(2 * HOUR)
    assets.objects.refresh_uploads()
    report = assets.objects.gc(older_than_seconds=HOUR, delete_unknown=True)
    assert (report.stale_uploads, report.unknown_keys, report.unknown_multipart_uploads) == (
        0,
        (),
        (),
    )
    info = running.complete()
    assert get(assets, tenant, info.id) == b"still going"


# -- review of #11: a restored catalog's stale upload rows, the instrumented upload's id,
# -- deletion records kept until older than the threshold


def _write(upload, data: bytes) -> None:
    for i in range(0, len(data), MAX_CHUNK):
        upload.write(data[i : i + MAX_CHUNK])


@pytest.mark.parametrize("size", [3000, 12 * MiB], ids=["single-put", "multipart"])
def test_a_restored_catalog_keeps_the_object_of_an_upload_that_committed_after_the_backup(
    assets, tenant, database, store, clock, root_provider, tmp_path, size
):
    """An upload running when the backup was taken comes back as a stale upload row; in
    production it committed since. gc (without --delete-unknown) must not delete it."""
    if database.engine.dialect.name != "sqlite":
        pytest.skip("the backup is taken with sqlite3's online backup")
    data = os.urandom(size)
    upload = assets.begin_upload(tenant, UploadSpec(path="in-progress-at-backup"))
    _write(upload, data)
    backup = str(tmp_path / "backup.sqlite3")
    with (
        sqlite3.connect(database.engine.url.database) as live,
        sqlite3.connect(backup) as copy,
    ):
        live.backup(copy)  # the nightly backup, taken while the upload runs
    info = upload.complete()  # production: the asset commits
    key = upload.object_key
    clock.advance(2 * HOUR)
    restored = Database(f"sqlite:///{backup}")  # the catalog restored, the bucket production's
    try:
        restored.migrate()
        keys = TenantKeys(restored, root_provider, clock, cache_ttl=60.0)
        r_assets = Assets(restored, keys, store, clock)

        dry = r_assets.objects.gc(older_than_seconds=HOUR, dry_run=True)
        assert (dry.stale_upload_keys, dry.deleted_keys, dry.unknown_keys) == ((key,), (), (key,))

        report = r_assets.objects.gc(older_than_seconds=HOUR)

        assert (report.stale_upload_keys, report.deleted_keys) == ((key,), ())
        assert (report.unknown_keys, report.multipart_uploads) == ((key,), ())
        assert get(assets, tenant, info.id) == data  # production still reads it
        assert (_upload_rows(restored), _records(restored)) == (0, set())  # no record: kept
        assert r_assets.objects.gc(older_than_seconds=HOUR).unknown_keys == (key,)  # and kept again
        assert get(assets, tenant, info.id) == data
    finally:
        restored.dispose()


def test_a_stale_upload_with_a_complete_object_has_its_multipart_uploads_aborted(
    assets, tenant, database, store, clock
):
    crashed = assets.begin_upload(tenant, UploadSpec(path="crashed"))
    crashed.write(b"bytes")
    crashed._target.complete()  # died between completing the object and committing
    stray = store.begin(crashed.object_key)  # a multipart upload under the same key
    stray.write(os.urandom(6 * MiB))
    assert stray.upload_id is not None
    clock.advance(2 * HOUR)

    dry = assets.objects.gc(older_than_seconds=HOUR, dry_run=True)
    report = assets.objects.gc(older_than_seconds=HOUR)

    for run in (dry, report):
        assert run.stale_upload_keys == (crashed.object_key,)
        assert run.multipart_uploads == ((crashed.object_key, stray.upload_id),)
        assert (run.deleted_keys, run.unknown_keys) == ((), (crashed.object_key,))
    assert list(store.list_multipart_uploads()) == []
    assert list(store.list_keys()) == [crashed.object_key]
    assert (_upload_rows(database), _records(database)) == (0, set())
    forced = assets.objects.gc(older_than_seconds=HOUR, delete_unknown=True)
    assert forced.deleted_keys == (crashed.object_key,)
    assert list(store.list_keys()) == []


def test_the_instrumented_upload_passes_the_multipart_upload_id_through(store):
    plain = store.begin(f"t/{'a' * 32}/{'b' * 32}")
    wrapped = InstrumentedStore(store).begin(f"t/{'a' * 32}/{'c' * 32}")
    assert wrapped.upload_id is None  # type: ignore[attr-defined]  # one PUT, so far
    wrapped.write(os.urandom(6 * MiB))
    plain.write(os.urandom(6 * MiB))
    upload_id = wrapped.upload_id  # type: ignore[attr-defined]
    assert upload_id is not None and upload_id != plain.upload_id
    assert upload_id in {u.upload_id for u in store.list_multipart_uploads()}
    wrapped.abort()
    plain.abort()


@pytest.mark.parametrize("instrumented", [False, True], ids=["bare", "instrumented"])
def test_a_write_failure_whose_abort_failed_leaves_a_record_behind_any_store(
    database, tenant_keys, tenant, store, clock, monkeypatch, instrumented
):
    """The leftover-upload guard reads the upload's ``upload_id``; in production the upload
    is the instrumented wrapper's, which must pass it through."""
    wired = InstrumentedStore(store) if instrumented else store
    assets = Assets(database, tenant_keys, wired, clock)
    upload = assets.begin_upload(tenant, UploadSpec(path="p"))
    store.fail_parts(after=1)  # the store freezes after one part

    def abort_fails(key: str, upload_id: str) -> None:
        raise errors.Unavailable("object store unavailable")

    monkeypatch.setattr(store, "abort_multipart", abort_fails)
    data = os.urandom(MAX_CHUNK)
    with pytest.raises(errors.ReelvaultError):
        for _ in range(40):
            upload.write(data)
    monkeypatch.undo()
    store.heal()
    assert _records(database) == {upload.object_key}
    [leftover] = store.list_multipart_uploads()
    clock.advance(2 * HOUR)

    report = assets.objects.gc(older_than_seconds=HOUR)

    assert report.multipart_uploads == ((upload.object_key, leftover.upload_id),)
    assert report.unknown_multipart_uploads == ()
    assert list(store.list_multipart_uploads()) == []


def test_a_young_multipart_upload_of_a_recorded_key_is_aborted_and_its_record_kept(
    assets, tenant, database, store, clock, monkeypatch
):
    upload = assets.begin_upload(tenant, UploadSpec(path="frozen"))
    _write(upload, os.urandom(12 * MiB))  # a multipart upload with parts
    sink = upload._target._sink

    def frozen(key: str, upload_id: str) -> None:
        raise errors.Unavailable("object store unavailable")

    monkeypatch.setattr(sink, "abort_multipart", frozen)
    with pytest.raises(errors.Unavailable):
        upload.abort()  # the store is frozen: the abort fails
    monkeypatch.undo()
    assert _records(database) == {upload.object_key}
    [young] = store.list_multipart_uploads()
    clock.advance(600)  # the operator runs gc ten minutes later

    report = assets.objects.gc(older_than_seconds=HOUR)

    assert report.multipart_uploads == ((upload.object_key, young.upload_id),)
    assert list(store.list_multipart_uploads()) == []
    assert _records(database) == {upload.object_key}  # younger than the threshold: kept
    clock.advance(2 * HOUR)
    later = assets.objects.gc(older_than_seconds=HOUR)
    assert (later.multipart_uploads, later.unknown_multipart_uploads) == ((), ())
    assert _records(database) == set()


def test_a_put_that_timed_out_and_lands_after_gc_is_collected_by_a_later_gc(
    assets, tenant, database, store, clock, monkeypatch
):
    upload = assets.begin_upload(tenant, UploadSpec(path="late-put"))
    _write(upload, os.urandom(3000))
    sink = upload._target._sink
    real_put = sink.put_object
    sent: list[tuple[str, bytes]] = []

    def timed_out(key: str, data: bytes) -> None:
        sent.append((key, data))  # the request went out; the store applies it later
        raise errors.Unavailable("read timeout")

    monkeypatch.setattr(sink, "put_object", timed_out)
    with pytest.raises(errors.Unavailable):
        upload.complete()
    monkeypatch.undo()
    [(key, data)] = sent

    report = assets.objects.gc(older_than_seconds=HOUR)  # right after (incident response)

    assert (report.deleted_keys, report.unknown_keys) == ((), ())
    assert _records(database) == {key}  # kept: the PUT may still land
    real_put(key, data)  # the store thaws; the PUT lands
    clock.advance(2 * HOUR)
    later = assets.objects.gc(older_than_seconds=HOUR)
    assert (later.deleted_keys, later.unknown_keys) == ((key,), ())
    assert list(store.list_keys()) == []
    assert _records(database) == set()
