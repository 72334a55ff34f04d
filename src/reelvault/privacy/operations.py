"""Privacy operations on one subject: pseudonym lookup, erasure, export, legal hold.

Erasure is crypto-shredding first: the subject key is destroyed in one transaction with
the removal of the subject's payload rows and of the rows of its personalized renditions
(whose objects become deletion records), so from that commit on nothing the catalog,
keyring or store holds can decrypt them; the stored objects are deleted next (``gc``
finishes if the store fails). The subject's row stays, keyless, with its pseudonym: the
audit log keeps verifying and keeps meaning the same subject. Consent history stays too
(it is the record that the data was held lawfully); docs/privacy.md says why.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import structlog
from sqlalchemy import delete, select

from reelvault.assets import Assets
from reelvault.audit import AuditLog, Auditor, NullAuditSink, Resource
from reelvault.catalog import Database
from reelvault.catalog.audit import AuditFilter
from reelvault.catalog.tables import AssetRow, PayloadRow
from reelvault.clock import Clock
from reelvault.errors import FailedPrecondition
from reelvault.privacy.consent import Consents
from reelvault.privacy.payloads import Payloads
from reelvault.privacy.subjects import SubjectInfo, Subjects

__all__ = ["Erasure", "Privacy"]

_log = structlog.get_logger("reelvault.privacy")
_FILTER_BATCH: Final = 100
_EXPORT_FORMAT: Final = "reelvault.subject-export.v1"


@dataclass(frozen=True, slots=True)
class Erasure:
    pseudonym: str
    key_destroyed: bool
    payloads_deleted: int
    assets_deleted: int


class Privacy:
    def __init__(
        self,
        *,
        database: Database,
        subjects: Subjects,
        consents: Consents,
        payloads: Payloads,
        assets: Assets,
        audit_log: AuditLog,
        clock: Clock,
        auditor: Auditor | None = None,
    ) -> None:
        self._db = database
        self.subjects = subjects
        self._consents = consents
        self._payloads = payloads
        self._assets = assets
        self._log = audit_log
        self._clock = clock
        self._audit = auditor if auditor is not None else Auditor(NullAuditSink(), clock)

    def hash_subject(self, tenant_id: str, subject_id: str) -> str:
        """The pseudonym of a viewer id, to query the audit log with; recorded."""
        self._audit.note(tenant_id=tenant_id)
        pseudonym = self.subjects.pseudonym(tenant_id, subject_id)
        self._audit.note(resource=Resource("subject", pseudonym))
        self._audit.release()
        return pseudonym

    def set_legal_hold(self, tenant_id: str, subject_id: str, hold: bool) -> SubjectInfo:
        self._audit.note(tenant_id=tenant_id)
        pseudonym = self.subjects.pseudonym(tenant_id, subject_id)
        self._audit.note(resource=Resource("subject", pseudonym), detail={"legal_hold": int(hold)})
        self._audit.release()
        return self.subjects.set_legal_hold(tenant_id, subject_id, hold)

    def erase(self, tenant_id: str, subject_id: str) -> Erasure:
        """Destroy the subject key, then delete the subject's payloads and personalized
        renditions. Recorded before it takes effect. Idempotent.

        Raises:
            FailedPrecondition: the subject is under a legal hold.
        """
        self._audit.note(tenant_id=tenant_id)
        pseudonym = self.subjects.pseudonym(tenant_id, subject_id)
        self._audit.note(resource=Resource("subject", pseudonym))
        info = self.subjects.info(tenant_id, pseudonym)
        if info is not None and info.legal_hold:
            raise FailedPrecondition("the subject is under a legal hold; release it first")
        self._audit.release()
        with self._db.transaction() as session:
            destroyed = self.subjects.shred(session, tenant_id, pseudonym)
            payloads = session.execute(
                delete(PayloadRow).where(
                    PayloadRow.tenant_id == tenant_id, PayloadRow.pseudonym == pseudonym
                )
            ).rowcount  # type: ignore[attr-defined]
            rows = list(
                session.scalars(
                    select(AssetRow).where(
                        AssetRow.tenant_id == tenant_id, AssetRow.subject == pseudonym
                    )
                )
            )
            keys = [row.object_key for row in rows]
            for row in rows:
                session.delete(row)
                self._assets.objects.record_deleted(session, row.object_key)
        for key in keys:
            try:
                self._assets.objects.delete_stored(key)
            except Exception:
                _log.warning("an erased subject's object is left for gc", object_key=key)
        self._audit.record(
            "subject.erased",
            tenant_id=tenant_id,
            resources=[Resource("subject", pseudonym)],
            detail={
                "key_destroyed": int(destroyed),
                "payloads_deleted": int(payloads),
                "assets_deleted": len(keys),
            },
        )
        return Erasure(pseudonym, destroyed, int(payloads), len(keys))

    def export(self, tenant_id: str, subject_id: str) -> Iterator[bytes]:
        """One JSON document, in pieces: every payload decrypted, the consent history,
        the subject's personalized renditions and every audit event about the subject.
        The export is recorded before its first byte."""
        self._audit.note(tenant_id=tenant_id)
        pseudonym = self.subjects.pseudonym(tenant_id, subject_id)
        self._audit.note(resource=Resource("subject", pseudonym))
        info = self.subjects.info(tenant_id, pseudonym)
        self._audit.release()
        return self._document(tenant_id, pseudonym, info)

    def _document(
        self, tenant_id: str, pseudonym: str, info: SubjectInfo | None
    ) -> Iterator[bytes]:
        head: dict[str, Any] = {
            "format": _EXPORT_FORMAT,
            "tenant_id": tenant_id,
            "subject": pseudonym,
            "exported_at": _time(datetime.fromtimestamp(self._clock.now(), UTC)),
            "known": info is not None,
            "created_at": None if info is None else _time(info.created_at),
            "erased_at": None if info is None or info.erased_at is None else _time(info.erased_at),
            "legal_hold": bool(info and info.legal_hold),
        }
        yield json.dumps(head, separators=(",", ":"))[:-1].encode()
        yield b',"payloads":['
        first = True
        if info is not None and info.erased_at is None:
            for payload, data in self._payloads.rows_of(tenant_id, pseudonym):
                yield (b"" if first else b",") + _dump(_payload(payload, data))
                first = False
        yield b'],"consent":['
        decisions = self._consents.history_of(tenant_id, pseudonym)
        yield b",".join(
            _dump(
                {
                    "purpose": d.purpose,
                    "granted": d.granted,
                    "source": d.source,
                    "effective_at": _time(d.effective_at),
                    "recorded_at": _time(d.recorded_at),
                }
            )
            for d in decisions
        )
        yield b'],"assets":['
        with self._db.transaction(readonly=True) as session:
            assets = [
                {
                    "id": row.id,
                    "path": row.path,
                    "content_type": row.content_type,
                    "size": row.size,
                    "sha256": row.sha256.hex(),
                    "created_at": _time(row.created_at),
                }
                for row in session.scalars(
                    select(AssetRow)
                    .where(AssetRow.tenant_id == tenant_id, AssetRow.subject == pseudonym)
                    .order_by(AssetRow.id)
                )
            ]
        yield b",".join(_dump(a) for a in assets)
        yield b'],"audit_events":['
        first = True
        ids = [pseudonym, *(str(a["id"]) for a in assets)]
        for start in range(0, len(ids), _FILTER_BATCH):
            where = AuditFilter(resources=ids[start : start + _FILTER_BATCH])
            token = ""
            while True:
                page = self._log.list_events(
                    tenant_id,
                    start_us=0,
                    end_us=2**62,
                    where=where,
                    page_size=500,
                    page_token=token,
                )
                for event in page.events:
                    yield (b"" if first else b",") + _dump(
                        {
                            "time": _time(datetime.fromtimestamp(event.time_us / 1e6, UTC)),
                            "action": event.action,
                            "outcome": event.outcome,
                            "status": event.status,
                            "actor_key_id": event.actor_key_id,
                            "method": event.method,
                            "resource_type": event.resource_type,
                            "resource_id": event.resource_id,
                            "event_id": event.event_id,
                        }
                    )
                    first = False
                token = page.next_page_token
                if not token:
                    break
        yield b"]}\n"


def _payload(info: Any, data: bytes) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": info.id,
        "purpose": info.purpose,
        "content_type": info.content_type,
        "labels": dict(info.labels),
        "size": info.size,
        "created_at": _time(info.created_at),
        "expires_at": None if info.expires_at is None else _time(info.expires_at),
    }
    if info.content_type.split(";")[0].strip() == "application/json":
        parsed = _faithful_json(data)
        if parsed is not _UNFAITHFUL:
            entry["data"] = parsed
            return entry
    entry["data_base64"] = base64.b64encode(data).decode("ascii")
    return entry


_UNFAITHFUL: Final = object()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("duplicate keys")
    return value


def _faithful_json(data: bytes) -> Any:
    """A JSON payload's value, if the export can hold it as JSON without losing or
    breaking anything; else ``_UNFAITHFUL`` (the export then holds its bytes in base64).
    Refused: invalid JSON, NaN and infinities (the export would not be JSON), duplicate
    keys (all but one would be lost), nesting deep enough to exhaust the parser (one
    such payload would otherwise make the subject's export fail for good)."""
    try:
        value = json.loads(
            data,
            parse_constant=_no_constants,
            parse_float=_exact_float,
            object_pairs_hook=_no_duplicates,
        )
        # it must also come out again: lone surrogates ("\ud800") parse but do not encode
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeEncodeError):
        return _UNFAITHFUL
    return value


def _exact_float(text: str) -> float:
    """A JSON number that a float holds exactly as written, else refused (1e999 would
    become Infinity, and long decimals would lose digits)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not representable")
    if Decimal(text) != Decimal(repr(value)):
        raise ValueError("loses digits")
    return value


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
