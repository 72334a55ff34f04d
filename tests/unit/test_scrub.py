"""The integrity scrub over the in-memory store and a real catalog (SQLite or PostgreSQL).

Time is the fake clock throughout: pacing and retries sleep through :class:`FakeSleep`,
which moves it, so the rate test measures fake seconds and nothing here waits.
The same scrub runs as ``reelvault scrub`` against SeaweedFS in tests/integration.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator

import pytest
from asset_helpers import put
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from reelvault import scrub
from reelvault.assets import Assets, asset_context
from reelvault.audit import Auditor, MemoryAuditSink, Outcome
from reelvault.catalog.tables import AssetRow, ScrubPassRow
from reelvault.cli.scrub import RateSyntaxError, parse_rate
from reelvault.clock import FakeClock
from reelvault.config import Settings
from reelvault.crypto import FRAME_OVERHEAD, MessageLayout, message
from reelvault.crypto.format import frame_aad, frame_iv, parse_header
from reelvault.errors import ConfigurationError, NotFound, Unavailable
from reelvault.scrub import Problem, Result, Scrubber, StopReason, TokenBucket
from reelvault.storage import MemoryObjectStore

pytestmark = pytest.mark.db

F = 64  # small frames: many frames in little data
MiB = 1024 * 1024


class FakeSleep:
    """Sleeps by moving the fake clock; ``hook`` runs on each call (to interleave)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[float] = []
        self.hook: Callable[[], None] | None = None

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)
        if self.hook is not None:
            self.hook()

    @property
    def total(self) -> float:
        return sum(self.calls)


class FlakyStore(MemoryObjectStore):
    """A memory store whose reads fail with ``Unavailable`` as a test says."""

    def __init__(self) -> None:
        super().__init__(part_size=5 * MiB)
        self.down = False
        self.down_keys: set[str] = set()
        self.fail_next = 0  # this many more reads fail, then it answers again
        self.break_streams = 0  # this many more streams fail after their first chunk
        self.on_head: Callable[[str], None] | None = None

    def _maybe_fail(self, key: str) -> None:
        if self.down or key in self.down_keys:
            raise Unavailable()
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable()

    def head(self, key):
        self._maybe_fail(key)
        if self.on_head is not None:
            self.on_head(key)
        return super().head(key)

    def get_range(self, key, offset, length):
        self._maybe_fail(key)
        return super().get_range(key, offset, length)

    def open_stream(self, key, offset=0, length=None):
        self._maybe_fail(key)
        inner = super().open_stream(key, offset, length)
        if not self.break_streams:
            return inner
        self.break_streams -= 1
        return self._breaking(inner)

    @staticmethod
    def _breaking(inner: Generator[bytes, None, None]) -> Generator[bytes, None, None]:
        yield next(inner)
        inner.close()
        raise Unavailable()


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def small(database, tenant_keys, store, clock) -> Assets:
    """Assets with 64-byte frames."""
    return Assets(database, tenant_keys, store, clock, frame_length=F)


@pytest.fixture
def sink() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def sleep(clock) -> FakeSleep:
    return FakeSleep(clock)


@pytest.fixture
def make(database, tenant_keys, store, clock, sink, sleep) -> Callable[..., Scrubber]:
    def build(**options) -> Scrubber:
        return Scrubber(
            database,
            tenant_keys,
            store,
            clock,
            auditor=Auditor(sink, clock),
            sleep=sleep,
            **options,
        )

    return build


def stored(store: MemoryObjectStore, key: str) -> bytearray:
    return bytearray(store.get_range(key, 0, store.head(key).size))


def replace(store: MemoryObjectStore, key: str, data: bytes) -> None:
    store.put(key, [bytes(data)])


def flip(store: MemoryObjectStore, key: str, at: int) -> None:
    data = stored(store, key)
    data[at] ^= 0x01
    replace(store, key, data)


def key_of(database, asset_id: str) -> str:
    with database.transaction(readonly=True) as session:
        return session.scalar(select(AssetRow.object_key).where(AssetRow.id == asset_id))


