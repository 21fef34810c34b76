"""Desired state: which build each device should run, per task slot.

Revision ID: 0003_desired
Revises: 0002_registry

Written by hand and frozen, like 0001 and 0002. One row per (device, task); the device's
``desired_generation`` (from 0001) is bumped in the same transaction as every change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_desired"
down_revision: str | None = "0002_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "desired_models",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("task", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("variant", sa.String(), nullable=False),
        sa.Column("manifest_sha256", sa.String(), nullable=False),
        sa.Column("max_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rollback", sa.Boolean(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "task", name="pk_desired_models"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name="fk_desired_models_device_id_devices"),
    )


def downgrade() -> None:
    op.drop_table("desired_models")
