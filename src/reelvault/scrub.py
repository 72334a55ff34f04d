"""The integrity scrub: read every stored object back and prove that it is intact.

Storage is untrusted, and a fault there (bit rot, a copy truncated by a failed repair, an
object removed by a stray lifecycle rule) otherwise shows only when a viewer asks for the
bytes, perhaps years later. A pass walks the catalog's assets in id order and, for each:

1. authenticates the catalog's copy of the header with the tenant's KEK. A KEK whose state
   forbids decryption (destroyed by an erasure, disabled) makes the asset *skipped*, not
   damaged, and nothing is read from the store;
2. compares the stored object's size with the one the header and the catalog's plaintext
   size imply (missing, truncated, too long);
3. reads the stored header and compares it byte for byte with the catalog's copy;
4. streams every frame, in spans of at most :data:`SPAN` bytes (one ranged GET each), and
   authenticates each with :func:`reelvault.crypto.open_frames`, as a download would. A
   frame that fails is reported with its sequence number and offset, and the check goes on
   at the next frame, so the report also says how many frames are damaged;
5. when every frame authenticates, compares the plaintext's SHA-256 with the one recorded
   at upload: frames re-sealed with the object's own content key (which a read grant
   releases) authenticate, but cannot keep that digest.

Nothing stops the pass but the store: a damaged asset is recorded (in ``scrub_findings``,
in the tenant's audit log, in the log) and the pass goes on. A store (or key provider)
that does not answer is retried a few times per asset; an asset that still cannot be read
is recorded as *unchecked* once a later asset succeeds, and :data:`UNAVAILABLE_STREAK`
such assets in a row stop the run with the cursor before them, so the next run retries
them rather than a whole outage being reported asset by asset.

Progress is kept in the catalog (``scrub_passes``): the cursor (the last asset id
checked) and the counts, saved every :data:`CHECKPOINT_ASSETS` assets, every
:data:`CHECKPOINT_SECONDS` and at every finding, so an interrupted pass resumes where it
stopped, redoing at most the assets since the last save. The scrubber working on a pass
holds a lease on it (renewed as it goes), so serve's replicas and a ``reelvault scrub``
never work on one pass together. Reads are paced by a token bucket (bytes per second), and
memory stays at about one stream chunk plus one frame, whatever the size of an object.

An asset created during a pass is checked by it if its (random) id sorts after the cursor,
otherwise by the next pass; one deleted during a pass is not reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from reelvault import metrics
from reelvault.assets import asset_context
from reelvault.audit import Auditor, NullAuditSink, Outcome, Resource
from reelvault.catalog import Database
from reelvault.catalog.tables import AssetRow, ScrubFindingRow, ScrubPassRow
from reelvault.clock import Clock
from reelvault.crypto import (
    FRAME_OVERHEAD,
    EncryptedDataKey,
    MessageLayout,
    OpenedMessage,
    open_frames,
    open_header,
)
from reelvault.crypto.format import Header, Incomplete, Malformed, parse_header
from reelvault.errors import DecryptionError, KeyUnavailable, NotFound, OutOfRange, Unavailable
from reelvault.keys.tenant import TenantKeys
from reelvault.storage import ObjectStore

if TYPE_CHECKING:
    from reelvault.app import Vault

__all__ = [
    "ALL_TENANTS",
    "CHECKPOINT_ASSETS",
    "CHECKPOINT_SECONDS",
    "Finding",
    "Problem",
    "Result",
    "SPAN",
    "ScrubPass",
    "ScrubReport",
    "Scrubber",
    "StopReason",
    "TokenBucket",
    "UNAVAILABLE_STREAK",
    "run_scrubber",
]

_log = structlog.get_logger("reelvault.scrub")

ALL_TENANTS: Final = "all"
"""The scope of a pass over every tenant's assets (a tenant's own pass has its id)."""

SPAN: Final = 16 * 1024 * 1024
"""Stored bytes fetched per ranged GET: long enough to cost few requests, short enough that
a slow, paced read never keeps one response open for long."""

CHECKPOINT_ASSETS: Final = 64
CHECKPOINT_SECONDS: Final = 5.0
UNAVAILABLE_STREAK: Final = 3
"""Assets in a row the store does not answer for before a run stops."""

_LEASE_SECONDS: Final = 300.0
_RECHECK_SECONDS: Final = 60.0  # how often an idle scheduled scrubber looks again
_BATCH: Final = 100


class Result(StrEnum):
    """What one asset's check concluded."""

    OK = "ok"
    DAMAGED = "damaged"
    SKIPPED = "skipped"  # its KEK may not decrypt: crypto-shredded or disabled
    UNCHECKED = "unchecked"  # the store (or the key provider) did not answer


