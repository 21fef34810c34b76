"""The rows the store hands out: small frozen copies of what a transaction read.

Invariants:
- A row is plain data, detached from any session or connection: nothing loads lazily
  and nothing reaches the database once the store method has returned.
- Every timestamp is an aware UTC ``datetime``.
- Field names are the column names of the matching table in ``schema.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from protos.histogram import Histogram

OPERATOR_ROLES: frozenset[str] = frozenset({"viewer", "operator", "admin"})


@dataclass(frozen=True)
class OperatorTokenRow:
    """An operator token as stored; the token itself is never kept, only its SHA-256 (hex)."""

    name: str
    role: str
    token_sha256: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class JoinTokenRow:
    """A single-use join token; ``used_at``/``used_by_device`` are set by the enrollment that used it."""

    token_id: str
    fleet: str
    secret_sha256: str
    labels: dict[str, str]
    publisher_key_ids: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by_device: str | None

    @property
    def used(self) -> bool:
        return self.used_at is not None


@dataclass(frozen=True)
class DeviceRow:
    """An enrolled device as stored, including its last reported facts and connection history."""

    device_id: str
    fleet: str
    labels: dict[str, str]
    certificate_sha256: str
    certificate_serial: str
    enrolled_at: datetime
    revoked_at: datetime | None
    revoke_reason: str | None
    facts: dict[str, Any] | None
    facts_updated_at: datetime | None
    agent_version: str | None
    boot_id: str | None
    last_seen: datetime | None
    connected_at: datetime | None
    disconnected_at: datetime | None
    desired_generation: int
    device_class: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def connected(self) -> bool:
        """Whether the latest session event is a connect: a disconnect at the same instant wins."""
        if self.connected_at is None:
            return False
        return self.disconnected_at is None or self.connected_at > self.disconnected_at


@dataclass(frozen=True)
class PublisherKeyRow:
    """A registered publisher key; ``public_key`` is the raw 32-byte ed25519 key as hex."""

    key_id: str
    public_key: str
    name: str
    added_at: datetime

    @property
    def raw_public_key(self) -> bytes:
        return bytes.fromhex(self.public_key)


@dataclass(frozen=True)
class ModelBuildRow:
    """A published build: ``manifest`` holds the exact signed bytes, ``signatures`` the serialized
    SignedManifest they came in."""

    name: str
    version: int
    variant: str
    task: str
    manifest: bytes
    signatures: bytes
    manifest_sha256: str
    total_bytes: int
    publisher_key_id: str
    published_at: datetime


@dataclass(frozen=True)
class DesiredRow:
    """The build one device should run in one task slot (``max_bytes``: the build's total size)."""

    device_id: str
    task: str
    name: str
    version: int
    variant: str
    manifest_sha256: str
    max_bytes: int
    rollback: bool
    generation: int
    updated_at: datetime


@dataclass(frozen=True)
class ResourceSampleRow:
    """A device's resource use at ``at``; ``temperature_celsius`` is None when the OS does not expose it."""

    device_id: str
    at: datetime
    cpu_percent: float
    rss_bytes: int
    memory_available_bytes: int
    temperature_celsius: float | None
    disk_free_bytes: int


@dataclass(frozen=True)
class DeviceEventRow:
    """A lifecycle event as stored; ``kind`` is the ``LifecycleEvent.Kind`` name."""

    id: int
    device_id: str
    at: datetime
    kind: str
    name: str
    version: int
    variant: str
    reason: str
    generation: int
    details: dict[str, str]


@dataclass(frozen=True)
class DeviceStatusRow:
    """A device's last StatusReport; ``phase`` is the ``ReconcilePhase`` name, ``active`` ActiveModel dicts."""

    device_id: str
    generation: int
    phase: str
    failure_reason: str
    active: list[dict[str, Any]]
    updated_at: datetime
    bytes_downloaded: int = 0  # download progress while phase is DOWNLOADING; 0 otherwise
    bytes_total: int = 0


@dataclass(frozen=True)
class LatencyRow:
    """Model minutes merged by ``key`` (column name to value, e.g. {"model": "nlu", "version": "3"}).

    ``latency`` is the exact merge of every minute's histogram.
    """

    key: dict[str, str]
    requests: int
    errors: int
    confidence_sum: float
    low_confidence: int
    latency: Histogram


@dataclass(frozen=True)
class HealthRow:
    """A device with its newest resource sample and its last status, each None if it never reported one."""

    device: DeviceRow
    resources: ResourceSampleRow | None
    status: DeviceStatusRow | None


@dataclass(frozen=True)
class ClassRow:
    """An applied device class; ``spec`` is ``controlplane.classes.to_dict`` of it."""

    name: str
    priority: int
    spec: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True)
class JobRow:
    """A benchmark job given to a device, and its result once the device answered."""

    job_id: str
    device_id: str
    name: str
    version: int
    variant: str
    manifest_sha256: str
    device_class: str
    state: str  # pending, done, expired
    created_at: datetime
    deadline: datetime
    completed_at: datetime | None
    result: dict[str, Any] | None


@dataclass(frozen=True)
class RolloutRow:
    """A stored rollout; ``state`` is the controller's JSON (``controlplane.rollout_json.from_json``)."""

    rollout_id: str
    fleet: str
    model: str
    version: int
    phase: str
    state: str
    active_slot: str | None
    created_at: datetime
    updated_at: datetime
