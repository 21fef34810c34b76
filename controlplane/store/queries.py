"""Reads and statement builders that run inside a transaction the caller (``Store``) holds.

Invariants:
- Nothing here begins, commits or rolls back; each function takes the open connection.
- Reads return frozen rows (``rows.py``) or None, never ORM objects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from controlplane.store.errors import Conflict, NotFound
from controlplane.store.rows import DeviceRow, JoinTokenRow, OperatorTokenRow
from controlplane.store.schema import Device, JoinToken, OperatorToken, Setting

_Row = TypeVar("_Row")


def require_aware(name: str, value: datetime) -> None:
    """Raises ValueError, naming the argument, if ``value`` is a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")


def must(row: _Row | None, what: str) -> _Row:
    """The row; raises NotFound("<what> not found") if it is None."""
    if row is None:
        raise NotFound(f"{what} not found")
    return row


def operator_token(conn: Connection, condition: ColumnElement[bool]) -> OperatorTokenRow | None:
    row = conn.execute(select(OperatorToken).where(condition)).mappings().one_or_none()
    return None if row is None else OperatorTokenRow(**row)


def join_token(conn: Connection, token_id: str) -> JoinTokenRow | None:
    row = conn.execute(select(JoinToken).where(JoinToken.token_id == token_id)).mappings().one_or_none()
    if row is None:
        return None
    return JoinTokenRow(**{**row, "publisher_key_ids": tuple(row["publisher_key_ids"])})


def device(conn: Connection, device_id: str) -> DeviceRow | None:
    row = conn.execute(select(Device).where(Device.device_id == device_id)).mappings().one_or_none()
    return None if row is None else DeviceRow(**row)


def unusable_join_token(conn: Connection, token_id: str) -> NotFound | Conflict:
    """Why an enrollment's conditional UPDATE of ``token_id`` matched no row: missing, used or expired."""
    token = join_token(conn, token_id)
    if token is None:
        return NotFound(f"join token {token_id!r} not found")
    if token.used_at is not None:
        return Conflict(
            f"join token {token_id!r} was already used by device {token.used_by_device!r} "
            f"at {token.used_at.isoformat()}; create a new join token"
        )
    return Conflict(f"join token {token_id!r} expired at {token.expires_at.isoformat()}; create a new join token")


def insert_setting(conn: Connection, key: str, value: str) -> Any:
    """The backend's own INSERT into settings, which has the ON CONFLICT clauses both backends share."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(Setting).values(key=key, value=value)


def insert_values(conn: Connection, table: Any, values: dict[str, Any]) -> Any:
    """The backend's own INSERT into ``table``, which has the ON CONFLICT clauses both backends share."""
    return insert_of(conn, table).values(**values)


def insert_of(conn: Connection, table: Any) -> Any:
    """The backend's own INSERT into ``table`` without values: execute it with a list of rows (one statement)."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table)