class Problem(StrEnum):
    """What failed. One asset may have several (a header that differs and a bad frame)."""

    CATALOG_HEADER_MALFORMED = "catalog-header-malformed"
    KEY_SLOT_MALFORMED = "key-slot-malformed"
    HEADER_INVALID = "header-invalid"
    OBJECT_MISSING = "object-missing"
    OBJECT_TRUNCATED = "object-truncated"
    SIZE_MISMATCH = "size-mismatch"
    HEADER_MISMATCH = "header-mismatch"
    FRAME_INVALID = "frame-invalid"
    CONTENT_MISMATCH = "content-mismatch"
    KEY_UNAVAILABLE = "key-unavailable"
    UNAVAILABLE = "unavailable"


class StopReason(StrEnum):
    """Why a run ended before its pass was complete."""

    BUSY = "busy"  # another scrubber holds the pass's lease
    STOPPED = "stopped"  # asked to stop (shutdown)
    LIMIT = "limit"  # checked as many assets as it was allowed to
    UNAVAILABLE = "unavailable"  # the store stopped answering
    LOST_CLAIM = "lost-claim"  # another scrubber took the pass over (a restart)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with one asset.

    Attributes:
        frame: the sequence number (1-based) of the first frame that failed.
        byte_offset: where the problem sits in the stored object: that frame's offset,
            or the first byte where the stored header differs from the catalog's copy.
        frames: how many frames failed.
        detail: one line for operators; never key material or plaintext.
    """

    asset_id: str
    tenant_id: str
    object_key: str
    result: Result
    problem: Problem
    detail: str = ""
    frame: int | None = None
    byte_offset: int | None = None
    frames: int | None = None


@dataclass(frozen=True, slots=True)
class ScrubPass:
    """A pass as the catalog has it.

    Attributes:
        number: counts the passes of its scope (1, 2, ...).
        tenant_id: the one tenant the pass covers, or None for every tenant.
        remaining: assets after the cursor when this was read (0 once complete).
        claimed_until: the end of the lease of the scrubber working on it, if any.
        findings: what it found, damaged and unchecked assets (skipped ones are only
            counted: after an erasure there can be very many).
    """

    id: str
    number: int
    tenant_id: str | None
    started_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    assets_checked: int
    bytes_checked: int
    damaged: int
    skipped: int
    unchecked: int
    remaining: int
    claimed_until: datetime | None
    findings: tuple[Finding, ...] = ()

    @property
    def complete(self) -> bool:
        return self.completed_at is not None

    @property
    def percent(self) -> float:
        total = self.assets_checked + self.remaining
        return 100.0 if total == 0 else min(100.0, 100.0 * self.assets_checked / total)


@dataclass(frozen=True, slots=True)
class ScrubReport:
    """The newest pass of a scope and, while it is open, the newest complete one.

    Attributes:
        stopped: why the run that produced this report ended before its pass was
            complete; None when it completed the pass (or for a report read from the
            catalog).
        checked: assets the run checked (0 for a report read from the catalog).
    """

    latest: ScrubPass | None
    previous: ScrubPass | None = None
    stopped: StopReason | None = None
    checked: int = 0


class TokenBucket:
    """Paces reads to ``rate`` bytes per second on average, with bursts of up to ``burst``
    bytes (one second's worth by default).

    A read larger than what the bucket holds goes through and is paid for afterwards: the
    bucket goes into debt and :meth:`take` sleeps it off, so chunks of any size work at
    any rate. A rate of 0 paces nothing.
    """

    def __init__(
        self,
        rate: float,
        *,
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
        burst: float | None = None,
    ) -> None:
        if rate < 0:
            raise ValueError("the rate must not be negative")
        self._rate = rate
        self._burst = rate if burst is None else burst
        self._tokens = self._burst
        self._monotonic = monotonic
        self._sleep = sleep
        self._last = monotonic()

    def take(self, count: int) -> None:
        """Account for ``count`` bytes read; sleep as long as the rate requires."""
        if self._rate <= 0:
            return
        now = self._monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= count
        if self._tokens < 0:
            self._sleep(-self._tokens / self._rate)


class _Stopped(Exception):
    """The stop event was set in the middle of an asset."""


class _LostClaim(Exception):
    """Another scrubber owns the pass now."""


@dataclass(slots=True)
class _Outcome:
    """One asset's check; ``result`` None: the asset was deleted while it was checked."""

    asset_id: str
    result: Result | None
    findings: list[Finding] = field(default_factory=list)


_T = TypeVar("_T")


class Scrubber:
    """Runs integrity scrub passes (module docstring).

    Args:
        database: the catalog, holding the assets and the passes' progress.
        tenant_keys: the KEKs that unwrap each asset's data key.
        store: where the objects are.
        clock: time source for timestamps, leases, progress lines and pacing.
        auditor: where each damaged asset and each completed pass is recorded (None:
            nothing recorded, for tests of other behaviour).
        rate: stored bytes read per second at most (0: unlimited).
        sleep: how to wait (pacing, retries); default: the stop event's wait when a run
            has one, else ``time.sleep``. Tests pass one that moves a fake clock.
        progress_interval: seconds between progress lines.
        retries: attempts after the first when the store does not answer, per read.
        retry_delay: seconds before the first retry; doubled for each further one.
    """

    def __init__(
        self,
        database: Database,
        tenant_keys: TenantKeys,
        store: ObjectStore,
        clock: Clock,
        *,
        auditor: Auditor | None = None,
        rate: int = 0,
        sleep: Callable[[float], None] | None = None,
        progress_interval: float = 30.0,
        retries: int = 2,
        retry_delay: float = 1.0,
    ) -> None:
        if rate < 0:
            raise ValueError("the rate must not be negative")
        self._db = database
        self._keys = tenant_keys
        self._store = store
        self._clock = clock
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)
        self._rate = rate
        self._sleep = sleep
        self._progress_interval = progress_interval
        self._retries = retries
        self._retry_delay = retry_delay

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    # --- running ---------------------------------------------------------------------

    def run(
        self,
        *,
        tenant_id: str | None = None,
        restart: bool = False,
        stop: threading.Event | None = None,
        limit: int | None = None,
    ) -> ScrubReport:
        """Work on the open pass of the scope (every tenant, or ``tenant_id``'s assets) until
        it is complete, starting a new one if none is open.

        Args:
            restart: abandon the open pass (its progress and findings) and start anew.
            stop: set it to end the run early; the pass stays open and resumes later.
            limit: check at most this many assets, then end the run (the pass stays open).

        Returns:
            The pass's report; ``stopped`` says why the run ended early, if it did
            (:attr:`StopReason.BUSY`: another scrubber holds the pass, nothing was done).

        Raises:
            NotFound: ``tenant_id`` names no tenant.
            Unavailable: the catalog (or the audit log) cannot be written; the pass keeps
                what was saved and resumes from there.
        """
        if tenant_id is not None:
            self._keys.get_tenant(tenant_id)
        scope = tenant_id or ALL_TENANTS
        owner = secrets.token_hex(16)
        claimed = self._claim(scope, owner, restart=restart)
        if claimed is None:
            return self._report(scope, stopped=StopReason.BUSY)
        sleep = self._sleep or _waiter(stop)
        try:
            run = _Run(self, claimed, scope, owner, stop=stop, limit=limit, sleep=sleep)
            stopped = run.go()
        finally:
            self._release(claimed.id, owner)
        return self._report(scope, stopped=stopped, checked=run.checked)

    def run_forever(self, stop: threading.Event, *, interval: float) -> None:
        """Run a pass over every tenant each time one is due, until ``stop`` is set: the
        open pass at once (resuming it), a new one ``interval`` seconds after the last
        completed. Failures are logged and retried a minute later."""
        while not stop.is_set():
            try:
                due = self.due_in(interval)
                if due > 0:
                    stop.wait(min(due, _RECHECK_SECONDS))
                    continue
                report = self.run(stop=stop)
                if report.stopped in (
                    StopReason.BUSY,
                    StopReason.UNAVAILABLE,
                    StopReason.LOST_CLAIM,
                ):
                    stop.wait(min(interval, _RECHECK_SECONDS))
            except Exception:
                _log.warning("scrub run failed", exc_info=True)
                stop.wait(min(interval, _RECHECK_SECONDS))

    def due_in(self, interval: float, *, tenant_id: str | None = None) -> float:
        """Seconds until the scope's next pass is due: 0 while one is open or when none
        has run, else what is left of ``interval`` after the last one completed."""
        scope = tenant_id or ALL_TENANTS
        with self._db.transaction(readonly=True) as session:
            row = session.scalar(
                select(ScrubPassRow)
                .where(ScrubPassRow.scope == scope)
                .order_by(ScrubPassRow.number.desc())
                .limit(1)
            )
            completed = None if row is None else row.completed_at
        if completed is None:
            return 0.0
        return max(0.0, completed.timestamp() + interval - self._clock.now())

    def report(self, *, tenant_id: str | None = None) -> ScrubReport:
        """The scope's newest pass, with its findings, as the catalog has it."""
        return self._report(tenant_id or ALL_TENANTS)

    # --- one asset -------------------------------------------------------------------

    def _inspect(self, row: AssetRow, run: _Run) -> _Outcome:
        try:
            outcome = self._check(row, run)
        except Unavailable as exc:
            outcome = _Outcome(row.id, Result.UNCHECKED)
            outcome.findings.append(
                _finding(row, Result.UNCHECKED, Problem.UNAVAILABLE, exc.message)
            )
        if outcome.result is not Result.OK and not self._still_there(row):
            return _Outcome(row.id, None)  # deleted meanwhile: not damage
        return outcome

    def _check(self, row: AssetRow, run: _Run) -> _Outcome:
        outcome = _Outcome(row.id, Result.OK)

        def damaged(problem: Problem, detail: str, **where: int) -> None:
            outcome.result = Result.DAMAGED
            outcome.findings.append(_finding(row, Result.DAMAGED, problem, detail, **where))

        header = _parse(row.header)
        if header is None:
            damaged(
                Problem.CATALOG_HEADER_MALFORMED, "the catalog's copy of the header is malformed"
            )
            return outcome
        context = asset_context(row.tenant_id, row.id)
        slots: list[EncryptedDataKey] = []
        if row.key_slot is not None:
            try:
                slots.append(EncryptedDataKey.parse(row.key_slot))
            except Malformed:  # the header's own data key may still open it
                damaged(Problem.KEY_SLOT_MALFORMED, "the catalog's key slot is malformed")
        resolver = self._keys.resolver(row.tenant_id)

        def authenticate(parsed: Header) -> OpenedMessage:
            return self._retry(run, lambda: open_header(parsed, resolver, context, data_keys=slots))

        opened: OpenedMessage | None = None
        try:
            opened = authenticate(header)
        except KeyUnavailable as exc:
            # Crypto-shredded or disabled: unreadable by design, not damaged. Nothing read.
            if outcome.result is Result.OK:
                outcome.result = Result.SKIPPED
            outcome.findings.append(
                _finding(row, Result.SKIPPED, Problem.KEY_UNAVAILABLE, exc.message)
            )
            return outcome
        except DecryptionError as exc:
            damaged(
                Problem.HEADER_INVALID,
                f"the catalog's copy of the header does not authenticate ({exc.reason})",
            )
        layout = MessageLayout.for_plaintext(header.length, header.frame_length, row.size)
        expected = layout.ciphertext_size
        key = row.object_key
        info = self._retry(run, lambda: self._store.head(key))
        if info is None:
            damaged(Problem.OBJECT_MISSING, "the store has no object under this key")
            return outcome
        if info.size != expected:
            problem = Problem.OBJECT_TRUNCATED if info.size < expected else Problem.SIZE_MISMATCH
            damaged(problem, f"{info.size} bytes stored, {expected} expected")
            return outcome
        try:
            stored = self._retry(run, lambda: run.read(key, 0, header.length))
        except (NotFound, OutOfRange):  # removed or replaced since the HEAD
            damaged(Problem.OBJECT_MISSING, "the object vanished while it was read")
            return outcome
        if stored != row.header:
            at = next(i for i, (a, b) in enumerate(zip(stored, row.header, strict=True)) if a != b)
            detail = f"the stored header differs from the catalog's copy at byte {at}"
            if opened is None:
                # The catalog's copy failed: if the stored one authenticates, it is the
                # catalog that is damaged, and the frames can still be checked with it.
                with contextlib.suppress(DecryptionError, KeyUnavailable):
                    parsed = _parse(stored)
                    if parsed is not None and parsed.length == header.length:
                        opened = authenticate(parsed)
                        detail += (
                            " (the stored header authenticates: the catalog's copy is damaged)"
                        )
            damaged(Problem.HEADER_MISMATCH, detail, byte_offset=at)
        if opened is not None:
            self._check_frames(row, layout, opened, run, damaged)
        return outcome

    def _check_frames(
        self,
        row: AssetRow,
        layout: MessageLayout,
        opened: OpenedMessage,
        run: _Run,
        damaged: Callable[..., None],
    ) -> None:
        """Authenticate every frame, span by span; record the first bad frame and how many.
        When every frame authenticates, the plaintext's SHA-256 must be the one recorded at
        upload: frames re-sealed with this object's own content key (released to a read
        grant's holder, docs/direct-reads.md) authenticate, but cannot keep the digest."""
        final = layout.final_sequence
        digest = hashlib.sha256()
        per_span = max(1, SPAN // (layout.frame_length + FRAME_OVERHEAD))
        first_bad: int | None = None
        bad, reason, failures = 0, "", 0
        sequence = 1
        while sequence <= final:
            last = min(sequence + per_span - 1, final)
            start = layout.frame_offset(sequence)
            end = layout.ciphertext_size if last == final else layout.frame_offset(last + 1)
            verified = 0
            try:
                with contextlib.closing(run.stream(row.object_key, start, end - start)) as span:
                    bound = None if last == final else last
                    for plain in open_frames(span, opened, sequence, bound):
                        digest.update(plain)
                        verified += 1
                sequence = last + 1
            except DecryptionError as exc:
                failed = sequence + verified
                if first_bad is None:
                    first_bad, reason = failed, exc.reason
                bad += 1
                sequence = failed + 1
            except (NotFound, OutOfRange):
                damaged(Problem.OBJECT_MISSING, "the object vanished while it was read")
                return
            except Unavailable:
                failures += 1
                if failures > self._retries:
                    raise
                run.wait(self._retry_delay * 2 ** (failures - 1))
                sequence += verified  # resume after the frames already authenticated
        if first_bad is None and not secrets.compare_digest(digest.digest(), row.sha256):
            damaged(
                Problem.CONTENT_MISMATCH,
                "every frame authenticates but the plaintext's SHA-256 is not the one recorded "
                "at upload (frames re-sealed with the object's content key, which read grants "
                "release, or a changed catalog row)",
            )
        if first_bad is not None:
            damaged(
                Problem.FRAME_INVALID,
                f"frame {first_bad} of {final} does not authenticate ({reason}); "
                f"{bad} frame(s) damaged",
                frame=first_bad,
                byte_offset=layout.frame_offset(first_bad),
                frames=bad,
            )

    def _retry(self, run: _Run, call: Callable[[], _T]) -> _T:
        attempt = 0
        while True:
            try:
                return call()
            except Unavailable:
                if attempt >= self._retries:
                    raise
                run.wait(self._retry_delay * 2**attempt)
                attempt += 1

    def _still_there(self, row: AssetRow) -> bool:
        with self._db.transaction(readonly=True) as session:
            key = session.scalar(select(AssetRow.object_key).where(AssetRow.id == row.id))
        return key == row.object_key

    # --- the catalog: passes, leases, findings ----------------------------------------

    def _claim(self, scope: str, owner: str, *, restart: bool) -> ScrubPassRow | None:
        """Take the scope's open pass (or a new one) for ``owner``; None if another
        scrubber's lease on it is live."""
        now = self._now()
        until = now + timedelta(seconds=_LEASE_SECONDS)
        try:
            with self._db.transaction() as session:
                number = 1 + (
                    session.scalar(
                        select(func.max(ScrubPassRow.number)).where(ScrubPassRow.scope == scope)
                    )
                    or 0
                )
                row = session.scalar(
                    select(ScrubPassRow).where(
                        ScrubPassRow.scope == scope, ScrubPassRow.completed_at.is_(None)
                    )
                )
                if row is not None:
                    # Conditional, so that of two claimers only one sees its update land.
                    taken = session.execute(
                        update(ScrubPassRow)
                        .where(
                            ScrubPassRow.id == row.id,
                            or_(
                                ScrubPassRow.claimed_by.is_(None),
                                ScrubPassRow.claimed_until < now,
                            ),
                        )
                        .values(claimed_by=owner, claimed_until=until)
                    )
                    if not taken.rowcount:  # type: ignore[attr-defined]
                        return None
                    if not restart:
                        session.refresh(row)
                        session.expunge(row)
                        return row
                    _delete_passes(session, [row.id])
                # A new pass: keep only the newest complete one of this scope besides it.
                kept = session.scalar(
                    select(ScrubPassRow.id)
                    .where(ScrubPassRow.scope == scope, ScrubPassRow.completed_at.is_not(None))
                    .order_by(ScrubPassRow.number.desc())
                    .limit(1)
                )
                old = session.scalars(
                    select(ScrubPassRow.id).where(
                        ScrubPassRow.scope == scope, ScrubPassRow.id != (kept or "")
                    )
                ).all()
                _delete_passes(session, list(old))
                row = ScrubPassRow(
                    id=secrets.token_hex(16),
                    scope=scope,
                    number=number,
                    started_at=now,
                    updated_at=now,
                    completed_at=None,
                    last_asset_id=None,
                    assets_checked=0,
                    bytes_checked=0,
                    damaged=0,
                    skipped=0,
                    unchecked=0,
                    claimed_by=owner,
                    claimed_until=until,
                )
                session.add(row)
                session.flush()
                session.expunge(row)
        except SqlIntegrityError:
            return None  # another scrubber opened a pass of this scope at the same moment
        _log.info("scrub pass started", pass_id=row.id, scope=scope, number=number)
        return row

    def _release(self, pass_id: str, owner: str) -> None:
        # Best effort: if the catalog is gone, the lease runs out by itself.
        with contextlib.suppress(Unavailable), self._db.transaction() as session:
            session.execute(
                update(ScrubPassRow)
                .where(ScrubPassRow.id == pass_id, ScrubPassRow.claimed_by == owner)
                .values(claimed_by=None, claimed_until=None)
            )

    def _renew(self, pass_id: str, owner: str) -> None:
        with self._db.transaction() as session:
            renewed = session.execute(
                update(ScrubPassRow)
                .where(ScrubPassRow.id == pass_id, ScrubPassRow.claimed_by == owner)
                .values(claimed_until=self._now() + timedelta(seconds=_LEASE_SECONDS))
            )
            if not renewed.rowcount:  # type: ignore[attr-defined]
                raise _LostClaim()

    def _save(
        self,
        pass_id: str,
        owner: str,
        outcomes: list[_Outcome],
        byte_count: int,
        *,
        complete: bool = False,
    ) -> None:
        """Record the outcomes, advance the cursor past them, renew the lease; with
        ``complete``, close the pass. One transaction: a crash keeps all or none."""
        now = self._now()
        counted = [o for o in outcomes if o.result is not None]

        def count(result: Result) -> int:
            return sum(1 for o in counted if o.result is result)

        values: dict[str, Any] = {
            "assets_checked": ScrubPassRow.assets_checked + len(counted),
            "bytes_checked": ScrubPassRow.bytes_checked + byte_count,
            "damaged": ScrubPassRow.damaged + count(Result.DAMAGED),
            "skipped": ScrubPassRow.skipped + count(Result.SKIPPED),
            "unchecked": ScrubPassRow.unchecked + count(Result.UNCHECKED),
            "updated_at": now,
            "claimed_until": now + timedelta(seconds=_LEASE_SECONDS),
        }
        if outcomes:
            values["last_asset_id"] = outcomes[-1].asset_id
        if complete:
            values.update(completed_at=now, claimed_by=None, claimed_until=None)
        with self._db.transaction() as session:
            saved = session.execute(
                update(ScrubPassRow)
                .where(ScrubPassRow.id == pass_id, ScrubPassRow.claimed_by == owner)
                .values(**values)
            )
            if not saved.rowcount:  # type: ignore[attr-defined]
                raise _LostClaim()
            session.add_all(
                ScrubFindingRow(
                    pass_id=pass_id,
                    asset_id=f.asset_id,
                    problem=f.problem.value,
                    tenant_id=f.tenant_id,
                    object_key=f.object_key,
                    result=f.result.value,
                    frame=f.frame,
                    byte_offset=f.byte_offset,
                    frames=f.frames,
                    detail=f.detail[:256],
                    found_at=now,
                )
                for o in counted
                if o.result is not Result.SKIPPED
                for f in o.findings
            )
        for o in counted:
            assert o.result is not None
            metrics.SCRUB_OBJECTS.labels(result=o.result.value).inc()

    def _report(
        self, scope: str, *, stopped: StopReason | None = None, checked: int = 0
    ) -> ScrubReport:
        with self._db.transaction(readonly=True) as session:
            rows = list(
                session.scalars(
                    select(ScrubPassRow)
                    .where(ScrubPassRow.scope == scope)
                    .order_by(ScrubPassRow.number.desc())
                )
            )
            if not rows:
                return ScrubReport(None, stopped=stopped, checked=checked)
            latest = rows[0]
            previous = None
            if latest.completed_at is None:
                previous = next((r for r in rows[1:] if r.completed_at is not None), None)
            passes = [_pass(session, row, scope) for row in (latest, previous) if row is not None]
        return ScrubReport(
            passes[0], passes[1] if len(passes) > 1 else None, stopped=stopped, checked=checked
        )


class _Run:
    """One run of one pass: the loop over assets, pacing, leases, saving, progress."""

    def __init__(
        self,
        scrubber: Scrubber,
        claimed: ScrubPassRow,
        scope: str,
        owner: str,
        *,
        stop: threading.Event | None,
        limit: int | None,
        sleep: Callable[[float], None],
    ) -> None:
        self._s = scrubber
        self._pass = claimed
        self._scope = scope
        self._owner = owner
        self._stop = stop
        self._limit = limit
        self._sleep = sleep
        clock = scrubber._clock
        self._monotonic = clock.monotonic
        self._bucket = TokenBucket(scrubber._rate, monotonic=clock.monotonic, sleep=sleep)
        self._pending: list[_Outcome] = []
        self._pending_bytes = 0
        self._streak = 0
        self.checked = 0
        # running totals of the pass, for progress lines and the damage gauge
        self._assets = claimed.assets_checked
        self._bytes = claimed.bytes_checked
        self._damaged = claimed.damaged
        self._skipped = claimed.skipped
        self._unchecked = claimed.unchecked
        now = self._monotonic()
        self._saved_at = self._renewed_at = self._logged_at = now
        self._total = self._assets + self._remaining(claimed.last_asset_id)

    # -- the loop -----------------------------------------------------------------------

    def go(self) -> StopReason | None:
        metrics.SCRUB_DAMAGED.set(self._damaged)
        try:
            return self._loop()
        except _LostClaim:
            _log.warning("scrub pass taken over by another scrubber", pass_id=self._pass.id)
            return StopReason.LOST_CLAIM

    def _loop(self) -> StopReason | None:
        cursor = self._pass.last_asset_id
        while True:
            rows = self._batch(cursor)
            if not rows:
                break
            for row in rows:
                if self._stop is not None and self._stop.is_set():
                    return self._halt(StopReason.STOPPED)
                if self._limit is not None and self.checked >= self._limit:
                    return self._halt(StopReason.LIMIT)
                try:
                    outcome = self._s._inspect(row, self)
                except _Stopped:
                    return self._halt(StopReason.STOPPED)
                self.checked += 1
                self._pending.append(outcome)
                if outcome.result is Result.UNCHECKED:
                    self._streak += 1
                    if self._streak >= UNAVAILABLE_STREAK:
                        return self._halt(StopReason.UNAVAILABLE)
                    continue
                self._streak = 0
                if outcome.result is Result.DAMAGED:
                    self._report_damage(row, outcome)
                if (
                    outcome.result is Result.DAMAGED
                    or len(self._pending) >= CHECKPOINT_ASSETS
                    or self._monotonic() - self._saved_at >= CHECKPOINT_SECONDS
                ):
                    self._save()
                self._progress()
            cursor = rows[-1].id
        self._complete()
        return None

    def _halt(self, reason: StopReason) -> StopReason:
        # Assets the store did not answer for at the end are redone by the next run,
        # not reported: an outage is not a property of the assets it hit.
        while self._pending and self._pending[-1].result is Result.UNCHECKED:
            self._pending.pop()
            self.checked -= 1
        self._save()
        self._progress(force=True, stopped=reason)
        return reason

    def _batch(self, cursor: str | None) -> list[AssetRow]:
        query = select(AssetRow)
        if self._scope != ALL_TENANTS:
            query = query.where(AssetRow.tenant_id == self._scope)
        if cursor is not None:
            query = query.where(AssetRow.id > cursor)
        with self._s._db.transaction(readonly=True) as session:
            rows = list(session.scalars(query.order_by(AssetRow.id).limit(_BATCH)))
            for row in rows:
                session.expunge(row)
        return rows

    def _remaining(self, cursor: str | None) -> int:
        query = select(func.count()).select_from(AssetRow)
        if self._scope != ALL_TENANTS:
            query = query.where(AssetRow.tenant_id == self._scope)
        if cursor is not None:
            query = query.where(AssetRow.id > cursor)
        with self._s._db.transaction(readonly=True) as session:
            return int(session.scalar(query) or 0)

    def _tally(self) -> None:
        """Add what is pending to the pass's running totals (for the lines and gauge)."""
        for outcome in self._pending:
            if outcome.result is None:
                continue
            self._assets += 1
            if outcome.result is Result.DAMAGED:
                self._damaged += 1
            elif outcome.result is Result.SKIPPED:
                self._skipped += 1
            elif outcome.result is Result.UNCHECKED:
                self._unchecked += 1
        metrics.SCRUB_DAMAGED.set(self._damaged)

    def _save(self) -> None:
        self._s._save(self._pass.id, self._owner, self._pending, self._pending_bytes)
        self._tally()
        self._pending, self._pending_bytes = [], 0
        self._saved_at = self._renewed_at = self._monotonic()

    def _complete(self) -> None:
        s = self._s
        pass_id = self._pass.id
        self._tally()  # the totals with what is pending, for the record
        # Recorded before the pass is closed: if the record cannot be written, the pass
        # stays open at its end and the next run closes it (and records it) again.
        s._audit.record(
            "asset.scrub",
            tenant_id=None,
            detail={
                "pass_id": pass_id,
                "scope": self._scope,
                "assets": self._assets,
                "bytes": self._bytes,
                "damaged": self._damaged,
                "skipped": self._skipped,
                "unchecked": self._unchecked,
            },
        )
        s._save(pass_id, self._owner, self._pending, self._pending_bytes, complete=True)
        self._pending, self._pending_bytes = [], 0
        metrics.SCRUB_LAST_PASS.set(s._clock.now())
        _log.info(
            "scrub pass complete",
            pass_id=pass_id,
            scope=self._scope,
            assets=self._assets,
            bytes=self._bytes,
            damaged=self._damaged,
            skipped=self._skipped,
            unchecked=self._unchecked,
        )

    def _report_damage(self, row: AssetRow, outcome: _Outcome) -> None:
        problems = [f.problem.value for f in outcome.findings if f.result is Result.DAMAGED]
        detail: dict[str, str | int] = {
            "pass_id": self._pass.id,
            "object_key": row.object_key,
            "problems": ",".join(problems),
        }
        for f in outcome.findings:
            if f.problem is Problem.FRAME_INVALID and f.frame is not None:
                detail["frame"] = f.frame
                detail["frames"] = f.frames or 1
            if f.byte_offset is not None and "byte_offset" not in detail:
                detail["byte_offset"] = f.byte_offset
        _log.warning(
            "scrub found a damaged asset",
            asset_id=row.id,
            tenant_id=row.tenant_id,
            object_key=row.object_key,
            problems=problems,
            details=[f.detail for f in outcome.findings],
        )
        # In the tenant's log: its data failed a check. Never key material or plaintext.
        self._s._audit.record(
            "asset.scrub",
            tenant_id=row.tenant_id,
            resources=[Resource("asset", row.id, row.path)],
            kek_version=row.kek_version,
            outcome=Outcome.FAILED,
            status="DATA_LOSS",
            detail=detail,
        )

    def _progress(self, *, force: bool = False, stopped: StopReason | None = None) -> None:
        now = self._monotonic()
        if not force and now - self._logged_at < self._s._progress_interval:
            return
        self._logged_at = now
        total = max(self._total, self._assets)
        _log.info(
            "scrub progress",
            pass_id=self._pass.id,
            scope=self._scope,
            assets=self._assets,
            bytes=self._bytes,
            damaged=self._damaged,
            skipped=self._skipped,
            unchecked=self._unchecked,
            percent=round(100.0 * self._assets / total, 1) if total else 100.0,
            stopped=stopped.value if stopped is not None else None,
        )

    # -- reads: paced, counted, stoppable -------------------------------------------------

    def read(self, key: str, offset: int, length: int) -> bytes:
        self._check_stop()
        data = self._s._store.get_range(key, offset, length)
        self._account(len(data))
        return data

    def stream(self, key: str, offset: int, length: int) -> Generator[bytes, None, None]:
        self._check_stop()
        return self._metered(self._s._store.open_stream(key, offset, length))

    def _metered(self, chunks: Generator[bytes, None, None]) -> Generator[bytes, None, None]:
        try:
            for chunk in chunks:
                self._account(len(chunk))
                yield chunk
        finally:
            chunks.close()

    def _account(self, count: int) -> None:
        self._bytes += count
        self._pending_bytes += count
        metrics.SCRUB_BYTES.inc(count)
        self._bucket.take(count)
        self._check_stop()
        if self._monotonic() - self._renewed_at >= _LEASE_SECONDS / 3:
            # a long object: keep the lease while it is read
            self._s._renew(self._pass.id, self._owner)
            self._renewed_at = self._monotonic()

    def wait(self, seconds: float) -> None:
        self._sleep(seconds)
        self._check_stop()

    def _check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise _Stopped()


def run_scrubber(vault: Vault, stop: threading.Event, *, interval: float, rate: int) -> None:
    """serve's scheduled scrub: passes over every tenant, a new one ``interval`` seconds
    after the last completed (resuming an open one at once), reading at most ``rate``
    bytes per second, until ``stop`` is set. Returns at once when ``interval`` is 0.

    Blocking: run it in a thread of its own (settings ``scrub_interval``, ``scrub_rate``).
    """
    if interval <= 0:
        return
    scrubber = Scrubber(
        vault.database,
        vault.tenant_keys,
        vault.store,
        vault.clock,
        auditor=vault.auditor,
        rate=rate,
    )
    scrubber.run_forever(stop, interval=interval)


# --- helpers -----------------------------------------------------------------------------


def _waiter(stop: threading.Event | None) -> Callable[[float], None]:
    """Sleep that a stop event cuts short."""
    if stop is None:
        return time.sleep

    def wait(seconds: float) -> None:
        stop.wait(seconds)

    return wait


def _parse(raw: bytes) -> Header | None:
    """The header, if ``raw`` is exactly one well-formed header."""
    try:
        header = parse_header(raw)
    except (Incomplete, Malformed):
        return None
    return header if header.length == len(raw) else None


def _finding(row: AssetRow, result: Result, problem: Problem, detail: str, **where: int) -> Finding:
    return Finding(
        asset_id=row.id,
        tenant_id=row.tenant_id,
        object_key=row.object_key,
        result=result,
        problem=problem,
        detail=detail,
        **where,
    )


def _delete_passes(session: Any, pass_ids: Iterable[str]) -> None:
    ids = list(pass_ids)
    if ids:
        session.execute(delete(ScrubFindingRow).where(ScrubFindingRow.pass_id.in_(ids)))
        session.execute(delete(ScrubPassRow).where(ScrubPassRow.id.in_(ids)))


def _pass(session: Any, row: ScrubPassRow, scope: str) -> ScrubPass:
    findings = tuple(
        Finding(
            asset_id=f.asset_id,
            tenant_id=f.tenant_id,
            object_key=f.object_key,
            result=Result(f.result),
            problem=Problem(f.problem),
            detail=f.detail,
            frame=f.frame,
            byte_offset=f.byte_offset,
            frames=f.frames,
        )
        for f in session.scalars(
            select(ScrubFindingRow)
            .where(ScrubFindingRow.pass_id == row.id)
            .order_by(ScrubFindingRow.asset_id, ScrubFindingRow.problem)
        )
    )
    remaining = 0
    if row.completed_at is None:
        query = select(func.count()).select_from(AssetRow)
        if scope != ALL_TENANTS:
            query = query.where(AssetRow.tenant_id == scope)
        if row.last_asset_id is not None:
            query = query.where(AssetRow.id > row.last_asset_id)
        remaining = int(session.scalar(query) or 0)
    return ScrubPass(
        id=row.id,
        number=row.number,
        tenant_id=None if scope == ALL_TENANTS else scope,
        started_at=row.started_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
        assets_checked=row.assets_checked,
        bytes_checked=row.bytes_checked,
        damaged=row.damaged,
        skipped=row.skipped,
        unchecked=row.unchecked,
        remaining=remaining,
        claimed_until=row.claimed_until,
        findings=findings,
    )
