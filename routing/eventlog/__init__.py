"""The event log: what an event row is (`schema`), the store protocol (`store`), its portable
(`sql`) and PostgreSQL (`postgres`) implementations, the local spool (`spool`) and the group
commit that batches concurrent requests (`group_commit`).

This package never imports `abtest`: the tables are passed in (`RoutingTables`).
"""

from __future__ import annotations

from sqlalchemy import Engine

from routing.eventlog.group_commit import GroupCommit
from routing.eventlog.postgres import PostgresEventStore, copy_events
from routing.eventlog.schema import (
    EVENT_COLUMNS,
    EventRecord,
    RoutingTables,
    UnstorableEvent,
    check_storable,
    json_problem,
    json_text,
    row_from_json,
    row_to_json,
    text_problem,
    utcnow,
)
from routing.eventlog.spool import EventSpool
from routing.eventlog.sql import SqlEventStore, replay_spool
from routing.eventlog.store import (
    EventStore,
    FirstAssignment,
    InvalidEventReference,
    StoredAssignments,
    WriteResult,
    is_unavailable,
)


def open_event_store(
    engine: Engine, tables: RoutingTables, spool: EventSpool | None
) -> SqlEventStore:
    """The event store for the engine's backend (COPY and one-statement batches on
    PostgreSQL, portable SQLAlchemy statements elsewhere)."""
    if engine.dialect.name == "postgresql":
        return PostgresEventStore(engine, tables, spool)
    return SqlEventStore(engine, tables, spool)


__all__ = [
    "EVENT_COLUMNS",
    "EventRecord",
    "EventSpool",
    "EventStore",
    "FirstAssignment",
    "GroupCommit",
    "InvalidEventReference",
    "PostgresEventStore",
    "RoutingTables",
    "SqlEventStore",
    "StoredAssignments",
    "UnstorableEvent",
    "WriteResult",
    "check_storable",
    "copy_events",
    "is_unavailable",
    "json_problem",
    "json_text",
    "open_event_store",
    "replay_spool",
    "row_from_json",
    "row_to_json",
    "text_problem",
    "utcnow",
]
