"""event drops: the experiments whose events retention dropped with a month partition

Read-only results fall back to a scan of the events while an experiment's rollup is stale;
after a retention drop that scan misses the dropped months. `abtest.partitions` records here,
in the drop's transaction, every experiment that had rows in the dropped partition, and such an
experiment's read-only results use its rollup (which holds them) instead of the scan.

Revision ID: 0011_event_drops
Revises: 0010_one_reference
Create Date: 2026-12-07 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_event_drops"
down_revision: str | None = "0010_one_reference"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_drops",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("partition", sa.String(length=40), nullable=False),
        sa.Column("dropped_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", "partition", name=op.f("pk_event_drops")),
    )


def downgrade() -> None:
    op.drop_table("event_drops")
