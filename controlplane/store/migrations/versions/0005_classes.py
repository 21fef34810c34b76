"""Device classes, each device's class, and benchmark jobs (the evidence the selector reads).

Revision ID: 0005_classes
Revises: 0004_telemetry

Written by hand and frozen, like the earlier revisions. ``device_classes`` holds the applied class
file, one row per class (``spec`` is ``controlplane.classes.to_dict``); ``devices.device_class`` is
the class the device matched when its facts or the classes last changed. ``benchmark_jobs`` holds
every benchmark job given to a device and, once it answered, its result.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_classes"
down_revision: str | None = "0004_telemetry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_classes",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_device_classes"),
    )
    op.add_column("devices", sa.Column("device_class", sa.String(), nullable=True))
    op.create_table(
        "benchmark_jobs",
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("variant", sa.String(), nullable=False),
        sa.Column("manifest_sha256", sa.String(), nullable=False),
        sa.Column("device_class", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name="pk_benchmark_jobs"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name="fk_benchmark_jobs_device_id_devices"),
    )
    op.create_index("ix_benchmark_jobs_name_version", "benchmark_jobs", ["name", "version"])
    op.create_index("ix_benchmark_jobs_device_id_state", "benchmark_jobs", ["device_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_benchmark_jobs_device_id_state", table_name="benchmark_jobs")
    op.drop_index("ix_benchmark_jobs_name_version", table_name="benchmark_jobs")
    op.drop_table("benchmark_jobs")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("device_class")
    op.drop_table("device_classes")
