"""PostgreSQL: the binary COPY codec and the one-statement group-commit SQL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Engine

from routing.eventlog.schema import (
    COPY_TYPES,
    EVENT_COLUMNS,
    EVENT_KEYS,
    INT4,
    KEY_COLUMNS,
    PG_EVENT_RECORD,
    PG_TYPES,
    TIME_COLUMNS,
    RoutingTables,
    first_of_each_id,
    json_bytes,
    json_text,
    rows_json,
)
from routing.eventlog.spool import EventSpool
from routing.eventlog.sql import SqlEventStore
from routing.eventlog.store import is_unavailable


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


def json_rows(param: str) -> str:
    """The event rows of the JSON array `param` as a relation, one per client_event_id (the
    first of repeated ids, as a plain ON CONFLICT DO NOTHING would keep)."""
    columns = ", ".join(EVENT_COLUMNS)
    return (
        f"(SELECT DISTINCT ON (client_event_id) {columns} FROM ROWS FROM "
        f"(jsonb_to_recordset({param}::jsonb) AS ({PG_EVENT_RECORD})) "
        f"WITH ORDINALITY AS r({columns}, n) ORDER BY client_event_id, n)"
    )


def keyed_insert_ctes(events: str, rows: str) -> str:
    """`k` claims in EVENT_KEYS the id of every row of the relation `rows` (one row per id)
    and `ev` stores the events whose id it claimed, returning their ids. A concurrent writer of
    an id waits for the other's commit, then skips it, whichever partition each event is in."""
    columns = ", ".join(EVENT_COLUMNS)
    keys = ", ".join(KEY_COLUMNS)
    return (
        f"k AS (INSERT INTO {EVENT_KEYS} ({keys}) SELECT {keys} FROM {rows} "
        "ON CONFLICT DO NOTHING RETURNING client_event_id), "
        f"ev AS (INSERT INTO {events} ({columns}) "
        f"SELECT {', '.join(f'w.{c}' for c in EVENT_COLUMNS)} FROM {rows} w "
        "JOIN k ON k.client_event_id = w.client_event_id RETURNING client_event_id)"
    )


def insert_rows_statement(events: str, source: str, arms_from: str | None = None) -> str:
    """Store the rows of the relation `source` once per client_event_id (`keyed_insert_ctes`);
    an armless row takes its project's assignment in `arms_from` when given. Returns the ids
    stored."""
    selected = ", ".join(
        "COALESCE(t.arm_id, a.arm_id) AS arm_id" if c == "arm_id" and arms_from else f"t.{c}"
        for c in EVENT_COLUMNS
    )
    # LATERAL ... OFFSET 0 (not pulled up into a join): one index probe per armless row,
    # whatever the often stale statistics of a fast-growing assignments table suggest.
    join = (
        f"LEFT JOIN LATERAL (SELECT arm_id FROM {arms_from} x WHERE t.arm_id IS NULL "
        "AND x.experiment_id = t.experiment_id AND x.project_id = t.project_id OFFSET 0) a "
        "ON true"
        if arms_from
        else ""
    )
    return (
        f"WITH w AS (SELECT {selected} FROM {source} t {join}), "
        f"{keyed_insert_ctes(events, 'w')} SELECT client_event_id FROM ev"
    )


def batch_statement(assignments: str, events: str) -> str:
    """The one statement of a batch; `%(a)s` and `%(r)s` are JSON arrays of the new
    assignments ({e, p, a, s}) and of the event rows."""
    arm = (
        "CASE WHEN t.type = 'start' THEN COALESCE(st.arm_id, t.arm_id, z.arm_id) "
        "ELSE COALESCE(t.arm_id, st.arm_id, z.arm_id) END AS arm_id"
    )
    selected = ", ".join(arm if c == "arm_id" else f"t.{c}" for c in EVENT_COLUMNS)
    return (
        f"WITH {first_assignment_ctes(assignments, events, '%(a)s')}, "
        f"w AS (SELECT {selected} FROM {json_rows('%(r)s')} t "
        "LEFT JOIN st ON st.e = t.experiment_id AND st.p = t.project_id "
        f"LEFT JOIN LATERAL (SELECT y.arm_id FROM {assignments} y WHERE t.arm_id IS NULL "
        "AND st.arm_id IS NULL AND y.experiment_id = t.experiment_id "
        "AND y.project_id = t.project_id OFFSET 0) z ON true "
        # a start whose stored arm is invisible here (stored by a concurrent batch) waits,
        # its id unclaimed: the retry of `_insert_late_starts` stores it
        "WHERE NOT (t.type = 'start' AND st.e IS NOT NULL AND st.arm_id IS NULL)), "
        f"{keyed_insert_ctes(events, 'w')} "
        "SELECT e, p, arm_id, source FROM st "
        "UNION ALL SELECT NULL, client_event_id, NULL, NULL FROM ev"
    )


