"""The one spelling of an event row: its columns, their PostgreSQL types, `EventRecord`,
the row codecs and what the database can store. The ORM table (`abtest.tables.events`) is
checked against it by tests/routing/test_eventlog_schema.py."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Table

# Every column of an event row with its PostgreSQL type, in table order: the one spelling from
# which EVENT_COLUMNS, the jsonb record, the COPY types and EventRecord's fields follow (checked
# against the ORM table and the migrations by tests/routing/test_eventlog_schema.py).
PG_TYPES: dict[str, str] = {
    "client_event_id": "text",
    "type": "text",
    "project_id": "text",
    "experiment_id": "int",
    "arm_id": "int",
    "occurred_at": "timestamptz",
    "received_at": "timestamptz",
    "latency_ms": "float8",
    "served_by": "text",
    "fallback": "bool",
    "error": "text",
    "cache_hit": "bool",
    "cost_usd": "float8",
    "tokens": "int",
    "intent": "text",
    "output": "jsonb",
    "attributes": "jsonb",
}
EVENT_COLUMNS = tuple(PG_TYPES)  # the order of the table's columns (after its id)
# PostgreSQL: `events` is partitioned by month of received_at (migration 0009), and a unique
# index of a partitioned table must hold the partition key, so client_event_id is unique in
# this unpartitioned table instead. Every PostgreSQL writer claims an event's key here in the
# statement (or transaction) that stores the event: the key that wins is the event stored.
EVENT_KEYS = "event_keys"
KEY_COLUMNS = ("client_event_id", "received_at")  # of PG_TYPES; its primary key is the first


def _columns_of(*types: str) -> tuple[str, ...]:
    return tuple(name for name, kind in PG_TYPES.items() if kind in types)


JSON_COLUMNS = _columns_of("jsonb")
TIME_COLUMNS = _columns_of("timestamptz")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RoutingTables:
    """The tables routing reads and writes (the app passes its own `Table` objects)."""

    experiments: Table
    experiment_arms: Table
    variants: Table
    assignments: Table
    events: Table


@dataclass
class EventRecord:
    """One start or export event, shaped like a row of the events table."""

    client_event_id: str
    type: str
    project_id: str
    experiment_id: int | None = None
    arm_id: int | None = None
    occurred_at: datetime = field(default_factory=utcnow)
    received_at: datetime = field(default_factory=utcnow)
    latency_ms: float | None = None
    served_by: str | None = None
    fallback: bool = False
    error: str | None = None
    cache_hit: bool = False
    cost_usd: float | None = None
    tokens: int | None = None
    intent: str | None = None
    output: dict[str, Any] | None = None
    attributes: dict[str, Any] | None = None

    def to_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EVENT_COLUMNS}


def first_of_each_id(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first row of each client_event_id (the one a plain ON CONFLICT DO NOTHING keeps)."""
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["client_event_id"], row)
    return list(unique.values())


def row_to_json(row: dict[str, Any]) -> str:
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
    )


def row_from_json(text: str) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(text)
    for name in TIME_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    return row


# --- what the database can store ------------------------------------------------------------

MAX_JSON_DEPTH = 64  # nesting PostgreSQL's jsonb parser takes without hitting its stack limit
MAX_KEY_CHARS = 1000  # client_event_id and project_id are indexed (btree entries < ~2.7 KB)
_INFS = (math.inf, -math.inf)
_TEXT_COLUMNS = ("client_event_id", "type", "project_id", "served_by", "error", "intent")
INT4_COLUMNS = ("experiment_id", "arm_id", "tokens")
_FLOAT_COLUMNS = ("latency_ms", "cost_usd")


class UnstorableEvent(ValueError):
    """A value the database would refuse (NUL, a lone surrogate, NaN/Infinity, a too-large
    number or key, JSON nested too deep). `field` names it, `reason` says why. Refused at
    ingest, so that the spool only ever holds rows that replay can store."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def text_problem(value: str) -> str | None:
    """Why PostgreSQL would refuse `value` as text or inside JSON, or None."""
    if "\x00" not in value and value.isascii():
        return None
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def json_problem(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """(path, reason) of the first part of a JSON value that jsonb would refuse, or None."""
    if depth > MAX_JSON_DEPTH:
        return path, f"is nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, str):
        problem = text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, bool) or value is None or isinstance(value, int | datetime):
        return None  # (a datetime is written as ISO text)
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "must be a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                problem = text_problem(key)
                if problem:
                    return path, f"key {problem}"
            elif not isinstance(key, bool | int | float | None) or key != key or key in _INFS:
                return path, f"has a key {key!r} that is not text"  # (numbers become text)
            found = json_problem(item, f"{path}.{key}", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = json_problem(item, f"{path}.{index}", depth + 1)
            if found:
                return found
        return None
    return path, f"{type(value).__name__} is not a JSON value"


def check_storable(row: dict[str, Any]) -> None:
    """Raise UnstorableEvent unless every column of an event row can be stored."""
    for name in _TEXT_COLUMNS:
        value = row.get(name)
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise UnstorableEvent(name, problem)
    for name in ("client_event_id", "project_id"):
        value = row.get(name)
        if not isinstance(value, str) or not value:
            raise UnstorableEvent(name, "must be a non-empty string")
        if len(value) > MAX_KEY_CHARS:
            raise UnstorableEvent(name, f"must be at most {MAX_KEY_CHARS} characters")
    for name in INT4_COLUMNS:
        value = row.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value not in INT4
        ):
            raise UnstorableEvent(name, f"{value!r} is not a 32-bit integer")
    for name in _FLOAT_COLUMNS:
        value = row.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise UnstorableEvent(name, "must be a finite number")
    for name in JSON_COLUMNS:
        found = json_problem(row.get(name), name)
        if found:
            raise UnstorableEvent(*found)


# the column list of `jsonb_to_recordset(...) AS t(...)` for event rows
PG_EVENT_RECORD = ", ".join(f"{c} {PG_TYPES[c]}" for c in EVENT_COLUMNS)
_COLUMN_SET = set(EVENT_COLUMNS)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_text(value: Any) -> str:
    """JSON for a query parameter (`json_bytes`, as text)."""
    return json_bytes(value).decode()


def rows_json(rows: Sequence[dict[str, Any]]) -> str:
    """The batch as one JSON array for `jsonb_to_recordset` (one parameter)."""
    if all(row.keys() == _COLUMN_SET for row in rows):  # EventRecord.to_row's shape
        return json_text(rows)
    return json_text([{name: row.get(name) for name in EVENT_COLUMNS} for row in rows])


# Binary COPY types: the int columns as int4 (psycopg would send Python ints as int8)
COPY_TYPES = [
    {"experiment_id": "int4", "arm_id": "int4", "tokens": "int4"}.get(name, PG_TYPES[name])
    for name in EVENT_COLUMNS
]
INT4 = range(-(2**31), 2**31)


def json_bytes(value: Any) -> bytes:
    """orjson, and the standard library for what orjson refuses (non-string keys, integers
    beyond 64 bits, lone surrogates)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, default=_json_default).encode()
