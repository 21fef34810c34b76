"""Alembic environment for the store, run only programmatically by ``Store.open``.

Invariants:
- Migrations run on the connection handed over in ``config.attributes["connection"]``,
  inside the caller's transaction; this file never creates an engine and never reads
  an ini file or logging configuration.
- Offline (SQL script) mode is not supported.
- SQLite runs in batch mode, because it cannot ALTER most things in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from controlplane.store.schema import Base


def run_migrations_online() -> None:
    """Run the pending revisions on the caller's connection."""
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "the store's migrations must be run by Store.open, which passes a connection in "
            "config.attributes['connection']"
        )
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported for the edgefleet store")
run_migrations_online()