def layout_of(database, asset_id: str) -> MessageLayout:
    with database.transaction(readonly=True) as session:
        row = session.get(AssetRow, asset_id)
        header = parse_header(row.header)
        return MessageLayout.for_plaintext(header.length, header.frame_length, row.size)


def problems(report) -> dict[str, set[Problem]]:
    found: dict[str, set[Problem]] = {}
    for finding in report.latest.findings:
        found.setdefault(finding.asset_id, set()).add(finding.problem)
    return found


def total_stored(store: MemoryObjectStore) -> int:
    return sum(store.head(key).size for key in store.list_keys())


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- what a pass checks ---------------------------------------------------------------


def test_a_clean_pass_reads_every_byte_once_and_records_its_summary(
    assets, small, tenant, store, make, sink, clock
):
    put(assets, tenant, b"", path="empty")
    put(assets, tenant, os.urandom(1), path="one")
    put(assets, tenant, os.urandom(3 * 64 * 1024 + 7), path="three-frames")
    put(small, tenant, os.urandom(10 * F), path="small-frames")
    store.reset_stats()
    objects_before = sample("reelvault_scrub_objects_total", result="ok")
    bytes_before = sample("reelvault_scrub_bytes_total")

    report = make().run()

    latest = report.latest
    assert report.stopped is None and report.previous is None and report.checked == 4
    assert latest.complete and latest.percent == 100.0
    assert (latest.assets_checked, latest.damaged, latest.skipped, latest.unchecked) == (
        4,
        0,
        0,
        0,
    )
    assert latest.findings == ()
    # every stored byte read exactly once: the header by a range read, the frames streamed
    assert latest.bytes_checked == store.stats.bytes_read == total_stored(store)
    assert sample("reelvault_scrub_objects_total", result="ok") - objects_before == 4
    assert sample("reelvault_scrub_bytes_total") - bytes_before == total_stored(store)
    assert sample("reelvault_scrub_last_pass_completed_timestamp_seconds") == clock.now()
    assert sample("reelvault_scrub_damaged_objects") == 0
    [event] = sink.events
    assert (event.action, event.log_id, event.outcome) == (
        "asset.scrub",
        "platform",
        Outcome.ALLOWED,
    )
    assert event.detail["assets"] == 4 and event.detail["damaged"] == 0


def test_a_corrupted_stored_header_is_reported_with_its_offset(
    assets, tenant, store, database, make, sink
):
    info = put(assets, tenant, os.urandom(100_000))
    key = key_of(database, info.id)
    flip(store, key, 40)  # inside the header; the catalog's copy is intact

    report = make().run()

    assert report.latest.damaged == 1
    [finding] = report.latest.findings
    assert (finding.asset_id, finding.tenant_id, finding.object_key) == (info.id, tenant, key)
    assert (finding.result, finding.problem) == (Result.DAMAGED, Problem.HEADER_MISMATCH)
    assert finding.byte_offset == 40 and "byte 40" in finding.detail
    assert sample("reelvault_scrub_damaged_objects") == 1
    # recorded in the tenant's own log, failed, with what failed and never key material
    [damage] = [e for e in sink.events if e.log_id == tenant]
    assert (damage.action, damage.outcome, damage.status) == (
        "asset.scrub",
        Outcome.FAILED,
        "DATA_LOSS",
    )
    assert damage.resources[0].id == info.id
    assert damage.detail["problems"] == "header-mismatch"
    assert damage.detail["object_key"] == key and damage.detail["byte_offset"] == 40
    assert damage.detail["pass_id"] == report.latest.id


def test_a_damaged_catalog_copy_is_told_apart_from_a_damaged_object(assets, tenant, database, make):
    info = put(assets, tenant, os.urandom(5000))
    with database.transaction() as session:
        row = session.get(AssetRow, info.id)
        header = bytearray(row.header)
        header[-1] ^= 0x01  # the header's tag
        row.header = bytes(header)

    [_, mismatch] = sorted(make().run().latest.findings, key=lambda f: f.problem)
    assert {f.problem for f in make().report().latest.findings} == {
        Problem.HEADER_INVALID,
        Problem.HEADER_MISMATCH,
    }
    assert mismatch.problem is Problem.HEADER_MISMATCH
    assert "the catalog's copy is damaged" in mismatch.detail


