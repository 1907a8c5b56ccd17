"""The portable event store (any SQLAlchemy dialect): idempotent event inserts, first
assignments, reference checks, reconciliation of out-of-order exports and spool replay."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, Table
from sqlalchemy.dialects import postgresql, sqlite

from routing.eventlog.schema import (
    EVENT_KEYS,
    KEY_COLUMNS,
    RoutingTables,
    check_storable,
    first_of_each_id,
    utcnow,
)
from routing.eventlog.spool import EventSpool
from routing.eventlog.store import (
    EventStore,
    FirstAssignment,
    InvalidEventReference,
    WriteResult,
    is_unavailable,
)


class SqlEventStore:
    """The portable `EventStore`: synchronous, idempotent writes of event rows and first
    assignments through SQLAlchemy (run in a thread). `PostgresEventStore` replaces the
    writes with COPY and one-statement batches."""

    postgres = False

    def __init__(self, engine: Engine, tables: RoutingTables, spool: EventSpool | None) -> None:
        self.engine = engine
        self.tables = tables
        self.spool = spool
        # (experiment_id, arm_id) pairs already checked: experiments and arms are never deleted
        # by the application, so a pair that was valid stays valid (bounded, cleared when full).
        self._valid_references: set[tuple[int | None, int | None]] = set()

    # events ----------------------------------------------------------------------------------

    def write_events(self, rows: Sequence[dict[str, Any]]) -> WriteResult:
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
        events = self.tables.events
        with self.engine.begin() as conn:
            self._check_references(conn, rows)
            rows = self._resolve_arms(conn, rows)
            if conn.dialect.name == "postgresql":  # partitioned: the ids are in EVENT_KEYS
                rows = first_of_each_id(rows)
                new_ids = _claim_keys(conn, rows)
                claimed = [row for row in rows if row["client_event_id"] in new_ids]
                if claimed:
                    conn.execute(events.insert(), claimed)
            else:
                statement = _insert(conn, events).on_conflict_do_nothing(
                    index_elements=["client_event_id"]
                )
                new_ids = {row["client_event_id"] for row in rows} - self._known_ids(conn, rows)
                conn.execute(statement, rows)
            self._reconcile_unknown_experiment(conn, rows)
        return new_ids

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
        orphans = [row for row in rows if row.get("experiment_id") is None]
        events = self.tables.events
        for start in range(0, len(orphans), 500):
            chunk = orphans[start : start + 500]
            conn.execute(
                self._adopt_statement(
                    events.c.client_event_id.in_([row["client_event_id"] for row in chunk]),
                    # the same rows; lets ix_events_orphans (project_id, armless) find them
                    # without an index on client_event_id (PostgreSQL: see EVENT_KEYS)
                    events.c.project_id.in_({row["project_id"] for row in chunk}),
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

    # assignments -----------------------------------------------------------------------------

    def write_first(
        self, items: Sequence[FirstAssignment]
    ) -> dict[tuple[int, str], tuple[int, str]]:
        """Store `(experiment_id, project_id, arm_id, source)` unless the project already has an
        assignment; return the stored `(arm_id, source)` of every key. New assignments adopt the
        project's orphan events (reconciliation of out-of-order exports)."""
        return self._store_first({(e, p): (a, s) for e, p, a, s in items})

    def _store_first(
        self, unique: dict[tuple[int, str], tuple[int | None, str]]
    ) -> dict[tuple[int, str], tuple[int, str]]:
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
        self, assignments: Sequence[FirstAssignment], rows: Sequence[dict[str, Any]]
    ) -> tuple[dict[tuple[int, str], tuple[int, str]] | None, WriteResult]:
        """First assignments, then events (their starts taking the stored arms): the thread
        path of the request's group commit (SQLite; on PostgreSQL only batches holding an event
        without an experiment, `routing.eventlog.pg_gateway` writes the others in one statement).
        When
        the database is unreachable both are spooled: the assignments come back as None
        (unconfirmed) and the events as spooled. The rows were checked by the router
        (`check_storable`); the spool checks them again before it takes them."""
        try:
            references = batch_references(assignments, rows)
            if self.references_unchecked(references):  # before anything is written
                self.check_references(references)
            stored = self.write_first(assignments) if assignments else {}
            rows = _starts_take_stored_arms(rows, stored)
            new_ids = self.insert(rows) if rows else set()
        except Exception as exc:
            if self.spool is None or not is_unavailable(exc):
                raise
            return None, self.spool_together(assignments, rows)
        return stored, WriteResult(len(rows), len(new_ids), len(rows) - len(new_ids), 0, new_ids)

    def spool_together(
        self,
        assignments: Sequence[FirstAssignment],
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

    def replay(self, limit: int = 5000) -> int:
        """Store what the spool holds (`replay_spool`); 0 without a spool."""
        return replay_spool(self, self.spool, limit) if self.spool is not None else 0

    def reconcile_all(self) -> int:
        """Give every orphan event (no arm) the arm of its project's assignment; returns rows."""
        with self.engine.begin() as conn:
            return conn.execute(self._adopt_statement()).rowcount or 0


def batch_references(
    assignments: Sequence[FirstAssignment], rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The (experiment_id, arm_id) references of a group commit: its events' and its first
    assignments' (the tables have no foreign keys: `SqlEventStore.check_references`)."""
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


_event_keys = sa.table(EVENT_KEYS, *(sa.column(name) for name in KEY_COLUMNS))


def _claim_keys(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """PostgreSQL: claim the ids of `rows` (one row per id) in EVENT_KEYS in this transaction;
    returns those claimed (an id stored or being stored by another writer is not)."""
    claimed: set[str] = set()
    for start in range(0, len(rows), 1000):
        keys = [{name: row[name] for name in KEY_COLUMNS} for row in rows[start : start + 1000]]
        statement = postgresql.insert(_event_keys).values(keys).on_conflict_do_nothing()
        claimed.update(conn.execute(statement.returning(_event_keys.c.client_event_id)).scalars())
    return claimed


def _insert(conn: sa.Connection, table: Table) -> Any:
    """The dialect's INSERT (it has ON CONFLICT DO NOTHING)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def replay_spool(writer: EventStore, spool: EventSpool, limit: int = 5000) -> int:
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
    writer: EventStore,
    entries: Sequence[tuple[int, str, dict[str, Any]]],
    stored: dict[tuple[int, str], tuple[int, str]],
) -> None:
    """Replay entries in one go; `stored` collects the stored assignments (and is read by the
    start events, which count in the arm that won, not the one they were spooled with)."""
    assignments = [row for _, kind, row in entries if kind == "assignment"]
    events = [row for _, kind, row in entries if kind == "event"]
    if assignments:
        stored.update(
            writer.write_first(
                [
                    FirstAssignment(r["experiment_id"], r["project_id"], r["arm_id"], r["source"])
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
    writer: EventStore,
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
