"""Telemetry and device status on the control plane: what the gateway does with a device's
TelemetryBatch and StatusReport, and how the admin API's telemetry queries are answered.

Invariants:
- A batch is stored under the certificate's device id; a batch that names another device is
  refused (PERMISSION_DENIED on the unary call) and nothing is stored.
- A batch is acked only once it is stored (or found stored: ``duplicate``). A malformed batch is
  refused whole and, on the session, not acked: the session stays open and the agent keeps the
  batch and resends it later; its spool cap bounds how long a batch that will never pass is kept.
  An ack would make the agent delete data the server never stored.
- Query bounds: ``since_seconds`` defaults to 1 h and is at most 30 days; at most 1,000 events.
"""

from __future__ import annotations

import datetime as dt
import logging

from google.protobuf import json_format

from controlplane.errors import InvalidRequest, PermissionDenied
from controlplane.fleet import timestamp
from controlplane.services.context import Services
from controlplane.store.rows import DeviceEventRow, DeviceStatusRow, LatencyRow
from protos.edgefleet.v1 import admin_pb2, agent_pb2, common_pb2, telemetry_pb2

log = logging.getLogger("edgefleet.server.telemetry")

DEFAULT_SINCE_SECONDS = 3600
MAX_SINCE_SECONDS = 30 * 86400
DEFAULT_EVENT_LIMIT = 100
MAX_EVENT_LIMIT = 1000
MAX_ACTIVE_MODELS = 64
MAX_STATUS_BYTES = 2**63 - 1  # the store's BIGINT
LATENCY_GROUPS = ("", "variant", "version", "class", "device")  # what QueryLatency.by accepts


async def ingest(s: Services, device_id: str, batch: telemetry_pb2.TelemetryBatch) -> telemetry_pb2.TelemetryAck:
    """Store a batch from the device ``device_id`` (the certificate's) and return its ack.

    Raises:
        PermissionDenied: the batch names another device.
        ValueError: the batch is malformed or over a bound.
        StoreError: the store refused or is unavailable.
    """
    if batch.device_id and batch.device_id != device_id:
        raise PermissionDenied(f"telemetry batch names device {batch.device_id!r} but the certificate is {device_id!r}")
    duplicate = await s.telemetry_writes.submit((device_id, batch))
    return telemetry_pb2.TelemetryAck(boot_id=batch.boot_id, sequence=batch.sequence, duplicate=duplicate)


async def record_status(s: Services, device_id: str, report: agent_pb2.StatusReport) -> None:
    """Store the device's StatusReport as its current status.

    Raises:
        InvalidRequest: the report is over a bound.
        StoreError: the store refused or is unavailable.
    """
    if len(report.active) > MAX_ACTIVE_MODELS:
        raise InvalidRequest(f"status report lists {len(report.active)} active models, at most {MAX_ACTIVE_MODELS}")
    if len(report.failure_reason) > 2048:
        raise InvalidRequest("status report failure_reason is longer than 2048 characters")
    if report.bytes_downloaded > MAX_STATUS_BYTES or report.bytes_total > MAX_STATUS_BYTES:
        raise InvalidRequest(f"status report byte counters must be at most {MAX_STATUS_BYTES}")
    await s.db(
        s.store.record_status,
        device_id,
        generation=report.generation,
        phase=agent_pb2.ReconcilePhase.Name(report.phase)
        if report.phase in agent_pb2.ReconcilePhase.values()
        else f"PHASE_{report.phase}",
        failure_reason=report.failure_reason,
        active=[json_format.MessageToDict(a, preserving_proto_field_name=True) for a in report.active],
        now=s.clock(),
        bytes_downloaded=report.bytes_downloaded,
        bytes_total=report.bytes_total,
    )


def status_message(row: DeviceStatusRow) -> tuple[agent_pb2.StatusReport, list[agent_pb2.ActiveModel]]:
    """The stored status as the wire's StatusReport and ActiveModel list."""
    active = [json_format.ParseDict(a, agent_pb2.ActiveModel(), ignore_unknown_fields=True) for a in row.active]
    phases = agent_pb2.ReconcilePhase
    phase = phases.Value(row.phase) if row.phase in phases.DESCRIPTOR.values_by_name else 0
    report = agent_pb2.StatusReport(
        generation=row.generation,
        phase=phase,
        failure_reason=row.failure_reason,
        active=active,
        bytes_downloaded=row.bytes_downloaded,
        bytes_total=row.bytes_total,
    )
    return report, active


def since(s: Services, since_seconds: int) -> dt.datetime:
    """The start of a query window. Raises InvalidRequest beyond 30 days."""
    seconds = since_seconds or DEFAULT_SINCE_SECONDS
    if seconds > MAX_SINCE_SECONDS:
        raise InvalidRequest(f"since_seconds must be at most {MAX_SINCE_SECONDS} (30 days), got {seconds}")
    return s.clock() - dt.timedelta(seconds=seconds)


async def query_latency(s: Services, request: admin_pb2.QueryLatencyRequest) -> admin_pb2.QueryLatencyResponse:
    if request.by not in LATENCY_GROUPS:
        raise InvalidRequest(f"by must be one of variant, version, class, device or empty, got {request.by!r}")
    rows = await s.db(
        s.store.latency,
        since=since(s, request.since_seconds),
        by=request.by,
        model=request.model or None,
        version=request.version or None,
        device_id=request.device_id or None,
    )
    return admin_pb2.QueryLatencyResponse(rows=[_latency_row(r) for r in rows])


def _latency_row(row: LatencyRow) -> admin_pb2.LatencyRow:
    message = admin_pb2.LatencyRow(key=row.key, requests=row.requests, errors=row.errors)
    if row.latency.count:
        message.p50_ms = row.latency.quantile(0.5)
        message.p95_ms = row.latency.quantile(0.95)
        message.p99_ms = row.latency.quantile(0.99)
    answered = row.requests - row.errors
    if answered > 0:
        message.mean_confidence = row.confidence_sum / answered
    return message


async def query_events(s: Services, request: admin_pb2.QueryEventsRequest) -> admin_pb2.QueryEventsResponse:
    limit = request.limit or DEFAULT_EVENT_LIMIT
    if limit > MAX_EVENT_LIMIT:
        raise InvalidRequest(f"limit must be at most {MAX_EVENT_LIMIT}, got {limit}")
    rows = await s.db(
        s.store.events, since=since(s, request.since_seconds), limit=limit, device_id=request.device_id or None
    )
    return admin_pb2.QueryEventsResponse(rows=[_event_row(r) for r in rows])


def _event_row(row: DeviceEventRow) -> admin_pb2.EventRow:
    kinds = common_pb2.LifecycleEvent.Kind
    event = common_pb2.LifecycleEvent(
        kind=kinds.Value(row.kind) if row.kind in kinds.DESCRIPTOR.values_by_name else 0,
        at=timestamp(row.at),
        model=common_pb2.ModelRef(name=row.name, version=row.version, variant=row.variant),
        reason=row.reason,
        generation=row.generation,
        details=row.details,
    )
    return admin_pb2.EventRow(device_id=row.device_id, event=event)