def test_a_flipped_byte_in_a_middle_frame_names_that_frame(small, tenant, store, database, make):
    info = put(small, tenant, os.urandom(10 * F + 5))
    key, layout = key_of(database, info.id), layout_of(database, info.id)
    flip(store, key, layout.frame_offset(5) + 40)

    report = make().run()

    [finding] = report.latest.findings
    assert finding.problem is Problem.FRAME_INVALID
    assert (finding.frame, finding.frames) == (5, 1)
    assert finding.byte_offset == layout.frame_offset(5)
    assert "frame 5 of 11" in finding.detail


def test_frames_resealed_with_the_released_content_key_are_caught_by_their_digest(
    small, tenant, tenant_keys, store, database, make
):
    # A read grant releases an object's content key; with write access to the bucket too,
    # its holder can re-seal a frame that authenticates (docs/direct-reads.md). The pass
    # still catches it: the plaintext no longer has the SHA-256 recorded at upload.
    info = put(small, tenant, os.urandom(10 * F + 5))
    key, layout = key_of(database, info.id), layout_of(database, info.id)
    with database.transaction(readonly=True) as session:
        header = parse_header(session.get(AssetRow, info.id).header)
    opened, _ = message._open(header, tenant_keys.resolver(tenant), asset_context(tenant, info.id))
    sealed = AESGCM(opened.content_key).encrypt(
        frame_iv(4), b"F" * F, frame_aad(header.message_id, 4, F, final=False)
    )
    data = stored(store, key)
    at = layout.frame_offset(4)
    data[at : at + F + FRAME_OVERHEAD] = (4).to_bytes(4, "big") + frame_iv(4) + sealed
    replace(store, key, data)

    [finding] = make().run().latest.findings

    assert finding.problem is Problem.CONTENT_MISMATCH
    assert "SHA-256" in finding.detail


def test_every_damaged_frame_is_counted_the_first_named(small, tenant, store, database, make):
    info = put(small, tenant, os.urandom(10 * F + 5))
    key, layout = key_of(database, info.id), layout_of(database, info.id)
    for sequence in (3, 7, layout.final_sequence):
        flip(store, key, layout.frame_offset(sequence) + 20)

    [finding] = make().run().latest.findings

    assert (finding.frame, finding.frames) == (3, 3)


def test_frames_are_checked_across_spans(small, tenant, store, database, make, monkeypatch):
    monkeypatch.setattr(scrub, "SPAN", 3 * (F + FRAME_OVERHEAD))  # three frames per GET
    info = put(small, tenant, os.urandom(10 * F))
    key, layout = key_of(database, info.id), layout_of(database, info.id)
    store.reset_stats()
    assert make().run().latest.damaged == 0
    assert store.stats.streams_opened == 4  # frames 1-3, 4-6, 7-9, 10 (final)

    flip(store, key, layout.frame_offset(6) + 20)  # the last frame of a span
    [finding] = make().run(restart=True).latest.findings
    assert (finding.frame, finding.frames) == (6, 1)


def test_a_truncated_object_is_reported(assets, tenant, store, database, make):
    info = put(assets, tenant, os.urandom(70_000))
    key = key_of(database, info.id)
    replace(store, key, stored(store, key)[:-10])

    [finding] = make().run().latest.findings

    assert finding.problem is Problem.OBJECT_TRUNCATED
    assert finding.detail.endswith("expected")


def test_an_object_longer_than_its_message_is_reported(assets, tenant, store, database, make):
    info = put(assets, tenant, os.urandom(1000))
    key = key_of(database, info.id)
    replace(store, key, stored(store, key) + b"extra")

    [finding] = make().run().latest.findings

    assert finding.problem is Problem.SIZE_MISMATCH


