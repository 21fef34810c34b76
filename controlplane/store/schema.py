"""The control plane's tables, as SQLAlchemy 2 declarative models.

These models describe the schema that the alembic revisions create; they are used to
build SQL, never handed out of the store (callers get the frozen rows in ``store.py``).

Invariants:
- Every timestamp is a timezone-aware UTC ``datetime`` on the way in and on the way out
  (``UTCDateTime``), whatever the backend keeps; a naive datetime is rejected.
- Constraint and index names come from ``NAMING_CONVENTION`` so that the revisions, which
  name them explicitly, and the models agree on every backend (batch mode on SQLite needs
  names to alter a table).
- A change here needs a new revision under ``migrations/versions``; a test compares the
  migrated database with these models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back as an aware UTC ``datetime``.

    PostgreSQL keeps the offset (``timestamptz``); SQLite keeps a naive text value, so the
    value is converted to UTC and stripped on the way in and marked UTC on the way out.

    Raises:
        ValueError: when bound to a naive datetime (wrapped by SQLAlchemy in a
            ``StatementError``; the store checks its arguments before this can happen).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite's DATETIME text has no offset; all stored values are UTC, so text order is time order.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the store's models; its metadata is the migrations' target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class OperatorToken(Base):
    """A bearer token for a person or script using the admin API; only its SHA-256 is kept."""

    __tablename__ = "operator_tokens"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    role: Mapped[str] = mapped_column(String, nullable=False)
    token_sha256: Mapped[str] = mapped_column(String, nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JoinToken(Base):
    """A single-use token that lets one device enroll into a fleet; only the secret's SHA-256 is kept."""

    __tablename__ = "join_tokens"

    token_id: Mapped[str] = mapped_column(String, primary_key=True)
    fleet: Mapped[str] = mapped_column(String, nullable=False)
    secret_sha256: Mapped[str] = mapped_column(String, nullable=False)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    publisher_key_ids: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Not a foreign key: the token row is an audit record of who used it, written in the
    # same transaction as the device row.
    used_by_device: Mapped[str | None] = mapped_column(String, nullable=True)


