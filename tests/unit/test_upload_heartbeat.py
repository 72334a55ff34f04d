"""gc never touches an upload that is still running (issue #8): running uploads keep their
row fresh, and gc refuses thresholds that could catch one between two heartbeats.

The symptom this reproduces: ``reelvault gc --older-than 0`` during a live upload failed
that upload with NOT_FOUND.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest

from reelvault import errors
from reelvault.assets import MAX_CHUNK, Assets, UploadSpec
from reelvault.clock import FakeClock
from reelvault.objects import MIN_GC_AGE, UPLOAD_HEARTBEAT
from tests.unit.asset_helpers import get

pytestmark = pytest.mark.db


def test_gc_refuses_a_threshold_shorter_than_the_heartbeat_allows(assets, tenant):
    running = assets.begin_upload(tenant, UploadSpec(path="live"))
    running.write(b"first bytes")
    for threshold in (0, 1, UPLOAD_HEARTBEAT, MIN_GC_AGE - 1):
        with pytest.raises(errors.InvalidArgument, match="at least"):
            assets.objects.gc(older_than_seconds=threshold)
    info = running.complete()  # untouched
    assert get(assets, tenant, info.id) == b"first bytes"


def test_a_long_upload_that_keeps_beating_survives_gc(assets, tenant, clock, store):
    running = assets.begin_upload(tenant, UploadSpec(path="long"))
    data = b""
    for _ in range(10):  # ten hours of a slow upload, a heartbeat every interval
        chunk = os.urandom(MAX_CHUNK)
        running.write(chunk)
        data += chunk
        for _ in range(int(3600 / UPLOAD_HEARTBEAT)):
            clock.advance(UPLOAD_HEARTBEAT)
            assert assets.objects.refresh_uploads() == 1
        report = assets.objects.gc(older_than_seconds=MIN_GC_AGE)
        assert (report.stale_uploads, report.aborted_multipart_uploads) == (0, 0)
    info = running.complete()
    assert get(assets, tenant, info.id) == data


def test_an_idle_upload_keeps_beating_too(assets, tenant, clock):
    """The heartbeat comes from the process, not from the client's writes."""
    running = assets.begin_upload(tenant, UploadSpec(path="idle"))
    running.write(b"a")
    clock.advance(3 * 3600)
    assert assets.objects.refresh_uploads() == 1
    assert assets.objects.gc(older_than_seconds=MIN_GC_AGE).stale_uploads == 0
    running.write(b"b")
    assert get(assets, tenant, running.complete().id) == b"ab"


def test_the_upload_of_a_dead_process_is_collected(
    database, tenant_keys, store, clock, assets, tenant
):
    """Another process's upload (a second Assets over the same catalog and store) stops
    beating when that process dies; this process's beats do not keep it alive."""
    dead_process = Assets(database, tenant_keys, store, clock)
    orphan = dead_process.begin_upload(tenant, UploadSpec(path="orphan"))
    for _ in range(6):
        orphan.write(os.urandom(MAX_CHUNK))  # a multipart upload is under way
    mine = assets.begin_upload(tenant, UploadSpec(path="mine"))
    mine.write(b"alive")
    clock.advance(MIN_GC_AGE + 1)
    assert assets.objects.refresh_uploads() == 1  # only its own
    report = assets.objects.gc(older_than_seconds=MIN_GC_AGE)
    assert report.stale_uploads == 1
    assert report.aborted_multipart_uploads == 1
    assert list(store.list_multipart_uploads()) == []
    assert get(assets, tenant, mine.complete().id) == b"alive"


def test_finished_uploads_leave_the_heartbeat(assets, tenant):
    done = assets.begin_upload(tenant, UploadSpec(path="done"))
    done.write(b"x")
    done.complete()
    gone = assets.begin_upload(tenant, UploadSpec(path="gone"))
    gone.abort()
    assert assets.objects.refresh_uploads() == 0


def test_run_heartbeat_beats_until_stopped(assets, tenant, clock):
    running = assets.begin_upload(tenant, UploadSpec(path="beat"))
    beats = threading.Semaphore(0)
    original = assets.objects.refresh_uploads

    def counted() -> int:
        refreshed = original()
        beats.release()
        return refreshed

    assets.objects.refresh_uploads = counted  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(
        target=assets.objects.run_heartbeat, args=(stop,), kwargs={"interval": 0.01}
    )
    thread.start()
    try:
        for _ in range(3):
            assert beats.acquire(timeout=10)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    running.abort()


def test_gc_and_a_commit_racing_never_lose_a_committed_asset(
    database, tenant_keys, store, clock, tenant
):
    """gc on a host whose clock is ahead reads a live upload's row as stale; the upload
    completes while gc walks the store. gc claims the row before touching storage, so
    the commit fails (UNAVAILABLE: retry) instead of committing an asset whose object gc
    then deletes (a review found that data loss)."""
    server = Assets(database, tenant_keys, store, clock)
    ahead = Assets(database, tenant_keys, store, FakeClock(clock.now() + MIN_GC_AGE + 30))
    upload = server.begin_upload(tenant, UploadSpec(path="video.ts"))
    upload.write(b"x" * 1000)
    outcome: list[object] = []
    listing = store.list_multipart_uploads

    def completes_meanwhile(**kwargs):
        try:
            outcome.append(upload.complete())
        except errors.Unavailable as exc:
            outcome.append(exc)
        return listing(**kwargs)

    store.list_multipart_uploads = completes_meanwhile  # type: ignore[method-assign]
    report = ahead.objects.gc(older_than_seconds=MIN_GC_AGE)
    store.list_multipart_uploads = listing  # type: ignore[method-assign]
    assert report.stale_uploads == 1
    [result] = outcome
    assert isinstance(result, errors.Unavailable)  # refused, not committed
    assert server.list(tenant)[0] == []
    assert list(store.list_keys("t/")) == []


def test_a_row_refreshed_after_gc_read_it_is_not_claimed(
    database, tenant_keys, store, clock, tenant
):
    """gc's read sees the row stale; the heartbeat lands before gc claims it: the claim
    fails and the upload goes on to commit."""
    upload = Assets(database, tenant_keys, store, clock).begin_upload(
        tenant, UploadSpec(path="late-beat")
    )
    upload.write(b"y")
    clock.advance(MIN_GC_AGE + 1)
    gc = Assets(database, tenant_keys, store, clock)
    cutoff = gc.objects._now() - timedelta(seconds=MIN_GC_AGE)
    upload._assets.objects.refresh_uploads()  # the beat, between gc's read and its claim
    assert gc.objects._claim_stale(upload.object_key, cutoff) is False
    assert get(upload._assets, tenant, upload.complete().id) == b"y"
