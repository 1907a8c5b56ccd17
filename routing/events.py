"""Durable, idempotent event writes: group commit, fast batch ingest, a local spool and replay.

- Every event carries a `client_event_id`; the events table has a unique index on it and every
  write is `INSERT ... ON CONFLICT DO NOTHING`, so a retried event is stored once.
- Out-of-order events are kept: an export whose arm is unknown is stored with the arm taken from
  the project's assignment when one exists, and `reconcile_project` fills it in when the
  assignment is created later.
- Events have no foreign keys (an append-only log): the writer checks each batch's distinct
  (experiment_id, arm_id) pairs in one query and refuses unknown ones (`InvalidEventReference`).
- Big PostgreSQL batches are deduplicated in Python, probed for ids already stored, and go
  straight into the table with a binary `COPY`; when a concurrent writer stores one of the ids
  in between, the COPY rolls back to a savepoint and the batch takes the conflict-proof route
  (`COPY` into a temporary table and one `INSERT ... SELECT ... ON CONFLICT DO NOTHING`).
- When the database cannot be reached the rows go to a local SQLite spool (synchronous=FULL:
  committed means fsynced), and are acknowledged only then; `replay_spool` drains it later.

This module never imports `abtest`: the tables are passed in (`RoutingTables`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import Engine, Table

from routing.eager import start_eagerly

EVENT_COLUMNS = (
    "client_event_id",
    "type",
    "project_id",
    "experiment_id",
    "arm_id",
    "occurred_at",
    "received_at",
    "latency_ms",
    "served_by",
    "fallback",
    "error",
    "cache_hit",
    "cost_usd",
    "tokens",
    "intent",
    "output",
    "attributes",
)
_JSON_COLUMNS = ("output", "attributes")
_TIME_COLUMNS = ("occurred_at", "received_at")


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


def row_to_json(row: dict[str, Any]) -> str:
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
    )


def row_from_json(text: str) -> dict[str, Any]:
    row = json.loads(text)
    for name in _TIME_COLUMNS:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    return row


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached (spool), not that the data is bad:
    refused or lost connections, connect and statement timeouts, an exhausted pool."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(
        exc,
        sa.exc.OperationalError
        | sa.exc.InterfaceError
        | sa.exc.DisconnectionError
        | sa.exc.TimeoutError
        | TimeoutError,
    ):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


# --- what the database can store ------------------------------------------------------------

MAX_JSON_DEPTH = 64  # nesting PostgreSQL's jsonb parser takes without hitting its stack limit
MAX_KEY_CHARS = 1000  # client_event_id and project_id are indexed (btree entries < ~2.7 KB)
_INFS = (math.inf, -math.inf)
_TEXT_COLUMNS = ("client_event_id", "type", "project_id", "served_by", "error", "intent")
_INT4_COLUMNS = ("experiment_id", "arm_id", "tokens")
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
    for name in _INT4_COLUMNS:
        value = row.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value not in _INT4
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
    for name in _JSON_COLUMNS:
        found = json_problem(row.get(name), name)
        if found:
            raise UnstorableEvent(*found)


# --- the spool ------------------------------------------------------------------------------


class EventSpool:
    """An append-only local queue in a SQLite file; `append` returns once the rows are fsynced.

    Only storable rows are accepted (`check_storable`). Entries that the database still
    refuses at replay (a bug, or a row spooled by an older version) are moved one by one to
    the file's `dead_letters` table with the error, so that they never hold back the rest;
    `dead_letters` counts them and `dead_letter_entries` lists them.
    The file is created on the first append, so a healthy server never writes to disk here.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "spool.sqlite3"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._depth = 0
        self._dead = 0
        if self.path.exists():
            self._open()
            self._depth, self._dead = self._count()

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS spool ("
                "id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload TEXT NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS dead_letters ("
                "id INTEGER PRIMARY KEY AUTOINCREMENT, spool_id INTEGER NOT NULL, "
                "kind TEXT NOT NULL, payload TEXT NOT NULL, error TEXT NOT NULL, "
                "failed_at TEXT NOT NULL)"
            )
            self._conn = conn
        return self._conn

    def _count(self) -> tuple[int, int]:
        with self._lock:
            conn = self._open()
            depth = int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])
            dead = int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
            return depth, dead

    def append(self, kind: str, rows: Sequence[dict[str, Any]]) -> None:
        """Durably append rows (kind 'event' or 'assignment'); UnstorableEvent (nothing
        appended) when an event row holds a value the database would refuse."""
        if kind == "event":
            for row in rows:
                check_storable(row)
        payloads = [(kind, row_to_json(row)) for row in rows]
        with self._lock:
            conn = self._open()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO spool (kind, payload) VALUES (?, ?)", payloads)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._depth += len(payloads)

    def peek(self, limit: int = 5000) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            if self._conn is None:
                return []
            rows = self._conn.execute(
                "SELECT id, kind, payload FROM spool ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(row_id, kind, row_from_json(payload)) for row_id, kind, payload in rows]

    def remove_through(self, last_id: int) -> None:
        with self._lock:
            conn = self._open()
            conn.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
            self._depth = int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])

    def bury(self, spool_id: int, kind: str, row: dict[str, Any], error: str) -> None:
        """Move one spooled entry to the dead letters (one transaction, fsynced)."""
        with self._lock:
            conn = self._open()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO dead_letters (spool_id, kind, payload, error, failed_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (spool_id, kind, _payload_text(row), error[:2000], utcnow().isoformat()),
                )
                conn.execute("DELETE FROM spool WHERE id = ?", (spool_id,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._dead += 1
            self._depth = int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])

    def dead_letter_entries(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The dead letters, oldest first: id, spool_id, kind, payload (JSON text), error."""
        with self._lock:
            if self._conn is None:
                return []
            rows = self._conn.execute(
                "SELECT id, spool_id, kind, payload, error, failed_at FROM dead_letters "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        names = ("id", "spool_id", "kind", "payload", "error", "failed_at")
        return [dict(zip(names, row, strict=True)) for row in rows]

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dead_letters(self) -> int:
        return self._dead

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _payload_text(row: dict[str, Any]) -> str:
    """A dead letter's row as JSON text that SQLite and any reader can take (a lone surrogate
    or NUL is written as its \\u escape)."""
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()},
        ensure_ascii=True,
        default=repr,
    )


# --- database writes --------------------------------------------------------------------------


class InvalidEventReference(ValueError):
    """Events name an experiment or arm that does not exist, or an arm of another experiment.

    Bad data, not an outage: the batch is refused and never spooled."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid event references: " + "; ".join(self.problems))


