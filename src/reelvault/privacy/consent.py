"""Consent: which purposes a subject agreed to, with the whole history kept.

Each decision (granted or withdrawn, for one purpose, from a source, effective at a
time) is a row; none is ever changed. The state of a purpose is its decision with the
latest effective time (ties: the one recorded last). Reads check it in the catalog on
every call, so a withdrawal blocks reads from its commit on, on every replica.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from reelvault.audit import Auditor, NullAuditSink, Resource
from reelvault.catalog import Database
from reelvault.catalog.tables import ConsentRow
from reelvault.clock import Clock
from reelvault.errors import InvalidArgument
from reelvault.privacy.subjects import Subjects

__all__ = ["ConsentDecision", "Consents", "check_purpose", "consent_active"]

_PURPOSE: Final = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
MAX_SOURCE_LENGTH: Final = 128
_MAX_SKEW: Final = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    subject: str
    """The subject's pseudonym."""
    purpose: str
    granted: bool
    source: str
    effective_at: datetime
    recorded_at: datetime


def check_purpose(purpose: str) -> None:
    if not isinstance(purpose, str) or _PURPOSE.fullmatch(purpose) is None:
        raise InvalidArgument(
            "a purpose is 1 to 64 characters of [a-z0-9_.:-], starting with a letter or digit"
        )


def consent_active(session: Session, tenant_id: str, pseudonym: str, purpose: str) -> bool:
    """Whether the subject's latest decision for ``purpose`` grants it (no decision: no)."""
    granted = session.scalar(
        select(ConsentRow.granted)
        .where(
            ConsentRow.tenant_id == tenant_id,
            ConsentRow.pseudonym == pseudonym,
            ConsentRow.purpose == purpose,
        )
        .order_by(ConsentRow.effective_at.desc(), ConsentRow.id.desc())
        .limit(1)
    )
    return bool(granted)


class Consents:
    def __init__(
        self,
        database: Database,
        subjects: Subjects,
        clock: Clock,
        *,
        auditor: Auditor | None = None,
    ) -> None:
        self._db = database
        self._subjects = subjects
        self._clock = clock
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    def record(
        self,
        tenant_id: str,
        subject_id: str,
        purpose: str,
        *,
        granted: bool,
        source: str,
        effective_at: datetime | None = None,
    ) -> ConsentDecision:
        """Record one decision; it is audited before it takes effect.

        Args:
            effective_at: when the subject decided (None: now); not in the future (a few
                minutes of clock skew are allowed, and recorded as now).

        Raises:
            InvalidArgument: bad purpose, source or time.
        """
        self._audit.note(tenant_id=tenant_id)
        check_purpose(purpose)
        if not (isinstance(source, str) and 1 <= len(source) <= MAX_SOURCE_LENGTH) or not (
            source.isprintable()
        ):
            raise InvalidArgument(f"a source is 1 to {MAX_SOURCE_LENGTH} printable characters")
        now = self._now()
        when = now if effective_at is None else effective_at
        if when > now + _MAX_SKEW:
            raise InvalidArgument("a consent decision cannot take effect in the future")
        # Within the skew, the decision takes effect now: stored ahead, it would stay "the
        # latest" for minutes, and a withdrawal recorded meanwhile would not take effect.
        when = min(when, now)
        pseudonym = self._subjects.pseudonym(tenant_id, subject_id)
        self._audit.note(
            resource=Resource("subject", pseudonym),
            detail={"purpose": purpose, "granted": int(granted)},
        )
        self._audit.release()
        row = ConsentRow(
            tenant_id=tenant_id,
            pseudonym=pseudonym,
            purpose=purpose,
            granted=granted,
            source=source,
            effective_at=when,
            recorded_at=now,
        )
        with self._db.transaction() as session:
            if effective_at is None:
                # "now" on this replica may be behind a decision another replica recorded
                # a moment ago: a decision taken now follows every one recorded before it,
                # whatever the clocks say (a withdrawal must never sort before the grant).
                latest = session.scalar(
                    select(ConsentRow.effective_at)
                    .where(
                        ConsentRow.tenant_id == tenant_id,
                        ConsentRow.pseudonym == pseudonym,
                        ConsentRow.purpose == purpose,
                    )
                    .order_by(ConsentRow.effective_at.desc())
                    .limit(1)
                    .with_for_update()
                )
                if latest is not None and latest >= row.effective_at:
                    row.effective_at = latest + timedelta(microseconds=1)
            session.add(row)
            session.flush()
            return _decision(row)

    def history(
        self, tenant_id: str, subject_id: str, purpose: str | None = None
    ) -> tuple[str, list[ConsentDecision]]:
        """The subject's pseudonym and every decision (of one purpose, or all), oldest
        first."""
        self._audit.note(tenant_id=tenant_id)
        if purpose:
            check_purpose(purpose)
        pseudonym = self._subjects.pseudonym(tenant_id, subject_id)
        self._audit.note(resource=Resource("subject", pseudonym))
        return pseudonym, self.history_of(tenant_id, pseudonym, purpose)

    def history_of(
        self, tenant_id: str, pseudonym: str, purpose: str | None = None
    ) -> list[ConsentDecision]:
        query = select(ConsentRow).where(
            ConsentRow.tenant_id == tenant_id, ConsentRow.pseudonym == pseudonym
        )
        if purpose:
            query = query.where(ConsentRow.purpose == purpose)
        with self._db.transaction(readonly=True) as session:
            return [
                _decision(row)
                for row in session.scalars(query.order_by(ConsentRow.effective_at, ConsentRow.id))
            ]


def current_states(decisions: list[ConsentDecision]) -> dict[str, bool]:
    """Each purpose's state from a history in order (the last decision wins)."""
    states: dict[str, bool] = {}
    for decision in decisions:
        states[decision.purpose] = decision.granted
    return states


def _decision(row: ConsentRow) -> ConsentDecision:
    return ConsentDecision(
        subject=row.pseudonym,
        purpose=row.purpose,
        granted=row.granted,
        source=row.source,
        effective_at=row.effective_at,
        recorded_at=row.recorded_at,
    )
