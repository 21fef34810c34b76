"""Pure fleet logic: validating reported facts, deciding online/offline, and
turning store rows into wire messages. No I/O here.

Online is derived, never polled: a device is online when its session is open
(connected after its last disconnect) and it was last seen within
``offline_after`` (missed heartbeats mark a half-open connection offline).
"""

from __future__ import annotations

import datetime as dt

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.errors import InvalidRequest
from protos.edgefleet.v1 import admin_pb2, common_pb2
from protos.limits import MAX_CPU_FLAGS, MAX_FACT_STRING, MAX_LABELS, check_labels

_STRING_FACTS = ("architecture", "cpu_model", "os", "onnxruntime_version", "agent_version", "python_version")


def validate_facts(facts: common_pb2.DeviceFacts) -> None:
    """Raise InvalidRequest if reported facts are out of bounds."""
    for name in _STRING_FACTS:
        if len(getattr(facts, name)) > MAX_FACT_STRING:
            raise InvalidRequest(f"fact {name} is longer than {MAX_FACT_STRING} characters")
    if len(facts.cpu_flags) > MAX_CPU_FLAGS:
        raise InvalidRequest(f"too many cpu_flags ({len(facts.cpu_flags)} > {MAX_CPU_FLAGS})")
    if any(len(flag) > 64 for flag in facts.cpu_flags):
        raise InvalidRequest("a cpu flag is longer than 64 characters")
    if len(facts.execution_providers) > 64 or any(len(p) > 128 for p in facts.execution_providers):
        raise InvalidRequest("execution_providers is out of bounds")
    if len(facts.labels) > MAX_LABELS:
        raise InvalidRequest(f"too many labels ({len(facts.labels)} > {MAX_LABELS})")
    if len(facts.simulated_fields) > 64:
        raise InvalidRequest("simulated_fields is out of bounds")
    try:
        check_labels(dict(facts.labels))
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    if facts.cpu_cores > 4096:
        raise InvalidRequest(f"cpu_cores {facts.cpu_cores} is implausible")


def facts_to_dict(facts: common_pb2.DeviceFacts) -> dict:
    return json_format.MessageToDict(facts, preserving_proto_field_name=True)


def facts_from_dict(data: dict | None) -> common_pb2.DeviceFacts:
    facts = common_pb2.DeviceFacts()
    if data:
        json_format.ParseDict(data, facts, ignore_unknown_fields=True)
    return facts


def is_online(*, connected: bool, last_seen: dt.datetime | None, now: dt.datetime, offline_after: dt.timedelta) -> bool:
    return connected and last_seen is not None and now - last_seen <= offline_after


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(dt.UTC))
    return ts


def device_message(row, *, online: bool, last_seen: dt.datetime | None) -> admin_pb2.Device:
    """Build the admin view of a device from a store row (controlplane.store.DeviceRow)."""
    message = admin_pb2.Device(
        device_id=row.device_id,
        fleet=row.fleet,
        labels=row.labels or {},
        facts=facts_from_dict(row.facts),
        online=online,
        certificate_sha256=row.certificate_sha256,
        desired_generation=row.desired_generation or 0,
        agent_version=row.agent_version or "",
        device_class=row.device_class or "",
    )
    for field, value in (
        ("last_seen", last_seen),
        ("enrolled_at", row.enrolled_at),
        ("revoked_at", row.revoked_at),
        ("facts_updated_at", row.facts_updated_at),
    ):
        ts = timestamp(value)
        if ts is not None:
            getattr(message, field).CopyFrom(ts)
    return message
