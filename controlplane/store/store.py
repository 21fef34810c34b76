"""The control plane's persistent store: operator tokens, join tokens, devices, settings and, through
``registry.RegistryStore``, publisher keys and model builds, through ``desired.DesiredStore``,
the desired state of each device, through ``telemetry.TelemetryStore``, telemetry and status and,
through ``classes.ClassStore``, device classes and benchmark jobs and, through
``rollouts.RolloutStore``, rollouts and the cohort telemetry their gates read.

A synchronous API over one SQLAlchemy engine (SQLite or PostgreSQL); asyncio callers run
each call in a worker thread (the server's store executor). The engine is thread-safe, so one ``Store``
serves every thread.

Invariants:
- Each public method is one transaction: it commits everything or nothing.
- No hidden clock: methods that record a time take ``now`` (an aware datetime), and every
  datetime argument is checked to be aware before any SQL runs.
- Methods return frozen rows (``rows.py``), never ORM objects.
- Single use of a join token is decided by the database: enrollment marks the token with a
  conditional UPDATE and inserts the device in the same transaction, so of two concurrent
  enrollments with one token exactly one commits.
- Times that only move forward (``last_seen``, ``revoked_at``) are guarded in the SQL
  ``WHERE`` clause, so a late or repeated write is a no-op.
- Errors: ``NotFound``, ``AlreadyExists``, ``Conflict`` and ``StoreUnavailable`` (every
  connection failure, mapped once in ``_transaction``); ``ValueError`` for bad arguments.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from controlplane.store import queries
from controlplane.store.classes import ClassStore
from controlplane.store.database import (
    SQLITE_BEGIN_OPTION,
    create_store_engine,
    is_unavailable,
    migrate_to_head,
    normalize_url,
    safe_url,
    unavailable,
)
from controlplane.store.desired import DesiredStore
from controlplane.store.errors import AlreadyExists, NotFound
from controlplane.store.queries import must, require_aware
from controlplane.store.registry import RegistryStore
from controlplane.store.rollouts import RolloutStore
from controlplane.store.rows import OPERATOR_ROLES, DeviceRow, JoinTokenRow, OperatorTokenRow
from controlplane.store.schema import Device, JoinToken, OperatorToken, Setting, UTCDateTime
from controlplane.store.telemetry import TelemetryStore


class Store(RegistryStore, DesiredStore, TelemetryStore, ClassStore, RolloutStore):
    """The control plane's database. Create it with ``Store.open``; ``close`` when done."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine made by ``database.create_store_engine`` whose schema is at head."""
        self._engine = engine
        self._write_engine = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})

    @classmethod
    def open(cls, url: str, *, busy_timeout_seconds: float = 10.0, connect_timeout_seconds: int = 10) -> Store:
        """Connect to ``url`` and migrate its schema to the newest revision (idempotent).

        ``url`` is ``sqlite:////abs/path/edgefleet.db`` or ``postgresql://user@host:port/db``
        (driven by psycopg 3). ``busy_timeout_seconds`` bounds SQLite's wait for a lock,
        ``connect_timeout_seconds`` PostgreSQL's wait for a connection.

        Raises:
            ValueError: the URL is malformed or names an unsupported backend.
            StoreUnavailable: the database cannot be reached, opened or written.
            StoreError: the schema was migrated by a newer edgefleet.
        """
        engine = create_store_engine(
            normalize_url(url),
            busy_timeout_seconds=busy_timeout_seconds,
            connect_timeout_seconds=connect_timeout_seconds,
        )
        try:
            migrate_to_head(engine)
        except (DBAPIError, PoolTimeoutError) as exc:
            engine.dispose()
            if not is_unavailable(exc):
                raise
            raise unavailable(exc, engine.url) from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @property
    def url(self) -> str:
        """The database URL with its password hidden."""
        return safe_url(self._engine.url)

    def close(self) -> None:
        """Close every pooled connection. Idempotent; the store must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction; commits on success, rolls back on any exception."""
        engine = self._write_engine if write else self._engine
        try:
            with engine.begin() as conn:
                yield conn
        except (DBAPIError, PoolTimeoutError) as exc:
            if not is_unavailable(exc):
                raise
            raise unavailable(exc, self._engine.url) from exc

    # Operator tokens

    def create_operator_token(self, name: str, role: str, token_sha256: str, now: datetime) -> OperatorTokenRow:
        """Record a new operator token by its SHA-256 (hex).

        Raises:
            ValueError: unknown role or naive ``now``.
            AlreadyExists: the name is taken, or another token has the same hash.
        """
        if role not in OPERATOR_ROLES:
            raise ValueError(f"unknown operator role {role!r}; expected one of {', '.join(sorted(OPERATOR_ROLES))}")
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            if queries.operator_token(conn, OperatorToken.name == name) is not None:
                raise AlreadyExists(f"operator token {name!r} already exists; revoke it or pick another name")
            if queries.operator_token(conn, OperatorToken.token_sha256 == token_sha256) is not None:
                raise AlreadyExists(f"another operator token has the same hash as {name!r}; generate a new token")
            try:
                conn.execute(
                    insert(OperatorToken).values(name=name, role=role, token_sha256=token_sha256, created_at=now)
                )
            except IntegrityError as exc:
                raise AlreadyExists(f"operator token {name!r} or its hash was created concurrently") from exc
            return must(queries.operator_token(conn, OperatorToken.name == name), f"operator token {name!r}")

    def find_operator_token(self, token_sha256: str) -> OperatorTokenRow | None:
        """The token with this hash, revoked or not (check ``revoked``), or None."""
        with self._transaction(write=False) as conn:
            return queries.operator_token(conn, OperatorToken.token_sha256 == token_sha256)

    def list_operator_tokens(self) -> list[OperatorTokenRow]:
        """Every operator token, revoked ones included, ordered by name."""
        with self._transaction(write=False) as conn:
            rows = conn.execute(select(OperatorToken).order_by(OperatorToken.name)).mappings()
            return [OperatorTokenRow(**row) for row in rows]

    def revoke_operator_token(self, name: str, now: datetime) -> OperatorTokenRow:
        """Revoke the token; revoking it again keeps the first ``revoked_at``.

        Raises:
            NotFound: no token has this name.
        """
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            conn.execute(
                update(OperatorToken)
                .where(OperatorToken.name == name, OperatorToken.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return must(queries.operator_token(conn, OperatorToken.name == name), f"operator token {name!r}")

    def count_operator_tokens(self, role: str | None = None, *, include_revoked: bool = False) -> int:
        """How many tokens (of ``role``, if given) exist; revoked ones only if ``include_revoked``."""
        query = select(func.count()).select_from(OperatorToken)
        if role is not None:
            query = query.where(OperatorToken.role == role)
        if not include_revoked:
            query = query.where(OperatorToken.revoked_at.is_(None))
        with self._transaction(write=False) as conn:
            return int(conn.execute(query).scalar_one())

    # Join tokens

    def create_join_token(
        self,
        token_id: str,
        fleet: str,
        secret_sha256: str,
        labels: Mapping[str, str],
        publisher_key_ids: Sequence[str],
        expires_at: datetime,
        now: datetime,
    ) -> JoinTokenRow:
        """Record a new, unused join token.

        Raises:
            ValueError: naive ``expires_at`` or ``now``.
            AlreadyExists: the token id is taken.
        """
        require_aware("expires_at", expires_at)
        require_aware("now", now)
        values = {
            "token_id": token_id,
            "fleet": fleet,
            "secret_sha256": secret_sha256,
            "labels": dict(labels),
            "publisher_key_ids": list(publisher_key_ids),
            "created_at": now,
            "expires_at": expires_at,
        }
        with self._transaction(write=True) as conn:
            if queries.join_token(conn, token_id) is not None:
                raise AlreadyExists(f"join token {token_id!r} already exists")
            try:
                conn.execute(insert(JoinToken).values(**values))
            except IntegrityError as exc:
                raise AlreadyExists(f"join token {token_id!r} was created concurrently") from exc
            return must(queries.join_token(conn, token_id), f"join token {token_id!r}")

    def get_join_token(self, token_id: str) -> JoinTokenRow | None:
        """The join token, used or not, or None."""
        with self._transaction(write=False) as conn:
            return queries.join_token(conn, token_id)

    # Devices

    def enroll_device(
        self,
        *,
        token_id: str,
        device_id: str,
        fleet: str,
        labels: Mapping[str, str],
        certificate_sha256: str,
        certificate_serial: str,
        facts: Mapping[str, Any] | None,
        agent_version: str | None,
        now: datetime,
    ) -> DeviceRow:
        """Use the join token and create the device, both or neither.

        The caller has checked the token's secret; this decides single use and expiry
        (``expires_at <= now`` is expired) race-free.

        Raises:
            NotFound: no join token has this id.
            Conflict: the token was already used, or has expired; the device is not created.
            AlreadyExists: the device id is taken; the token stays unused.
        """
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            marked = conn.execute(
                update(JoinToken)
                .where(JoinToken.token_id == token_id, JoinToken.used_at.is_(None), JoinToken.expires_at > now)
                .values(used_at=now, used_by_device=device_id)
            )
            if marked.rowcount != 1:
                raise queries.unusable_join_token(conn, token_id)
            if queries.device(conn, device_id) is not None:
                raise AlreadyExists(f"device {device_id!r} is already enrolled; the join token was not used")
            try:
                conn.execute(
                    insert(Device).values(
                        device_id=device_id,
                        fleet=fleet,
                        labels=dict(labels),
                        certificate_sha256=certificate_sha256,
                        certificate_serial=certificate_serial,
                        enrolled_at=now,
                        facts=None if facts is None else dict(facts),
                        facts_updated_at=None if facts is None else now,
                        agent_version=agent_version,
                        desired_generation=0,
                    )
                )
            except IntegrityError as exc:
                raise AlreadyExists(
                    f"device {device_id!r} was enrolled concurrently; the join token was not used"
                ) from exc
            return must(queries.device(conn, device_id), f"device {device_id!r}")

    def get_device(self, device_id: str) -> DeviceRow | None:
        """The device, revoked or not, or None."""
        with self._transaction(write=False) as conn:
            return queries.device(conn, device_id)

    def list_devices(
        self,
        fleet: str | None = None,
        *,
        device_class: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[DeviceRow]:
        """Devices (of ``fleet`` and ``device_class``, if given), revoked ones included, ordered by device id.

        Keyset paging: ``after`` is the last device id of the previous page, ``limit`` the page size.
        """
        query = select(Device).order_by(Device.device_id)
        if fleet is not None:
            query = query.where(Device.fleet == fleet)
        if device_class is not None:
            query = query.where(Device.device_class == device_class)
        if after is not None:
            query = query.where(Device.device_id > after)
        if limit is not None:
            query = query.limit(limit)
        with self._transaction(write=False) as conn:
            return [DeviceRow(**row) for row in conn.execute(query).mappings()]

    def update_facts(
        self,
        device_id: str,
        facts: Mapping[str, Any],
        agent_version: str,
        now: datetime,
        *,
        device_class: str | None = None,
    ) -> None:
        """Replace the device's facts and agent version, stamped ``now``, and its class when given.

        Raises:
            NotFound: no device has this id.
        """
        require_aware("now", now)
        values: dict[str, Any] = {"facts": dict(facts), "agent_version": agent_version, "facts_updated_at": now}
        if device_class is not None:
            values["device_class"] = device_class
        self._update_device(device_id, **values)

    def mark_connected(self, device_id: str, boot_id: str, now: datetime) -> None:
        """Record that the device opened a session ``now`` from boot ``boot_id``; it was seen ``now``.

        Raises:
            NotFound: no device has this id.
        """
        require_aware("now", now)
        self._update_device(device_id, connected_at=now, boot_id=boot_id, last_seen=now)

    def mark_disconnected(self, device_id: str, now: datetime) -> None:
        """Record that the device's session ended ``now``.

        Raises:
            NotFound: no device has this id.
        """
        require_aware("now", now)
        self._update_device(device_id, disconnected_at=now)

    def touch_last_seen(self, seen: Mapping[str, datetime]) -> None:
        """Move ``last_seen`` forward for many devices in one batched UPDATE and one transaction.

        An older or equal time than the stored one is a no-op; unknown device ids are ignored.
        """
        for device_id, when in seen.items():
            require_aware(f"last seen time of device {device_id!r}", when)
        if not seen:
            return
        when_param = bindparam("b_seen", type_=UTCDateTime())
        statement = (
            update(Device)
            .where(
                Device.device_id == bindparam("b_device_id"),
                or_(Device.last_seen.is_(None), Device.last_seen < when_param),
            )
            .values(last_seen=when_param)
        )
        # Sorted, so that concurrent batches lock rows in the same order and cannot deadlock.
        params = [{"b_device_id": device_id, "b_seen": seen[device_id]} for device_id in sorted(seen)]
        with self._transaction(write=True) as conn:
            conn.execute(statement, params)

    def revoke_device(self, device_id: str, reason: str, now: datetime) -> DeviceRow:
        """Revoke the device; revoking it again keeps the first ``revoked_at`` and reason.

        Raises:
            NotFound: no device has this id.
        """
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            conn.execute(
                update(Device)
                .where(Device.device_id == device_id, Device.revoked_at.is_(None))
                .values(revoked_at=now, revoke_reason=reason)
            )
            return must(queries.device(conn, device_id), f"device {device_id!r}")

    # Settings

    def get_setting(self, key: str) -> str | None:
        """The setting's value, or None if it was never set."""
        with self._transaction(write=False) as conn:
            return conn.execute(select(Setting.value).where(Setting.key == key)).scalar_one_or_none()

    def set_setting(self, key: str, value: str) -> None:
        """Set the setting, replacing any value it had."""
        with self._transaction(write=True) as conn:
            statement = queries.insert_setting(conn, key, value)
            conn.execute(statement.on_conflict_do_update(index_elements=[Setting.key], set_={"value": value}))

    def set_setting_if_absent(self, key: str, value: str) -> str:
        """Set the setting unless it has a value; returns the value it has afterwards (first writer wins)."""
        with self._transaction(write=True) as conn:
            conn.execute(queries.insert_setting(conn, key, value).on_conflict_do_nothing(index_elements=[Setting.key]))
            return str(conn.execute(select(Setting.value).where(Setting.key == key)).scalar_one())

    def _update_device(self, device_id: str, **values: Any) -> None:
        with self._transaction(write=True) as conn:
            result = conn.execute(update(Device).where(Device.device_id == device_id).values(**values))
            if result.rowcount != 1:
                raise NotFound(f"device {device_id!r} not found")
