"""gate integrity: archived variants, gate runs tied to a config, the catalog generation

- `variants.status` may be `archived` (`abtest variants archive NAME`).
- `gate_runs.config_sha256`: the hash of the variant config the gate run evaluated; a gate run
  only clears the config it ran on (changing a variant's config invalidates its gate).
- `catalog_generation`: one row whose `generation` every service write to variants,
  experiments and API keys bumps; each server polls it (cheap) and reloads its experiment
  catalog and forgets cached API-key roles when it changes (`abtest.catalog_watch`).

Revision ID: 0006_gate_integrity
Revises: 0005
Create Date: 2026-12-06 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_gate_integrity"
down_revision: str | None = "0005_routing_hot_path"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "status IN ('registered', 'approved', 'champion', 'retired')"
NEW_STATUSES = "status IN ('registered', 'approved', 'champion', 'retired', 'archived')"


def upgrade() -> None:
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.drop_constraint("status", type_="check")
        batch_op.create_check_constraint("status", NEW_STATUSES)
    with op.batch_alter_table("gate_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config_sha256", sa.String(length=64), nullable=True))
    table = op.create_table(
        "catalog_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_generation")),
    )
    op.bulk_insert(table, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("catalog_generation")
    with op.batch_alter_table("gate_runs", schema=None) as batch_op:
        batch_op.drop_column("config_sha256")
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.drop_constraint("status", type_="check")
        batch_op.create_check_constraint("status", OLD_STATUSES)
