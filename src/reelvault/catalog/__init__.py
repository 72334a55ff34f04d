"""The metadata catalog: tables, repositories and migrations over SQLAlchemy.

SQLite is the embedded default and PostgreSQL the production database; both run every
migration and every test. The catalog stores wrapped keys only, never plaintext keys.

Typical use::

    database = Database("postgresql+psycopg://reelvault@db/reelvault")
    database.migrate()
    with database.transaction() as session:
        tenant = TenantRepository(session).tenant(tenant_id)
"""

from reelvault.catalog.db import DEFAULT_URL, Database, head_revision
from reelvault.catalog.repositories import TenantRepository
from reelvault.catalog.tables import (
    API_KEY_ROLES,
    KEK_STATES,
    ApiKeyRow,
    Base,
    TenantKeyVersionRow,
    TenantRow,
    UtcDateTime,
)

__all__ = [
    "API_KEY_ROLES",
    "ApiKeyRow",
    "Base",
    "DEFAULT_URL",
    "Database",
    "KEK_STATES",
    "TenantKeyVersionRow",
    "TenantRepository",
    "TenantRow",
    "UtcDateTime",
    "head_revision",
]
