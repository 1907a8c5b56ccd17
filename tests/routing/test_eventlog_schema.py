"""The event row is spelled once (routing.eventlog.schema.PG_TYPES); everything else follows
from it or is checked against it here: the ORM table, the migrated database, EventRecord, the
COPY types and the storable-value checks."""

from dataclasses import fields

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from abtest.tables import Event
from routing.eventlog import EVENT_COLUMNS, EventRecord, UnstorableEvent, check_storable
from routing.eventlog.schema import COPY_TYPES, PG_EVENT_RECORD, PG_TYPES

# how PostgreSQL spells each type of PG_TYPES (as compiled by SQLAlchemy or read back)
SPELLINGS = {
    "text": {"TEXT", "VARCHAR"},
    "int": {"INTEGER"},
    "timestamptz": {"TIMESTAMP WITH TIME ZONE", "TIMESTAMP"},
    "float8": {"FLOAT", "DOUBLE PRECISION", "DOUBLE_PRECISION"},
    "bool": {"BOOLEAN"},
    "jsonb": {"JSONB"},
}


def _spelling(type_: sa.types.TypeEngine) -> str:
    return type_.compile(dialect=postgresql.dialect()).split("(")[0].upper()


def test_the_orm_table_has_the_schema_columns_in_order_with_their_types():
    columns = [c for c in Event.__table__.columns if c.name != "id"]
    assert tuple(c.name for c in columns) == EVENT_COLUMNS
    for column in columns:
        assert _spelling(column.type) in SPELLINGS[PG_TYPES[column.name]], column.name


def test_event_record_fields_are_the_schema_columns():
    assert tuple(f.name for f in fields(EventRecord)) == EVENT_COLUMNS
    row = EventRecord(client_event_id="c", type="start", project_id="p").to_row()
    assert tuple(row) == EVENT_COLUMNS


def test_copy_types_and_record_clause_follow_the_schema():
    assert len(COPY_TYPES) == len(EVENT_COLUMNS)
    assert [t for t in COPY_TYPES if t == "int4"] == ["int4"] * 3  # experiment, arm, tokens
    assert PG_EVENT_RECORD.split(", ")[0] == "client_event_id text"
    assert len(PG_EVENT_RECORD.split(", ")) == len(EVENT_COLUMNS)


@pytest.mark.parametrize(
    ("column", "value"),
    [("served_by", "a\x00b"), ("tokens", 2**40), ("latency_ms", float("nan")), ("output", [1])],
)
def test_storable_checks_follow_the_column_types(column, value):
    row = EventRecord(client_event_id="c", type="export", project_id="p").to_row()
    with pytest.raises(UnstorableEvent) as refused:
        check_storable({**row, column: value if column != "output" else {"x": float("inf")}})
    assert refused.value.field.startswith(column)


def test_the_migrated_database_matches_the_schema(engine):
    """Migrations (not the ORM) create the table: they must agree with the schema too."""
    columns = [c for c in sa.inspect(engine).get_columns(Event.__tablename__) if c["name"] != "id"]
    assert tuple(c["name"] for c in columns) == EVENT_COLUMNS
    if engine.dialect.name == "postgresql":
        for column in columns:
            spelled = _spelling(column["type"])
            assert spelled in SPELLINGS[PG_TYPES[column["name"]]], column["name"]


def test_the_key_table_is_spelled_by_the_schema(engine):
    """PostgreSQL: event_keys (migration 0009) has KEY_COLUMNS, typed as in PG_TYPES and as the
    events columns they copy; SQLite keeps the unique client_event_id on events itself."""
    from routing.eventlog.schema import EVENT_KEYS, KEY_COLUMNS

    inspector = sa.inspect(engine)
    if engine.dialect.name != "postgresql":
        assert not inspector.has_table(EVENT_KEYS)
        return
    columns = inspector.get_columns(EVENT_KEYS)
    assert tuple(c["name"] for c in columns) == KEY_COLUMNS
    events = {c["name"]: c for c in inspector.get_columns(Event.__tablename__)}
    for column in columns:
        assert _spelling(column["type"]) in SPELLINGS[PG_TYPES[column["name"]]]
        assert str(column["type"]) == str(events[column["name"]]["type"])  # same limits
    assert inspector.get_pk_constraint(EVENT_KEYS)["constrained_columns"] == [KEY_COLUMNS[0]]


def test_open_event_store_picks_one_store_per_backend(engine):
    from abtest.runtime import TABLES
    from routing.eventlog import EventStore, PostgresEventStore, SqlEventStore, open_event_store

    store = open_event_store(engine, TABLES, None)
    assert isinstance(store, EventStore)
    postgres = engine.dialect.name == "postgresql"
    assert isinstance(store, PostgresEventStore) is postgres and store.postgres is postgres
    assert type(store) is (PostgresEventStore if postgres else SqlEventStore)
    assert store.replay() == 0  # no spool: nothing to replay
