"""Download progress on device_status: bytes_downloaded and bytes_total of the build in flight.

Revision ID: 0008_download_progress
Revises: 0007_rollouts

Written by hand and frozen, like the earlier revisions. Both columns are NOT NULL with a server default
of 0, so rows written before this revision read as "no download in flight".
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_download_progress"
down_revision: str | None = "0007_rollouts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_status") as batch:
        batch.add_column(sa.Column("bytes_downloaded", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("bytes_total", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("device_status") as batch:
        batch.drop_column("bytes_total")
        batch.drop_column("bytes_downloaded")
