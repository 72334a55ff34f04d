"""Queries on the catalog, inside a transaction the caller owns.

Repositories never commit: the caller decides what one transaction is (see
``Database.transaction``), so several repository calls commit or roll back together. They
return ORM rows for the caller to change in place; the rows must not escape the
transaction (convert them to frozen domain objects first).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session

from reelvault.catalog.tables import TenantKeyVersionRow, TenantRow
from reelvault.errors import AlreadyExists, NotFound

__all__ = ["TenantRepository"]


class TenantRepository:
    """Tenants and their KEK versions."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def add_tenant(self, row: TenantRow) -> None:
        """Insert a tenant now (not at commit), so a duplicate name is reported here.

        Raises:
            AlreadyExists: another tenant has the name. Checking by catching the unique
                violation, not by a SELECT first, is what makes it race-free.
        """
        self._session.add(row)
        try:
            self._session.flush()
        except SqlIntegrityError:
            raise AlreadyExists("a tenant with this name already exists") from None

    def tenant(self, tenant_id: str, *, lock: bool = False) -> TenantRow:
        """The tenant's row.

        Args:
            lock: hold the row until commit (``SELECT ... FOR UPDATE`` on PostgreSQL), so
                concurrent changes to one tenant's keys happen one after the other. SQLite
                write transactions are serialized already.

        Raises:
            NotFound: no such tenant.
        """
        query = select(TenantRow).where(TenantRow.id == tenant_id)
        if lock:
            query = query.with_for_update()
        row = self._session.scalars(query).one_or_none()
        if row is None:
            raise NotFound("tenant not found")
        return row

    def tenants(self) -> list[TenantRow]:
        """All tenants, by name."""
        return list(self._session.scalars(select(TenantRow).order_by(TenantRow.name)))

    def add_key_version(self, row: TenantKeyVersionRow) -> None:
        self._session.add(row)
        self._session.flush()

    def key_version(self, tenant_id: str, version: int) -> TenantKeyVersionRow:
        """Raises NotFound for an unknown tenant or version."""
        row = self._session.get(TenantKeyVersionRow, (tenant_id, version))
        if row is None:
            raise NotFound("KEK version not found")
        return row

    def key_versions(self, tenant_id: str) -> list[TenantKeyVersionRow]:
        """The tenant's versions, oldest first (empty for an unknown tenant)."""
        query = (
            select(TenantKeyVersionRow)
            .where(TenantKeyVersionRow.tenant_id == tenant_id)
            .order_by(TenantKeyVersionRow.version)
        )
        return list(self._session.scalars(query))

    def active_key_version(self, tenant_id: str) -> TenantKeyVersionRow | None:
        query = select(TenantKeyVersionRow).where(
            TenantKeyVersionRow.tenant_id == tenant_id, TenantKeyVersionRow.state == "active"
        )
        return self._session.scalars(query).one_or_none()

    def latest_key_version(self, tenant_id: str) -> int:
        """The highest version number, whatever its state; 0 when there is none."""
        query = select(func.max(TenantKeyVersionRow.version)).where(
            TenantKeyVersionRow.tenant_id == tenant_id
        )
        return self._session.scalar(query) or 0
