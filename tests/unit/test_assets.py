"""The asset domain over the in-memory store and a real catalog (SQLite or PostgreSQL).

The same behaviour is exercised through gRPC against SeaweedFS in tests/integration.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime

import pytest
from asset_helpers import get, put
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from reelvault import errors
from reelvault.assets import MAX_CHUNK, Assets, UploadSpec
from reelvault.catalog.tables import AssetRow, DeletedObjectRow, UploadRow
from reelvault.crypto import FRAME_OVERHEAD
from reelvault.storage import MemoryObjectStore

pytestmark = pytest.mark.db

MiB = 1024 * 1024
F = 64 * 1024


def leftovers(database, store: MemoryObjectStore) -> tuple[int, int, int]:
    with database.transaction(readonly=True) as session:
        uploads = session.scalar(select(func.count()).select_from(UploadRow))
    return len(list(store.list_keys())), store.pending_uploads(), uploads


@pytest.mark.parametrize("size", [0, 1, F - 1, F, F + 1, 3 * F + 7, int(2.5 * MiB) + 3])
def test_round_trip(assets, tenant, store, size):
    data = os.urandom(size)
    info = put(assets, tenant, data, labels={"lang": "en"}, content_type="video/mp2t")
    assert (info.size, info.sha256) == (size, hashlib.sha256(data).digest())
    assert info.etag == '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    assert get(assets, tenant, info.id) == data
    assert assets.stat(tenant, info.id) == info
    # storage holds ciphertext under an opaque key, never the path or the plaintext
    [key] = list(store.list_keys())
    assert "a/b.ts" not in key and key.startswith(f"t/{tenant}/")
    stored = store.get_range(key, 0, store.head(key).size)
    if size >= 32:
        assert data[:32] not in stored


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_ranges_match_python_slicing(database, tenant_keys, clock, data):
    store = MemoryObjectStore(part_size=5 * MiB)
    small = Assets(database, tenant_keys, store, clock, frame_length=64)
    tenant = tenant_keys.create_tenant(f"t{os.urandom(6).hex()}").id
    plaintext = os.urandom(data.draw(st.integers(1, 700)))
    info = put(small, tenant, plaintext, path="p")
    start = data.draw(st.integers(0, len(plaintext) - 1))
    length = data.draw(st.integers(1, len(plaintext) - start))
    assert (
        get(small, tenant, info.id, offset=start, length=length)
        == plaintext[start : start + length]
    )
    suffix = data.draw(st.integers(1, len(plaintext) + 10))
    assert get(small, tenant, info.id, suffix=suffix) == plaintext[-suffix:]


def test_a_range_read_fetches_only_the_frames_it_touches(assets, tenant, store):
    data = os.urandom(8 * MiB)
    info = put(assets, tenant, data)
    store.reset_stats()
    start = 3 * MiB + 12345
    got = get(assets, tenant, info.id, offset=start, length=MiB)
    assert got == data[start : start + MiB]
    stats = store.stats
    # the catalog holds header and size: one ranged stream carries the range, nothing else
    assert stats.get_range_calls == 0 and stats.streams_opened == 1
    assert stats.bytes_read == 17 * (F + FRAME_OVERHEAD)  # an unaligned 1 MiB touches 17


def test_a_range_that_reaches_the_end_authenticates_the_final_frame_first(assets, tenant, store):
    data = os.urandom(2 * MiB + 100)
    info = put(assets, tenant, data)
    store.reset_stats()
    assert get(assets, tenant, info.id, suffix=300) == data[-300:]
    stats = store.stats
    assert stats.get_range_calls == 1 and stats.streams_opened == 1


def test_an_asset_is_invisible_until_its_upload_completes(assets, tenant, database, store):
    upload = assets.begin_upload(tenant, UploadSpec(path="x"))
    for _ in range(6):
        upload.write(os.urandom(MAX_CHUNK))
    assert assets.list(tenant) == ([], "")
    info = upload.complete()
    assert [a.id for a in assets.list(tenant)[0]] == [info.id]
    assert leftovers(database, store) == (1, 0, 0)


def test_abort_leaves_nothing_behind(assets, tenant, database, store):
    upload = assets.begin_upload(tenant, UploadSpec(path="x"))
    for _ in range(6):  # past the first 5 MiB part: a multipart upload is open
        upload.write(os.urandom(MAX_CHUNK))
    assert store.pending_uploads() == 1
    upload.abort()
    upload.abort()  # idempotent
    assert leftovers(database, store) == (0, 0, 0)
    assert assets.list(tenant) == ([], "")


def test_a_storage_failure_mid_upload_aborts_and_leaves_nothing(assets, tenant, database, store):
    store.fail_parts(after=1)
    upload = assets.begin_upload(tenant, UploadSpec(path="x"))
    with pytest.raises(errors.Unavailable):
        for _ in range(40):
            upload.write(os.urandom(MAX_CHUNK))
        upload.complete()
    store.heal()
    assert leftovers(database, store) == (0, 0, 0)
    with pytest.raises(errors.FailedPrecondition):
        upload.write(b"more")


@pytest.mark.parametrize(
    ("spec", "chunks"),
    [
        (UploadSpec(path="x", expected_size=10), [b"x" * 11]),
        (UploadSpec(path="x", expected_size=10), [b"x" * 9]),
        (UploadSpec(path="x", expected_sha256=hashlib.sha256(b"y").digest()), [b"x"]),
        (UploadSpec(path="x"), [b"x" * (MAX_CHUNK + 1)]),
    ],
    ids=["too many bytes", "too few bytes", "sha256 mismatch", "oversized chunk"],
)
def test_bad_uploads_are_invalid_and_leave_nothing(assets, tenant, database, store, spec, chunks):
    upload = assets.begin_upload(tenant, spec)
    with pytest.raises(errors.InvalidArgument):
        for chunk in chunks:
            upload.write(chunk)
        upload.complete()
    assert leftovers(database, store) == (0, 0, 0)


@pytest.mark.parametrize(
    "spec",
    [
        UploadSpec(path=""),
        UploadSpec(path="/abs"),
        UploadSpec(path="a//b"),
        UploadSpec(path="a/../b"),
        UploadSpec(path="a/./b"),
        UploadSpec(path="x" * 1025),
        UploadSpec(path="a\nb"),
        UploadSpec(path="ok", content_type="nonsense"),
        UploadSpec(path="ok", labels={"Bad Key": "v"}),
        UploadSpec(path="ok", labels={f"k{i}": "v" for i in range(65)}),
        UploadSpec(path="ok", expected_size=-1),
        UploadSpec(path="ok", expected_sha256=b"short"),
    ],
)
def test_bad_metadata_is_refused_before_anything_is_stored(assets, tenant, database, store, spec):
    with pytest.raises(errors.InvalidArgument):
        assets.begin_upload(tenant, spec)
    assert leftovers(database, store) == (0, 0, 0)


def test_duplicate_paths(assets, tenant, database, store):
    put(assets, tenant, b"first", path="same")
    with pytest.raises(errors.AlreadyExists):
        assets.begin_upload(tenant, UploadSpec(path="same"))
    # two uploads racing for one path: the second to commit loses and leaves nothing
    a = assets.begin_upload(tenant, UploadSpec(path="race"))
    b = assets.begin_upload(tenant, UploadSpec(path="race"))
    a.write(b"a")
    b.write(b"b")
    a.complete()
    with pytest.raises(errors.AlreadyExists):
        b.complete()
    assert leftovers(database, store) == (2, 0, 0)


def test_another_tenants_asset_is_indistinguishable_from_a_missing_one(assets, tenant, tenant_keys):
    other = tenant_keys.create_tenant("other").id
    info = put(assets, tenant, b"secret footage")
    missing = "0" * 32
    for asset_id in (info.id, missing):
        with pytest.raises(errors.NotFound) as caught:
            assets.stat(other, asset_id)
        assert str(caught.value) == "asset not found"
        with pytest.raises(errors.NotFound):
            assets.open_download(other, asset_id)
    assets.delete(other, info.id)  # idempotent and without effect on tenant's asset
    assert get(assets, tenant, info.id) == b"secret footage"


@pytest.mark.parametrize("bad", ["", "xyz", "0" * 31, "G" * 32, "0" * 33, "../" + "0" * 29])
def test_malformed_ids_are_invalid_arguments(assets, tenant, bad):
    for call in (assets.stat, assets.open_download, assets.delete):
        with pytest.raises(errors.InvalidArgument):
            call(tenant, bad)


@pytest.mark.parametrize(
    ("rng", "error"),
    [
        ({"offset": -1, "length": 1}, errors.InvalidArgument),
        ({"offset": 0, "length": 0}, errors.InvalidArgument),
        ({"offset": 0, "length": -5}, errors.InvalidArgument),
        ({"offset": 0, "length": 101}, errors.OutOfRange),
        ({"offset": 100, "length": 1}, errors.OutOfRange),
        ({"suffix": 0}, errors.InvalidArgument),
        ({"suffix": -1}, errors.InvalidArgument),
        ({"offset": 1}, errors.InvalidArgument),
        ({"offset": 0, "length": 1, "suffix": 1}, errors.InvalidArgument),
    ],
)
def test_bad_ranges(assets, tenant, store, rng, error):
    info = put(assets, tenant, os.urandom(100))
    store.reset_stats()
    with pytest.raises(error) as caught:
        assets.open_download(tenant, info.id, **rng)
    assert type(caught.value) is error
    assert store.stats.streams_opened == 0


def test_ranges_of_an_empty_asset(assets, tenant):
    info = put(assets, tenant, b"")
    assert get(assets, tenant, info.id) == b""
    with pytest.raises(errors.OutOfRange):
        assets.open_download(tenant, info.id, suffix=5)


def test_a_suffix_longer_than_the_asset_is_clamped(assets, tenant):
    info = put(assets, tenant, b"0123456789")
    download = assets.open_download(tenant, info.id, suffix=50)
    assert (download.offset, download.length) == (0, 10)
    assert b"".join(download.chunks) == b"0123456789"


def tamper(store: MemoryObjectStore, key: str, at: int) -> None:
    size = store.head(key).size
    data = bytearray(store.get_range(key, 0, size))
    data[at] ^= 0x01
    store.put(key, [bytes(data)])


@pytest.mark.parametrize("where", ["first frame", "middle frame", "final frame"])
def test_a_tampered_object_gives_data_loss_and_no_wrong_bytes(assets, tenant, store, where):
    data = os.urandom(5 * F + 100)
    info = put(assets, tenant, data)
    [key] = list(store.list_keys())
    header_len = len(assets._row(tenant, info.id).header)
    at = {
        "first frame": header_len + 100,
        "middle frame": header_len + 2 * (F + FRAME_OVERHEAD) + 500,
        "final frame": store.head(key).size - 20,
    }[where]
    tamper(store, key, at)
    received = b""
    with pytest.raises(errors.IntegrityError) as caught:  # DATA_LOSS
        download = assets.open_download(tenant, info.id)
        for chunk in download.chunks:
            received += chunk
    assert caught.value.grpc_status == "DATA_LOSS"
    assert data.startswith(received)  # whatever arrived before the failure was genuine


def test_the_stored_header_is_never_trusted_and_a_whole_read_checks_it(assets, tenant, store):
    """The catalog's copy of the header is authoritative: frames are authenticated against
    it, so a damaged stored header never changes a byte that is served. A whole-asset read
    compares the stored header with it and refuses the object (DATA_LOSS), since the damage
    makes the object unreadable by the official SDK; a range read is still served."""
    data = os.urandom(3 * F)
    info = put(assets, tenant, data)
    [key] = list(store.list_keys())
    tamper(store, key, 40)
    with pytest.raises(errors.DecryptionError) as caught:
        assets.open_download(tenant, info.id)
    assert caught.value.reason == "stored header differs from the catalog's"
    assert get(assets, tenant, info.id, offset=10, length=F) == data[10 : 10 + F]


def test_an_empty_asset_is_read_and_authenticated(assets, tenant, store):
    """A zero-byte asset is served only after its object (the header and the empty
    final frame) has been read and authenticated."""
    info = put(assets, tenant, b"")
    [key] = list(store.list_keys())
    size = store.head(key).size
    tamper(store, key, size - 1)  # the final frame's tag
    with pytest.raises(errors.IntegrityError):
        assets.open_download(tenant, info.id)
    store.delete(key)
    with pytest.raises(errors.IntegrityError):
        assets.open_download(tenant, info.id)


def test_a_missing_object_is_data_loss_not_not_found(assets, tenant, store):
    info = put(assets, tenant, b"x" * 1000)
    [key] = list(store.list_keys())
    store.delete(key)
    with pytest.raises(errors.IntegrityError):
        assets.open_download(tenant, info.id)


def test_delete_is_idempotent_and_removes_the_object(assets, tenant, store):
    info = put(assets, tenant, os.urandom(1000))
    assets.delete(tenant, info.id)
    assets.delete(tenant, info.id)
    assert list(store.list_keys()) == []
    with pytest.raises(errors.NotFound):
        assets.stat(tenant, info.id)


def test_listing_pages_and_prefixes(assets, tenant):
    paths = [f"c42/720p/seg-{i:03d}.ts" for i in range(7)] + ["c42/1080p/a.ts", "other/x", "c4_"]
    for p in paths:
        put(assets, tenant, b"x", path=p)
    seen, token = [], ""
    while True:
        page, token = assets.list(tenant, prefix="c42/720p/", page_size=3, page_token=token)
        seen += [a.path for a in page]
        if not token:
            break
    assert seen == sorted(p for p in paths if p.startswith("c42/720p/"))
    assert [a.path for a in assets.list(tenant, prefix="c4_")[0]] == ["c4_"]  # no LIKE wildcard
    _, token = assets.list(tenant, page_size=2)
    with pytest.raises(errors.InvalidArgument):
        assets.list(tenant, prefix="other", page_token=token)
    with pytest.raises(errors.InvalidArgument):
        assets.list(tenant, page_token="!!not a token")
    with pytest.raises(errors.InvalidArgument):
        assets.list(tenant, page_size=1001)


def test_gc_removes_what_crashes_left_and_reports_what_it_cannot_tell(
    assets, tenant, database, store, clock
):
    kept = put(assets, tenant, os.urandom(2000), path="kept")
    # a crash after the object completed but before the row committed
    crashed = assets.begin_upload(tenant, UploadSpec(path="crashed"))
    crashed.write(os.urandom(MAX_CHUNK))
    crashed._target.complete()
    # a crash in the middle of a multipart upload
    midway = assets.begin_upload(tenant, UploadSpec(path="midway"))
    for _ in range(6):
        midway.write(os.urandom(MAX_CHUNK))
    # an orphan object (a failed delete: its deletion is recorded) and an upload that is
    # still running
    store.put(f"t/{tenant}/{'f' * 32}", [b"orphan"])
    with database.transaction() as session:
        session.add(
            DeletedObjectRow(object_key=f"t/{tenant}/{'f' * 32}", deleted_at=datetime.now(UTC))
        )
    clock.advance(7200)
    running = assets.begin_upload(tenant, UploadSpec(path="running"))
    running.write(b"still going")
    report = assets.objects.gc(older_than_seconds=3600)
    # deleted: the failed delete's object. The crashed upload's object is complete: it may
    # be an asset a restored catalog does not know, so it is reported, not deleted.
    assert (report.stale_uploads, report.deleted_objects) == (2, 1)
    assert report.unknown_objects == 1
    assert report.aborted_multipart_uploads >= 1
    keys = set(store.list_keys())
    assert keys == {assets._row(tenant, kept.id).object_key, crashed.object_key}
    info = running.complete()
    assert get(assets, tenant, info.id) == b"still going"
    assert get(assets, tenant, kept.id)
    assert leftovers(database, store)[1:] == (0, 0)


def test_rotation_moves_keys_without_touching_stored_objects(
    assets, tenant, tenant_keys, store, clock
):
    data = os.urandom(3 * F + 1)
    info = put(assets, tenant, data)
    [key] = list(store.list_keys())
    before = store.get_range(key, 0, store.head(key).size)
    tenant_keys.rotate(tenant)
    assert assets.rewrap_keys(tenant) == 1
    assert assets.rewrap_keys(tenant) == 0
    assert store.get_range(key, 0, store.head(key).size) == before
    clock.advance(120)  # past the KEK cache TTL, so retiring version 1 is allowed
    tenant_keys.disable(tenant, 1)
    assert get(assets, tenant, info.id) == data  # through the key slot, under version 2
    # a new upload is sealed under version 2 and needs no slot
    fresh = put(assets, tenant, b"new", path="new")
    assert get(assets, tenant, fresh.id) == b"new"


def test_a_disabled_kek_refuses_reads_as_a_state_not_as_tampering(assets, tenant, tenant_keys):
    info = put(assets, tenant, b"footage")
    tenant_keys.rotate(tenant)
    tenant_keys.disable(tenant, 1)
    with pytest.raises(errors.KeyUnavailable):
        assets.open_download(tenant, info.id)


def test_a_key_slot_copied_from_another_asset_is_refused(
    assets, tenant, tenant_keys, database, clock
):
    one = put(assets, tenant, b"one", path="one")
    two = put(assets, tenant, b"two", path="two")
    tenant_keys.rotate(tenant)
    assets.rewrap_keys(tenant)
    with database.transaction() as session:
        rows = {r.id: r for r in session.scalars(select(AssetRow))}
        rows[one.id].key_slot = rows[two.id].key_slot
    # while version 1 still decrypts, the foreign slot is simply not used
    assert get(assets, tenant, one.id) == b"one"
    clock.advance(120)
    tenant_keys.disable(tenant, 1)
    # with only the slot left to try, the read fails; it never returns two's bytes
    with pytest.raises((errors.IntegrityError, errors.KeyUnavailable)):
        get(assets, tenant, one.id)


def test_an_upload_straddling_a_rotation_commits_under_the_new_version(
    assets, tenant, tenant_keys, clock, database
):
    upload = assets.begin_upload(tenant, UploadSpec(path="long"))
    upload.write(b"first half ")
    tenant_keys.rotate(tenant)
    upload.write(b"second half")
    info = upload.complete()
    with database.transaction(readonly=True) as session:
        row = session.get(AssetRow, info.id)
        assert row.kek_version == 2 and row.key_slot is not None
    clock.advance(120)
    tenant_keys.disable(tenant, 1)
    assert get(assets, tenant, info.id) == b"first half second half"
