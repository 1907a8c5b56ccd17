"""PostgreSQL event partitions (migration 0009): months created ahead, and a retention that
drops only what is exported and rolled up.

`events` is partitioned by the month of `received_at` (set by the server) into `events_YYYY_MM`,
with `events_default` as the safety net for a row no month partition takes: an acknowledged
event is never refused for lack of a partition. `ensure_partitions` creates the current month
and the next `MONTHS_AHEAD` (at `abtest serve` start and by the scheduler); a month whose rows
already sit in the default partition is moved into its new partition in the same transaction.

Retention (`ABTEST_EVENTS_RETENTION_MONTHS`; unset keeps every month) drops a month partition
only when the month ended more than that many months ago, every row of it is in the export
(per the manifest in `ABTEST_WAREHOUSE_DIR`), and every experiment's rollup has merged it beyond
its rescan window (`analysis.rollup.RESCAN_IDS`), so that no refresh counts the dropped rows as
missing. The default partition is never dropped. Its rows' `event_keys` go with it: a retry of
an event older than the retention is stored again, as a new event. The experiments that had rows
in it are recorded in `event_drops`: their read-only results then read the rollup (which holds
the dropped rows) even while it is stale, never a scan of the events left.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from abtest.errors import Invalid
from analysis import export
from analysis.rollup import RESCAN_IDS
from routing.eventlog.schema import EVENT_KEYS

MONTHS_AHEAD = 3
DEFAULT = "events_default"
_MONTH_NAME = re.compile(r"events_(\d{4})_(\d{2})")


@dataclass(frozen=True)
class PartitionState:
    """One partition of `events` as `abtest events partitions` lists it."""

    name: str
    month: str | None  # YYYY-MM; None for the default partition
    rows: int
    exported: bool
    droppable: bool
    why: str  # why it is kept, or what dropping it removes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_postgres(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise Invalid(
            "database",
            f"event partitions need PostgreSQL (this database is {engine.dialect.name}, "
            "whose events table is not partitioned)",
        )


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def month_of(at: datetime) -> date:
    return date(at.year, at.month, 1)


def _start(month: date) -> str:
    return f"{month.isoformat()} 00:00:00+00"


def month_partitions(connection: Connection) -> dict[date, str]:
    """The month partitions of `events` (attached now), by month."""
    names = connection.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass"
        )
    ).scalars()
    found = {}
    for name in names:
        match = _MONTH_NAME.fullmatch(name)
        if match:
            found[date(int(match[1]), int(match[2]), 1)] = name
    return found


def lock_events(connection: Connection) -> None:
    """Lock `events` (and so its partitions) for a change of partitions, in the caller's
    transaction. The parent first, as every writer locks it: a writer waits for the change
    instead of deadlocking with it; a change that waits over 10 s for a long reader gives up."""
    connection.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
    connection.execute(sa.text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))


def create_month(connection: Connection, month: date) -> int:
    """Create the partition of `month` in the caller's transaction (`lock_events` first); rows
    of the month already in the default partition move into it. Returns how many moved."""
    low, high = _start(month), _start(add_months(month, 1))
    connection.execute(sa.text("CREATE TEMP TABLE _abtest_moved (LIKE events) ON COMMIT DROP"))
    moved = connection.execute(
        sa.text(
            f"WITH d AS (DELETE FROM {DEFAULT} WHERE received_at >= :low AND received_at < :high "
            "RETURNING *) INSERT INTO _abtest_moved SELECT * FROM d"
        ),
        {"low": low, "high": high},
    ).rowcount
    connection.execute(
        sa.text(
            f"CREATE TABLE events_{month:%Y_%m} PARTITION OF events "
            f"FOR VALUES FROM ('{low}') TO ('{high}')"
        )
    )
    connection.execute(sa.text("INSERT INTO events SELECT * FROM _abtest_moved"))
    return int(moved or 0)


def ensure_partitions(
    engine: Engine, months_ahead: int = MONTHS_AHEAD, now: datetime | None = None
) -> list[str]:
    """Create the partitions of this month and the next `months_ahead` that are missing (one
    transaction each); returns their names. Nothing on SQLite (its table is not partitioned)."""
    if engine.dialect.name != "postgresql":
        return []
    this_month = month_of(now or datetime.now(UTC))
    wanted = [add_months(this_month, ahead) for ahead in range(months_ahead + 1)]
    with engine.connect() as connection:
        existing = month_partitions(connection)
    created = []
    for month in wanted:
        if month not in existing:
            with engine.begin() as connection:
                lock_events(connection)
                if month not in month_partitions(connection):  # not made meanwhile
                    create_month(connection, month)
                    created.append(f"events_{month:%Y_%m}")
    return created


# --- retention --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    rows: int
    min_id: int
    max_id: int
    experiments: dict[int, int]  # experiment_id -> its largest id in the partition


def _facts(connection: Connection, name: str) -> _Facts:
    rows, low, high = connection.execute(
        sa.text(f"SELECT count(*), min(id), max(id) FROM {name}")
    ).one()
    experiments = connection.execute(
        sa.text(
            f"SELECT experiment_id, max(id) FROM {name} "
            "WHERE experiment_id IS NOT NULL GROUP BY experiment_id"
        )
    ).all()
    return _Facts(int(rows), int(low or 0), int(high or 0), {e: int(m) for e, m in experiments})


def _unexported(connection: Connection, name: str, facts: _Facts, folder: Path) -> int:
    """How many rows of the partition the export in `folder` does not hold: (id, received_at)
    compared in sorted arrays, streamed from the database in chunks. The time is compared too
    because an id alone may be another row's (a database restored from a backup reuses the
    ids its lost rows had, and the export holds those lost rows)."""
    import numpy as np

    if facts.rows == 0:
        return 0
    held, held_at = export.exported_rows(
        folder, "events", facts.min_id - 1, facts.max_id, stamp="received_at"
    )
    if len(held) < facts.rows:
        return facts.rows - len(held)  # (a lower bound; enough to keep the partition)
    missing = 0
    micros = "(extract(epoch FROM received_at) * 1000000)::bigint"
    result = connection.execute(
        sa.text(f"SELECT id, {micros} FROM {name}").execution_options(yield_per=100_000)
    )
    for chunk in result.partitions():
        ids = np.fromiter((row[0] for row in chunk), dtype=np.int64, count=len(chunk))
        at_ = np.fromiter((row[1] for row in chunk), dtype=np.int64, count=len(chunk))
        at = np.minimum(np.searchsorted(held, ids), len(held) - 1)
        missing += int(np.count_nonzero((held[at] != ids) | (held_at[at] != at_)))
    return missing


def _rollup_problem(connection: Connection, facts: _Facts) -> str | None:
    """Why dropping the partition would change what a rollup refresh sees, or None."""
    marks: dict[int, int | None] = {
        e: m
        for e, m in connection.execute(
            sa.text("SELECT experiment_id, last_event_id FROM rollup_watermarks")
        )
    }
    for experiment_id in sorted(facts.experiments):
        mark = marks.get(experiment_id)
        if mark is None or int(mark) - RESCAN_IDS < facts.max_id:
            return (
                f"experiment {experiment_id}'s rollup has not merged it "
                f"(watermark {mark}; needs {facts.max_id} + {RESCAN_IDS} rescan ids)"
            )
    for experiment_id, mark in sorted(marks.items()):
        if (
            mark is not None
            and int(mark) - RESCAN_IDS < facts.max_id
            and int(mark) >= (facts.min_id)
        ):
            return f"it is inside experiment {experiment_id}'s rollup rescan window"
    return None


def _rollups_over(connection: Connection, facts: _Facts) -> list[int]:
    """The experiments whose rollup may hold rows of the partition: those with rows in it, and
    every rollup that merged into its id range (an export logged without experiment counts for
    the experiment its project's assignment names)."""
    merged = connection.execute(
        sa.text("SELECT experiment_id FROM rollup_watermarks WHERE last_event_id >= :low"),
        {"low": facts.min_id},
    ).scalars()
    return sorted(set(facts.experiments) | {int(e) for e in merged})


def _state(
    connection: Connection,
    month: date | None,
    name: str,
    folder: Path,
    cutoff: date | None,
) -> tuple[PartitionState, _Facts]:
    facts = _facts(connection, name)
    try:
        missing = _unexported(connection, name, facts, folder)
        export_problem = f"{missing} row(s) not in the export in {folder}" if missing else None
    except export.ExportError as exc:
        missing, export_problem = facts.rows, str(exc)
    label = None if month is None else f"{month:%Y-%m}"
    if month is None:
        why: str | None = "the default partition is never dropped"
    elif cutoff is None:
        why = "no retention (ABTEST_EVENTS_RETENTION_MONTHS is unset)"
    elif add_months(month, 1) > cutoff:
        why = f"within the retention (months before {cutoff:%Y-%m} are dropped)"
    else:
        why = export_problem or _rollup_problem(connection, facts)
    droppable = why is None
    state = PartitionState(
        name,
        label,
        facts.rows,
        missing == 0,
        droppable,
        why or f"exported and rolled up: drops {facts.rows} row(s) and their event keys",
    )
    return state, facts


def _cutoff(retention_months: int | None, now: datetime | None) -> date | None:
    """Months that end on or before this day are older than the retention."""
    if retention_months is None:
        return None
    at = now or datetime.now(UTC)
    index = at.year * 12 + at.month - 1 - retention_months
    if index < 12:  # before year 1: no month is older than such a retention
        return date.min
    return date(index // 12, index % 12 + 1, min(at.day, 28))


def partitions(
    engine: Engine, folder: Path, retention_months: int | None, now: datetime | None = None
) -> list[PartitionState]:
    """Every partition of `events`, oldest month first, the default last."""
    require_postgres(engine)
    cutoff = _cutoff(retention_months, now)
    with engine.connect() as connection:
        months = month_partitions(connection)
        listed = [(m, months[m]) for m in sorted(months)] + [(None, DEFAULT)]
        return [_state(connection, m, n, folder, cutoff)[0] for m, n in listed]


def apply_retention(
    engine: Engine,
    folder: Path,
    retention_months: int | None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[PartitionState]:
    """Drop the droppable month partitions (with their event keys), each in its own transaction
    after checking again under a lock; returns every partition's state (a dry run drops
    nothing)."""
    states = partitions(engine, folder, retention_months, now)
    if dry_run:
        return states
    cutoff = _cutoff(retention_months, now)
    result = []
    for state in states:
        if state.droppable and state.month is not None:
            state = _drop(engine, state, folder, cutoff)
        result.append(state)
    return result


def _drop(
    engine: Engine, state: PartitionState, folder: Path, cutoff: date | None
) -> PartitionState:
    month = date.fromisoformat(f"{state.month}-01")
    with engine.begin() as connection:
        lock_events(connection)
        if state.name not in month_partitions(connection).values():  # another retention won
            return PartitionState(state.name, state.month, 0, True, False, "already dropped")
        again, facts = _state(connection, month, state.name, folder, cutoff)
        if not again.droppable:  # a row came in between the check and the lock
            return again
        connection.execute(
            sa.text(
                f"DELETE FROM {EVENT_KEYS} k USING {state.name} e "
                "WHERE k.client_event_id = e.client_event_id"
            )
        )
        connection.execute(sa.text(f"DROP TABLE {state.name}"))
        touched = _rollups_over(connection, facts)
        if touched:  # their read-only results must not scan the events left
            connection.execute(
                sa.text(
                    "INSERT INTO event_drops (experiment_id, partition, dropped_at) "
                    "VALUES (:experiment, :partition, now()) ON CONFLICT DO NOTHING"
                ),
                [{"experiment": e, "partition": state.name} for e in touched],
            )
    return PartitionState(
        state.name, state.month, facts.rows, True, True, f"dropped {facts.rows} row(s)"
    )
