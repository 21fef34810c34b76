"""Initial schema: operator tokens, join tokens, devices and settings.

Revision ID: 0001_initial
Revises: (none)

Written by hand and frozen: it uses plain SQLAlchemy types, not the models in
``schema.py``, so later model changes cannot change what this revision creates.
Timestamps are ``DateTime(timezone=True)`` (``timestamptz`` on PostgreSQL), which is
what ``schema.UTCDateTime`` wraps. Constraint and index names follow
``schema.NAMING_CONVENTION``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "operator_tokens",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("token_sha256", sa.String(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_operator_tokens"),
        sa.UniqueConstraint("token_sha256", name="uq_operator_tokens_token_sha256"),
    )
    op.create_table(
        "join_tokens",
        sa.Column("token_id", sa.String(), nullable=False),
        sa.Column("fleet", sa.String(), nullable=False),
        sa.Column("secret_sha256", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("publisher_key_ids", sa.JSON(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("expires_at", nullable=False),
        _timestamp("used_at", nullable=True),
        sa.Column("used_by_device", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("token_id", name="pk_join_tokens"),
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("fleet", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("certificate_sha256", sa.String(), nullable=False),
        sa.Column("certificate_serial", sa.String(), nullable=False),
        _timestamp("enrolled_at", nullable=False),
        _timestamp("revoked_at", nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.Column("facts", sa.JSON(), nullable=True),
        _timestamp("facts_updated_at", nullable=True),
        sa.Column("agent_version", sa.String(), nullable=True),
        sa.Column("boot_id", sa.String(), nullable=True),
        _timestamp("last_seen", nullable=True),
        _timestamp("connected_at", nullable=True),
        _timestamp("disconnected_at", nullable=True),
        sa.Column("desired_generation", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_devices"),
    )
    op.create_index("ix_devices_fleet", "devices", ["fleet"], unique=False)
    op.create_table(
        "settings",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_settings"),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_index("ix_devices_fleet", table_name="devices")
    op.drop_table("devices")
    op.drop_table("join_tokens")
    op.drop_table("operator_tokens")
