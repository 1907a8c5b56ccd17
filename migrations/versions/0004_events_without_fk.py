"""events without foreign keys: an append-only log, references checked by the writer

The two foreign keys of `events` (experiment_id -> experiments, arm_id -> experiment_arms) cost
a trigger call per row and per key on every insert, about a third of bulk ingestion. Events are
an append-only log (like a warehouse fact table): `routing.eventlog.SqlEventStore` checks a batch's
distinct (experiment_id, arm_id) pairs in one query before writing and refuses unknown ones
(`InvalidEventReference`). Experiments and arms are never deleted by the application, so the
ON DELETE CASCADE had nothing to do.

Downgrade re-creates both keys (it fails if events reference rows that no longer exist).

Revision ID: 0004_events_without_fk
Revises: 0003_report_rollup
Create Date: 2026-11-28 00:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_events_without_fk"
down_revision: str | None = "0003_report_rollup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_constraint("fk_events_experiment_id_experiments", type_="foreignkey")
        batch_op.drop_constraint("fk_events_arm_id_experiment_arms", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_events_experiment_id_experiments",
            "experiments",
            ["experiment_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            "fk_events_arm_id_experiment_arms",
            "experiment_arms",
            ["arm_id"],
            ["id"],
            ondelete="CASCADE",
        )
