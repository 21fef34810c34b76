"""Rollouts: one row per rollout, holding the controller's whole state as JSON.

Revision ID: 0007_rollouts
Revises: 0006_rollups

Written by hand and frozen, like the earlier revisions. ``state`` is ``controlplane.rollout.to_json``;
``active_slot`` is "FLEET/MODEL" while the rollout is not finished and NULL after, so a unique index
on it allows one active rollout per (fleet, model) on SQLite and PostgreSQL alike (NULLs are distinct).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_rollouts"
down_revision: str | None = "0006_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.String(), nullable=False),
        sa.Column("fleet", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("phase", sa.String(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("active_slot", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", name="pk_rollouts"),
        sa.UniqueConstraint("active_slot", name="uq_rollouts_active_slot"),
    )
    op.create_index("ix_rollouts_fleet", "rollouts", ["fleet"])


def downgrade() -> None:
    op.drop_index("ix_rollouts_fleet", table_name="rollouts")
    op.drop_table("rollouts")
