"""gc never touches an upload that is still running (issue #8): running uploads keep their
row fresh, and gc refuses thresholds that could catch one between two heartbeats.

The symptom this reproduces: ``reelvault gc --older-than 0`` during a live upload failed
that upload with NOT_FOUND.
"""

from __future__ import annotations

import os
import threading

import pytest

from reelvault import errors
from reelvault.assets import MAX_CHUNK, MIN_GC_AGE, UPLOAD_HEARTBEAT, Assets, UploadSpec
from tests.unit.asset_helpers import get

pytestmark = pytest.mark.db


def test_gc_refuses_a_threshold_shorter_than_the_heartbeat_allows(assets, tenant):
    running = assets.begin_upload(tenant, UploadSpec(path="live"))
    running.write(b"first bytes")
    for threshold in (0, 1, UPLOAD_HEARTBEAT, MIN_GC_AGE - 1):
        with pytest.raises(errors.InvalidArgument, match="at least"):
            assets.gc(older_than_seconds=threshold)
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
            assert assets.refresh_uploads() == 1
        report = assets.gc(older_than_seconds=MIN_GC_AGE)
        assert (report.stale_uploads, report.aborted_multipart_uploads) == (0, 0)
    info = running.complete()
    assert get(assets, tenant, info.id) == data


def test_an_idle_upload_keeps_beating_too(assets, tenant, clock):
    """The heartbeat comes from the process, not from the client's writes."""
    running = assets.begin_upload(tenant, UploadSpec(path="idle"))
    running.write(b"a")
    clock.advance(3 * 3600)
    assert assets.refresh_uploads() == 1
    assert assets.gc(older_than_seconds=MIN_GC_AGE).stale_uploads == 0
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
    assert assets.refresh_uploads() == 1  # only its own
    report = assets.gc(older_than_seconds=MIN_GC_AGE)
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
    assert assets.refresh_uploads() == 0


def test_run_heartbeat_beats_until_stopped(assets, tenant, clock):
    running = assets.begin_upload(tenant, UploadSpec(path="beat"))
    beats = threading.Semaphore(0)
    original = assets.refresh_uploads

    def counted() -> int:
        refreshed = original()
        beats.release()
        return refreshed

    assets.refresh_uploads = counted  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=assets.run_heartbeat, args=(stop,), kwargs={"interval": 0.01})
    thread.start()
    try:
        for _ in range(3):
            assert beats.acquire(timeout=10)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    running.abort()