_ROW_VALUES = itemgetter(*EVENT_COLUMNS)
_FALLBACK, _CACHE_HIT, _TOKENS = (
    EVENT_COLUMNS.index(c) for c in ("fallback", "cache_hit", "tokens")
)
_TIMES = tuple(EVENT_COLUMNS.index(c) for c in TIME_COLUMNS)
_PROJECT, _EXPERIMENT, _ARM = (
    EVENT_COLUMNS.index(c) for c in ("project_id", "experiment_id", "arm_id")
)


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
    if isinstance(value, int) and not isinstance(value, bool) and value in INT4:
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
    if tokens is not None and (tokens.__class__ is not int or tokens not in INT4):
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

    set_json_dumps(json_bytes, cursor)
    columns = ", ".join(EVENT_COLUMNS)
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(COPY_TYPES)
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


def copy_keys(cursor: Any, rows: Iterable[dict[str, Any]]) -> None:
    """`COPY event_keys FROM STDIN` (binary) of the rows' ids: raises UniqueViolation when one
    of them is stored already (`_pg_copy_events` then takes the ON CONFLICT route)."""
    keys = ", ".join(KEY_COLUMNS)
    with cursor.copy(f"COPY {EVENT_KEYS} ({keys}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([PG_TYPES[name] for name in KEY_COLUMNS])
        write = copy.write_row
        for row in rows:
            received = row.get("received_at")
            if received.__class__ is not datetime or received.tzinfo is None:
                received = _as_time(received)
            write((row["client_event_id"], received))


class PostgresEventStore(SqlEventStore):
    """The `EventStore` on PostgreSQL: one persistent connection per writer thread and raw
    psycopg statements; big batches go in with a binary COPY (see `_pg_copy_events`)."""

    postgres = True
    probe_sample = 32  # ids probed first in a big batch (see _pg_copy_events)

    def __init__(self, engine: Engine, tables: RoutingTables, spool: EventSpool | None) -> None:
        super().__init__(engine, tables, spool)
        self.copy_threshold = 2000  # COPY for big batches, jsonb below
        self._local = threading.local()
        self._before_copy: Callable[[], None] | None = None  # tests: runs between probe and COPY

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

    @contextlib.contextmanager
    def _pg_cursor(self) -> Iterator[Any]:
        """A cursor in a transaction on this thread's own connection (no pool round trip)."""
        raw = getattr(self._local, "raw", None)
        if raw is None:
            raw = self.engine.raw_connection()
            self._local.raw = raw
        try:
            driver = raw.driver_connection
            assert driver is not None  # a checked-out pool connection has its driver connection
            with driver.cursor() as cursor:
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
        sampled probe missed), the COPY of its key fails on event_keys' primary key, rolls back
        to the savepoint, and the rows take the ON CONFLICT DO NOTHING route instead: never a
        duplicate, and the returned ids are exactly the ones this call stored."""
        import psycopg

        unique = {row["client_event_id"]: row for row in first_of_each_id(rows)}
        ids = list(unique)
        # A fresh batch has no stored ids and a retried one has (nearly) all of them: probe a
        # sample, and every id only when the sample finds one.
        step = max(1, len(ids) // self.probe_sample)
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
            copy_keys(cursor, fresh)  # a stored id fails here, before any event is copied
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
            f"(SELECT 1 FROM {EVENT_KEYS} e WHERE e.client_event_id = k.id "
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
        if len(rows) >= self.copy_threshold:
            columns = ", ".join(EVENT_COLUMNS)
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _abtest_events_in ON COMMIT DELETE ROWS "
                f"AS SELECT {columns} FROM {events} WITH NO DATA"
            )
            copy_events(cursor, "_abtest_events_in", first_of_each_id(rows))
            source = "(SELECT DISTINCT ON (client_event_id) * FROM _abtest_events_in)"
            cursor.execute(insert_rows_statement(events, source, assignments))
        else:
            cursor.execute(
                insert_rows_statement(events, json_rows("%s"), assignments), [rows_json(rows)]
            )
        return {row[0] for row in cursor.fetchall()}

    def _store_first(
        self, items: dict[tuple[int, str], tuple[int | None, str]]
    ) -> dict[tuple[int, str], tuple[int, str]]:
        """Insert-or-read in one statement, then adopt orphan events of the new assignments."""
        assignments, events = self.tables.assignments.name, self.tables.events.name
        new = [{"e": e, "p": p, "a": a, "s": s} for (e, p), (a, s) in items.items()]
        # One round trip: insert the new assignments, let them adopt their project's orphan
        # events (exports that arrived first), and read back what is stored for every key.
        with self._pg_cursor() as cursor:
            cursor.execute(
                f"WITH {first_assignment_ctes(assignments, events, '%s')} "
                "SELECT e, p, arm_id, source FROM st",
                [json_text(new)],
            )
            result = cursor.fetchall()
        return {(e, p): (a, s) for e, p, a, s in result if a is not None}

    def insert(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert rows, skipping known client_event_ids; returns the ids that were new."""
        with self._pg_cursor() as cursor:
            stored = self._pg_insert_events(cursor, rows)
        if any(row.get("experiment_id") is None for row in rows):
            with self.engine.begin() as conn:
                self._reconcile_unknown_experiment(conn, rows)
        return stored
