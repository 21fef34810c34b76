"""The device's durable telemetry spool: write first, send later, delete on ack.

One SQLite file in the agent's data dir (``outbox.db``):

    batches(id, boot_id, sequence, created_at, dropped_reported, payload)   -- payload: a TelemetryBatch
    meta(key, value)   -- 'dropped_unreported', and 'last_sequence:<boot_id>' for the current boot

Invariants:
- ``append`` returns only after the batch is committed, so whatever the agent was told
  is spooled survives a kill or a power cut; a kill mid-append leaves no partial row.
- (boot_id, sequence) is unique and a boot's sequences strictly increase from 1; the last
  sequence is kept in ``meta`` because acked batches are deleted. A restart gets a new
  boot id and starts at 1 again; batches of earlier boots stay pending under their keys.
- ``pending`` lists batches oldest first; ``ack`` deletes one and is idempotent.
- The spool is capped (``max_batches``, ``max_bytes`` of payload). Appending beyond a
  cap drops the oldest batches; every drop is counted persistently and reported in the
  next appended batch (``dropped_batches`` plus a TELEMETRY_DROPPED event). A dropped
  batch that carried such a count hands its count on, so no drop goes unreported.
- A corrupt or unreadable file (SQLite error, failed ``quick_check`` at open, unknown schema)
  is moved aside (``outbox.db.corrupt-<UTC time>``, its WAL alongside) and a fresh outbox
  started; the first batch in it is a TELEMETRY_DROPPED event saying so, and this boot's
  sequence carries on (never reused). If no file can be opened at all, the outbox runs in memory for this
  run (``durable`` is False) and says so the same way. Opening never raises for a bad file.

Durability choice: WAL journal with ``synchronous=FULL``. WAL lets a reader never block
the writer and makes each commit one append to the log; FULL fsyncs the log on every
commit, so a committed batch also survives a power cut, which ``NORMAL`` does not
promise in WAL mode. Edge devices lose power often and append about once a minute,
so one fsync per append is cheap.

Every method blocks (SQLite, fsync); the agent calls them from a worker thread. The
methods are thread-safe. Errors other than corruption (disk full, I/O) raise
``OutboxError`` and change nothing; retry later.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from agent.errors import AgentError
from protos.edgefleet.v1 import common_pb2, telemetry_pb2
from protos.limits import MAX_SESSION_MESSAGE_BYTES

__all__ = ["DEFAULT_MAX_BATCHES", "DEFAULT_MAX_BYTES", "OUTBOX_FILENAME", "Outbox", "OutboxError"]

OUTBOX_FILENAME = "outbox.db"
DEFAULT_MAX_BATCHES = 10_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
MAX_PENDING_LIMIT = 10_000
SCHEMA_VERSION = 1

_BOOT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DROPPED = "dropped_unreported"
# Errors that say nothing about the file itself: keep it, run in memory this time.
_KEEP_FILE = {"SQLITE_FULL", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM"}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    boot_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    created_at REAL NOT NULL,
    dropped_reported INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    UNIQUE (boot_id, sequence)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = {SCHEMA_VERSION};
"""

Pending = tuple[str, int, telemetry_pb2.TelemetryBatch]
_T = TypeVar("_T")


class OutboxError(AgentError):
    """The outbox could not complete an operation (disk full, I/O error); nothing changed, retry later."""


class _Unreadable(Exception):
    """The file opened but is not a usable outbox (failed integrity check, unknown schema)."""


def _error_name(exc: BaseException) -> str:
    return getattr(exc, "sqlite_errorname", "") or type(exc).__name__


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    return _error_name(exc).startswith("SQLITE_CORRUPT") or _error_name(exc) == "SQLITE_NOTADB"


