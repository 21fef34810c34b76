"""The store's telemetry and device status (mixed into ``Store``): batches from devices, merged per
(device, minute, build); resource samples; lifecycle events; each device's last StatusReport.

Invariants (besides those of ``store.py``):
- A batch is stored once: its (device, boot id, sequence) key is inserted first, in the same
  transaction as its contents; a resend finds the key and changes nothing.
- ModelMinutes with the same (device, minute, build) add up, never replace: counts and histogram
  buckets are added, the max is the larger one. The merge is a read-modify-write of a row locked
  with ``SELECT ... FOR UPDATE`` after an ``INSERT ... ON CONFLICT DO NOTHING``, so concurrent
  batches for one minute on PostgreSQL serialize on the row (SQLite writers are serialized anyway).
- A batch is validated whole before any SQL runs (``parse_batch``): counts are bounded, numbers
  finite, histograms well-formed. A bad batch raises ``ValueError`` and stores nothing.
- ``ingest_batches`` stores many batches in one transaction (the group commit of
  ``services/group_commit.py``) with one statement per table, and gives each batch its own
  outcome: a malformed batch or an unknown device refuses that batch alone. The result is the
  same as storing the batches one after another.
- Its two hot inserts (batch keys, model minutes) run on the driver (``_DriverInsert``), with each
  value converted as the column's SQLAlchemy type converts it: the database holds exactly what
  ``conn.execute(insert(...))`` would have stored, and reads it back through the same queries.
- Retention (``roll_up``): a model minute older than the minute retention is merged into its
  ``model_hours`` row (same exact merge) and deleted in the same transaction, so a crash never
  counts it twice nor loses it; every request is in exactly one of the two tables, and ``latency``
  reads both. Roll-up and deletes work in bounded batches, one transaction each.
- A batch key is kept at least as long as the minute retention: an agent's resend of a batch
  whose key was deleted would be counted again.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import ColumnElement, and_, case, delete, func, insert, literal, select, tuple_, union_all
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import DBAPIError

from controlplane.store import queries
from controlplane.store.errors import NotFound
from controlplane.store.queries import require_aware
from controlplane.store.rows import (
    DeviceEventRow,
    DeviceRow,
    DeviceStatusRow,
    HealthRow,
    LatencyRow,
    ResourceSampleRow,
)
from controlplane.store.schema import (
    BenchmarkJob,
    DeviceEvent,
    DeviceStatus,
    ModelHour,
    ModelMinute,
    ResourceSample,
    TelemetryBatchKey,
)
from controlplane.store.schema import Device as DeviceTable
from protos.edgefleet.v1 import common_pb2, telemetry_pb2
from protos.histogram import MAX_COUNT, Histogram

MAX_MINUTES_PER_BATCH = 1440
MAX_EVENTS_PER_BATCH = 1000
MAX_RESOURCES_PER_BATCH = 1000
MAX_BOOT_ID_CHARS = 64
MAX_NAME_CHARS = 128
MAX_REASON_CHARS = 2048
MAX_EVENT_DETAILS = 32
MAX_DETAIL_CHARS = 512
LATENCY_GROUPS = ("", "variant", "version", "class", "device", "minute", "variant-class")

_MINUTE_KEY = ("device_id", "minute", "name", "version", "variant")
_HOUR_KEY = ("device_id", "hour", "name", "version", "variant")
ROLLUP_BATCH_ROWS = 5000
HOUR = timedelta(hours=1)
_SUMMED = ("requests", "errors", "confidence_sum", "low_confidence", "input_size_sum")


@dataclass(frozen=True)
class ModelWindowRow:
    """Model minutes of the whole fleet in a recent window, merged per build."""

    name: str
    version: int
    variant: str
    requests: int
    errors: int
    latency: Histogram


@dataclass(frozen=True)
class FleetSnapshot:
    """Fleet-level aggregates for the metrics endpoint: no device ids anywhere.

    ``devices`` counts (fleet, state) with state online, offline or revoked; ``classes`` counts devices
    not revoked by class ("" if never classified); ``desired_generations`` sums each fleet's
    desired-state generations (it grows by one per device each time a desired state is published).
    """

    devices: dict[tuple[str, str], int]
    classes: dict[str, int]
    desired_generations: dict[str, int]
    jobs: dict[str, int]
    models: list[ModelWindowRow]


class _Counts:
    """Thread-safe counters of ``ingest_batch`` outcomes in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def floor_hour(at: datetime) -> datetime:
    """The start of ``at``'s UTC hour."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class ParsedMinute(NamedTuple):
    """A validated ModelMinute: its ``model_minutes`` column values (without ``device_id``), the histogram
    standing for the three ``latency_*`` columns."""

    minute: datetime
    name: str
    version: int
    variant: str
    task: str
    requests: int
    errors: int
    confidence_sum: float
    low_confidence: int
    input_size_sum: float
    input_size_max: float
    latency: Histogram


@dataclass(frozen=True)
class ParsedBatch:
    """A validated TelemetryBatch as column values, ready to store."""

    boot_id: str
    sequence: int
    minutes: list[ParsedMinute]
    resources: list[dict[str, Any]]
    events: list[dict[str, Any]]


def parse_batch(batch: telemetry_pb2.TelemetryBatch) -> ParsedBatch:
    """Validate a batch and turn it into column values (without ``device_id``).

    Raises:
        ValueError: a bound is exceeded or a value is malformed; the message names which.
    """
    if not batch.boot_id or len(batch.boot_id) > MAX_BOOT_ID_CHARS:
        raise ValueError(f"telemetry batch boot_id must be 1 to {MAX_BOOT_ID_CHARS} characters")
    _text("boot_id", batch.boot_id, MAX_BOOT_ID_CHARS)
    for what, items, bound in (
        ("minutes", batch.minutes, MAX_MINUTES_PER_BATCH),
        ("events", batch.events, MAX_EVENTS_PER_BATCH),
        ("resource samples", batch.resources, MAX_RESOURCES_PER_BATCH),
    ):
        if len(items) > bound:
            raise ValueError(f"telemetry batch has {len(items)} {what}, at most {bound} allowed")
    starts: dict[tuple[int, int], datetime] = {}  # the batch's minutes share a few timestamps
    return ParsedBatch(
        boot_id=batch.boot_id,
        sequence=_count("sequence", batch.sequence),
        minutes=[_parse_minute(m, starts) for m in batch.minutes],
        resources=[_parse_resource(r) for r in batch.resources],
        events=[_parse_event(e) for e in batch.events],
    )


def _time(what: str, message: Any, field: str) -> datetime:
    if not message.HasField(field):
        raise ValueError(f"{what} has no {field}")
    try:
        return getattr(message, field).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{what} has an out-of-range {field}") from exc


def _number(what: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite, non-negative number, got {value!r}")
    return value


def _text(what: str, value: str, bound: int = MAX_NAME_CHARS) -> str:
    if len(value) > bound:
        raise ValueError(f"{what} is longer than {bound} characters")
    if "\x00" in value:  # PostgreSQL refuses NUL in text: it must never reach (and fail) a whole group
        raise ValueError(f"{what} contains a NUL character")
    return value


def _count(what: str, value: int) -> int:
    """A counter or id from the wire (uint64), bounded so that it and sums of it fit the store's BIGINT."""
    if value > MAX_COUNT:
        raise ValueError(f"{what} is {value}, more than {MAX_COUNT}")
    return value