def test_a_missing_object_is_reported(assets, tenant, store, database, make):
    info = put(assets, tenant, os.urandom(1000))
    store.delete(key_of(database, info.id))

    [finding] = make().run().latest.findings

    assert (finding.asset_id, finding.problem) == (info.id, Problem.OBJECT_MISSING)


def test_the_pass_goes_on_past_damage(assets, tenant, store, database, make, sink):
    infos = [put(assets, tenant, os.urandom(2000), path=f"a{i}") for i in range(6)]
    broken = sorted(infos, key=lambda i: i.id)[1::2]  # every other asset, in pass order
    store.delete(key_of(database, broken[0].id))
    flip(store, key_of(database, broken[1].id), 30)
    flip(store, key_of(database, broken[2].id), 2000)

    report = make().run()

    assert report.latest.complete
    assert (report.latest.assets_checked, report.latest.damaged) == (6, 3)
    assert problems(report) == {
        broken[0].id: {Problem.OBJECT_MISSING},
        broken[1].id: {Problem.HEADER_MISMATCH},
        broken[2].id: {Problem.FRAME_INVALID},
    }
    assert len([e for e in sink.events if e.log_id == tenant]) == 3
    [summary] = [e for e in sink.events if e.log_id == "platform"]
    assert summary.detail["damaged"] == 3


def test_a_tenant_whose_key_was_destroyed_is_skipped_not_damaged(
    assets, tenant_keys, tenant, store, clock, make
):
    put(assets, tenant, os.urandom(1000), path="kept")
    shredded = tenant_keys.create_tenant("shredded").id
    put(assets, shredded, os.urandom(1000), path="gone")
    tenant_keys.rotate(shredded)
    clock.advance(60)
    tenant_keys.disable(shredded, 1)
    tenant_keys.schedule_deletion(shredded, 1, 60)
    clock.advance(60)
    tenant_keys.destroy(shredded, 1)
    store.reset_stats()

    report = make().run()

    latest = report.latest
    assert (latest.assets_checked, latest.damaged, latest.skipped) == (2, 0, 1)
    assert latest.findings == ()  # skipped assets are counted, not listed
    # nothing of the shredded asset was read
    assert {read.key.split("/")[1] for read in store.stats.range_reads} == {tenant}


def test_an_asset_deleted_while_it_is_checked_is_not_reported(
    assets, tenant, store, database, make
):
    info = put(assets, tenant, os.urandom(1000))
    store.on_head = lambda key: assets.delete(tenant, info.id)

    report = make().run()

    assert report.latest.complete and report.latest.findings == ()
    assert report.latest.assets_checked == 0


def test_one_tenant_only(assets, tenant_keys, tenant, store, database, make):
    other = tenant_keys.create_tenant("other").id
    put(assets, tenant, os.urandom(100), path="mine")
    theirs = put(assets, other, os.urandom(100), path="theirs")
    store.delete(key_of(database, theirs.id))

    mine = make().run(tenant_id=tenant)
    assert (mine.latest.tenant_id, mine.latest.assets_checked, mine.latest.damaged) == (
        tenant,
        1,
        0,
    )
    everyone = make().run()
    assert (everyone.latest.tenant_id, everyone.latest.damaged) == (None, 1)
    with pytest.raises(NotFound):
        make().run(tenant_id="f" * 32)


# -- resumption ------------------------------------------------------------------------


def test_a_pass_resumes_after_a_limited_run(assets, tenant, store, make):
    for i in range(5):
        put(assets, tenant, os.urandom(3000), path=f"a{i}")
    store.reset_stats()

    first = make().run(limit=2)
    assert first.stopped is StopReason.LIMIT and first.checked == 2
    assert not first.latest.complete
    assert (first.latest.assets_checked, first.latest.remaining) == (2, 3)
    assert first.latest.percent == 40.0

    second = make().run()  # a new scrubber: the progress is in the catalog
    assert second.stopped is None and second.checked == 3
    assert second.latest.id == first.latest.id and second.latest.complete
    assert second.latest.assets_checked == 5
    assert store.stats.bytes_read == total_stored(store)  # nothing read twice