def _open_sqlite(target: str) -> sqlite3.Connection:
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=FULL")
        if (check := conn.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
            raise _Unreadable(f"integrity check failed: {check}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        elif version != SCHEMA_VERSION:
            raise _Unreadable(f"unknown outbox schema version {version}")
    except BaseException:
        conn.close()
        raise
    return conn


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _move_aside(path: Path, now: float) -> Path:
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # The logs first: a kill half-way must not leave the old WAL to be replayed into the fresh file.
    for suffix in ("-wal", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.replace(aside.with_name(aside.name + suffix))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    if path.exists():
        path.replace(aside)
    with contextlib.suppress(OSError):  # make the renames survive a power cut
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return aside


class Outbox:
    """A capped, crash-safe spool of TelemetryBatches keyed by (boot_id, sequence). Use ``Outbox.open``."""

    def __init__(self, path: Path, *, boot_id: str, max_batches: int, max_bytes: int, clock: Callable[[], float]):
        self.path = path
        self.boot_id = boot_id
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self.max_batch_bytes = min(MAX_SESSION_MESSAGE_BYTES, max_bytes)
        self.durable = True
        self.recovery_events: list[common_pb2.LifecycleEvent] = []
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._count = self._bytes = self._sequence = self._dropped = 0

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        boot_id: str,
        max_batches: int = DEFAULT_MAX_BATCHES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> Outbox:
        """Open (or create) the outbox at ``path`` for this boot.

        A corrupt or unreadable file is moved aside and replaced (see the module doc);
        ``recovery_events`` then says what happened. Raises ``ValueError`` only for bad
        arguments: a boot id outside ``[A-Za-z0-9._-]{1,64}`` or a cap below 1.
        """
        if not isinstance(boot_id, str) or not _BOOT_ID.match(boot_id):
            raise ValueError(f"boot_id {boot_id!r} is invalid: use 1-64 characters A-Z, a-z, 0-9, '.', '_', '-'")
        if max_batches < 1 or max_bytes < 1:
            raise ValueError(f"outbox caps must be at least 1 (max_batches={max_batches}, max_bytes={max_bytes})")
        outbox = cls(Path(path), boot_id=boot_id, max_batches=max_batches, max_bytes=max_bytes, clock=clock)
        with outbox._lock:
            try:
                outbox.path.parent.mkdir(parents=True, exist_ok=True)
                outbox._attach(_open_sqlite(str(outbox.path)))
            except (sqlite3.DatabaseError, _Unreadable, OSError) as exc:
                outbox._recover(exc)
        return outbox

    # --- public operations ---------------------------------------------------------------------

    def append(self, batch: telemetry_pb2.TelemetryBatch) -> tuple[str, int]:
        """Spool a copy of ``batch`` under the next sequence of this boot; return ``(boot_id, sequence)``.

        The outbox sets ``boot_id``, ``sequence`` and ``dropped_batches`` (the caller's values
        are replaced) and adds a TELEMETRY_DROPPED event when earlier batches were dropped.
        The batch is committed before this returns. Raises ``ValueError`` if the serialized
        batch exceeds ``max_batch_bytes`` (nothing is spooled) and ``OutboxError`` if the
        write fails.
        """
        if not isinstance(batch, telemetry_pb2.TelemetryBatch):
            raise TypeError(f"append takes a TelemetryBatch, not {type(batch).__name__}")
        with self._lock:
            return self._guarded(lambda: self._append(batch))

    def pending(self, limit: int = 100) -> list[Pending]:
        """Return up to ``limit`` spooled batches as ``(boot_id, sequence, batch)``, oldest first.

        A row whose payload does not decode is deleted and counted as dropped.
        Raises ``ValueError`` for a limit outside 1..10000 and ``OutboxError`` if the read fails.
        """
        if not 1 <= limit <= MAX_PENDING_LIMIT:
            raise ValueError(f"limit must be in 1..{MAX_PENDING_LIMIT}, got {limit}")
        with self._lock:
            return self._guarded(lambda: self._pending(limit))

    def ack(self, boot_id: str, sequence: int) -> bool:
        """Delete the batch the control plane acknowledged; return False if it was not spooled (a no-op).

        Raises ``OutboxError`` if the delete fails.
        """
        with self._lock:
            return self._guarded(lambda: self._ack(boot_id, sequence))

    @property
    def pending_batches(self) -> int:
        """Batches spooled and not yet acked."""
        return self._count

    @property
    def pending_bytes(self) -> int:
        """Payload bytes spooled (the file is larger by SQLite's page overhead)."""
        return self._bytes

    @property
    def dropped_unreported(self) -> int:
        """Batches dropped by the caps that the next appended batch will report."""
        return self._dropped

    def close(self) -> None:
        """Close the file; later calls raise ``OutboxError``. Closing twice is a no-op."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals (called with the lock held) -------------------------------------------------

    def _guarded(self, operation: Callable[[], _T]) -> _T:
        if self._conn is None:
            raise OutboxError("the outbox is closed")
        try:
            return operation()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            self._recover(exc)
        try:
            return operation()  # once more, on the fresh outbox
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _attach(self, conn: sqlite3.Connection, *, carry_over: bool = False) -> None:
        """Use ``conn`` from now on; ``carry_over`` moves this boot's last sequence and unreported
        drops into it (a fresh file replacing a corrupt one), so no sequence is ever reused."""
        self._conn = conn
        sequence_key = f"last_sequence:{self.boot_id}"
        try:
            with self._transaction():
                # Earlier boots never append again; their batches keep their own keys.
                conn.execute(
                    "DELETE FROM meta WHERE key LIKE 'last\\_sequence:%' ESCAPE '\\' AND key != ?", (sequence_key,)
                )
                if carry_over:
                    self._set_meta(sequence_key, max(self._meta(sequence_key), self._sequence))
                    self._set_meta(_DROPPED, self._meta(_DROPPED) + self._dropped)
                count, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM batches").fetchone()
                sequence, dropped = self._meta(sequence_key), self._meta(_DROPPED)
        except BaseException:
            self._conn = None
            conn.close()
            raise
        self._count, self._bytes, self._sequence, self._dropped = count, size, sequence, dropped

    def _meta(self, key: str) -> int:
        assert self._conn is not None
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        assert self._conn is not None
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _append(self, batch: telemetry_pb2.TelemetryBatch) -> tuple[str, int]:
        now = self._clock()
        with self._transaction() as conn:
            sequence = self._meta(f"last_sequence:{self.boot_id}") + 1
            reported = self._meta(_DROPPED)
            message = telemetry_pb2.TelemetryBatch()
            message.CopyFrom(batch)
            message.boot_id, message.sequence, message.dropped_batches = self.boot_id, sequence, reported
            if reported:
                message.events.append(self._dropped_event(reported, now))
            payload = message.SerializeToString(deterministic=True)
            if len(payload) > self.max_batch_bytes:
                raise ValueError(f"telemetry batch is {len(payload)} bytes, more than {self.max_batch_bytes}")
            new_id = conn.execute(
                "INSERT INTO batches (boot_id, sequence, created_at, dropped_reported, payload) VALUES (?, ?, ?, ?, ?)",
                (self.boot_id, sequence, now, reported, payload),
            ).lastrowid
            self._set_meta(f"last_sequence:{self.boot_id}", sequence)
            count, size, dropped = self._make_room(self._count + 1, self._bytes + len(payload), new_id)
            self._set_meta(_DROPPED, dropped)
        self._count, self._bytes, self._sequence, self._dropped = count, size, sequence, dropped
        return self.boot_id, sequence

    def _make_room(self, count: int, size: int, keep_id: int | None) -> tuple[int, int, int]:
        """Drop the oldest batches (never ``keep_id``) until both caps hold; return the new totals."""
        assert self._conn is not None
        dropped, doomed = 0, []
        rows = self._conn.execute(
            "SELECT id, length(payload), dropped_reported FROM batches WHERE id != ? ORDER BY id", (keep_id,)
        )
        try:
            while count > self.max_batches or size > self.max_bytes:
                row = rows.fetchone()
                if row is None:
                    break
                doomed.append((row[0],))
                count, size, dropped = count - 1, size - row[1], dropped + 1 + row[2]
        finally:
            rows.close()
        self._conn.executemany("DELETE FROM batches WHERE id = ?", doomed)
        return count, size, dropped

    def _dropped_event(self, dropped: int, now: float) -> common_pb2.LifecycleEvent:
        return common_pb2.LifecycleEvent(
            kind=common_pb2.LifecycleEvent.TELEMETRY_DROPPED,
            at=_timestamp(now),
            reason=(
                f"telemetry spool full: dropped the {dropped} oldest unsent batches "
                f"(cap {self.max_batches} batches, {self.max_bytes} bytes)"
            ),
            details={"dropped_batches": str(dropped)},
        )

    def _pending(self, limit: int) -> list[Pending]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT id, boot_id, sequence, length(payload), dropped_reported, payload FROM batches ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        out: list[Pending] = []
        bad: list[tuple[int, int, int]] = []
        for row_id, boot_id, sequence, size, reported, payload in rows:
            try:
                batch = telemetry_pb2.TelemetryBatch.FromString(payload)
            except DecodeError:
                batch = None
            if batch is None or (batch.boot_id, batch.sequence) != (boot_id, sequence):
                bad.append((row_id, size, reported))
                continue
            out.append((boot_id, sequence, batch))
        if bad:
            with self._transaction() as conn:
                conn.executemany("DELETE FROM batches WHERE id = ?", [(b[0],) for b in bad])
                dropped = self._meta(_DROPPED) + sum(1 + b[2] for b in bad)
                self._set_meta(_DROPPED, dropped)
            self._count -= len(bad)
            self._bytes -= sum(b[1] for b in bad)
            self._dropped = dropped
        return out

    def _ack(self, boot_id: str, sequence: int) -> bool:
        with self._transaction() as conn:
            row = conn.execute(
                "DELETE FROM batches WHERE boot_id = ? AND sequence = ? RETURNING length(payload)",
                (str(boot_id), int(sequence)),
            ).fetchone()
        if row is None:
            return False
        self._count -= 1
        self._bytes -= row[0]
        return True

    def _recover(self, exc: BaseException) -> None:
        """Replace an unusable file by a fresh one (or memory) and spool an event saying so."""
        now = self._clock()
        problem = f"{_error_name(exc)}: {exc}"[:300]
        details = {"error": problem}
        if self._conn is not None:  # it went bad while running: we know what it held
            details["unsent_batches"] = str(self._count)
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if isinstance(exc, sqlite3.DatabaseError) and _error_name(exc) in _KEEP_FILE:
            reason = f"outbox {self.path} could not be opened ({problem}); telemetry is kept in memory until restart"
        else:
            try:
                aside = _move_aside(self.path, now)
                details["moved_to"] = str(aside)
                self._attach(_open_sqlite(str(self.path)), carry_over=True)
                reason = f"outbox {self.path} was unreadable ({problem}); moved it to {aside.name}, started a fresh one"
            except (sqlite3.DatabaseError, _Unreadable, OSError) as second:
                details["second_error"] = f"{_error_name(second)}: {second}"[:300]
                reason = (
                    f"outbox {self.path} was unreadable ({problem}) and no fresh file could be made "
                    f"({details['second_error']}); telemetry is kept in memory until restart"
                )
        if self._conn is None:
            self.durable = False
            self._attach(_open_sqlite(":memory:"), carry_over=True)
        event = common_pb2.LifecycleEvent(
            kind=common_pb2.LifecycleEvent.TELEMETRY_DROPPED, at=_timestamp(now), reason=reason, details=details
        )
        self.recovery_events.append(event)
        with contextlib.suppress(sqlite3.DatabaseError):
            self._append(telemetry_pb2.TelemetryBatch(events=[event]))