def _minute_start(m: telemetry_pb2.ModelMinute, starts: dict[tuple[int, int], datetime]) -> datetime:
    """``m.minute`` as an aware UTC datetime, checked to be the start of a minute.

    ``starts`` holds the timestamps already converted, by (seconds, nanos): the conversion is a
    function of those two alone, so each distinct one is converted and checked once per batch.
    """
    if not m.HasField("minute"):
        raise ValueError("model minute has no minute")
    stamp = m.minute
    key = (stamp.seconds, stamp.nanos)
    minute = starts.get(key)
    if minute is None:
        minute = _time("model minute", m, "minute")
        if minute.second or minute.microsecond:
            raise ValueError(f"model minute {minute.isoformat()} is not the start of a minute")
        starts[key] = minute
    return minute


def _parse_minute(m: telemetry_pb2.ModelMinute, starts: dict[tuple[int, int], datetime]) -> ParsedMinute:
    minute = _minute_start(m, starts)
    model = m.model
    if not model.name:
        raise ValueError("model minute has no model name")
    if m.errors > m.requests:
        raise ValueError(f"model minute of {model.name!r} has more errors ({m.errors}) than requests ({m.requests})")
    try:
        histogram = Histogram.from_proto(m.latency) if m.HasField("latency") else Histogram()
    except ValueError as exc:
        raise ValueError(f"model minute of {model.name!r}: {exc}") from exc
    return ParsedMinute(
        minute=minute,
        name=_text("model name", model.name),
        version=_count("model version", model.version),
        variant=_text("model variant", model.variant),
        task=_text("task", m.task),
        requests=_count("requests", m.requests),
        errors=m.errors,  # at most requests (checked above)
        confidence_sum=_number("confidence_sum", m.confidence_sum),
        low_confidence=_count("low_confidence", m.low_confidence),
        input_size_sum=_number("input_size_sum", m.input_size_sum),
        input_size_max=_number("input_size_max", m.input_size_max),
        latency=histogram,
    )


def _parse_resource(r: telemetry_pb2.ResourceSample) -> dict[str, Any]:
    temperature = r.temperature_celsius
    if math.isnan(temperature):
        temperature = None
    elif not math.isfinite(temperature):
        raise ValueError(f"temperature_celsius must be finite or NaN, got {temperature!r}")
    return {
        "at": _time("resource sample", r, "at"),
        "cpu_percent": _number("cpu_percent", r.cpu_percent),
        "rss_bytes": _count("rss_bytes", r.rss_bytes),
        "memory_available_bytes": _count("memory_available_bytes", r.memory_available_bytes),
        "temperature_celsius": temperature,
        "disk_free_bytes": _count("disk_free_bytes", r.disk_free_bytes),
    }


