"""Personalization payloads: small viewer data a renderer reads for one purpose.

A payload belongs to one subject and is held for one purpose. It is sealed in the object
format of assets (context kind ``payload``) under a fresh data key wrapped by the
subject's key, and kept whole in the catalog: at 1 KiB to 1 MiB a catalog row costs a
fraction of an object store round trip (docs/privacy.md, "Where payloads live").

A read names its purpose; it succeeds only for the payload's own purpose, while the
subject's consent for it is active (checked in the catalog on every read, in the same
transaction as the payload's row) and before the payload expires.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

import structlog
from sqlalchemy import and_, bindparam, delete, exists, select

from reelvault.assets import check_content_type, check_labels
from reelvault.audit import Auditor, NullAuditSink, Resource
from reelvault.catalog import Database
from reelvault.catalog.tables import ConsentRow, PayloadRow, SubjectRow
from reelvault.clock import Clock
from reelvault.crypto import KIND_PAYLOAD, open_message, seal_message
from reelvault.errors import FailedPrecondition, InvalidArgument, NotFound
from reelvault.objects import object_context
from reelvault.privacy.consent import check_purpose
from reelvault.privacy.subjects import Subjects

__all__ = ["DEFAULT_MAX_PAYLOAD", "MAX_TTL", "PayloadInfo", "Payloads", "check_payload_id"]

DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024
MAX_TTL: Final = 10 * 365 * 24 * 3600
MAX_PAGE_SIZE: Final = 1000
DEFAULT_PAGE_SIZE: Final = 100
_ID_LEN: Final = 32

_log = structlog.get_logger("reelvault.privacy")


@dataclass(frozen=True, slots=True)
class PayloadInfo:
    id: str
    tenant_id: str
    pseudonym: str
    purpose: str
    content_type: str
    labels: Mapping[str, str]
    size: int
    created_at: datetime
    expires_at: datetime | None


_LATEST_DECISION: Final = (
    select(ConsentRow.granted)
    .where(
        ConsentRow.tenant_id == PayloadRow.tenant_id,
        ConsentRow.pseudonym == PayloadRow.pseudonym,
        ConsentRow.purpose == bindparam("purpose"),
    )
    .order_by(ConsentRow.effective_at.desc(), ConsentRow.id.desc())
    .limit(1)
    .correlate(PayloadRow)
    .scalar_subquery()
)
# Built once: a statement built per call costs more in SQLAlchemy than SQLite's query.
_READ: Final = (
    select(
        *PayloadRow.__table__.columns,
        SubjectRow.wrapped_key,
        _LATEST_DECISION.label("granted"),
    )
    .outerjoin(
        SubjectRow,
        (SubjectRow.tenant_id == PayloadRow.tenant_id)
        & (SubjectRow.pseudonym == PayloadRow.pseudonym),
    )
    .where(PayloadRow.id == bindparam("payload_id"), PayloadRow.tenant_id == bindparam("tenant_id"))
)


def check_payload_id(payload_id: str) -> None:
    if not (
        isinstance(payload_id, str)
        and len(payload_id) == _ID_LEN
        and all(c in "0123456789abcdef" for c in payload_id)
    ):
        raise InvalidArgument("payload id must be 32 lowercase hex digits")


def _info(row: PayloadRow) -> PayloadInfo:
    return PayloadInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        pseudonym=row.pseudonym,
        purpose=row.purpose,
        content_type=row.content_type,
        labels=MappingProxyType(dict(row.labels)),
        size=row.size,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


class Payloads:
    """Payloads of every tenant. Safe to share between threads."""

    name = KIND_PAYLOAD

    def __init__(
        self,
        database: Database,
        subjects: Subjects,
        clock: Clock,
        *,
        auditor: Auditor | None = None,
        max_size: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if max_size < 1:
            raise ValueError("the payload size limit must be positive")
        self._db = database
        self._subjects = subjects
        self._clock = clock
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)
        self.max_size = max_size

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    def put(
        self,
        tenant_id: str,
        subject_id: str,
        *,
        purpose: str,
        data: bytes,
        content_type: str = "application/json",
        ttl_seconds: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> PayloadInfo:
        """Seal and store a payload; recorded before it commits.

        Raises:
            InvalidArgument: bad purpose, content type, labels or TTL, or data over the limit.
            FailedPrecondition: the subject was erased.
            KeyUnavailable: the tenant's keys may not be used.
        """
        self._audit.note(tenant_id=tenant_id)
        check_purpose(purpose)
        if len(data) > self.max_size:
            raise InvalidArgument(f"a payload is at most {self.max_size} bytes")
        content_type = check_content_type(content_type or "application/json")
        labels = check_labels(labels or {})
        if ttl_seconds is not None and not 1 <= ttl_seconds <= MAX_TTL:
            raise InvalidArgument(f"a TTL is 1 to {MAX_TTL} seconds")
        bound = self._subjects.subject_key(tenant_id, subject_id)
        payload_id = secrets.token_hex(16)
        message = seal_message(bound.key, object_context(tenant_id, payload_id, KIND_PAYLOAD), data)
        now = self._now()
        row = PayloadRow(
            id=payload_id,
            tenant_id=tenant_id,
            pseudonym=bound.pseudonym,
            purpose=purpose,
            content_type=content_type,
            labels=dict(labels),
            size=len(data),
            message=message,
            created_at=now,
            expires_at=None if ttl_seconds is None else now + timedelta(seconds=ttl_seconds),
        )
        self._audit.note(
            resource=Resource("subject", bound.pseudonym),
            kek_version=bound.kek_version,
            detail={"purpose": purpose},
        )
        self._audit.note(resource=Resource("payload", payload_id, None, 0, len(data)))
        self._audit.release()
        with self._db.transaction() as session:
            # an erasure that committed since the subject key was read wins
            self._subjects.hold_live(session, tenant_id, bound.pseudonym)
            session.add(row)
            session.flush()
            return _info(row)

    def get(self, tenant_id: str, payload_id: str, purpose: str) -> tuple[PayloadInfo, bytes]:
        """A payload's data, for ``purpose``; recorded, durably, before it is returned.

        Raises:
            NotFound: no such payload in this tenant, or it expired.
            FailedPrecondition: ``purpose`` is not the payload's, or the subject's consent
                for it is not active.
            DecryptionError: the payload fails authentication (opaque).
        """
        self._audit.note(tenant_id=tenant_id)
        check_payload_id(payload_id)
        check_purpose(purpose)
        now = self._now()
        # one statement: the payload, its subject's wrapped key and the latest consent
        # decision for this purpose, all from one snapshot (the hot path of rendering)
        row = self._db.read_row(
            _READ, {"payload_id": payload_id, "tenant_id": tenant_id, "purpose": purpose}
        )
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            raise NotFound("payload not found")
        self._audit.note(resource=Resource("subject", row.pseudonym), detail={"purpose": purpose})
        self._audit.note(resource=Resource("payload", row.id, None, 0, row.size))
        if purpose != row.purpose:
            raise FailedPrecondition("the payload is not held for this purpose")
        if not row.granted:
            raise FailedPrecondition("the subject's consent for this purpose is not active")
        info = _info(row)
        data = open_message(
            row.message,
            self._subjects.resolver_with(tenant_id, row.pseudonym, row.wrapped_key),
            object_context(tenant_id, info.id, KIND_PAYLOAD),
        )
        self._audit.release()
        return info, data

    def list(
        self,
        tenant_id: str,
        subject_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[PayloadInfo], str]:
        """The subject's payloads (metadata only), by id, a page at a time."""
        self._audit.note(tenant_id=tenant_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page size must be 0 to {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        pseudonym = self._subjects.pseudonym(tenant_id, subject_id)
        after = _decode_token(page_token, pseudonym)
        self._audit.note(resource=Resource("subject", pseudonym))
        now = self._now()
        with self._db.transaction(readonly=True) as session:
            rows = list(
                session.scalars(
                    select(PayloadRow)
                    .where(
                        PayloadRow.tenant_id == tenant_id,
                        PayloadRow.pseudonym == pseudonym,
                        PayloadRow.id > after,
                        (PayloadRow.expires_at.is_(None)) | (PayloadRow.expires_at > now),
                    )
                    .order_by(PayloadRow.id)
                    .limit(size + 1)
                )
            )
            infos = [_info(row) for row in rows[:size]]
        token = _encode_token(infos[-1].id, pseudonym) if len(rows) > size else ""
        return infos, token

    def delete(self, tenant_id: str, payload_id: str) -> None:
        """Delete a payload (idempotent); recorded before it takes effect."""
        self._audit.note(tenant_id=tenant_id)
        check_payload_id(payload_id)
        with self._db.transaction(readonly=True) as session:
            pseudonym = session.scalar(
                select(PayloadRow.pseudonym).where(
                    PayloadRow.id == payload_id, PayloadRow.tenant_id == tenant_id
                )
            )
        if pseudonym is not None:
            self._audit.note(resource=Resource("subject", pseudonym))
        self._audit.note(resource=Resource("payload", payload_id))
        held = exists().where(
            and_(
                SubjectRow.tenant_id == PayloadRow.tenant_id,
                SubjectRow.pseudonym == PayloadRow.pseudonym,
                SubjectRow.legal_hold.is_(True),
            )
        )
        if pseudonym is not None:
            info = self._subjects.info(tenant_id, pseudonym)
            if info is not None and info.legal_hold:
                raise FailedPrecondition("the subject is under a legal hold; release it first")
        self._audit.release()
        with self._db.transaction() as session:
            session.execute(
                delete(PayloadRow).where(
                    PayloadRow.id == payload_id, PayloadRow.tenant_id == tenant_id, ~held
                )
            )

    def rows_of(self, tenant_id: str, pseudonym: str) -> Iterator[tuple[PayloadInfo, bytes]]:
        """Every payload of a subject with its data (for export), expired ones included
        until purged; a batch of rows at a time."""
        after = ""
        resolver = self._subjects.resolver(tenant_id, pseudonym)
        while True:
            with self._db.transaction(readonly=True) as session:
                rows = [
                    (_info(row), row.message)
                    for row in session.scalars(
                        select(PayloadRow)
                        .where(
                            PayloadRow.tenant_id == tenant_id,
                            PayloadRow.pseudonym == pseudonym,
                            PayloadRow.id > after,
                        )
                        .order_by(PayloadRow.id)
                        .limit(100)
                    )
                ]
            if not rows:
                return
            for info, message in rows:
                data = open_message(
                    message, resolver, object_context(tenant_id, info.id, KIND_PAYLOAD)
                )
                yield info, data
            after = rows[-1][0].id

    def purge_expired(self, *, batch: int = 500) -> dict[str, int]:
        """Delete expired payloads, except those of subjects under a legal hold; each
        tenant's purge is recorded in its log. Returns how many went, by tenant."""
        now = self._now()
        held = exists().where(
            and_(
                SubjectRow.tenant_id == PayloadRow.tenant_id,
                SubjectRow.pseudonym == PayloadRow.pseudonym,
                SubjectRow.legal_hold.is_(True),
            )
        )
        purged: dict[str, int] = {}
        while True:
            with self._db.transaction(readonly=True) as session:
                due = list(
                    session.execute(
                        select(PayloadRow.id, PayloadRow.tenant_id)
                        .where(PayloadRow.expires_at <= now, ~held)
                        .limit(batch)
                    )
                )
            if not due:
                break
            by_tenant: dict[str, list[str]] = {}
            for payload_id, tenant_id in due:
                by_tenant.setdefault(tenant_id, []).append(payload_id)
            for tenant_id, ids in by_tenant.items():
                self._audit.record(
                    "payload.purge",
                    tenant_id=tenant_id,
                    detail={"expired_payloads": len(ids)},
                )
                with self._db.transaction() as session:
                    session.execute(delete(PayloadRow).where(PayloadRow.id.in_(ids), ~held))
                purged[tenant_id] = purged.get(tenant_id, 0) + len(ids)
            if len(due) < batch:
                break
        return purged


def _encode_token(after: str, pseudonym: str) -> str:
    raw = json.dumps({"after": after, "subject": pseudonym}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# what _encode_token makes: two ids of 32 hex digits in a small JSON object, in base64
_MAX_TOKEN_CHARS: Final = 256


def _decode_token(token: str, pseudonym: str) -> str:
    """The payload id a page token continues after. Anything this module did not make
    (oversized, not JSON, deeply nested JSON, another subject's, a position that is not a
    payload id, which could reach SQL as anything) is INVALID_ARGUMENT."""
    if not token:
        return ""
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument("malformed page token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
        after, subject = value["after"], value["subject"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidArgument("malformed page token") from None
    if subject != pseudonym or not isinstance(after, str):
        raise InvalidArgument("the page token belongs to another listing")
    try:
        check_payload_id(after)
    except InvalidArgument:
        raise InvalidArgument("malformed page token") from None
    return after