def test_a_pass_resumes_after_a_stop_in_the_middle_of_an_object(small, tenant, store, make, sleep):
    for i in range(4):
        put(small, tenant, os.urandom(40 * F), path=f"a{i}")
    stop = threading.Event()
    paced = 4 * 1024  # bytes per second: a few sleeps per object
    sleep.hook = lambda: stop.set() if len(sleep.calls) == 3 else None

    first = make(rate=paced).run(stop=stop)

    assert first.stopped is StopReason.STOPPED and not first.latest.complete
    done = first.latest.assets_checked
    assert done < 4
    second = make().run()
    assert second.latest.id == first.latest.id and second.latest.complete
    assert second.latest.assets_checked == 4 and second.checked == 4 - done


def test_restart_abandons_the_open_pass(assets, tenant, make):
    for i in range(3):
        put(assets, tenant, os.urandom(100), path=f"a{i}")
    first = make().run(limit=1)

    again = make().run(restart=True)

    assert again.latest.id != first.latest.id and again.latest.complete
    assert again.latest.assets_checked == 3
    assert again.previous is None


def test_the_last_complete_pass_is_kept_while_the_next_runs(assets, tenant, store, database, make):
    info = put(assets, tenant, os.urandom(100), path="a")
    put(assets, tenant, os.urandom(100), path="b")
    store.delete(key_of(database, info.id))
    done = make().run()

    running = make().run(limit=0)  # opens the next pass, checks nothing

    assert running.stopped is StopReason.LIMIT
    assert running.latest.id != done.latest.id and not running.latest.complete
    assert running.previous.id == done.latest.id
    assert [f.problem for f in running.previous.findings] == [Problem.OBJECT_MISSING]
    # a third pass: the first is gone, the second (now the newest complete one) is kept
    make().run()
    third = make().run(limit=0)
    assert third.previous.id == running.latest.id
    with database.transaction(readonly=True) as session:
        assert len(session.scalars(select(ScrubPassRow)).all()) == 2


def test_a_pass_another_scrubber_holds_is_left_alone(assets, tenant, make, sleep):
    for i in range(3):
        put(assets, tenant, os.urandom(200_000), path=f"a{i}")
    seen = []

    def meanwhile():
        if not seen:
            seen.append(make().run())

    sleep.hook = meanwhile
    report = make(rate=100_000).run()

    assert seen[0].stopped is StopReason.BUSY and seen[0].checked == 0
    assert report.stopped is None and report.latest.assets_checked == 3


def test_a_lease_that_ran_out_is_taken_over(assets, tenant, database, clock, make):
    for i in range(3):
        put(assets, tenant, os.urandom(100), path=f"a{i}")
    first = make().run(limit=1)
    with database.transaction() as session:  # as if its scrubber had died holding it
        session.execute(
            update(ScrubPassRow).values(
                claimed_by="dead" * 8, claimed_until=first.latest.updated_at
            )
        )

    assert make().run().stopped is StopReason.BUSY
    clock.advance(301)
    taken = make().run()
    assert taken.stopped is None and taken.latest.id == first.latest.id
    assert taken.latest.assets_checked == 3


# -- the store not answering -----------------------------------------------------------


def test_a_store_that_is_down_stops_the_run_without_blaming_the_assets(assets, tenant, store, make):
    for i in range(5):
        put(assets, tenant, os.urandom(100), path=f"a{i}")
    store.down = True

    stopped = make(retries=1).run()

    assert stopped.stopped is StopReason.UNAVAILABLE
    assert stopped.latest.assets_checked == 0 and stopped.latest.findings == ()
    store.down = False
    resumed = make().run()
    assert resumed.latest.complete and resumed.latest.assets_checked == 5
    assert resumed.latest.unchecked == 0


def test_one_unreadable_object_is_reported_unchecked_and_the_pass_goes_on(
    assets, tenant, store, database, make
):
    infos = [put(assets, tenant, os.urandom(100), path=f"a{i}") for i in range(3)]
    store.down_keys.add(key_of(database, infos[0].id))

    report = make(retries=1).run()

    assert report.latest.complete
    assert (report.latest.damaged, report.latest.unchecked) == (0, 1)
    [finding] = report.latest.findings
    assert (finding.asset_id, finding.result, finding.problem) == (
        infos[0].id,
        Result.UNCHECKED,
        Problem.UNAVAILABLE,
    )


