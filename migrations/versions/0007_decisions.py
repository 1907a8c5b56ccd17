"""decisions: allocation periods

- `allocation_periods` records the weights of a started experiment from each weight change on
  (one row at the start, one per change), so the analysis checks the sample ratio per period and
  estimates the effect stratified by period instead of pooling periods with different splits.
- A stored numeric `settings.margin` meant absolute points; margins are now relative unless
  written in points, so numbers are rewritten as "Npts" strings with the same meaning.

Revision ID: 0007_decisions
Revises: 0005_routing_hot_path
Create Date: 2026-12-06 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007_decisions"
down_revision: str | None = "0006_gate_integrity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _margins_as_points() -> None:
    experiments = sa.table("experiments", sa.column("id"), sa.column("settings", sa.JSON()))
    connection = op.get_bind()
    for row in connection.execute(sa.select(experiments.c.id, experiments.c.settings)):
        settings = dict(row.settings or {})
        margin = settings.get("margin")
        if isinstance(margin, int | float) and not isinstance(margin, bool):
            settings["margin"] = f"{100 * margin:g}pts"
            connection.execute(
                experiments.update().where(experiments.c.id == row.id).values(settings=settings)
            )


def upgrade() -> None:
    _margins_as_points()
    op.create_table(
        "allocation_periods",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("weights", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_allocation_periods_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocation_periods")),
        sa.UniqueConstraint(
            "experiment_id", "version", name=op.f("uq_allocation_periods_experiment_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("allocation_periods")
