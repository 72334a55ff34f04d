"""Reading the audit log: the domain side of the AuditService.

Every read of the log is itself an access and is recorded in the log it reads (before
anything is returned, like any other release). Which log a caller may read is the edge's
decision (:func:`reelvault.auth.require_tenant_access`); this layer only checks the
request's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from reelvault.audit.auditor import Auditor
from reelvault.audit.events import PLATFORM_LOG, Resource
from reelvault.audit.log import AuditLog, CheckpointInfo, EventPage, StoredEvent
from reelvault.catalog import Database
from reelvault.catalog.audit import AuditFilter
from reelvault.catalog.tables import TenantRow
from reelvault.errors import InvalidArgument, NotFound

__all__ = ["AuditReader", "RetentionPolicy"]

MAX_RETENTION_DAYS = 36_500
_MAX_FILTER_VALUES = 100


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    tenant_id: str
    retention_days: int | None
    legal_hold: bool


class AuditReader:
    def __init__(self, database: Database, log: AuditLog, auditor: Auditor) -> None:
        self._db = database
        self.log = log
        self._auditor = auditor

    def _touch(self, log_id: str) -> None:
        """Note the log read. A tenant that does not exist has no log (NotFound), and the
        attempt stays in the caller's own log."""
        if log_id != PLATFORM_LOG:
            with self._db.transaction(readonly=True) as session:
                if session.get(TenantRow, log_id) is None:
                    raise NotFound("audit log not found")
        self._auditor.note(
            tenant_id=None if log_id == PLATFORM_LOG else log_id,
            resource=Resource("audit-log", log_id),
        )

    def list_events(
        self,
        log_id: str,
        *,
        start_us: int,
        end_us: int,
        actors: Sequence[str] = (),
        resources: Sequence[str] = (),
        actions: Sequence[str] = (),
        outcomes: Sequence[str] = (),
        methods: Sequence[str] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> EventPage:
        self._touch(log_id)
        for values in (actors, resources, actions, outcomes, methods):
            if len(values) > _MAX_FILTER_VALUES or any(len(v) > 128 for v in values):
                raise InvalidArgument(
                    f"at most {_MAX_FILTER_VALUES} values of at most 128 characters per filter"
                )
        where = AuditFilter(
            actors=actors, resources=resources, actions=actions, outcomes=outcomes, methods=methods
        )
        page = self.log.list_events(
            log_id,
            start_us=start_us,
            end_us=end_us,
            where=where,
            page_size=page_size,
            page_token=page_token,
        )
        self._auditor.release()
        return page

    def open_export(self, log_id: str, start: int) -> None:
        """Record the export before its first event is sent."""
        self._touch(log_id)
        if start < 0:
            raise InvalidArgument("the starting sequence number must not be negative")
        self._auditor.release()

    def export_batch(self, log_id: str, start: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` integrated events from ``start`` (integrating pending ones
        first, so a follower sees new events without waiting for the background round)."""
        self.log.integrate(log_id, wait=True)
        end = min(self.log.tree_size(log_id), start + limit)
        return list(self.log.export(log_id, start, end)) if end > start else []

    def checkpoint(self, log_id: str) -> CheckpointInfo:
        self._touch(log_id)
        # The read is recorded first, so the checkpoint covers it.
        self._auditor.release()
        return self.log.checkpoint(log_id)

    def inclusion_proof(self, log_id: str, seq: int, size: int) -> tuple[bytes, list[bytes]]:
        self._touch(log_id)
        result = self.log.inclusion_proof(log_id, seq, size)
        self._auditor.release()
        return result

    def consistency_proof(self, log_id: str, old_size: int, new_size: int) -> list[bytes]:
        self._touch(log_id)
        result = self.log.consistency_proof(log_id, old_size, new_size)
        self._auditor.release()
        return result

    def purge(self) -> dict[str, int]:
        """Drop event bodies past each tenant's retention (``AuditLog.purge``) and record
        each purge in the tenant's log: tenant -> events purged."""
        purged = self.log.purge()
        for tenant_id, count in purged.items():
            self._auditor.record(
                "audit.purge",
                tenant_id=tenant_id,
                resources=[Resource("audit-log", tenant_id)],
                detail={"purged": count},
            )
        return purged

    def set_retention(
        self, tenant_id: str, *, retention_days: int | None, legal_hold: bool
    ) -> RetentionPolicy:
        """Set a tenant's audit retention (None: keep forever) and legal hold.

        Raises:
            InvalidArgument: retention outside 1 to 36,500 days.
            NotFound: no such tenant.
        """
        if retention_days is not None and not 1 <= retention_days <= MAX_RETENTION_DAYS:
            raise InvalidArgument(f"retention must be 1 to {MAX_RETENTION_DAYS} days")
        with self._db.transaction(readonly=True) as session:
            if session.get(TenantRow, tenant_id) is None:
                raise NotFound("tenant not found")
        self._auditor.note(
            tenant_id=tenant_id,
            resource=Resource("tenant", tenant_id),
            detail={"retention_days": retention_days or 0, "legal_hold": int(legal_hold)},
        )
        self._auditor.release()
        with self._db.transaction() as session:
            row = session.scalars(
                select(TenantRow).where(TenantRow.id == tenant_id).with_for_update()
            ).one_or_none()
            if row is None:
                raise NotFound("tenant not found")
            row.audit_retention_days = retention_days
            row.legal_hold = legal_hold
            return RetentionPolicy(tenant_id, row.audit_retention_days, row.legal_hold)