def test_short_outages_are_retried(assets, tenant, store, make, sleep):
    put(assets, tenant, os.urandom(5 * MiB // 2))
    store.fail_next = 2  # the HEAD fails twice
    store.break_streams = 1  # and the frame stream breaks once, after its first 1 MiB
    store.reset_stats()

    report = make(retries=2, retry_delay=1.0).run()

    assert report.latest.damaged == 0 and report.latest.unchecked == 0
    assert sleep.calls == [1.0, 2.0, 1.0]
    # the second stream starts at the first frame the broken one did not complete
    assert store.stats.streams_opened == 2
    assert store.stats.bytes_read < total_stored(store) + 64 * 1024 + FRAME_OVERHEAD


# -- pacing ---------------------------------------------------------------------------


def test_the_rate_is_honoured(assets, tenant, store, make, clock):
    for i in range(3):
        put(assets, tenant, os.urandom(300_000), path=f"a{i}")
    rate = 100_000
    total = total_stored(store)
    start = clock.monotonic()

    make(rate=rate).run()

    # a bucket of one second's worth, then exactly the rate: only sleeps move the clock
    assert clock.monotonic() - start == pytest.approx((total - rate) / rate)


def test_an_unlimited_rate_never_sleeps(assets, tenant, make, sleep):
    put(assets, tenant, os.urandom(300_000))
    make(rate=0).run()
    assert sleep.calls == []


def test_token_bucket_pays_large_reads_afterwards():
    clock = FakeClock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    bucket = TokenBucket(10, monotonic=clock.monotonic, sleep=sleep, burst=10)
    bucket.take(5)
    bucket.take(5)
    assert slept == []
    bucket.take(30)  # more than the bucket holds: goes through, then waits it off
    assert slept == [3.0]
    clock.advance(1)
    bucket.take(10)  # the debt was slept off; a second refilled the bucket
    assert slept == [3.0]


# -- scheduling -----------------------------------------------------------------------


class CountingStop(threading.Event):
    """A stop event whose waits move the fake clock instead of blocking."""

    def __init__(self, clock: FakeClock, on_wait: Callable[[CountingStop], None]) -> None:
        super().__init__()
        self.clock = clock
        self.on_wait = on_wait
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        self.clock.advance(timeout)
        self.on_wait(self)
        return self.is_set()


def test_passes_run_every_interval_until_stopped(assets, tenant, make, sink, clock):
    put(assets, tenant, os.urandom(100))

    def enough(stop: CountingStop) -> None:
        if len([e for e in sink.events if e.log_id == "platform"]) >= 3:
            stop.set()

    stop = CountingStop(clock, enough)
    scrubber = make()
    scrubber.run_forever(stop, interval=150.0)

    summaries = [e for e in sink.events if e.log_id == "platform"]
    assert len(summaries) == 3
    # after each pass: 150 s in waits of at most a minute; stopped during the third wait
    assert stop.waits == [60.0, 60.0, 30.0, 60.0, 60.0, 30.0, 60.0]
    assert scrubber.due_in(150.0) == 90.0


# -- the command's and the service's settings ------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1000", 1000), ("50MiB/s", 50 * MiB), ("512 KiB", 512 * 1024), ("1GiB/s", 1 << 30)],
)
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "-1", "1.5MiB", "50MB/s", "MiB"])
def test_parse_rate_refuses(text):
    with pytest.raises(RateSyntaxError):
        parse_rate(text)


def test_settings_schedule_nothing_by_default(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert (settings.scrub_interval, settings.scrub_rate) == (0.0, 50 * MiB)
    assert Settings(data_dir=tmp_path, scrub_rate="8MiB", scrub_interval="3600").scrub_rate == (
        8 * MiB
    )
    with pytest.raises(ConfigurationError):
        Settings(data_dir=tmp_path, scrub_rate=-1)