class Device(Base):
    """An enrolled device: its identity, what it last reported and its connection history."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String, primary_key=True)
    fleet: Mapped[str] = mapped_column(String, nullable=False, index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    certificate_sha256: Mapped[str] = mapped_column(String, nullable=False)
    certificate_serial: Mapped[str] = mapped_column(String, nullable=False)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    facts: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    facts_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String, nullable=True)
    boot_id: Mapped[str | None] = mapped_column(String, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disconnected_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    desired_generation: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")
    device_class: Mapped[str | None] = mapped_column(String, nullable=True)


class Setting(Base):
    """A server-wide key/value pair (e.g. when the server first started)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class PublisherKey(Base):
    """An ed25519 key whose signatures the server accepts on published bundles (raw key as hex)."""

    __tablename__ = "publisher_keys"

    key_id: Mapped[str] = mapped_column(String, primary_key=True)
    public_key: Mapped[str] = mapped_column(String, nullable=False)
    name: Mapped[str] = mapped_column(String, nullable=False, unique=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ModelBuild(Base):
    """One published build (variant) of a model version, with the exact signed manifest bytes."""

    __tablename__ = "model_builds"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    variant: Mapped[str] = mapped_column(String, primary_key=True)
    task: Mapped[str] = mapped_column(String, nullable=False)
    manifest: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    signatures: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    manifest_sha256: Mapped[str] = mapped_column(String, nullable=False)
    total_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    publisher_key_id: Mapped[str] = mapped_column(ForeignKey("publisher_keys.key_id"), nullable=False)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class DesiredModel(Base):
    """The build a device should run in one task slot; ``generation`` is the device's desired-state
    generation when this row last changed."""

    __tablename__ = "desired_models"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    task: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String, nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    variant: Mapped[str] = mapped_column(String, nullable=False)
    manifest_sha256: Mapped[str] = mapped_column(String, nullable=False)
    max_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    rollback: Mapped[bool] = mapped_column(Boolean, nullable=False)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class TelemetryBatchKey(Base):
    """A telemetry batch already stored: the de-duplication key of resends."""

    __tablename__ = "telemetry_batches"
    __table_args__ = (Index("ix_telemetry_batches_received_at", "received_at"),)  # retention deletes by age

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    boot_id: Mapped[str] = mapped_column(String, primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ModelMinute(Base):
    """One device's requests to one build in one UTC minute; batches for the same key add up."""

    __tablename__ = "model_minutes"
    __table_args__ = (Index("ix_model_minutes_minute", "minute"),)  # roll-up and latency read by time

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    name: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    variant: Mapped[str] = mapped_column(String, primary_key=True)
    task: Mapped[str] = mapped_column(String, nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    errors: Mapped[int] = mapped_column(BigInteger, nullable=False)
    latency_counts: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    latency_sum_ms: Mapped[float] = mapped_column(Double, nullable=False)
    latency_max_ms: Mapped[float] = mapped_column(Double, nullable=False)
    confidence_sum: Mapped[float] = mapped_column(Double, nullable=False)
    low_confidence: Mapped[int] = mapped_column(BigInteger, nullable=False)
    input_size_sum: Mapped[float] = mapped_column(Double, nullable=False)
    input_size_max: Mapped[float] = mapped_column(Double, nullable=False)


class ModelHour(Base):
    """Model minutes older than the minute retention, merged per (device, UTC hour, build): counts and
    histogram buckets added exactly, the max the largest (see ``TelemetryStore.roll_up``)."""

    __tablename__ = "model_hours"
    __table_args__ = (Index("ix_model_hours_hour", "hour"),)

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    name: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    variant: Mapped[str] = mapped_column(String, primary_key=True)
    task: Mapped[str] = mapped_column(String, nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    errors: Mapped[int] = mapped_column(BigInteger, nullable=False)
    latency_counts: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    latency_sum_ms: Mapped[float] = mapped_column(Double, nullable=False)
    latency_max_ms: Mapped[float] = mapped_column(Double, nullable=False)
    confidence_sum: Mapped[float] = mapped_column(Double, nullable=False)
    low_confidence: Mapped[int] = mapped_column(BigInteger, nullable=False)
    input_size_sum: Mapped[float] = mapped_column(Double, nullable=False)
    input_size_max: Mapped[float] = mapped_column(Double, nullable=False)


class ResourceSample(Base):
    """A device's resource use at one instant; ``temperature_celsius`` is NULL when the OS does not expose it."""

    __tablename__ = "resource_samples"
    __table_args__ = (Index("ix_resource_samples_at", "at"),)  # retention deletes by age

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    cpu_percent: Mapped[float] = mapped_column(Double, nullable=False)
    rss_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    memory_available_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    temperature_celsius: Mapped[float | None] = mapped_column(Double, nullable=True)
    disk_free_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)


class DeviceEvent(Base):
    """A lifecycle event a device reported (``kind`` is the LifecycleEvent.Kind name)."""

    __tablename__ = "device_events"
    __table_args__ = (Index("ix_device_events_device_id_at", "device_id", "at"), Index("ix_device_events_at", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    kind: Mapped[str] = mapped_column(String, nullable=False)
    name: Mapped[str] = mapped_column(String, nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    variant: Mapped[str] = mapped_column(String, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False)
    details: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)


class DeviceStatus(Base):
    """The last StatusReport of a device: reconcile generation and phase, what it runs (``active``,
    ActiveModel messages as JSON dicts) and the progress of a download in flight."""

    __tablename__ = "device_status"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False)
    phase: Mapped[str] = mapped_column(String, nullable=False)
    failure_reason: Mapped[str] = mapped_column(Text, nullable=False)
    active: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Download progress of the build in flight (0 when none): bytes on the device, and the manifest's total.
    bytes_downloaded: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")
    bytes_total: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")


class DeviceClass(Base):
    """One class of the applied class file; ``spec`` is ``controlplane.classes.to_dict`` of it."""

    __tablename__ = "device_classes"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    priority: Mapped[int] = mapped_column(Integer, nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class BenchmarkJob(Base):
    """A benchmark job given to a device: ``state`` is pending, done or expired; ``result`` is the
    device's BenchmarkResult as a JSON dict once it answered."""

    __tablename__ = "benchmark_jobs"
    __table_args__ = (
        Index("ix_benchmark_jobs_name_version", "name", "version"),
        Index("ix_benchmark_jobs_device_id_state", "device_id", "state"),
    )

    job_id: Mapped[str] = mapped_column(String, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"), nullable=False)
    name: Mapped[str] = mapped_column(String, nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    variant: Mapped[str] = mapped_column(String, nullable=False)
    manifest_sha256: Mapped[str] = mapped_column(String, nullable=False)
    device_class: Mapped[str] = mapped_column(String, nullable=False)
    state: Mapped[str] = mapped_column(String, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    deadline: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class RolloutRecord(Base):
    """A rollout: ``state`` is ``controlplane.rollout_json.to_json``; ``active_slot`` is "FLEET/MODEL" until
    the rollout ends, then NULL (one active rollout per fleet and model, enforced by the unique index)."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_fleet", "fleet"),)

    rollout_id: Mapped[str] = mapped_column(String, primary_key=True)
    fleet: Mapped[str] = mapped_column(String, nullable=False)
    model: Mapped[str] = mapped_column(String, nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    phase: Mapped[str] = mapped_column(String, nullable=False)
    state: Mapped[str] = mapped_column(Text, nullable=False)
    active_slot: Mapped[str | None] = mapped_column(String, nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
