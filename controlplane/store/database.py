"""The store's adapter to the database driver: URLs, engines, migrations and error mapping.

Invariants:
- Only two backends: SQLite (a file; WAL, foreign keys on, a busy timeout) and
  PostgreSQL through psycopg 3. Anything else is rejected before connecting.
- On SQLite, Python's implicit transactions are off and SQLAlchemy emits BEGIN itself,
  so a write transaction starts with ``BEGIN IMMEDIATE`` and takes the write lock before
  it reads; two writers never both read then both try to write.
- Migrations run to head inside one transaction that holds a lock (the SQLite write
  lock, a PostgreSQL advisory lock), so two servers starting at once migrate once.
  Within one process they also hold ``_ALEMBIC_LOCK``: alembic's ``context`` and ``op``
  are process-wide proxies, so two threads must never run migrations at the same time.
- Connection failures are mapped to ``StoreUnavailable`` here and nowhere else; the
  message shows the URL with its password hidden.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from controlplane.store.errors import StoreError, StoreUnavailable

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Execution option naming the SQLite BEGIN mode of a transaction; other backends ignore it.
SQLITE_BEGIN_OPTION = "edgefleet_sqlite_begin"
# Any fixed 64-bit number; every server of one database must use the same one.
_PG_MIGRATION_LOCK_KEY = 0x65646765666C6565  # "edgeflee"

_ALEMBIC_LOCK = threading.Lock()

_SQLITE_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite"})
_POSTGRES_DRIVERS = frozenset({"postgres", "postgresql", "postgresql+psycopg"})
_URL_EXAMPLES = "sqlite:////abs/path/edgefleet.db or postgresql://user@host:5432/dbname"


def normalize_url(url: str) -> URL:
    """Parse a store URL and pick the driver: ``postgresql://`` becomes ``postgresql+psycopg://``.

    Raises:
        ValueError: the URL does not parse, names another backend, or is an in-memory SQLite
            database (each connection would see its own empty database).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        # The text may hold a password, so it is not echoed.
        raise ValueError(f"the store URL does not parse; expected {_URL_EXAMPLES}") from exc
    if parsed.drivername in _POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in _SQLITE_DRIVERS:
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(f"the store needs a SQLite file, not an in-memory database; expected {_URL_EXAMPLES}")
        return parsed.set(drivername="sqlite+pysqlite")
    raise ValueError(f"unsupported store backend {parsed.drivername!r}; expected {_URL_EXAMPLES}")


def safe_url(url: URL) -> str:
    """The URL as text with its password replaced by ``***``, for messages and logs."""
    return url.render_as_string(hide_password=True)


def create_store_engine(url: URL, *, busy_timeout_seconds: float, connect_timeout_seconds: int) -> Engine:
    """Create the engine for a normalized URL; it connects lazily, so this does no I/O."""
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        busy_timeout_ms = int(busy_timeout_seconds * 1000)
        event.listen(engine, "connect", lambda dbapi_conn, _record: _sqlite_connect(dbapi_conn, busy_timeout_ms))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": connect_timeout_seconds})


def _sqlite_connect(dbapi_conn: Any, busy_timeout_ms: int) -> None:
    # Hand transaction control to SQLAlchemy (see _sqlite_begin); pysqlite's implicit BEGIN
    # would start every write as DEFERRED.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms:d}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
    if mode not in ("DEFERRED", "IMMEDIATE"):
        raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
    conn.exec_driver_sql(f"BEGIN {mode}")


def is_unavailable(exc: Exception) -> bool:
    """Whether a SQLAlchemy error means the database cannot be reached, opened or written now.

    Constraint violations and SQL errors are not: they are the caller's or the store's bug.
    """
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def unavailable(exc: Exception, url: URL) -> StoreUnavailable:
    """The ``StoreUnavailable`` to raise (``from exc``) for a connection failure on ``url``."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if url.get_backend_name() == "sqlite":
        hint = "check that the file's directory exists and is writable and that no other process holds a lock"
    else:
        hint = "check that the server is running and reachable and that the credentials are right"
    return StoreUnavailable(f"store database {safe_url(url)} is unavailable: {detail}; {hint}")


def migrate_to_head(engine: Engine) -> None:
    """Bring the schema to the newest revision; a no-op on a database that is already there.

    Raises:
        StoreError: the database was migrated by a newer edgefleet (a revision unknown here).
        sqlalchemy.exc.DBAPIError: connection failures; the caller maps them.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    script = ScriptDirectory.from_config(config)
    known = {revision.revision for revision in script.walk_revisions()}
    write_engine = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
    with _ALEMBIC_LOCK, write_engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
        current = MigrationContext.configure(conn).get_current_heads()
        unknown = sorted(set(current) - known)
        if unknown:
            raise StoreError(
                f"store database {safe_url(engine.url)} is at schema revision {', '.join(unknown)}, "
                "which this edgefleet does not know; run the edgefleet release that migrated it, or newer"
            )
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
