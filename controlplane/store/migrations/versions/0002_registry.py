"""The model registry: publisher keys and published model builds.

Revision ID: 0002_registry
Revises: 0001_initial

Written by hand and frozen, like 0001: plain SQLAlchemy types, explicit constraint names
following ``schema.NAMING_CONVENTION``. ``model_builds.manifest`` keeps the exact signed
manifest bytes, ``signatures`` the serialized SignedManifest they were published in.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_registry"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "publisher_keys",
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("public_key", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_publisher_keys"),
        sa.UniqueConstraint("name", name="uq_publisher_keys_name"),
    )
    op.create_table(
        "model_builds",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("variant", sa.String(), nullable=False),
        sa.Column("task", sa.String(), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("signatures", sa.LargeBinary(), nullable=False),
        sa.Column("manifest_sha256", sa.String(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("publisher_key_id", sa.String(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "version", "variant", name="pk_model_builds"),
        sa.ForeignKeyConstraint(
            ["publisher_key_id"],
            ["publisher_keys.key_id"],
            name="fk_model_builds_publisher_key_id_publisher_keys",
        ),
    )


def downgrade() -> None:
    op.drop_table("model_builds")
    op.drop_table("publisher_keys")
