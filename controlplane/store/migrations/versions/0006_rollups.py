"""Telemetry retention: hourly roll-ups of old model minutes, and time indexes for age-based deletes.

Revision ID: 0006_rollups
Revises: 0005_classes

Written by hand and frozen, like the earlier revisions. ``model_hours`` has the columns of
``model_minutes`` with ``hour`` for ``minute``; ``TelemetryStore.roll_up`` merges minutes older than
the minute retention into it. The indexes let roll-up and retention find old rows without a full scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_rollups"
down_revision: str | None = "0005_classes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME_INDEXES = (
    ("ix_model_minutes_minute", "model_minutes", "minute"),
    ("ix_resource_samples_at", "resource_samples", "at"),
    ("ix_device_events_at", "device_events", "at"),
    ("ix_telemetry_batches_received_at", "telemetry_batches", "received_at"),
)


def upgrade() -> None:
    op.create_table(
        "model_hours",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
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
        sa.PrimaryKeyConstraint("device_id", "hour", "name", "version", "variant", name="pk_model_hours"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name="fk_model_hours_device_id_devices"),
    )
    op.create_index("ix_model_hours_hour", "model_hours", ["hour"])
    for name, table, column in _TIME_INDEXES:
        op.create_index(name, table, [column])


def downgrade() -> None:
    for name, table, _column in reversed(_TIME_INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_index("ix_model_hours_hour", table_name="model_hours")
    op.drop_table("model_hours")
