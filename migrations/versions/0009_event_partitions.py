"""event partitions: `events` partitioned by month of received_at, idempotency in `event_keys`

PostgreSQL only (SQLite keeps its plain table):

- `events` becomes `PARTITION BY RANGE (received_at)`: received_at is set by the server, so the
  partition of "now" is always known (occurred_at comes from clients). Monthly partitions
  `events_YYYY_MM` for every month that holds rows, the current month and the next three, and
  `events_default`, so that no acknowledged event is ever refused for lack of a partition
  (`abtest.partitions.ensure_partitions` creates months ahead from then on). The primary key
  becomes (id, received_at) on the same `events_id_seq`: ids keep growing (the rollup watermark
  and the export rely on it) and every row keeps its id.
- A unique index of a partitioned table must hold the partition key, so `client_event_id` is
  unique in the unpartitioned `event_keys(client_event_id PRIMARY KEY, received_at)` instead,
  written in the same statement or transaction as its event by every writer.
- The BI views (0002) read `events`: they are dropped and created again with their own text.

The upgrade copies every row into the new table (and its key into `event_keys`) in the migration's
transaction: minutes for tens of millions of events, during which writes wait; plan a window.
Downgrade restores the plain table (same ids) and drops `event_keys`.

Revision ID: 0009_event_partitions
Revises: 0008_jobs
Create Date: 2026-12-06 23:20:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0009_event_partitions"
down_revision: str | None = "0008_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONTHS_AHEAD = 3
COLUMNS = (
    "id, client_event_id, type, project_id, experiment_id, arm_id, occurred_at, received_at, "
    "latency_ms, served_by, fallback, error, cache_hit, cost_usd, tokens, intent, output, "
    "attributes"
)
DEFINITION = """
    id bigint NOT NULL DEFAULT nextval('events_id_seq'::regclass),
    client_event_id varchar(100) NOT NULL,
    type varchar(10) NOT NULL,
    project_id varchar(200) NOT NULL,
    experiment_id integer,
    arm_id integer,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    latency_ms double precision,
    served_by varchar(100),
    fallback boolean NOT NULL,
    error text,
    cache_hit boolean NOT NULL,
    cost_usd double precision,
    tokens integer,
    intent text,
    output jsonb,
    attributes jsonb,
    CONSTRAINT ck_events_type CHECK (type IN ('start', 'export'))"""
INDEXES = (
    "CREATE INDEX ix_events_experiment_arm_type_day "
    "ON events (experiment_id, arm_id, type, occurred_at)",
    "CREATE INDEX ix_events_project ON events (project_id, experiment_id)",
    "CREATE INDEX ix_events_orphans ON events (project_id) WHERE arm_id IS NULL",
)
INDEX_NAMES = ("ix_events_experiment_arm_type_day", "ix_events_project", "ix_events_orphans")


def _views() -> list[tuple[str, str]]:
    """(name, definition) of every view of the schema, oldest first."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'v' AND n.nspname = current_schema() ORDER BY c.oid"
        )
    )
    return [(name, definition) for name, definition in rows]


def _drop_views(views: list[tuple[str, str]]) -> None:
    for name, _ in reversed(views):
        op.execute(f'DROP VIEW "{name}"')


def _create_views(views: list[tuple[str, str]]) -> None:
    for name, definition in views:
        op.execute(f'CREATE VIEW "{name}" AS {definition}')


def _set_aside(name: str, constraints: Sequence[str]) -> None:
    """Rename `events` to `name` and free the names and the sequence the new table takes."""
    op.execute(f"ALTER TABLE events RENAME TO {name}")
    for constraint in constraints:
        op.execute(f"ALTER TABLE {name} DROP CONSTRAINT {constraint}")
    for index in INDEX_NAMES:
        op.execute(f"DROP INDEX {index}")
    op.execute(f"ALTER TABLE {name} ALTER COLUMN id DROP DEFAULT")
    op.execute("ALTER SEQUENCE events_id_seq OWNED BY NONE")


def _month_start(year: int, month: int) -> datetime:
    return datetime(year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=UTC)


def _create_month(start: datetime) -> None:
    end = _month_start(start.year, start.month + 1)
    op.execute(
        f"CREATE TABLE events_{start:%Y_%m} PARTITION OF events "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    views = _views()
    _drop_views(views)
    _set_aside("events_unpartitioned", ("pk_events", "uq_events_client_event_id", "ck_events_type"))
    op.execute(
        f"CREATE TABLE events ({DEFINITION}, "
        "CONSTRAINT pk_events PRIMARY KEY (id, received_at)) PARTITION BY RANGE (received_at)"
    )
    op.execute("ALTER SEQUENCE events_id_seq OWNED BY events.id")
    now = datetime.now(UTC)
    months = {_month_start(now.year, now.month + ahead) for ahead in range(MONTHS_AHEAD + 1)}
    stored = op.get_bind().execute(
        sa.text(
            "SELECT DISTINCT date_trunc('month', received_at AT TIME ZONE 'UTC') "
            "FROM events_unpartitioned"
        )
    )
    months.update(_month_start(month.year, month.month) for (month,) in stored)
    for start in sorted(months):
        _create_month(start)
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    for statement in INDEXES:
        op.execute(statement)
    op.execute(
        "CREATE TABLE event_keys (client_event_id varchar(100) NOT NULL, "
        "received_at timestamptz NOT NULL, "
        "CONSTRAINT pk_event_keys PRIMARY KEY (client_event_id))"
    )
    op.execute(f"INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM events_unpartitioned")
    op.execute(
        "INSERT INTO event_keys (client_event_id, received_at) "
        "SELECT client_event_id, received_at FROM events_unpartitioned"
    )
    op.execute("DROP TABLE events_unpartitioned")
    op.execute("ANALYZE events")
    op.execute("ANALYZE event_keys")
    _create_views(views)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    views = _views()
    _drop_views(views)
    _set_aside("events_partitioned", ("pk_events", "ck_events_type"))
    op.execute(
        f"CREATE TABLE events ({DEFINITION}, CONSTRAINT pk_events PRIMARY KEY (id), "
        "CONSTRAINT uq_events_client_event_id UNIQUE (client_event_id))"
    )
    op.execute("ALTER SEQUENCE events_id_seq OWNED BY events.id")
    for statement in INDEXES:
        op.execute(statement)
    op.execute(
        f"INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM events_partitioned ORDER BY id"
    )
    op.execute("DROP TABLE events_partitioned")
    op.execute("DROP TABLE event_keys")
    _create_views(views)