def _parse_event(e: common_pb2.LifecycleEvent) -> dict[str, Any]:
    if len(e.details) > MAX_EVENT_DETAILS:
        raise ValueError(f"lifecycle event has {len(e.details)} details, at most {MAX_EVENT_DETAILS} allowed")
    for key, value in e.details.items():
        _text("event detail", key + value, MAX_DETAIL_CHARS)
    try:
        kind = common_pb2.LifecycleEvent.Kind.Name(e.kind)
    except ValueError:
        kind = f"KIND_{e.kind}"  # from a newer agent: kept, shown by number
    return {
        "at": _time("lifecycle event", e, "at"),
        "kind": kind,
        "name": _text("model name", e.model.name),
        "version": _count("model version", e.model.version),
        "variant": _text("model variant", e.model.variant),
        "reason": _text("event reason", e.reason, MAX_REASON_CHARS),
        "generation": _count("generation", e.generation),
        "details": dict(e.details),
    }


class TelemetryStore:
    """Telemetry and status methods of ``Store``; they run on the transactions ``Store._transaction`` opens."""

    if TYPE_CHECKING:

        def _transaction(self, *, write: bool) -> AbstractContextManager[Connection]: ...

    def ingest_batch(self, device_id: str, batch: telemetry_pb2.TelemetryBatch, now: datetime) -> bool:
        """Store a batch from ``device_id``; returns True if it was already stored (nothing changes then).

        Raises:
            ValueError: the batch is malformed or over a bound (see ``parse_batch``), or ``now`` is naive.
            NotFound: no device has this id.
        """
        outcome = self.ingest_batches([(device_id, batch)], now)[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def ingest_batches(
        self, items: Sequence[tuple[str, telemetry_pb2.TelemetryBatch]], now: datetime
    ) -> list[bool | ValueError | NotFound]:
        """Store many devices' batches in one transaction; one outcome per item, in order.

        An outcome is False (stored), True (already stored: nothing changed for it), or the
        ValueError (malformed, over a bound) or NotFound (no such device) that refused that batch
        alone: the others are stored all the same. Minutes of the same (device, minute, build) add
        up across batches exactly as one batch after another would.

        Raises:
            ValueError: ``now`` is naive (nothing is stored).
            StoreError: the database refused or is unavailable (nothing is stored).
        """
        require_aware("now", now)
        outcomes = self._ingest_or_split(items, now)
        counts = self._ingest_counts()
        for outcome in outcomes:
            counts.add("refused" if isinstance(outcome, Exception) else "duplicate" if outcome else "stored")
        return outcomes

    def ingest_counts(self) -> dict[str, int]:
        """How many batches this store object stored, found already stored, or refused (malformed, unknown device)."""
        return self._ingest_counts().snapshot()

    def _ingest_counts(self) -> _Counts:
        return vars(self).setdefault("_telemetry_ingest_counts", _Counts())

    def _ingest_or_split(
        self, items: Sequence[tuple[str, telemetry_pb2.TelemetryBatch]], now: datetime
    ) -> list[bool | ValueError | NotFound]:
        """``_ingest_batches``; should a merge overflow (rolled back whole), or the database refuse a value that
        ``parse_batch`` let through, each batch on its own: one bad batch never holds up the others."""
        try:
            return self._ingest_batches(items, now)
        except (ValueError, OverflowError, DBAPIError) as exc:  # an unreachable database is StoreUnavailable
            if len(items) == 1:
                if isinstance(exc, ValueError):
                    return [exc]
                return [ValueError(f"the database refused this batch: {str(exc).splitlines()[0][:300]}")]
            return [outcome for item in items for outcome in self._ingest_or_split([item], now)]

    def _ingest_batches(
        self, items: Sequence[tuple[str, telemetry_pb2.TelemetryBatch]], now: datetime
    ) -> list[bool | ValueError | NotFound]:
        outcomes: list[bool | ValueError | NotFound] = [False] * len(items)
        parsed: dict[int, ParsedBatch] = {}
        for index, (_, batch) in enumerate(items):
            try:
                parsed[index] = parse_batch(batch)
            except ValueError as exc:
                outcomes[index] = exc
        if not parsed:
            return outcomes
        with self._transaction(write=True) as conn:
            wanted = {items[index][0] for index in parsed}
            known = set(conn.scalars(select(DeviceTable.device_id).where(DeviceTable.device_id.in_(wanted))))
            first: dict[tuple[str, str, int], int] = {}  # batch key -> the item that claims it
            for index, batch in parsed.items():
                device_id = items[index][0]
                key = (device_id, batch.boot_id, batch.sequence)
                if device_id not in known:
                    outcomes[index] = NotFound(f"device {device_id!r} not found")
                elif key in first:
                    outcomes[index] = True  # the same batch twice in one call: the second is a resend
                else:
                    first[key] = index
            if not first:
                return outcomes
            claimed = _claim_batch_keys(conn, sorted(first), now)
            fresh: list[tuple[str, ParsedBatch]] = []
            for key, index in first.items():
                if key in claimed:
                    fresh.append((key[0], parsed[index]))
                else:
                    outcomes[index] = True
            _store_contents(conn, fresh)
        return outcomes

    def record_status(
        self,
        device_id: str,
        *,
        generation: int,
        phase: str,
        failure_reason: str,
        active: list[dict[str, Any]],
        now: datetime,
        bytes_downloaded: int = 0,
        bytes_total: int = 0,
    ) -> None:
        """Replace the device's last status report (with its download progress, 0 when none).

        Raises:
            ValueError: naive ``now``.
            NotFound: no device has this id.
        """
        require_aware("now", now)
        values = {
            "generation": generation,
            "phase": phase,
            "failure_reason": failure_reason,
            "active": list(active),
            "updated_at": now,
            "bytes_downloaded": bytes_downloaded,
            "bytes_total": bytes_total,
        }
        with self._transaction(write=True) as conn:
            if queries.device(conn, device_id) is None:
                raise NotFound(f"device {device_id!r} not found")
            statement = queries.insert_values(conn, DeviceStatus, {"device_id": device_id, **values})
            conn.execute(statement.on_conflict_do_update(index_elements=[DeviceStatus.device_id], set_=values))

    def device_statuses(self, device_ids: Iterable[str]) -> dict[str, DeviceStatusRow]:
        """The last status of each named device that reported one."""
        wanted = sorted(set(device_ids))
        if not wanted:
            return {}
        with self._transaction(write=False) as conn:
            rows = conn.execute(select(DeviceStatus).where(DeviceStatus.device_id.in_(wanted))).mappings()
            return {row["device_id"]: DeviceStatusRow(**row) for row in rows}

    def latency(
        self,
        *,
        since: datetime,
        by: str = "",
        model: str | None = None,
        version: int | None = None,
        device_id: str | None = None,
    ) -> list[LatencyRow]:
        """Model minutes from ``since`` on, merged per model and ``by`` (see ``LATENCY_GROUPS``; "class"
        groups by each device's current class ("" if never classified), "variant-class" by version,
        variant and class, "minute" keys each UTC minute by its ISO 8601 start), ordered by key.

        Minutes already rolled up (older than the minute retention) are read from their hour rows: an
        hour row counts whole when its hour overlaps the range (it starts at or after ``since``'s
        hour), and "minute" keys it by the start of the hour.

        Raises:
            ValueError: unknown ``by`` or naive ``since``.
        """
        require_aware("since", since)
        if by not in LATENCY_GROUPS:
            known = ", ".join(g or "(none)" for g in LATENCY_GROUPS)
            raise ValueError(f"unknown grouping {by!r}; expected one of {known}")
        parts = []
        for table, time_column, start in (
            (ModelMinute, ModelMinute.minute, since),
            (ModelHour, ModelHour.hour, floor_hour(since)),
        ):
            part = (
                select(
                    table.device_id,
                    time_column.label("minute"),
                    table.name,
                    table.version,
                    table.variant,
                    table.requests,
                    table.errors,
                    table.confidence_sum,
                    table.low_confidence,
                    table.latency_counts,
                    table.latency_sum_ms,
                    table.latency_max_ms,
                    DeviceTable.device_class,
                )
                .join(DeviceTable, DeviceTable.device_id == table.device_id)
                .where(time_column >= start)
            )
            if model:
                part = part.where(table.name == model)
            if version:
                part = part.where(table.version == version)
            if device_id:
                part = part.where(table.device_id == device_id)
            parts.append(part)
        query = union_all(*parts)
        groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        with self._transaction(write=False) as conn:
            for row in conn.execute(query).mappings():
                key = _latency_key(row, by)
                group = groups.setdefault(
                    key,
                    {"requests": 0, "errors": 0, "confidence_sum": 0.0, "low_confidence": 0, "latency": Histogram()},
                )
                group["requests"] += row["requests"]
                group["errors"] += row["errors"]
                group["confidence_sum"] += row["confidence_sum"]
                group["low_confidence"] += row["low_confidence"]
                group["latency"] = group["latency"].merge(_read_histogram(row))
        return [LatencyRow(key=dict(key), **group) for key, group in sorted(groups.items())]

    def roll_up(
        self,
        now: datetime,
        *,
        minute_retention: timedelta,
        hour_retention: timedelta,
        event_retention: timedelta,
        resource_retention: timedelta,
        batch_rows: int = ROLLUP_BATCH_ROWS,
    ) -> dict[str, int]:
        """Apply the retention: merge model minutes of hours that ended more than ``minute_retention``
        ago into ``model_hours`` and delete them; delete hour rows older than ``hour_retention``,
        lifecycle events older than ``event_retention``, resource samples older than
        ``resource_retention`` and batch keys received more than ``minute_retention`` ago.

        Each batch of at most ``batch_rows`` rows is one transaction (a minute's merge and delete are in
        the same one), so a crash at any point loses and double-counts nothing, and running it again,
        or on two servers at once, is harmless. Returns how many rows each step touched: "minutes"
        (rolled up), "hours" (hour rows written), "hours_deleted", "events_deleted",
        "resources_deleted", "batch_keys_deleted".

        Raises:
            ValueError: naive ``now``, a retention not positive, ``hour_retention`` shorter than
                ``minute_retention``, or ``batch_rows`` below 1.
        """
        require_aware("now", now)
        for what, retention in (
            ("minute_retention", minute_retention),
            ("hour_retention", hour_retention),
            ("event_retention", event_retention),
            ("resource_retention", resource_retention),
        ):
            if retention <= timedelta(0):
                raise ValueError(f"{what} must be positive, got {retention}")
        if hour_retention < minute_retention:
            raise ValueError(f"hour_retention ({hour_retention}) is shorter than minute_retention ({minute_retention})")
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        counts = {"minutes": 0, "hours": 0}
        minute_cutoff = floor_hour(now - minute_retention)  # whole hours only: an hour is in one table
        while True:
            with self._transaction(write=True) as conn:
                minutes, hours = _roll_up_batch(conn, minute_cutoff, batch_rows)
            counts["minutes"] += minutes
            counts["hours"] += hours
            if minutes < batch_rows:
                break
        for what, table, column, cutoff in (
            ("hours_deleted", ModelHour, ModelHour.hour, now - hour_retention),
            ("events_deleted", DeviceEvent, DeviceEvent.at, now - event_retention),
            ("resources_deleted", ResourceSample, ResourceSample.at, now - resource_retention),
            ("batch_keys_deleted", TelemetryBatchKey, TelemetryBatchKey.received_at, now - minute_retention),
        ):
            counts[what] = 0
            while True:
                with self._transaction(write=True) as conn:
                    deleted = _delete_older(conn, table, column, cutoff, batch_rows)
                counts[what] += deleted
                if deleted < batch_rows:
                    break
        return counts

    def fleet_snapshot(self, now: datetime, *, online_since: datetime, window: timedelta) -> FleetSnapshot:
        """Fleet-level aggregates, in one read transaction: devices by fleet and state (online: connected,
        not revoked, last seen at or after ``online_since``), by class, desired-state generations per
        fleet, benchmark jobs by state, and model minutes of the last ``window`` merged per build.

        Raises:
            ValueError: naive ``now`` or ``online_since``.
        """
        require_aware("now", now)
        require_aware("online_since", online_since)
        connected = and_(
            DeviceTable.connected_at.is_not(None),
            (DeviceTable.disconnected_at.is_(None)) | (DeviceTable.connected_at > DeviceTable.disconnected_at),
        )
        state = case(
            (DeviceTable.revoked_at.is_not(None), literal("revoked")),
            (and_(connected, DeviceTable.last_seen >= online_since), literal("online")),
            else_=literal("offline"),
        ).label("state")
        devices = select(
            DeviceTable.fleet,
            state,
            DeviceTable.device_class,
            func.count().label("devices"),
            func.coalesce(func.sum(DeviceTable.desired_generation), 0).label("generations"),
        ).group_by(DeviceTable.fleet, state, DeviceTable.device_class)
        jobs = select(BenchmarkJob.state, func.count()).group_by(BenchmarkJob.state)
        start = (now - window).astimezone(UTC).replace(second=0, microsecond=0)
        minutes = select(
            ModelMinute.name,
            ModelMinute.version,
            ModelMinute.variant,
            ModelMinute.requests,
            ModelMinute.errors,
            ModelMinute.latency_counts,
            ModelMinute.latency_sum_ms,
            ModelMinute.latency_max_ms,
        ).where(ModelMinute.minute >= start)
        by_state: Counter[tuple[str, str]] = Counter()
        classes: Counter[str] = Counter()
        generations: Counter[str] = Counter()
        builds: dict[tuple[str, int, str], list[Any]] = {}
        with self._transaction(write=False) as conn:
            for fleet, device_state, device_class, count, generation in conn.execute(devices):
                by_state[(fleet, device_state)] += int(count)
                generations[fleet] += int(generation)
                if device_state != "revoked":
                    classes[device_class or ""] += int(count)
            job_counts = {job_state: int(count) for job_state, count in conn.execute(jobs)}
            for row in conn.execute(minutes).mappings():
                build = builds.setdefault((row["name"], row["version"], row["variant"]), [0, 0, Histogram()])
                build[0] += row["requests"]
                build[1] += row["errors"]
                build[2] = build[2].merge(_read_histogram(row))
        return FleetSnapshot(
            devices=dict(by_state),
            classes=dict(classes),
            desired_generations=dict(generations),
            jobs=job_counts,
            models=[
                ModelWindowRow(name, version, variant, requests, errors, latency)
                for (name, version, variant), (requests, errors, latency) in sorted(builds.items())
            ],
        )

    def health(self, fleet: str | None = None) -> list[HealthRow]:
        """Every device (of ``fleet``), revoked ones included, with its newest resource sample and its
        last status, ordered by device id."""
        devices = select(DeviceTable).order_by(DeviceTable.device_id)
        newest = (
            select(ResourceSample.device_id, func.max(ResourceSample.at).label("at"))
            .group_by(ResourceSample.device_id)
            .subquery()
        )
        samples = select(ResourceSample).join(
            newest, and_(ResourceSample.device_id == newest.c.device_id, ResourceSample.at == newest.c.at)
        )
        statuses = select(DeviceStatus)
        if fleet is not None:
            devices = devices.where(DeviceTable.fleet == fleet)
            in_fleet = select(DeviceTable.device_id).where(DeviceTable.fleet == fleet)
            samples = samples.where(ResourceSample.device_id.in_(in_fleet))
            statuses = statuses.where(DeviceStatus.device_id.in_(in_fleet))
        with self._transaction(write=False) as conn:
            device_rows = [DeviceRow(**row) for row in conn.execute(devices).mappings()]
            by_device = {row["device_id"]: ResourceSampleRow(**row) for row in conn.execute(samples).mappings()}
            status_rows = {row["device_id"]: DeviceStatusRow(**row) for row in conn.execute(statuses).mappings()}
        return [
            HealthRow(device=d, resources=by_device.get(d.device_id), status=status_rows.get(d.device_id))
            for d in device_rows
        ]

    def events(self, *, since: datetime, limit: int, device_id: str | None = None) -> list[DeviceEventRow]:
        """The newest ``limit`` lifecycle events from ``since`` on (of ``device_id``), oldest first.

        Raises:
            ValueError: ``limit`` below 1 or naive ``since``.
        """
        require_aware("since", since)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        query = select(DeviceEvent).where(DeviceEvent.at >= since)
        if device_id:
            query = query.where(DeviceEvent.device_id == device_id)
        query = query.order_by(DeviceEvent.at.desc(), DeviceEvent.id.desc()).limit(limit)
        with self._transaction(write=False) as conn:
            rows = [DeviceEventRow(**row) for row in conn.execute(query).mappings()]
        return rows[::-1]


_MinuteKey = tuple[str, datetime, str, int, str]  # the values of _MINUTE_KEY


def _claim_batch_keys(conn: Connection, keys: list[tuple[str, str, int]], now: datetime) -> set[tuple[str, str, int]]:
    """Insert the batch keys not stored yet (see ``_DriverInsert.insert``); returns those this call inserted."""
    received_at = _driver_value(conn, TelemetryBatchKey.__table__.c.received_at)(now)
    skipped = set(_INSERT_BATCH_KEYS.insert(conn, [(*key, received_at) for key in keys]))
    return {key for index, key in enumerate(keys) if index not in skipped}


def _store_contents(conn: Connection, batches: list[tuple[str, ParsedBatch]]) -> None:
    """Write the contents of newly claimed batches: minutes merged, samples and events inserted."""
    minutes: dict[_MinuteKey, ParsedMinute] = {}
    resources: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for device_id, batch in batches:
        for point in batch.minutes:
            key = (device_id, point.minute, point.name, point.version, point.variant)
            earlier = minutes.get(key)
            minutes[key] = point if earlier is None else _add_minute(earlier, point)
        resources.extend({"device_id": device_id, **values} for values in batch.resources)
        events.extend({"device_id": device_id, **values} for values in batch.events)
    if minutes:
        _merge_minutes(conn, sorted(minutes.items()))
    if resources:
        statement = queries.insert_of(conn, ResourceSample).on_conflict_do_nothing(index_elements=["device_id", "at"])
        conn.execute(statement, resources)
    if events:
        conn.execute(insert(DeviceEvent), events)


def _add_minute(point: ParsedMinute, other: ParsedMinute) -> ParsedMinute:
    """Two parts of one (device, minute, build) added up, as two merges into the store would."""
    if point.requests + other.requests > MAX_COUNT or point.low_confidence + other.low_confidence > MAX_COUNT:
        raise ValueError(f"model minute of {point.name!r} would count more than {MAX_COUNT} requests")
    return point._replace(
        task=other.task or point.task,
        requests=point.requests + other.requests,
        errors=point.errors + other.errors,
        confidence_sum=point.confidence_sum + other.confidence_sum,
        low_confidence=point.low_confidence + other.low_confidence,
        input_size_sum=point.input_size_sum + other.input_size_sum,
        input_size_max=max(point.input_size_max, other.input_size_max),
        latency=point.latency.merge(other.latency),
    )


def _merge_minutes(conn: Connection, minutes: list[tuple[_MinuteKey, ParsedMinute]]) -> None:
    """Insert the minutes not stored yet (see ``_DriverInsert.insert``); merge the others into their rows, one by one.

    ``minutes`` holds each key once, in key order (the order their rows are inserted and locked in).
    """
    for index in _INSERT_MINUTES.insert(conn, _minute_rows(conn, minutes)):
        (device_id, *_), point = minutes[index]
        values = {"device_id": device_id, **point._asdict()}
        _merge_row(conn, ModelMinute, _MINUTE_KEY, values, values.pop("latency"))


def _minute_rows(conn: Connection, minutes: list[tuple[_MinuteKey, ParsedMinute]]) -> list[tuple[Any, ...]]:
    """The rows of ``_INSERT_MINUTES`` for ``minutes``, each value as SQLAlchemy would bind it on ``conn``.

    Only two columns are converted at all: ``minute`` by its type's own bind conversion (once per distinct
    minute; on SQLite it becomes the stored text), and ``latency_counts`` to the JSON text that SQLAlchemy's
    JSON type writes with the engine's default serializer, ``json.dumps``; every other value goes to the
    driver as it is, as SQLAlchemy passes it too. For a list of ``int`` (a histogram's counts: never bools,
    see ``protos/histogram.py``) ``json.dumps`` writes exactly its ``repr``, which is faster.
    """
    to_driver = _driver_value(conn, ModelMinute.__table__.c.minute)
    bound = {minute: to_driver(minute) for minute in {key[1] for key, _ in minutes}}
    return [
        (
            device_id,
            bound[minute],
            *point[1:-1],  # name .. input_size_max: _INSERT_MINUTES's columns follow ParsedMinute's fields
            repr(point.latency.counts),
            point.latency.sum_ms,
            point.latency.max_ms,
        )
        for (device_id, minute, *_), point in minutes
    ]


def _merge_row(
    conn: Connection, table: Any, key: tuple[str, ...], values: dict[str, Any], histogram: Histogram
) -> None:
    """Insert the row of ``table`` (ModelMinute or ModelHour), or add it to the stored one with the same ``key``.

    The stored row is locked before it is read; should a concurrent roll-up delete it between the
    insert and the lock (a resend of a minute being rolled up), the insert is tried again.
    """
    row = {
        **values,
        "latency_counts": list(histogram.counts),
        "latency_sum_ms": histogram.sum_ms,
        "latency_max_ms": histogram.max_ms,
    }
    where = and_(*(getattr(table, column) == values[column] for column in key))
    for _attempt in range(3):
        inserted = conn.execute(
            queries.insert_values(conn, table, row)
            .on_conflict_do_nothing(index_elements=list(key))
            .returning(table.requests)
        ).first()
        if inserted is not None:
            return
        current = conn.execute(select(table).where(where).with_for_update()).mappings().one_or_none()
        if current is not None:
            break
    else:  # pragma: no cover - needs three deletes racing one merge
        raise RuntimeError(f"could not merge into {table.__tablename__}: the row kept disappearing")
    merged = _read_histogram(current).merge(histogram)
    if current["requests"] + values["requests"] > MAX_COUNT or (
        current["low_confidence"] + values["low_confidence"] > MAX_COUNT
    ):
        raise ValueError(f"{table.__tablename__} row of {values['name']!r} would count more than {MAX_COUNT} requests")
    conn.execute(
        sql_update(table)
        .where(where)
        .values(
            task=values["task"] or current["task"],
            requests=current["requests"] + values["requests"],
            errors=current["errors"] + values["errors"],
            latency_counts=list(merged.counts),
            latency_sum_ms=merged.sum_ms,
            latency_max_ms=merged.max_ms,
            confidence_sum=current["confidence_sum"] + values["confidence_sum"],
            low_confidence=current["low_confidence"] + values["low_confidence"],
            input_size_sum=current["input_size_sum"] + values["input_size_sum"],
            input_size_max=max(current["input_size_max"], values["input_size_max"]),
        )
    )


def _roll_up_batch(conn: Connection, cutoff: datetime, limit: int) -> tuple[int, int]:
    """Merge up to ``limit`` model minutes before ``cutoff`` into their hour rows and delete them.

    Returns (minutes rolled up, hour rows written). On PostgreSQL the minutes are locked (rows another
    roll-up holds are skipped), so a concurrent batch for one of them waits and, once they are gone,
    inserts a fresh minute that the next roll-up takes.
    """
    query = select(ModelMinute).where(ModelMinute.minute < cutoff).order_by(*_minute_columns()).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(conn.execute(query).mappings())
    if not rows:
        return 0, 0
    hours: dict[tuple[Any, ...], tuple[dict[str, Any], Histogram]] = {}
    for row in rows:
        hour_key = (row["device_id"], floor_hour(row["minute"]), row["name"], row["version"], row["variant"])
        histogram = _read_histogram(row)
        if hour_key not in hours:
            values = {column: row[column] for column in ("device_id", "name", "version", "variant", "task")}
            values |= {column: row[column] for column in (*_SUMMED, "input_size_max")}
            hours[hour_key] = ({**values, "hour": hour_key[1]}, histogram)
            continue
        values, merged = hours[hour_key]
        for column in _SUMMED:
            values[column] += row[column]
        values["input_size_max"] = max(values["input_size_max"], row["input_size_max"])
        values["task"] = row["task"] or values["task"]
        hours[hour_key] = (values, merged.merge(histogram))
    for values, histogram in hours.values():
        _merge_row(conn, ModelHour, _HOUR_KEY, values, histogram)
    conn.execute(
        delete(ModelMinute).where(tuple_(*_minute_columns()).in_([tuple(row[c] for c in _MINUTE_KEY) for row in rows]))
    )
    return len(rows), len(hours)


def _minute_columns() -> list[Any]:
    return [getattr(ModelMinute, column) for column in _MINUTE_KEY]


def _delete_older(conn: Connection, table: Any, column: Any, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` rows of ``table`` whose ``column`` is before ``cutoff``; returns how many."""
    key = list(table.__table__.primary_key.columns)
    oldest = select(*key).where(column < cutoff).order_by(column).limit(limit)
    if len(key) == 1:
        return conn.execute(delete(table).where(key[0].in_(oldest))).rowcount
    return conn.execute(delete(table).where(tuple_(*key).in_(oldest))).rowcount


def _read_histogram(row: Any) -> Histogram:
    return Histogram(counts=list(row["latency_counts"]), sum_ms=row["latency_sum_ms"], max_ms=row["latency_max_ms"])


def _latency_key(row: Any, by: str) -> tuple[tuple[str, str], ...]:
    key = [("model", row["name"])]
    if by in ("version", "variant", "variant-class"):
        key.append(("version", str(row["version"])))
    if by in ("variant", "variant-class"):
        key.append(("variant", row["variant"]))
    if by == "device":
        key.append(("device", row["device_id"]))
    if by in ("class", "variant-class"):
        key.append(("class", row["device_class"] or ""))
    if by == "minute":
        key.append(("minute", row["minute"].isoformat()))
    return tuple(key)


# --- the hot inserts of ingest_batches, run on the driver ----------------------------------------------------


class _DriverInsert:
    """``INSERT INTO <table> (<columns>) ... ON CONFLICT (<key>) DO NOTHING`` for many rows, executed with
    ``exec_driver_sql`` on values already converted for the driver; ``insert`` says which rows it skipped.

    Why not ``conn.execute(insert(table), rows)``: for each value of each row SQLAlchemy runs Python code
    (parameter dicts, bind processors, insertmanyvalues paging, result processors for ``RETURNING`` rows),
    which was most of the CPU ``ingest_batches`` spent per point; and psycopg parses the placeholders of the
    multi-row ``VALUES`` statement that insertmanyvalues renders in Python, one by one. So each backend gets
    its cheapest form of the same statement:

    - SQLite: a multi-row ``VALUES`` list with ``?`` placeholders, as many rows a statement as SQLite's
      limit of 32,766 parameters allows;
    - PostgreSQL: ``INSERT ... SELECT * FROM unnest(%b::<type>[], ...)``, one array per column, passed in
      psycopg 3's binary format (``%b``; psycopg 3 is the only PostgreSQL driver the store uses): one
      statement, a dozen placeholders.

    The caller converts the values as the columns' types would (``_driver_value``) and puts the key columns
    first; the keys the driver reads back for ``RETURNING`` then equal those values (on SQLite a time is the
    text stored).
    """

    _SQLITE_MAX_PARAMETERS = 32766

    def __init__(self, table: Any, columns: tuple[str, ...], key: tuple[str, ...]) -> None:
        """``table`` is a model's ``__table__``; ``columns`` start with ``key``."""
        if columns[: len(key)] != key or not set(columns) <= set(table.c.keys()):
            raise ValueError(f"the key columns must come first, and all columns be {table.name}'s")
        self.table = table
        self.columns = columns
        self.key = key
        dialect = postgresql.dialect()
        arrays = ", ".join(f"%b::{table.c[column].type.compile(dialect)}[]" for column in columns)
        self.postgresql_rows = f"SELECT * FROM unnest({arrays})"

    def insert(self, conn: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        """Insert ``rows`` (values in ``columns`` order) but those whose key is stored already; returns the
        indexes of the rows skipped, in order.

        Most often none is skipped: the rows go in without ``RETURNING`` under a savepoint, and only when
        the row count falls short is that undone and run again returning the keys inserted (reading every
        key back costs more than the insert without it).
        """
        if not rows:
            return []
        with conn.begin_nested() as savepoint:
            if sum(result.rowcount for result in self._execute(conn, rows, returning=False)) == len(rows):
                return []
            savepoint.rollback()
        inserted = {tuple(key) for result in self._execute(conn, rows, returning=True) for key in result.all()}
        width = len(self.key)
        return [index for index, row in enumerate(rows) if row[:width] not in inserted]

    def _execute(
        self, conn: Connection, rows: list[tuple[Any, ...]], *, returning: bool
    ) -> Iterator[CursorResult[Any]]:
        """Execute the statements that insert ``rows``, yielding each result before the next statement runs."""
        if conn.dialect.name == "postgresql":
            arrays = tuple(map(list, zip(*rows, strict=True)))
            yield conn.exec_driver_sql(self.sql(self.postgresql_rows, returning=returning), arrays)
            return
        per_statement = self._SQLITE_MAX_PARAMETERS // len(self.columns)
        one_row = f"({', '.join('?' * len(self.columns))})"
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            values = f"VALUES {', '.join([one_row] * len(chunk))}"
            yield conn.exec_driver_sql(self.sql(values, returning=returning), tuple(chain.from_iterable(chunk)))

    def sql(self, rows: str, *, returning: bool) -> str:
        """The statement, with ``rows`` (a ``VALUES`` list or a ``SELECT``) for its rows."""
        key = ", ".join(self.key)
        insert = f"INSERT INTO {self.table.name} ({', '.join(self.columns)}) {rows} ON CONFLICT ({key}) DO NOTHING"
        return f"{insert} RETURNING {key}" if returning else insert


def _driver_value(conn: Connection, column: ColumnElement[Any]) -> Callable[[Any], Any]:
    """How SQLAlchemy converts a value of ``column`` before handing it to ``conn``'s driver."""
    process = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return process if process is not None else _unchanged


def _unchanged(value: Any) -> Any:
    return value


_INSERT_MINUTES = _DriverInsert(
    ModelMinute.__table__,
    ("device_id", *ParsedMinute._fields[:-1], "latency_counts", "latency_sum_ms", "latency_max_ms"),
    _MINUTE_KEY,
)
_BATCH_KEY = ("device_id", "boot_id", "sequence")
_INSERT_BATCH_KEYS = _DriverInsert(TelemetryBatchKey.__table__, (*_BATCH_KEY, "received_at"), _BATCH_KEY)
