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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.engine import Connection

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
from controlplane.store.schema import Device as DeviceTable
from controlplane.store.schema import DeviceEvent, DeviceStatus, ModelMinute, ResourceSample, TelemetryBatchKey
from protos.edgefleet.v1 import common_pb2, telemetry_pb2
from protos.histogram import Histogram

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


@dataclass(frozen=True)
class ParsedBatch:
    """A validated TelemetryBatch as column values, ready to store."""

    boot_id: str
    sequence: int
    minutes: list[tuple[dict[str, Any], Histogram]]
    resources: list[dict[str, Any]]
    events: list[dict[str, Any]]


def parse_batch(batch: telemetry_pb2.TelemetryBatch) -> ParsedBatch:
    """Validate a batch and turn it into column values (without ``device_id``).

    Raises:
        ValueError: a bound is exceeded or a value is malformed; the message names which.
    """
    if not batch.boot_id or len(batch.boot_id) > MAX_BOOT_ID_CHARS:
        raise ValueError(f"telemetry batch boot_id must be 1 to {MAX_BOOT_ID_CHARS} characters")
    for what, items, bound in (
        ("minutes", batch.minutes, MAX_MINUTES_PER_BATCH),
        ("events", batch.events, MAX_EVENTS_PER_BATCH),
        ("resource samples", batch.resources, MAX_RESOURCES_PER_BATCH),
    ):
        if len(items) > bound:
            raise ValueError(f"telemetry batch has {len(items)} {what}, at most {bound} allowed")
    return ParsedBatch(
        boot_id=batch.boot_id,
        sequence=batch.sequence,
        minutes=[_parse_minute(m) for m in batch.minutes],
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
    return value


def _parse_minute(m: telemetry_pb2.ModelMinute) -> tuple[dict[str, Any], Histogram]:
    minute = _time("model minute", m, "minute")
    if minute.second or minute.microsecond:
        raise ValueError(f"model minute {minute.isoformat()} is not the start of a minute")
    if not m.model.name:
        raise ValueError("model minute has no model name")
    if m.errors > m.requests:
        raise ValueError(f"model minute of {m.model.name!r} has more errors ({m.errors}) than requests ({m.requests})")
    try:
        histogram = Histogram.from_proto(m.latency) if m.HasField("latency") else Histogram()
    except ValueError as exc:
        raise ValueError(f"model minute of {m.model.name!r}: {exc}") from exc
    values = {
        "minute": minute,
        "name": _text("model name", m.model.name),
        "version": m.model.version,
        "variant": _text("model variant", m.model.variant),
        "task": _text("task", m.task),
        "requests": m.requests,
        "errors": m.errors,
        "confidence_sum": _number("confidence_sum", m.confidence_sum),
        "low_confidence": m.low_confidence,
        "input_size_sum": _number("input_size_sum", m.input_size_sum),
        "input_size_max": _number("input_size_max", m.input_size_max),
    }
    return values, histogram


def _parse_resource(r: telemetry_pb2.ResourceSample) -> dict[str, Any]:
    temperature = r.temperature_celsius
    if math.isnan(temperature):
        temperature = None
    elif not math.isfinite(temperature):
        raise ValueError(f"temperature_celsius must be finite or NaN, got {temperature!r}")
    return {
        "at": _time("resource sample", r, "at"),
        "cpu_percent": _number("cpu_percent", r.cpu_percent),
        "rss_bytes": r.rss_bytes,
        "memory_available_bytes": r.memory_available_bytes,
        "temperature_celsius": temperature,
        "disk_free_bytes": r.disk_free_bytes,
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
        "version": e.model.version,
        "variant": _text("model variant", e.model.variant),
        "reason": _text("event reason", e.reason, MAX_REASON_CHARS),
        "generation": e.generation,
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
        require_aware("now", now)
        parsed = parse_batch(batch)
        with self._transaction(write=True) as conn:
            if queries.device(conn, device_id) is None:
                raise NotFound(f"device {device_id!r} not found")
            key = {"device_id": device_id, "boot_id": parsed.boot_id, "sequence": parsed.sequence}
            claimed = conn.execute(
                queries.insert_values(conn, TelemetryBatchKey, {**key, "received_at": now})
                .on_conflict_do_nothing(index_elements=["device_id", "boot_id", "sequence"])
                .returning(TelemetryBatchKey.sequence)
            ).first()
            if claimed is None:
                return True
            for values, histogram in parsed.minutes:
                _merge_minute(conn, {"device_id": device_id, **values}, histogram)
            for values in parsed.resources:
                sample = queries.insert_values(conn, ResourceSample, {"device_id": device_id, **values})
                conn.execute(sample.on_conflict_do_nothing(index_elements=["device_id", "at"]))
            if parsed.events:
                conn.execute(insert(DeviceEvent), [{"device_id": device_id, **values} for values in parsed.events])
            return False

    def record_status(
        self,
        device_id: str,
        *,
        generation: int,
        phase: str,
        failure_reason: str,
        active: list[dict[str, Any]],
        now: datetime,
    ) -> None:
        """Replace the device's last status report.

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

        Raises:
            ValueError: unknown ``by`` or naive ``since``.
        """
        require_aware("since", since)
        if by not in LATENCY_GROUPS:
            groups = ", ".join(g or "(none)" for g in LATENCY_GROUPS)
            raise ValueError(f"unknown grouping {by!r}; expected one of {groups}")
        query = (
            select(ModelMinute.__table__, DeviceTable.device_class)
            .join(DeviceTable, DeviceTable.device_id == ModelMinute.device_id)
            .where(ModelMinute.minute >= since)
        )
        if model:
            query = query.where(ModelMinute.name == model)
        if version:
            query = query.where(ModelMinute.version == version)
        if device_id:
            query = query.where(ModelMinute.device_id == device_id)
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
                group["latency"] = group["latency"].merge(_stored_histogram(row))
        return [LatencyRow(key=dict(key), **group) for key, group in sorted(groups.items())]

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


def _merge_minute(conn: Connection, values: dict[str, Any], histogram: Histogram) -> None:
    row = {
        **values,
        "latency_counts": list(histogram.counts),
        "latency_sum_ms": histogram.sum_ms,
        "latency_max_ms": histogram.max_ms,
    }
    inserted = conn.execute(
        queries.insert_values(conn, ModelMinute, row)
        .on_conflict_do_nothing(index_elements=list(_MINUTE_KEY))
        .returning(ModelMinute.requests)
    ).first()
    if inserted is not None:
        return
    where = and_(*(getattr(ModelMinute, column) == values[column] for column in _MINUTE_KEY))
    current = conn.execute(select(ModelMinute).where(where).with_for_update()).mappings().one()
    merged = _stored_histogram(current).merge(histogram)
    conn.execute(
        sql_update(ModelMinute)
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


def _stored_histogram(row: Any) -> Histogram:
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
