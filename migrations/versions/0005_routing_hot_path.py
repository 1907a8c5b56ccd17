"""routing hot path: allocation version, no foreign keys on assignments, orphan-event index

- `experiments.allocation_version` counts weight changes of a started experiment. While it is 0
  hashing alone reproduces every stored assignment, so the router commits a new project's
  assignment together with its start event instead of looking it up first.
- `ix_events_orphans` indexes the project of events that have no arm yet (an export that
  arrived before its project's start): the reconciliation run with every new assignment probes
  it. It only holds orphans, so it costs nothing for ordinary events, unlike a scan of the
  `arm_id IS NULL` entries of the experiment index, which grows with the table.
- `assignments` loses its two foreign keys: a first assignment is written with every new
  project, and the two per-row trigger checks cost about as much as the rest of the insert.
  The router writes arm ids it loaded from `experiment_arms`; experiments are never deleted.

Revision ID: 0005_routing_hot_path
Revises: 0004_events_without_fk
Create Date: 2026-11-28 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_routing_hot_path"
down_revision: str | None = "0004_events_without_fk"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORPHANS = sa.text("arm_id IS NULL")


ASSIGNMENT_KEYS = (
    ("fk_assignments_arm_id_experiment_arms", "experiment_arms", "arm_id"),
    ("fk_assignments_experiment_id_experiments", "experiments", "experiment_id"),
)


def upgrade() -> None:
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        for name, _, _ in ASSIGNMENT_KEYS:
            batch_op.drop_constraint(name, type_="foreignkey")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("allocation_version", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_index(
        "ix_events_orphans",
        "events",
        ["project_id"],
        unique=False,
        postgresql_where=ORPHANS,
        sqlite_where=ORPHANS,
    )


def downgrade() -> None:
    op.drop_index("ix_events_orphans", table_name="events")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_column("allocation_version")
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        for name, table, column in ASSIGNMENT_KEYS:
            batch_op.create_foreign_key(name, table, [column], ["id"], ondelete="CASCADE")
