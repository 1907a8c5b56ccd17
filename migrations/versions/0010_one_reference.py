"""one reference: at most one active reference teacher, enforced by the database

`services.register_variant` checks for an active reference before adding one, but two
registrations at the same moment both pass that check. A partial unique index over a constant
(one row at most may match its WHERE) closes the race on PostgreSQL and SQLite alike.

A database that already holds several active teacher/recorded variants (registered before the
reference rule) is refused with their names: which one stays the reference is a decision for
an engineer, not for a migration.

Revision ID: 0010_one_reference
Revises: 0009_event_partitions
Create Date: 2026-12-06 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_one_reference"
down_revision: str | None = "0009_event_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_REFERENCE = "kind IN ('teacher', 'recorded') AND status NOT IN ('archived', 'retired')"


def _active_references() -> list[str]:
    query = sa.text(f"SELECT name FROM variants WHERE {ACTIVE_REFERENCE} ORDER BY id")
    return list(op.get_bind().execute(query).scalars())


def upgrade() -> None:
    names = _active_references()
    if len(names) > 1:
        raise RuntimeError(
            f"{len(names)} active reference teachers ({', '.join(names)}); one may stay: "
            "archive the others (`abtest variants archive NAME`) and run `abtest db upgrade` again"
        )
    op.create_index(
        "uq_variants_one_reference",
        "variants",
        [sa.literal_column("(1)")],
        unique=True,
        postgresql_where=sa.text(ACTIVE_REFERENCE),
        sqlite_where=sa.text(ACTIVE_REFERENCE),
    )


def downgrade() -> None:
    op.drop_index("uq_variants_one_reference", table_name="variants")