@dataclass
class WriteResult:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    spooled: int = 0
    new_ids: set[str] = field(default_factory=set, repr=False)

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.received + other.received,
            self.stored + other.stored,
            self.duplicates + other.duplicates,
            self.spooled + other.spooled,
        )


class EventWriter:
    """Synchronous, idempotent writes of event rows and first assignments (run in a thread)."""

    def __init__(self, engine: Engine, tables: RoutingTables, spool: EventSpool | None) -> None:
        self.engine = engine
        self.tables = tables
        self.spool = spool
        self.postgres = engine.dialect.name == "postgresql"
        self.copy_threshold = 2000  # PostgreSQL: COPY for big batches, jsonb below
        self._local = threading.local()
        # (experiment_id, arm_id) pairs already checked: experiments and arms are never deleted
        # by the application, so a pair that was valid stays valid (bounded, cleared when full).
        self._valid_references: set[tuple[int | None, int | None]] = set()
        self._before_copy: Callable[[], None] | None = None  # tests: runs between probe and COPY

    # events ----------------------------------------------------------------------------------

    def write(self, rows: Sequence[dict[str, Any]]) -> WriteResult:
        """Store rows once each; when the database is unreachable spool them (durably).
        UnstorableEvent, before anything is written, when a row holds what the database would
        refuse."""
        if not rows:
            return WriteResult()
        for row in rows:
            check_storable(row)
        try:
            new_ids = self.insert(rows)
        except Exception as exc:
            if self.spool is None or not is_unavailable(exc):
                raise
            self.spool.append("event", rows)
            return WriteResult(len(rows), 0, 0, len(rows))
        return WriteResult(len(rows), len(new_ids), len(rows) - len(new_ids), 0, new_ids)

    def insert(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert rows, skipping known client_event_ids; returns the ids that were new."""
        if self.postgres:
            return self._insert_postgres(rows)
        return self._insert_generic(rows)

    def _insert_generic(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        events = self.tables.events
        with self.engine.begin() as conn:
            self._check_references(conn, rows)
            rows = self._resolve_arms(conn, rows)
            statement = _insert(conn, events).on_conflict_do_nothing(
                index_elements=["client_event_id"]
            )
            known = self._known_ids(conn, rows)
            conn.execute(statement, rows)
            self._reconcile_unknown_experiment(conn, rows)
        return {row["client_event_id"] for row in rows} - known

    # references (the events table has no foreign keys) -------------------------------------

    def _unchecked_pairs(
        self, rows: Sequence[dict[str, Any]]
    ) -> set[tuple[int | None, int | None]]:
        pairs = {(row.get("experiment_id"), row.get("arm_id")) for row in rows}
        pairs.discard((None, None))
        return pairs - self._valid_references

    def _check_pairs(
        self,
        pairs: set[tuple[int | None, int | None]],
        found: Iterable[tuple[str, int, int | None]],
    ) -> None:
        """Raise unless every pair names an existing experiment and an arm of that experiment.

        `found` holds ('e', experiment_id, None) for each existing experiment and
        ('a', arm_id, its experiment_id) for each existing arm."""
        experiments: set[int] = set()
        arm_experiment: dict[int, int] = {}
        for kind, key, experiment_id in found:
            if kind == "e":
                experiments.add(key)
            else:
                arm_experiment[key] = experiment_id  # type: ignore[assignment]
        problems = []
        for experiment_id, arm_id in sorted(pairs, key=repr):
            if experiment_id is not None and experiment_id not in experiments:
                problems.append(f"experiment_id {experiment_id} does not exist")
            elif arm_id is not None and arm_id not in arm_experiment:
                problems.append(f"arm_id {arm_id} does not exist")
            elif (
                experiment_id is not None
                and arm_id is not None
                and arm_experiment[arm_id] != experiment_id
            ):
                problems.append(
                    f"arm_id {arm_id} belongs to experiment {arm_experiment[arm_id]}, "
                    f"not to experiment_id {experiment_id}"
                )
        if problems:
            raise InvalidEventReference(problems)
        if len(self._valid_references) + len(pairs) > 10_000:
            self._valid_references.clear()
        self._valid_references.update(pairs)

    @staticmethod
    def _pair_keys(pairs: set[tuple[int | None, int | None]]) -> tuple[list[Any], list[Any]]:
        experiments = sorted({e for e, _ in pairs if e is not None}, key=repr)
        arms = sorted({a for _, a in pairs if a is not None}, key=repr)
        return experiments, arms

    def _check_references(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
        """One query: do the batch's experiments and arms exist, and do the arms match?"""
        pairs = self._unchecked_pairs(rows)
        if not pairs:
            return
        experiments, arms = self._pair_keys(pairs)
        e, a = self.tables.experiments, self.tables.experiment_arms
        query = sa.union_all(
            sa.select(sa.literal("e"), e.c.id, sa.null()).where(e.c.id.in_(experiments)),
            sa.select(sa.literal("a"), a.c.id, a.c.experiment_id).where(a.c.id.in_(arms)),
        )
        self._check_pairs(pairs, conn.execute(query))

    def references_unchecked(self, rows: Sequence[dict[str, Any]]) -> bool:
        """Whether some (experiment_id, arm_id) pair of `rows` has not been checked yet."""
        return bool(self._unchecked_pairs(rows))

    def check_references(self, rows: Sequence[dict[str, Any]]) -> None:
        """Raise InvalidEventReference unless every experiment and arm of `rows` exists and
        each arm belongs to its experiment (one query; pairs that passed are remembered)."""
        with self.engine.connect() as conn:
            self._check_references(conn, rows)

    def _pg_check_references(self, cursor: Any, rows: Sequence[dict[str, Any]]) -> None:
        """`_check_references` on this thread's raw PostgreSQL connection."""
        pairs = self._unchecked_pairs(rows)
        if not pairs:
            return
        experiments, arms = self._pair_keys(pairs)
        cursor.execute(
            f"SELECT 'e', id, NULL::int FROM {self.tables.experiments.name} "
            "WHERE id = ANY(%s::bigint[]) UNION ALL "
            f"SELECT 'a', id, experiment_id FROM {self.tables.experiment_arms.name} "
            "WHERE id = ANY(%s::bigint[])",
            [experiments, arms],
        )
        self._check_pairs(pairs, cursor.fetchall())

    def _known_ids(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> set[str]:
        events = self.tables.events
        ids = sorted({row["client_event_id"] for row in rows})
        known: set[str] = set()
        for start in range(0, len(ids), 500):
            known.update(
                conn.execute(
                    sa.select(events.c.client_event_id).where(
                        events.c.client_event_id.in_(ids[start : start + 500])
                    )
                ).scalars()
            )
        return known

    def _resolve_arms(
        self, conn: sa.Connection, rows: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Fill the arm of rows that know their experiment but not their arm."""
        wanted: dict[int, set[str]] = {}
        for row in rows:
            if row.get("arm_id") is None and row.get("experiment_id") is not None:
                wanted.setdefault(row["experiment_id"], set()).add(row["project_id"])
        if not wanted:
            return list(rows)
        found: dict[tuple[int, str], int] = {}
        assignments = self.tables.assignments
        for experiment_id, projects in wanted.items():
            result = conn.execute(
                sa.select(assignments.c.project_id, assignments.c.arm_id).where(
                    assignments.c.experiment_id == experiment_id,
                    assignments.c.project_id.in_(sorted(projects)),
                )
            )
            for project_id, arm_id in result:
                found[(experiment_id, project_id)] = arm_id
        resolved = []
        for row in rows:
            if row.get("arm_id") is None and row.get("experiment_id") is not None:
                arm_id = found.get((row["experiment_id"], row["project_id"]))
                if arm_id is not None:
                    row = {**row, "arm_id": arm_id}
            resolved.append(row)
        return resolved

    def _reconcile_unknown_experiment(
        self, conn: sa.Connection, rows: Sequence[dict[str, Any]]
    ) -> None:
        """Rows stored without an experiment take the project's latest assignment, if any."""
        ids = [row["client_event_id"] for row in rows if row.get("experiment_id") is None]
        for start in range(0, len(ids), 500):
            events = self.tables.events
            conn.execute(
                self._adopt_statement(
                    events.c.client_event_id.in_(ids[start : start + 500]),
                    events.c.experiment_id.is_(None),
                )
            )

    def _adopt_statement(self, *where: Any) -> sa.Update:
        """UPDATE orphan events (no arm) to the arm of their project's latest assignment."""
        events = self.tables.events
        a = self.tables.assignments.alias("a")
        match = sa.and_(
            a.c.project_id == events.c.project_id,
            sa.or_(events.c.experiment_id.is_(None), a.c.experiment_id == events.c.experiment_id),
        )

        def latest(column: Any) -> Any:
            return sa.select(column).where(match).order_by(a.c.id.desc()).limit(1).scalar_subquery()

        return (
            events.update()
            .where(events.c.arm_id.is_(None), sa.exists(sa.select(a.c.id).where(match)), *where)
            .values(experiment_id=latest(a.c.experiment_id), arm_id=latest(a.c.arm_id))
        )

    # PostgreSQL: one persistent connection per writer thread, raw psycopg statements ------

    @contextlib.contextmanager
    def _pg_cursor(self) -> Iterator[Any]:
        """A cursor in a transaction on this thread's own connection (no pool round trip)."""
        raw = getattr(self._local, "raw", None)
        if raw is None:
            raw = self.engine.raw_connection()
            self._local.raw = raw
        try:
            with raw.driver_connection.cursor() as cursor:
                yield cursor
            raw.commit()
        except BaseException as exc:
            self._local.raw = None
            with contextlib.suppress(Exception):
                if is_unavailable(exc):
                    raw.invalidate()
                else:
                    raw.rollback()
            with contextlib.suppress(Exception):
                raw.close()
            raise

    def _pg_copy_events(self, cursor: Any, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Big batch: dedupe, skip ids already stored, COPY the rest straight into the table
        (missing arms resolved from the assignments on the way). The COPY runs in a savepoint:
        if one of its ids is stored after all (a concurrent writer, or a duplicate that the
        sampled probe missed), it fails on the unique index, rolls back to the savepoint, and
        the rows take the ON CONFLICT DO NOTHING route instead: never a duplicate, and the
        returned ids are exactly the ones this call stored."""
        import psycopg

        unique: dict[str, dict[str, Any]] = {}
        for row in rows:  # the first of repeated ids wins, as with ON CONFLICT DO NOTHING
            unique.setdefault(row["client_event_id"], row)
        ids = list(unique)
        # A fresh batch has no stored ids and a retried one has (nearly) all of them: probe a
        # sample, and every id only when the sample finds one.
        step = max(1, len(ids) // _PROBE_SAMPLE)
        if self._pg_stored_ids(cursor, ids[::step] + ids[-1:]):
            for known in self._pg_stored_ids(cursor, ids):
                del unique[known]
            if not unique:
                return set()
        fresh = list(unique.values())
        arms = self._pg_assigned_arms(cursor, fresh)
        if self._before_copy is not None:
            self._before_copy()
        cursor.execute("SAVEPOINT abtest_events_copy")
        try:
            copy_events(cursor, self.tables.events.name, fresh, arms)
        except psycopg.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT abtest_events_copy")
            return self._pg_insert_events(cursor, fresh, direct_copy=False)
        cursor.execute("RELEASE SAVEPOINT abtest_events_copy")
        return set(unique)

    def _pg_stored_ids(self, cursor: Any, ids: list[str]) -> list[str]:
        """The ids among `ids` that are stored: an index probe each (whatever the statistics or
        a generic plan of the prepared statement would make of `= ANY(%s)`)."""
        cursor.execute(
            "SELECT k.id FROM json_array_elements_text(%s::json) AS k(id) CROSS JOIN LATERAL "
            f"(SELECT 1 FROM {self.tables.events.name} e WHERE e.client_event_id = k.id "
            "OFFSET 0) e",
            [orjson.dumps(ids).decode()],
        )
        return [known for (known,) in cursor.fetchall()]

    def _pg_assigned_arms(
        self, cursor: Any, rows: Sequence[dict[str, Any]]
    ) -> dict[tuple[int, str], int]:
        """The assigned arm of each (experiment, project) of rows that lack an arm: a query per
        experiment in the batch (usually one), an index probe per project."""
        wanted: dict[int, set[str]] = {}
        for row in rows:
            if row.get("arm_id") is None and row.get("experiment_id") is not None:
                wanted.setdefault(row["experiment_id"], set()).add(row["project_id"])
        found: dict[tuple[int, str], int] = {}
        for experiment_id, projects in wanted.items():
            # The projects go as one JSON text (psycopg dumps a long list element by element)
            # and are probed in index order, so that neighbouring probes share index pages.
            cursor.execute(
                "SELECT k.p, a.arm_id FROM (SELECT value AS p FROM "
                "json_array_elements_text(%s::json) ORDER BY 1) k "
                f"CROSS JOIN LATERAL (SELECT arm_id FROM {self.tables.assignments.name} x "
                "WHERE x.experiment_id = %s AND x.project_id = k.p OFFSET 0) a",
                [orjson.dumps(list(projects)).decode(), experiment_id],
            )
            for project_id, arm_id in cursor.fetchall():
                found[(experiment_id, project_id)] = arm_id
        return found

    def _pg_insert_events(
        self, cursor: Any, rows: Sequence[dict[str, Any]], direct_copy: bool = True
    ) -> set[str]:
        """Insert rows, skipping known ids; returns the new ids. Big batches take the direct
        COPY (`_pg_copy_events`) unless `direct_copy` is false; then, as for the conflict
        fallback, a COPY into a temporary table and one INSERT ... ON CONFLICT DO NOTHING."""
        self._pg_check_references(cursor, rows)
        if direct_copy and len(rows) >= self.copy_threshold:
            return self._pg_copy_events(cursor, rows)
        events, assignments = self.tables.events.name, self.tables.assignments.name
        columns = ", ".join(EVENT_COLUMNS)
        selected = ", ".join(
            "COALESCE(t.arm_id, a.arm_id)" if c == "arm_id" else f"t.{c}" for c in EVENT_COLUMNS
        )
        # LATERAL ... OFFSET 0 (not pulled up into a join): one index probe per armless row,
        # whatever the often stale statistics of a fast-growing assignments table suggest.
        join = (
            f"LEFT JOIN LATERAL (SELECT arm_id FROM {assignments} x WHERE t.arm_id IS NULL "
            "AND x.experiment_id = t.experiment_id AND x.project_id = t.project_id OFFSET 0) a "
            "ON true "
            "ON CONFLICT (client_event_id) DO NOTHING RETURNING client_event_id"
        )
        if len(rows) >= self.copy_threshold:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _abtest_events_in ON COMMIT DELETE ROWS "
                f"AS SELECT {columns} FROM {events} WITH NO DATA"
            )
            copy_events(cursor, "_abtest_events_in", rows)
            cursor.execute(
                f"INSERT INTO {events} ({columns}) SELECT {selected} "
                f"FROM _abtest_events_in t {join}"
            )
        else:
            cursor.execute(
                f"INSERT INTO {events} ({columns}) SELECT {selected} "
                f"FROM jsonb_to_recordset(%s::jsonb) AS t({PG_EVENT_RECORD}) {join}",
                [_rows_json(rows)],
            )
        return {row[0] for row in cursor.fetchall()}

    def _pg_first_assignments(
        self, cursor: Any, items: dict[tuple[int, str], tuple[int, str]]
    ) -> dict[tuple[int, str], tuple[int, str]]:
        """Insert-or-read in one statement, then adopt orphan events of the new assignments."""
        assignments, events = self.tables.assignments.name, self.tables.events.name
        new = [{"e": e, "p": p, "a": a, "s": s} for (e, p), (a, s) in items.items()]
        # One round trip: insert the new assignments, let them adopt their project's orphan
        # events (exports that arrived first), and read back what is stored for every key.
        cursor.execute(
            f"WITH {first_assignment_ctes(assignments, events, '%s')} "
            "SELECT e, p, arm_id, source FROM st",
            [json_text(new)],
        )
        result = cursor.fetchall()
        return {(e, p): (a, s) for e, p, a, s in result if a is not None}

    def _insert_postgres(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        with self._pg_cursor() as cursor:
            stored = self._pg_insert_events(cursor, rows)
        if any(row.get("experiment_id") is None for row in rows):
            with self.engine.begin() as conn:
                self._reconcile_unknown_experiment(conn, rows)
        return stored

    # assignments -----------------------------------------------------------------------------

    def first_assignments(
        self, items: Sequence[tuple[int, str, int, str]]
    ) -> dict[tuple[int, str], tuple[int, str]]:
        """Store `(experiment_id, project_id, arm_id, source)` unless the project already has an
        assignment; return the stored `(arm_id, source)` of every key. New assignments adopt the
        project's orphan events (reconciliation of out-of-order exports)."""
        unique = {(e, p): (a, s) for e, p, a, s in items}
        if self.postgres:
            with self._pg_cursor() as cursor:
                return self._pg_first_assignments(cursor, unique)
        assignments = self.tables.assignments
        now = utcnow()
        values = [
            {"experiment_id": e, "project_id": p, "arm_id": a, "source": s, "assigned_at": now}
            for (e, p), (a, s) in unique.items()
        ]
        with self.engine.begin() as conn:
            inserted = conn.execute(
                _insert(conn, assignments)
                .values(values)
                .on_conflict_do_nothing(index_elements=["experiment_id", "project_id"])
                .returning(assignments.c.experiment_id, assignments.c.project_id)
            ).all()
            stored = self._stored(conn, list(unique))
            new = [(e, p, stored[(e, p)][0]) for e, p in inserted]
            if new:
                self._adopt_orphans(conn, new)
        return stored

    def write_together(
        self, assignments: Sequence[tuple[int, str, int, str]], rows: Sequence[dict[str, Any]]
    ) -> tuple[dict[tuple[int, str], tuple[int, str]] | None, WriteResult]:
        """First assignments, then events (their starts taking the stored arms): the thread
        path of the request's group commit (SQLite; on PostgreSQL only batches holding an event
        without an experiment, `routing.pg_gateway` writes the others in one statement). When
        the database is unreachable both are spooled: the assignments come back as None
        (unconfirmed) and the events as spooled. The rows were checked by the router
        (`check_storable`); the spool checks them again before it takes them."""
        try:
            references = batch_references(assignments, rows)
            if self.references_unchecked(references):  # before anything is written
                self.check_references(references)
            stored = self.first_assignments(assignments) if assignments else {}
            rows = _starts_take_stored_arms(rows, stored)
            new_ids = self.insert(rows) if rows else set()
        except Exception as exc:
            if self.spool is None or not is_unavailable(exc):
                raise
            return None, self.spool_together(assignments, rows)
        return stored, WriteResult(len(rows), len(new_ids), len(rows) - len(new_ids), 0, new_ids)

    def spool_together(
        self,
        assignments: Sequence[tuple[int, str, int | None, str]],
        rows: Sequence[dict[str, Any]],
    ) -> WriteResult:
        """Spool first assignments and events while the database is unreachable (fsynced
        before this returns); replay stores the assignments first."""
        assert self.spool is not None
        if assignments:
            self.spool.append(
                "assignment",
                [
                    {"experiment_id": e, "project_id": p, "arm_id": a, "source": s}
                    for e, p, a, s in assignments
                ],
            )
        if rows:
            self.spool.append("event", rows)
        return WriteResult(len(rows), 0, 0, len(rows))

    def _stored(
        self, conn: sa.Connection, keys: Sequence[tuple[int, str]]
    ) -> dict[tuple[int, str], tuple[int, str]]:
        assignments = self.tables.assignments
        by_experiment: dict[int, list[str]] = {}
        for experiment_id, project_id in keys:
            by_experiment.setdefault(experiment_id, []).append(project_id)
        stored: dict[tuple[int, str], tuple[int, str]] = {}
        for experiment_id, projects in by_experiment.items():
            for start in range(0, len(projects), 500):
                result = conn.execute(
                    sa.select(
                        assignments.c.project_id, assignments.c.arm_id, assignments.c.source
                    ).where(
                        assignments.c.experiment_id == experiment_id,
                        assignments.c.project_id.in_(projects[start : start + 500]),
                    )
                )
                for project_id, arm_id, source in result:
                    stored[(experiment_id, project_id)] = (arm_id, source)
        return stored

    def get_assignments(
        self, keys: Sequence[tuple[int, str]]
    ) -> dict[tuple[int, str], tuple[int, str]]:
        with self.engine.connect() as conn:
            return self._stored(conn, keys)

    def _adopt_orphans(self, conn: sa.Connection, new: Sequence[tuple[int, str, int]]) -> None:
        events = self.tables.events
        conn.execute(
            events.update()
            .where(
                events.c.project_id == sa.bindparam("p"),
                events.c.arm_id.is_(None),
                sa.or_(
                    events.c.experiment_id.is_(None),
                    events.c.experiment_id == sa.bindparam("e"),
                ),
            )
            .values(experiment_id=sa.bindparam("e"), arm_id=sa.bindparam("a")),
            [{"e": e, "p": p, "a": a} for e, p, a in new],
        )

    def reconcile_all(self) -> int:
        """Give every orphan event (no arm) the arm of its project's assignment; returns rows."""
        with self.engine.begin() as conn:
            return conn.execute(self._adopt_statement()).rowcount or 0


def batch_references(
    assignments: Sequence[tuple[int, str, int | None, str]], rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The (experiment_id, arm_id) references of a group commit: its events' and its first
    assignments' (the tables have no foreign keys: `EventWriter.check_references`)."""
    return [*rows, *({"experiment_id": e, "arm_id": a} for e, _, a, _ in assignments)]


def _starts_take_stored_arms(
    rows: Sequence[dict[str, Any]], stored: dict[tuple[int, str], tuple[int, str]]
) -> Sequence[dict[str, Any]]:
    """A start event counts in its project's stored arm (intention to treat), even when a
    concurrent request stored the project first in another arm."""
    if not stored:
        return rows
    fixed = []
    for row in rows:
        found = stored.get((row.get("experiment_id"), row.get("project_id")))  # type: ignore[arg-type]
        if row.get("type") == "start" and found is not None and row.get("arm_id") != found[0]:
            row = {**row, "arm_id": found[0]}
        fixed.append(row)
    return fixed


def _insert(conn: sa.Connection, table: Table):  # noqa: ANN202 - dialect-specific Insert
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


_PG_TYPES = {
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
# the column list of `jsonb_to_recordset(...) AS t(...)` for event rows
PG_EVENT_RECORD = ", ".join(f"{c} {_PG_TYPES[c]}" for c in EVENT_COLUMNS)
_COLUMN_SET = set(EVENT_COLUMNS)


def first_assignment_ctes(assignments: str, events: str, param: str) -> str:
    """The WITH-clause pieces of a batch of first assignments (`param`: a JSON array of
    {e, p, a, s}): `i` the proposals, `ins` those inserted (first writer wins), `st` what is
    stored for every key, and `adopt`, which gives the new assignments their projects' orphan
    events (exports that arrived first). LATERAL ... OFFSET 0 keeps each lookup an index probe
    whatever the often stale statistics of a fast-growing assignments table suggest."""
    return (
        f"i AS (SELECT * FROM jsonb_to_recordset({param}::jsonb) "
        "AS i(e int, p text, a int, s text)), "
        f"ins AS (INSERT INTO {assignments} "
        "(experiment_id, project_id, arm_id, source, assigned_at) "
        "SELECT e, p, a, s, now() FROM i ON CONFLICT (experiment_id, project_id) DO NOTHING "
        "RETURNING experiment_id, project_id, arm_id, source), "
        "st AS (SELECT i.e, i.p, COALESCE(ins.arm_id, x.arm_id) AS arm_id, "
        "COALESCE(ins.source, x.source) AS source FROM i "
        "LEFT JOIN ins ON ins.experiment_id = i.e AND ins.project_id = i.p "
        f"LEFT JOIN LATERAL (SELECT y.arm_id, y.source FROM {assignments} y "
        "WHERE ins.arm_id IS NULL AND y.experiment_id = i.e AND y.project_id = i.p "
        "OFFSET 0) x ON true), "
        f"adopt AS (UPDATE {events} ev SET experiment_id = ins.experiment_id, "
        "arm_id = ins.arm_id FROM ins WHERE ev.project_id = ins.project_id "
        "AND ev.arm_id IS NULL "
        "AND (ev.experiment_id IS NULL OR ev.experiment_id = ins.experiment_id))"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_text(value: Any) -> str:
    """JSON for a query parameter (`_json_bytes`, as text)."""
    return _json_bytes(value).decode()


def _rows_json(rows: Sequence[dict[str, Any]]) -> str:
    """The batch as one JSON array for `jsonb_to_recordset` (one parameter)."""
    if all(row.keys() == _COLUMN_SET for row in rows):  # EventRecord.to_row's shape
        return json_text(rows)
    return json_text([{name: row.get(name) for name in EVENT_COLUMNS} for row in rows])


# Binary COPY: PostgreSQL parses no text, psycopg formats each row in C. The JSON columns are
# passed as Python objects and dumped by `_json_bytes` (orjson: ~3x faster than json.dumps).
_COPY_TYPES = [
    {"experiment_id": "int4", "arm_id": "int4", "tokens": "int4"}.get(name, _PG_TYPES[name])
    for name in EVENT_COLUMNS
]
_ROW_VALUES = itemgetter(*EVENT_COLUMNS)
_FALLBACK, _CACHE_HIT, _TOKENS = (
    EVENT_COLUMNS.index(c) for c in ("fallback", "cache_hit", "tokens")
)
_TIMES = tuple(EVENT_COLUMNS.index(c) for c in _TIME_COLUMNS)
_PROJECT, _EXPERIMENT, _ARM = (
    EVENT_COLUMNS.index(c) for c in ("project_id", "experiment_id", "arm_id")
)
_PROBE_SAMPLE = 32  # ids probed first in a big batch (see EventWriter._pg_copy_events)
_INT4 = range(-(2**31), 2**31)


def _json_bytes(value: Any) -> bytes:
    """orjson, and the standard library for what orjson refuses (non-string keys, integers
    beyond 64 bits, lone surrogates)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, default=_json_default).encode()


def _as_time(value: Any) -> Any:
    """Times are stored as timestamptz: a naive time (or ISO text) is taken as UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _as_flag(value: Any) -> bool:
    if value is None:
        return False
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise ValueError(f"{value!r} is not a boolean")


def _as_int4(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in _INT4:
        return int(value)
    raise ValueError(f"tokens {value!r} is not a 32-bit integer")


def _copy_values(row: dict[str, Any]) -> list[Any]:
    """One row of EVENT_COLUMNS for `copy_events`. Checked in Python what a binary COPY would
    not refuse by itself: flags must be booleans (None: false), tokens must fit an int4."""
    try:
        values = list(_ROW_VALUES(row))
    except KeyError:
        values = [row.get(name) for name in EVENT_COLUMNS]
    flag = values[_FALLBACK]
    if flag is not True and flag is not False:
        values[_FALLBACK] = _as_flag(flag)
    flag = values[_CACHE_HIT]
    if flag is not True and flag is not False:
        values[_CACHE_HIT] = _as_flag(flag)
    tokens = values[_TOKENS]
    if tokens is not None and (tokens.__class__ is not int or tokens not in _INT4):
        values[_TOKENS] = _as_int4(tokens)
    for index in _TIMES:
        value = values[index]
        if value.__class__ is not datetime or value.tzinfo is None:
            values[index] = _as_time(value)
    return values


def copy_events(
    cursor: Any,
    table: str,
    rows: Iterable[dict[str, Any]],
    assigned_arms: dict[tuple[int, str], int] | None = None,
) -> None:
    """`COPY table (EVENT_COLUMNS) FROM STDIN` in binary format on a psycopg cursor. A row
    without an arm takes `assigned_arms[(experiment_id, project_id)]` when there is one."""
    from psycopg.types.json import set_json_dumps

    set_json_dumps(_json_bytes, cursor)
    columns = ", ".join(EVENT_COLUMNS)
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_COPY_TYPES)
        write = copy.write_row
        if not assigned_arms:
            for row in rows:
                write(_copy_values(row))
            return
        for row in rows:
            values = _copy_values(row)
            if values[_ARM] is None:
                arm_id = assigned_arms.get((values[_EXPERIMENT], values[_PROJECT]))
                if arm_id is not None:
                    values[_ARM] = arm_id
            write(values)


def replay_spool(writer: EventWriter, spool: EventSpool, limit: int = 5000) -> int:
    """Move spooled rows into the database (idempotent); returns how many were replayed
    (dead letters included).

    Raises the database error when it is still unreachable; the spool is then unchanged. When
    the database refuses a chunk for its data, the chunk is replayed entry by entry and each
    entry it still refuses goes to the spool's dead letters: one bad row never holds back the
    rows behind it.
    """
    replayed = 0
    while True:
        entries = spool.peek(limit)
        if not entries:
            return replayed
        try:
            _replay_entries(writer, entries, {})
        except Exception as exc:
            if is_unavailable(exc):
                raise
            stored: dict[tuple[int, str], tuple[int, str]] = {}
            for entry in entries:
                _replay_one(writer, spool, entry, stored)
        spool.remove_through(entries[-1][0])
        replayed += len(entries)


def _replay_entries(
    writer: EventWriter,
    entries: Sequence[tuple[int, str, dict[str, Any]]],
    stored: dict[tuple[int, str], tuple[int, str]],
) -> None:
    """Replay entries in one go; `stored` collects the stored assignments (and is read by the
    start events, which count in the arm that won, not the one they were spooled with)."""
    assignments = [row for _, kind, row in entries if kind == "assignment"]
    events = [row for _, kind, row in entries if kind == "event"]
    if assignments:
        stored.update(
            writer.first_assignments(
                [
                    (r["experiment_id"], r["project_id"], r["arm_id"], r["source"])
                    for r in assignments
                ]
            )
        )
    events = list(_starts_take_stored_arms(events, stored))
    if events:
        for row in events:
            check_storable(row)
        writer.insert(events)


def _replay_one(
    writer: EventWriter,
    spool: EventSpool,
    entry: tuple[int, str, dict[str, Any]],
    stored: dict[tuple[int, str], tuple[int, str]],
) -> None:
    """Replay one entry; bury it in the dead letters when the database refuses its data."""
    try:
        _replay_entries(writer, [entry], stored)
    except Exception as exc:
        if is_unavailable(exc):
            raise
        spool_id, kind, row = entry
        spool.bury(spool_id, kind, row, f"{type(exc).__name__}: {exc}")


# --- group commit -----------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


class _Drains:
    """A group commit's drain tasks on one event loop, and how many of them are flushing."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.tasks: set[Any] = set()
        self.flushing = 0


class GroupCommit(Generic[T, R]):
    """Batches items submitted by concurrent coroutines into one call of `flush` (in a thread,
    or awaited on the loop when `flush` is a coroutine function).

    While a flush runs, new items queue up and go together in the next one, so a database
    commit is shared by every request that arrived in the meantime. With `max_in_flight` > 1
    the next batch need not wait for the previous one: the database works on one batch while
    the requests of the next are still being prepared (each flush then needs a connection of
    its own).
    """

    def __init__(
        self,
        flush: Callable[[list[T]], list[R]] | Callable[[list[T]], Awaitable[list[R]]],
        executor: Executor | None = None,
        max_batch: int = 2000,
        max_in_flight: int = 1,
        eager_batch: int | None = None,
    ) -> None:
        self._flush = flush
        self._flush_is_async = inspect.iscoroutinefunction(flush)
        self._executor = executor
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        # An async flush of this many waiting items starts at once, inside the submit that
        # completes them, when a batch slot is free (see submit)
        self.eager_batch = eager_batch if self._flush_is_async else None
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._drains = _Drains(None)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        drains = self._drains
        if drains.loop is not loop:  # a new event loop (tests run several): start afresh
            drains = self._drains = _Drains(loop)
        eager = self.eager_batch is not None and len(self._pending) >= self.eager_batch
        if eager and drains.flushing < self.max_in_flight:
            # Requests arrive in bursts (the answers of one commit go out together and their
            # clients come back together). A drain task would run only after the whole burst
            # has been handled, so the database would wait for the loop and then the loop for
            # the database; starting this part's flush now (up to its first wait: the
            # statement is sent) lets the two overlap.
            self._start_drain(drains, loop, eager=True)
        elif len(drains.tasks) < self.max_in_flight and drains.flushing >= len(drains.tasks):
            self._start_drain(drains, loop, eager=False)  # else an idle drain takes the item
        return await future

    def _start_drain(self, drains: _Drains, loop: asyncio.AbstractEventLoop, eager: bool) -> None:
        coroutine = self._drain(drains, eager)
        task = start_eagerly(coroutine, loop) if eager else loop.create_task(coroutine)
        if task is not None:
            drains.tasks.add(task)
            task.add_done_callback(drains.tasks.discard)  # also when cancelled before it ran

    async def _drain(self, drains: _Drains, eager: bool) -> None:
        try:
            if not eager:
                await asyncio.sleep(0)  # let requests that are ready join this batch
            await self._drain_pending(drains)
        finally:  # on the loop's thread, before any other submit can look at the count
            drains.tasks.discard(asyncio.current_task())

    async def _drain_pending(self, drains: _Drains) -> None:
        loop = asyncio.get_running_loop()
        # with every slot flushing, the flushing drains take what is pending when they finish
        while self._pending and drains.flushing < self.max_in_flight:
            batch, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            items = [item for item, _ in batch]
            drains.flushing += 1
            try:
                if self._flush_is_async:  # runs on the loop: no thread, no GIL hand-offs
                    results = await self._flush(items)  # type: ignore[misc]
                else:
                    results = await loop.run_in_executor(self._executor, self._flush, items)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            finally:
                drains.flushing -= 1
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
