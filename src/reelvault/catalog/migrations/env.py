"""Alembic environment for the catalog.

Migrations run only through :meth:`reelvault.catalog.Database.migrate`, which opens the
transaction, takes the migration lock and hands its connection over in
``config.attributes["connection"]``; there is no alembic.ini and no offline mode.

New migrations go in ``versions/`` as ``NNNN_description.py`` with ``revision = "NNNN"``.
Write them by hand, and use ``op.batch_alter_table`` for any change to an existing table:
SQLite can only alter tables by recreating them.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from reelvault.catalog.tables import Base
from reelvault.errors import ConfigurationError


def _run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise ConfigurationError("catalog migrations run through Database.migrate()")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


_run_migrations()
