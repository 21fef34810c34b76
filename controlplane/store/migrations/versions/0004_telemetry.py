"""Telemetry and device status: batch keys, per-minute model aggregates, resource samples,
lifecycle events and each device's last StatusReport.

Revision ID: 0004_telemetry
Revises: 0003_desired

Written by hand and frozen, like the earlier revisions. ``telemetry_batches`` holds the
(device, boot id, sequence) of every stored batch, so a resend is recognised and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_telemetry"
down_revision: str | None = "0003_desired"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _device_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name=f"fk_{table}_device_id_devices")


def upgrade() -> None:
    op.create_table(
        "telemetry_batches",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("boot_id", sa.String(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "boot_id", "sequence", name="pk_telemetry_batches"),
        _device_fk("telemetry_batches"),
    )
    op.create_table(
        "model_minutes",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("variant", sa.String(), nullable=False),
        sa.Column("task", sa.String(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_counts", sa.JSON(), nullable=False),
        sa.Column("latency_sum_ms", sa.Double(), nullable=False),
        sa.Column("latency_max_ms", sa.Double(), nullable=False),
        sa.Column("confidence_sum", sa.Double(), nullable=False),
        sa.Column("low_confidence", sa.BigInteger(), nullable=False),
        sa.Column("input_size_sum", sa.Double(), nullable=False),
        sa.Column("input_size_max", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "minute", "name", "version", "variant", name="pk_model_minutes"),
        _device_fk("model_minutes"),
    )
    op.create_table(
        "resource_samples",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu_percent", sa.Double(), nullable=False),
        sa.Column("rss_bytes", sa.BigInteger(), nullable=False),
        sa.Column("memory_available_bytes", sa.BigInteger(), nullable=False),
        sa.Column("temperature_celsius", sa.Double(), nullable=True),
        sa.Column("disk_free_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "at", name="pk_resource_samples"),
        _device_fk("resource_samples"),
    )
    op.create_table(
        "device_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("variant", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_events"),
        _device_fk("device_events"),
    )
    op.create_index("ix_device_events_device_id_at", "device_events", ["device_id", "at"])
    op.create_table(
        "device_status",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("phase", sa.String(), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=False),
        sa.Column("active", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_status"),
        _device_fk("device_status"),
    )


def downgrade() -> None:
    op.drop_table("device_status")
    op.drop_index("ix_device_events_device_id_at", table_name="device_events")
    op.drop_table("device_events")
    op.drop_table("resource_samples")
    op.drop_table("model_minutes")
    op.drop_table("telemetry_batches")
