"""report rollup: project_outcomes, outcome/intent/call counts, rollup_watermarks

Incrementally maintained pre-aggregation for the online report (see analysis/rollup.py).

Revision ID: 0003_report_rollup
Revises: 0002_bi_views
Create Date: 2026-11-26 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_report_rollup"
down_revision: str | None = "0002_bi_views"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "project_outcomes",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(length=200), nullable=False),
        sa.Column("first_start_at", TIMESTAMP, nullable=True),
        sa.Column("last_start_at", TIMESTAMP, nullable=True),
        sa.Column("first_export_at", TIMESTAMP, nullable=True),
        sa.Column("start_day", sa.Date(), nullable=True),
        sa.Column("export_day", sa.Date(), nullable=True),
        sa.Column("event_arm_id", sa.Integer(), nullable=True),
        sa.Column("assigned_arm_id", sa.Integer(), nullable=True),
        sa.Column("platform", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("intent", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_project_outcomes_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "project_id", name=op.f("pk_project_outcomes")),
    )
    op.create_index(
        "ix_project_outcomes_last_start",
        "project_outcomes",
        ["experiment_id", "last_start_at"],
        unique=False,
    )
    op.create_table(
        "outcome_counts",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("arm_id", sa.Integer(), nullable=False),
        sa.Column("start_day", sa.Date(), nullable=False),
        sa.Column("export_day", sa.Date(), nullable=False),
        sa.Column("platform", sa.Text(), nullable=False),
        sa.Column("country", sa.Text(), nullable=False),
        sa.Column("projects", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_outcome_counts_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "experiment_id",
            "arm_id",
            "start_day",
            "export_day",
            "platform",
            "country",
            name=op.f("pk_outcome_counts"),
        ),
    )
    op.create_table(
        "intent_counts",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("arm_id", sa.Integer(), nullable=False),
        sa.Column("intent", sa.Text(), nullable=False),
        sa.Column("start_day", sa.Date(), nullable=False),
        sa.Column("export_day", sa.Date(), nullable=False),
        sa.Column("projects", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_intent_counts_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "experiment_id",
            "arm_id",
            "intent",
            "start_day",
            "export_day",
            name=op.f("pk_intent_counts"),
        ),
    )
    op.create_table(
        "call_rollups",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("arm_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("fallbacks", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("cache_hits", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_call_rollups_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "experiment_id", "arm_id", "day", "bucket", name=op.f("pk_call_rollups")
        ),
    )
    op.create_table(
        "rollup_watermarks",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), nullable=True),
        sa.Column("last_assignment_id", sa.BigInteger(), nullable=True),
        sa.Column("window_events", sa.BigInteger(), nullable=True),
        sa.Column("window_assignments", sa.BigInteger(), nullable=True),
        sa.Column("refreshed_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_rollup_watermarks_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", name=op.f("pk_rollup_watermarks")),
    )


def downgrade() -> None:
    op.drop_table("rollup_watermarks")
    op.drop_table("call_rollups")
    op.drop_table("intent_counts")
    op.drop_table("outcome_counts")
    op.drop_index("ix_project_outcomes_last_start", table_name="project_outcomes")
    op.drop_table("project_outcomes")
