"""Incrementally maintained per-project rollup, so a report does not rescan the events.

Tables (their ORM twins are in `abtest/tables.py`; this module never imports abtest):

* ``project_outcomes``: one row per (experiment, project) that has an in-scope event: first
  start, last start, first export (timestamps and UTC days), the arm on its starts (min), its
  sticky assignment's arm, and the min over its starts of ``platform``, ``country`` and the
  normalised intent: exactly the per-project values of `analysis.queries.project_outcomes`.
  Every value is a MIN or MAX, so merging an event twice is harmless (idempotent).
* ``call_rollups``: per (experiment, arm, UTC day, latency bucket) the sufficient statistics of
  the guardrails (calls, fallbacks, errors, cache hits, cost). Sums are not idempotent, so a day
  touched by new events is recomputed whole from the events of that day.

``rollup_watermarks`` keeps, per experiment, the last ``events.id`` and ``assignments.id`` merged.

**Refresh** (`refresh`): merge the in-scope events with ``id > watermark - RESCAN_IDS`` into
``project_outcomes`` (INSERT ... SELECT ... ON CONFLICT DO UPDATE keeping the least / greatest
values, on PostgreSQL and SQLite alike); re-derive the rows of projects whose assignment is new
(its arm, and exports logged without experiment that only the assignment brings into scope);
recompute ``call_rollups`` for every day touched. Late commits: PostgreSQL allocates ids before
commit, so an event can become visible after a refresh with an id below the watermark. Each
refresh stores how many events (and assignments) the last ``RESCAN_IDS`` ids below its
watermarks hold; when the next refresh counts more there (a cheap primary-key range count), it
re-scans that window too.
An event committed after more than ``RESCAN_IDS`` later ids were allocated is missed until a
``rebuild``. Re-scanning is safe because the project values are MIN/MAX and touched days are
recomputed, not incremented. ``rebuild=True`` recomputes the experiment from scratch.
PostgreSQL serialises concurrent refreshes of one experiment with a row lock on its watermark.

``outcome_counts`` (arm x start day x export day x platform x country) and ``intent_counts``
(arm x intent x start day x export day) count the rows of ``project_outcomes``; a refresh
takes the changed projects out of them, merges, and adds them back (in one transaction), so the
report reads a few thousand rows whatever the number of events.

**Reading** (`project_counts`, `guardrail_stats`) needs ``until`` on a UTC midnight (a report's
period end) or None, and segment attributes among ``ROLLUP_ATTRIBUTES``; anything else falls
back to the event scan in `analysis.queries` (the reference implementation). With ``until``,
a project counts as started when its first start is before ``until`` and exported when its first
export is; a project with starts on both sides of ``until`` (its min-over-starts values could
differ) is recomputed from its own events. Latency percentiles come from log-spaced buckets
(bounds ``BUCKET_BASE ** k`` ms) via `analysis.stats.latency_from_histogram`: an approximation
within one bucket, i.e. within 2 % of the exact ``percentile_cont``; every count is exact.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, column, func, table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from analysis import queries, stats
from analysis.queries import TIMESTAMP, ArmGuardrails, ProjectCounts, assignments, events

ROLLUP_ATTRIBUTES = ("platform", "country")
RESCAN_IDS = 50_000
# Execution option of a connection that only reads (an API GET): `refresh` writes nothing on it
# and the readers fall back to the event scan unless the rollup is fresh (`is_fresh`).
READ_ONLY = "analysis_read_only"
BUCKET_BASE = 1.02
MAX_BUCKET = 1000
NO_LATENCY = -1
MAX_LISTED_PROJECTS = 10_000
NEVER = date(9999, 12, 31)  # export_day of a project not exported (keys cannot be NULL)

project_outcomes = table(
    "project_outcomes",
    column("experiment_id", sa.Integer),
    column("project_id", sa.String),
    column("first_start_at", TIMESTAMP),
    column("last_start_at", TIMESTAMP),
    column("first_export_at", TIMESTAMP),
    column("start_day", sa.Date),
    column("export_day", sa.Date),
    column("event_arm_id", sa.Integer),
    column("assigned_arm_id", sa.Integer),
    column("platform", sa.Text),
    column("country", sa.Text),
    column("intent", sa.Text),
)
call_rollups = table(
    "call_rollups",
    column("experiment_id", sa.Integer),
    column("arm_id", sa.Integer),
    column("day", sa.Date),
    column("bucket", sa.Integer),
    column("calls", sa.BigInteger),
    column("fallbacks", sa.BigInteger),
    column("errors", sa.BigInteger),
    column("cache_hits", sa.BigInteger),
    column("cost_usd", sa.Float),
)
outcome_counts = table(
    "outcome_counts",
    column("experiment_id", sa.Integer),
    column("arm_id", sa.Integer),
    column("start_day", sa.Date),
    column("export_day", sa.Date),
    column("platform", sa.Text),
    column("country", sa.Text),
    column("projects", sa.BigInteger),
)
intent_counts = table(
    "intent_counts",
    column("experiment_id", sa.Integer),
    column("arm_id", sa.Integer),
    column("intent", sa.Text),
    column("start_day", sa.Date),
    column("export_day", sa.Date),
    column("projects", sa.BigInteger),
)
event_drops = table("event_drops", column("experiment_id", sa.Integer))  # abtest.partitions
rollup_watermarks = table(
    "rollup_watermarks",
    column("experiment_id", sa.Integer),
    column("last_event_id", sa.BigInteger),
    column("last_assignment_id", sa.BigInteger),
    column("window_events", sa.BigInteger),
    column("window_assignments", sa.BigInteger),
    column("refreshed_at", TIMESTAMP),
)

OUTCOME_COLUMNS = tuple(c.name for c in project_outcomes.c)


def _insert(connection: Connection, target: sa.TableClause) -> Any:
    dialect = postgresql if queries._is_postgres(connection) else sqlite
    return dialect.insert(target)


def _day(connection: Connection, value: ColumnElement[Any]) -> ColumnElement[Any]:
    return queries._utc_day(connection, value)


# --- per-project source ------------------------------------------------------------------------


def outcome_source(
    connection: Connection,
    experiment_id: int,
    *,
    after_id: int | None = None,
    up_to_id: int | None = None,
    projects: sa.Select | list[str] | None = None,
    until: datetime | None = None,
) -> sa.Select:
    """Per-project values (columns OUTCOME_COLUMNS) of the in-scope events, optionally only
    events with after_id < id <= up_to_id, of `projects` (a select of project ids), before until."""
    is_start = events.c.type == "start"
    conditions = queries._in_scope(experiment_id, until)
    if after_id is not None:
        conditions.append(events.c.id > after_id)
    if up_to_id is not None:
        conditions.append(events.c.id <= up_to_id)
    if projects is not None:
        conditions.append(events.c.project_id.in_(projects))

    def first_start(value: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.min(sa.case((is_start, value)))

    per_project = (
        sa.select(
            events.c.project_id,
            first_start(events.c.occurred_at).label("first_start_at"),
            func.max(sa.case((is_start, events.c.occurred_at))).label("last_start_at"),
            func.min(sa.case((events.c.type == "export", events.c.occurred_at))).label(
                "first_export_at"
            ),
            first_start(events.c.arm_id).label("event_arm_id"),
            first_start(events.c.attributes["platform"].as_string()).label("platform"),
            first_start(events.c.attributes["country"].as_string()).label("country"),
            first_start(func.lower(func.trim(events.c.intent))).label("intent"),
        )
        .where(*conditions)
        .group_by(events.c.project_id)
        .subquery("per_project")
    )
    p = per_project.c
    return (
        sa.select(
            sa.literal(experiment_id, sa.Integer).label("experiment_id"),
            p.project_id,
            p.first_start_at,
            p.last_start_at,
            p.first_export_at,
            _day(connection, p.first_start_at).label("start_day"),
            _day(connection, p.first_export_at).label("export_day"),
            p.event_arm_id,
            assignments.c.arm_id.label("assigned_arm_id"),
            p.platform,
            p.country,
            p.intent,
        )
        .select_from(
            per_project.outerjoin(
                assignments,
                sa.and_(
                    assignments.c.experiment_id == experiment_id,
                    assignments.c.project_id == p.project_id,
                ),
            )
        )
        # Also disambiguates SQLite's INSERT ... SELECT ... ON CONFLICT.
        .where(p.project_id.is_not(None))
    )


def _earlier(new: ColumnElement[Any], old: ColumnElement[Any]) -> ColumnElement[bool]:
    return sa.and_(new.is_not(None), sa.or_(old.is_(None), new < old))


def _merge_outcomes(connection: Connection, source: sa.Select, *, upsert: bool = True) -> None:
    insert = _insert(connection, project_outcomes).from_select(OUTCOME_COLUMNS, source)
    if not upsert:
        connection.execute(insert)
        return
    new, old = insert.excluded, project_outcomes.c

    def least(name: str) -> ColumnElement[Any]:
        return sa.case((_earlier(new[name], old[name]), new[name]), else_=old[name])

    start_earlier = _earlier(new.first_start_at, old.first_start_at)
    export_earlier = _earlier(new.first_export_at, old.first_export_at)
    later_start = sa.and_(
        new.last_start_at.is_not(None),
        sa.or_(old.last_start_at.is_(None), new.last_start_at > old.last_start_at),
    )
    changes = {
        "first_start_at": sa.case((start_earlier, new.first_start_at), else_=old.first_start_at),
        "start_day": sa.case((start_earlier, new.start_day), else_=old.start_day),
        "first_export_at": sa.case(
            (export_earlier, new.first_export_at), else_=old.first_export_at
        ),
        "export_day": sa.case((export_earlier, new.export_day), else_=old.export_day),
        "last_start_at": sa.case((later_start, new.last_start_at), else_=old.last_start_at),
        "assigned_arm_id": func.coalesce(new.assigned_arm_id, old.assigned_arm_id),
    }
    for name in ("event_arm_id", "platform", "country", "intent"):
        changes[name] = least(name)
    connection.execute(
        insert.on_conflict_do_update(index_elements=["experiment_id", "project_id"], set_=changes)
    )


# --- guardrail calls ---------------------------------------------------------------------------


def latency_bucket(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """-1 without latency, 0 for <= 1 ms, else k with BUCKET_BASE**(k-1) < value <= BASE**k."""
    k = sa.cast(func.ceil(func.ln(value) / math.log(BUCKET_BASE)), sa.Integer)
    return sa.case(
        (value.is_(None), NO_LATENCY),
        (value <= 1.0, 0),
        (value >= BUCKET_BASE**MAX_BUCKET, MAX_BUCKET),
        else_=k,
    )


def bucket_upper_bound(bucket: int) -> float:
    return BUCKET_BASE**bucket


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _recompute_calls(connection: Connection, experiment_id: int, days: list[date] | None) -> None:
    """Replace the call rows of `days` (all days when None) with sums over their start events."""
    delete = sa.delete(call_rollups).where(call_rollups.c.experiment_id == experiment_id)
    conditions = [events.c.experiment_id == experiment_id, events.c.type == "start"]
    if days is not None:
        if not days:
            return
        delete = delete.where(call_rollups.c.day.in_(days))
        conditions.append(
            sa.or_(
                *(
                    sa.and_(
                        events.c.occurred_at >= _day_start(d),
                        events.c.occurred_at < _day_start(d + timedelta(days=1)),
                    )
                    for d in days
                )
            )
        )
    connection.execute(delete)
    calls = (
        sa.select(
            queries.call_arm(experiment_id).label("arm_id"),
            _day(connection, events.c.occurred_at).label("day"),
            latency_bucket(events.c.latency_ms).label("bucket"),
            events.c.fallback,
            events.c.error,
            events.c.cache_hit,
            events.c.cost_usd,
        )
        .where(*conditions)
        .subquery("calls")
    )
    grouped = (
        sa.select(
            sa.literal(experiment_id, sa.Integer).label("experiment_id"),
            calls.c.arm_id,
            calls.c.day,
            calls.c.bucket,
            func.count().label("calls"),
            func.sum(queries._as_int(calls.c.fallback)).label("fallbacks"),
            func.sum(queries._as_int(calls.c.error.is_not(None))).label("errors"),
            func.sum(queries._as_int(calls.c.cache_hit)).label("cache_hits"),
            func.coalesce(func.sum(calls.c.cost_usd), 0.0).label("cost_usd"),
        )
        .where(calls.c.arm_id.is_not(None))
        .group_by(calls.c.arm_id, calls.c.day, calls.c.bucket)
    )
    names: tuple[str, ...] = ("experiment_id", "arm_id", "day", "bucket", "calls")
    names += ("fallbacks", "errors", "cache_hits", "cost_usd")
    connection.execute(sa.insert(call_rollups).from_select(names, grouped))


def _touched_days(
    connection: Connection, experiment_id: int, after_id: int, up_to_id: int, after_assignment: int
) -> list[date]:
    day = _day(connection, events.c.occurred_at)
    new_calls = sa.select(day).where(
        events.c.experiment_id == experiment_id,
        events.c.type == "start",
        events.c.id > after_id,
        events.c.id <= up_to_id,
    )
    # Calls logged without an arm take the assignment's: a new assignment changes their day.
    newly_assigned = sa.select(assignments.c.project_id).where(
        assignments.c.experiment_id == experiment_id, assignments.c.id > after_assignment
    )
    armless = sa.select(day).where(
        events.c.experiment_id == experiment_id,
        events.c.type == "start",
        events.c.arm_id.is_(None),
        events.c.project_id.in_(newly_assigned),
    )
    rows = connection.execute(sa.union(new_calls, armless)).scalars()
    return sorted({queries._as_date(value) for value in rows if value is not None})


# --- counts over project_outcomes -----------------------------------------------------------


def _attribution(connection: Connection, experiment_id: int) -> queries.Attribution:
    """The experiment's export window and stop, as counted into the counts tables."""
    row = connection.execute(
        sa.select(queries.experiments.c.settings, queries.experiments.c.stopped_at).where(
            queries.experiments.c.id == experiment_id
        )
    ).one_or_none()
    if row is None:
        return queries.Attribution(queries.DEFAULT_EXPORT_WINDOW_H)
    return queries.Attribution(
        queries.export_window_hours(dict(row.settings or {})), row.stopped_at
    )


def _count_dimensions(
    connection: Connection, attribution: queries.Attribution
) -> dict[str, tuple[sa.TableClause, list[ColumnElement[Any]]]]:
    o = project_outcomes.c
    arm = func.coalesce(o.assigned_arm_id, o.event_arm_id)
    attributed: ColumnElement[Any] = o.export_day
    if attribution.window_h is not None:
        inside = queries.within_window(
            connection, o.first_start_at, o.first_export_at, attribution.window_h
        )
        attributed = sa.case((inside, o.export_day))
    export_day = func.coalesce(attributed, sa.literal(NEVER, sa.Date))
    return {
        "outcome": (
            outcome_counts,
            [
                arm.label("arm_id"),
                o.start_day.label("start_day"),
                export_day.label("export_day"),
                func.coalesce(o.platform, queries.NO_SEGMENT).label("platform"),
                func.coalesce(o.country, queries.NO_SEGMENT).label("country"),
            ],
        ),
        "intent": (
            intent_counts,
            [
                arm.label("arm_id"),
                o.intent.label("intent"),
                o.start_day.label("start_day"),
                export_day.label("export_day"),
            ],
        ),
    }


def _add_counts(
    connection: Connection, experiment_id: int, sign: int, projects: sa.Select | None
) -> None:
    """Add (sign=1) or remove (sign=-1) the contributions of `projects` (all when None) to
    ``outcome_counts`` and ``intent_counts``: the report then reads a few thousand rows."""
    o = project_outcomes.c
    attribution = _attribution(connection, experiment_id)
    for kind, (target, keys) in _count_dimensions(connection, attribution).items():
        conditions = [
            o.experiment_id == experiment_id,
            o.start_day.is_not(None),
            func.coalesce(o.assigned_arm_id, o.event_arm_id).is_not(None),
        ]
        if attribution.stopped_at is not None:
            conditions.append(o.first_start_at < attribution.stopped_at)
        if kind == "intent":
            conditions.append(o.intent.is_not(None))
        if projects is not None:
            conditions.append(o.project_id.in_(projects))
        grouped = (
            sa.select(
                sa.literal(experiment_id, sa.Integer).label("experiment_id"),
                *keys,
                (func.count() * sign).label("projects"),
            )
            .where(*conditions)
            .group_by(*keys)
        )
        names = ["experiment_id", *(k.name for k in keys), "projects"]
        insert = _insert(connection, target).from_select(names, grouped)
        if projects is None:
            connection.execute(insert)
            continue
        key_names = [k.name for k in keys]
        connection.execute(
            insert.on_conflict_do_update(
                index_elements=["experiment_id", *key_names],
                set_={"projects": target.c.projects + insert.excluded.projects},
            )
        )


# --- refresh -----------------------------------------------------------------------------------


def _changed_projects(
    connection: Connection,
    experiment_id: int,
    event_ids: tuple[int, int],
    assignment_ids: tuple[int, int],
) -> sa.Table:
    """A temporary table of the projects with new events or a new assignment, taken ONCE, so
    that the counts removed and added back cover exactly the same projects."""
    changed = sa.Table(
        "rollup_changed",
        sa.MetaData(),
        sa.Column("project_id", sa.String(200)),
        sa.Column("assigned", sa.Boolean),
        prefixes=["TEMPORARY"],
    )
    changed.drop(connection, checkfirst=True)
    changed.create(connection)
    with_events = (
        sa.select(events.c.project_id, sa.false())
        .where(
            *queries._in_scope(experiment_id, None),
            events.c.id > event_ids[0],
            events.c.id <= event_ids[1],
        )
        .group_by(events.c.project_id)
    )
    assigned = sa.select(assignments.c.project_id, sa.true()).where(
        assignments.c.experiment_id == experiment_id,
        assignments.c.id > assignment_ids[0],
        assignments.c.id <= assignment_ids[1],
    )
    for rows in (with_events, assigned):
        connection.execute(sa.insert(changed).from_select(["project_id", "assigned"], rows))
    if queries._is_postgres(connection):
        connection.exec_driver_sql("ANALYZE rollup_changed")
    return changed


def _window_events(
    connection: Connection, last_id: int, rescan_ids: int, rows: sa.TableClause = events
) -> int:
    """Rows (any experiment) with last_id - rescan_ids < id <= last_id: a primary-key range."""
    window = sa.and_(rows.c.id > last_id - rescan_ids, rows.c.id <= last_id)
    return int(connection.scalar(sa.select(func.count()).where(window)) or 0)


def _watermark(experiment_id: int) -> sa.Select[Any]:
    """The experiment's watermark row: last ids merged and the windows' counts below them."""
    w = rollup_watermarks.c
    return sa.select(
        w.last_event_id, w.last_assignment_id, w.window_events, w.window_assignments
    ).where(w.experiment_id == experiment_id)


def reads_only(connection: Connection) -> bool:
    """Whether the connection carries the `READ_ONLY` execution option."""
    return bool(connection.get_execution_options().get(READ_ONLY, False))


def is_fresh(connection: Connection, experiment_id: int, rescan_ids: int = RESCAN_IDS) -> bool:
    """Whether a refresh would find nothing to merge for this experiment (read-only): it has a
    watermark, no event of it (or without experiment) and no assignment of it above the
    watermarks, and no late commit into the windows below them."""
    mark = connection.execute(_watermark(experiment_id)).first()
    if mark is None or mark.last_event_id is None:
        return False
    last, last_assigned = int(mark.last_event_id), int(mark.last_assignment_id or 0)
    if _window_events(connection, last, rescan_ids) != mark.window_events:
        return False
    if _window_events(connection, last_assigned, rescan_ids, assignments) != (
        mark.window_assignments
    ):
        return False
    newer_event = sa.exists().where(
        events.c.id > last,
        sa.or_(events.c.experiment_id == experiment_id, events.c.experiment_id.is_(None)),
    )
    newer_assignment = sa.exists().where(
        assignments.c.id > last_assigned, assignments.c.experiment_id == experiment_id
    )
    return not connection.scalar(sa.select(sa.or_(newer_event, newer_assignment)))


def _use_scan(connection: Connection, experiment_id: int) -> bool:
    """A read-only connection reads the events when the rollup is stale (it cannot refresh),
    unless retention dropped some of the experiment's events (`event_drops`): the rollup holds
    them and a scan would not, so it reads the rollup as of its last refresh."""
    if not reads_only(connection) or is_fresh(connection, experiment_id):
        return False
    dropped = sa.exists().where(event_drops.c.experiment_id == experiment_id)
    return not connection.scalar(sa.select(dropped))


def refresh(
    connection: Connection,
    experiment_id: int,
    *,
    rebuild: bool = False,
    rescan_ids: int = RESCAN_IDS,
) -> dict[str, Any]:
    """Bring the rollup of one experiment up to date with the committed events; idempotent.

    Runs in the caller's transaction. Returns what it did: mode (``full`` or ``incremental``),
    the event id range merged and the call days recomputed. On a `READ_ONLY` connection it
    writes nothing (mode ``read-only``): the readers then use the rollup only while it is fresh.
    """
    if reads_only(connection):
        return {"mode": "read-only", "after_id": None, "up_to_id": None, "days": None}
    connection.execute(
        _insert(connection, rollup_watermarks)
        .values(experiment_id=experiment_id)
        .on_conflict_do_nothing(index_elements=["experiment_id"])
    )
    mark = connection.execute(_watermark(experiment_id).with_for_update()).one()
    up_to = int(connection.scalar(sa.select(func.max(events.c.id))) or 0)
    assigned_up_to = int(
        connection.scalar(
            sa.select(func.max(assignments.c.id)).where(
                assignments.c.experiment_id == experiment_id
            )
        )
        or 0
    )
    # Counted now, before any work: an event committed later in this window makes the next
    # refresh count more there and re-scan it (harmless if this refresh saw it after all).
    window_events = _window_events(connection, up_to, rescan_ids)
    window_assignments = _window_events(connection, assigned_up_to, rescan_ids, assignments)
    full = rebuild or mark.last_event_id is None
    if full:
        connection.execute(
            sa.delete(project_outcomes).where(project_outcomes.c.experiment_id == experiment_id)
        )
        for target in (outcome_counts, intent_counts):
            connection.execute(sa.delete(target).where(target.c.experiment_id == experiment_id))
        _merge_outcomes(connection, outcome_source(connection, experiment_id), upsert=False)
        if queries._is_postgres(connection):
            connection.exec_driver_sql("ANALYZE project_outcomes")
        _add_counts(connection, experiment_id, 1, None)
        _recompute_calls(connection, experiment_id, None)
        after_id, days = 0, None
    else:
        last = int(mark.last_event_id)
        # Re-scan the window below the watermark only when events were committed into it late.
        late = _window_events(connection, last, rescan_ids) != mark.window_events
        after_id = max(0, last - rescan_ids) if late else last
        last_assigned = int(mark.last_assignment_id or 0)
        assigned_window = _window_events(connection, last_assigned, rescan_ids, assignments)
        late_assigned = assigned_window != mark.window_assignments
        after_assignment = max(0, last_assigned - rescan_ids) if late_assigned else last_assigned
        days = _touched_days(connection, experiment_id, after_id, up_to, after_assignment)
        changed = _changed_projects(
            connection, experiment_id, (after_id, up_to), (after_assignment, assigned_up_to)
        )
        try:
            # Counts: take the changed projects out, merge their new events, put them back in.
            everyone = sa.select(changed.c.project_id)
            _add_counts(connection, experiment_id, -1, everyone)
            with_events = everyone.where(changed.c.assigned.is_(False))
            source = outcome_source(
                connection, experiment_id, after_id=after_id, up_to_id=up_to, projects=with_events
            )
            _merge_outcomes(connection, source)
            # A new assignment: its arm, and its older events (unlabelled ones enter the scope).
            assigned = everyone.where(changed.c.assigned.is_(True))
            source = outcome_source(connection, experiment_id, up_to_id=after_id, projects=assigned)
            _merge_outcomes(connection, source)
            _add_counts(connection, experiment_id, 1, everyone)
        finally:
            changed.drop(connection)
        _recompute_calls(connection, experiment_id, days)
    connection.execute(
        sa.update(rollup_watermarks)
        .where(rollup_watermarks.c.experiment_id == experiment_id)
        .values(
            last_event_id=up_to,
            last_assignment_id=assigned_up_to,
            window_events=window_events,
            window_assignments=window_assignments,
            refreshed_at=datetime.now(UTC),
        )
    )
    return {
        "mode": "full" if full else "incremental",
        "after_id": after_id,
        "up_to_id": up_to,
        "days": days,
    }


# --- reading -----------------------------------------------------------------------------------


def _is_midnight(until: datetime | None) -> bool:
    if until is None:
        return True
    utc = until.astimezone(UTC) if until.tzinfo else until
    return utc.time() == time()


def covers(until: datetime | None, attributes: tuple[str, ...] = ()) -> bool:
    """Whether the rollup can answer a query for this period end and these segments."""
    return _is_midnight(until) and all(a in ROLLUP_ATTRIBUTES for a in attributes)


def _straddling(
    connection: Connection, experiment_id: int, until: datetime
) -> list[tuple[int, Any]]:
    """Corrections for projects with starts on both sides of `until` (found through the
    (experiment_id, last_start_at) index; usually none): their stored values (weight -1, as in
    the counts tables) and their values recomputed from their events before until (+1), as
    (weight, row) pairs with row = (arm_id, start_day, export_day, platform, country, intent)."""
    o = project_outcomes.c
    conditions = [
        o.experiment_id == experiment_id,
        o.first_start_at < until,
        o.last_start_at >= until,
    ]
    stored = connection.execute(
        sa.select(
            o.project_id,
            func.coalesce(o.assigned_arm_id, o.event_arm_id),
            o.start_day,
            o.export_day,
            o.platform,
            o.country,
            o.intent,
            o.first_start_at,
            o.first_export_at,
        ).where(*conditions)
    ).all()
    if not stored:
        return []
    listed = [row[0] for row in stored]
    projects: list[str] | sa.Select = listed
    if len(listed) > MAX_LISTED_PROJECTS:  # bind parameters are limited: a subquery then
        projects = sa.select(o.project_id).where(*conditions)
    fixed = outcome_source(connection, experiment_id, projects=projects, until=until).subquery()
    redone = connection.execute(
        sa.select(
            func.coalesce(fixed.c.assigned_arm_id, fixed.c.event_arm_id),
            fixed.c.start_day,
            fixed.c.export_day,
            fixed.c.platform,
            fixed.c.country,
            fixed.c.intent,
            fixed.c.first_start_at,
            fixed.c.first_export_at,
        ).where(fixed.c.first_start_at.is_not(None))
    ).all()
    attribution = _attribution(connection, experiment_id)
    return [
        pair
        for pair in [(-1, _attributed(row[1:], attribution)) for row in stored]
        + [(1, _attributed(tuple(row), attribution)) for row in redone]
        if pair[1] is not None
    ]


def _as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _attributed(row: tuple[Any, ...], attribution: queries.Attribution) -> tuple[Any, ...] | None:
    """(arm, start_day, export_day, platform, country, intent) as counted into the counts
    tables: export day NEVER outside the window; None when started at or after the stop."""
    *values, first_start, first_export = row
    if first_start is None:
        return tuple(values)
    if attribution.stopped_at is not None and _as_utc(first_start) >= _as_utc(
        attribution.stopped_at
    ):
        return None
    if first_export is not None and attribution.window_h is not None:
        delay = _as_utc(first_export) - _as_utc(first_start)
        if delay > timedelta(hours=attribution.window_h):
            values[2] = NEVER
    return tuple(values)


def project_counts(
    connection: Connection,
    experiment_id: int,
    until: datetime | None = None,
    attributes: tuple[str, ...] = (),
    popularity: bool = False,
    thresholds: tuple[int, ...] = queries.POPULARITY_THRESHOLDS,
    mature_before: datetime | None = None,
) -> ProjectCounts:
    """`analysis.queries.project_counts` from the counts tables (refresh first); same results.

    Reads ``outcome_counts`` (arm x start day x export day x platform x country) and
    ``intent_counts`` summed per (arm, intent): a few thousand rows, whatever the events. The
    experiment's export window and stop were applied when the projects were counted in;
    projects that start from `mature_before` on (a UTC midnight) are only counted as pending.
    """
    attributes = tuple(queries._check_attribute(a) for a in attributes)
    stored = _attribution(connection, experiment_id)
    attribution = queries.Attribution(stored.window_h, stored.stopped_at, mature_before)
    if (
        not covers(until, attributes)
        or not _is_midnight(mature_before)
        or _use_scan(connection, experiment_id)
    ):
        return queries.project_counts(
            connection, experiment_id, until, attributes, popularity, thresholds, attribution
        )
    end = _day_of(until) if until is not None else NEVER
    young = _day_of(mature_before) if mature_before is not None else end
    c = outcome_counts.c
    rows: list[tuple[int, tuple[Any, ...]]] = [
        (int(n), (arm, start, export, platform, country, None))
        for arm, start, export, platform, country, n in connection.execute(
            sa.select(c.arm_id, c.start_day, c.export_day, c.platform, c.country, c.projects).where(
                c.experiment_id == experiment_id, c.start_day < end, c.projects != 0
            )
        )
    ]
    corrections = _straddling(connection, experiment_id, until) if until is not None else []
    intents: dict[tuple[str, int], list[int]] = {}
    if popularity:
        i = intent_counts.c
        exported = sa.case((i.export_day < end, i.projects), else_=0)
        for arm, intent, starts, exports in connection.execute(
            sa.select(i.arm_id, i.intent, func.sum(i.projects), func.sum(exported))
            .where(i.experiment_id == experiment_id, i.start_day < min(end, young))
            .group_by(i.arm_id, i.intent)
        ):
            intents[(str(intent), int(arm))] = [int(starts), int(exports)]
    for weight, (arm, start, export, platform, country, intent) in corrections:
        if arm is None or start is None or queries._as_date(start) >= young:
            continue
        export = export if export is not None else NEVER
        rows.append(
            (
                weight,
                (
                    arm,
                    start,
                    export,
                    platform if platform is not None else queries.NO_SEGMENT,
                    country if country is not None else queries.NO_SEGMENT,
                    None,
                ),
            )
        )
        if popularity and intent is not None:
            counts = intents.setdefault((str(intent), int(arm)), [0, 0])
            counts[0] += weight
            if queries._as_date(export) < end:
                counts[1] += weight
    pending: dict[int, int] = {}
    kept: list[tuple[int, tuple[Any, ...]]] = []
    for weight, row in rows:
        if queries._as_date(row[1]) >= young:
            if queries._as_date(row[1]) < end:
                pending[int(row[0])] = pending.get(int(row[0]), 0) + weight
            continue
        kept.append((weight, row))
    folded = _fold(kept, intents, end, attributes, popularity, thresholds)
    return ProjectCounts(folded.daily, folded.segments, {a: n for a, n in pending.items() if n})


def _day_of(until: datetime) -> date:
    return (until.astimezone(UTC) if until.tzinfo else until).date()


def _fold(
    rows: list[tuple[int, tuple[Any, ...]]],
    intents: dict[tuple[str, int], list[int]],
    end: date,
    attributes: tuple[str, ...],
    popularity: bool,
    thresholds: tuple[int, ...],
) -> ProjectCounts:
    by_day: dict[tuple[int, date], list[int]] = {}
    by_segment: dict[tuple[str, str, int], list[int]] = {}
    for weight, (arm, start, export, platform, country, _) in rows:
        arm_id, start_day = int(arm), queries._as_date(start)
        if start_day >= end:
            continue
        export_day = queries._as_date(export)
        done = export_day < end
        by_day.setdefault((arm_id, start_day), [0, 0])[0] += weight
        if done:
            by_day.setdefault((arm_id, max(start_day, export_day)), [0, 0])[1] += weight
        values = {"platform": platform, "country": country}
        for attribute in attributes:
            counts = by_segment.setdefault((attribute, str(values[attribute]), arm_id), [0, 0])
            counts[0] += weight
            counts[1] += weight if done else 0
    segments: dict[str, list[queries.SegmentCounts]] = {a: [] for a in attributes}
    for (attribute, value, arm_id), (starts, exports) in sorted(by_segment.items()):
        if starts:
            segments[attribute].append(queries.SegmentCounts(arm_id, value, starts, exports))
    if popularity:
        size: dict[str, int] = {}
        for (intent, _), (starts, _) in intents.items():
            size[intent] = size.get(intent, 0) + starts
        popular: dict[tuple[int, int], list[int]] = {}
        for (intent, arm_id), (starts, exports) in intents.items():
            if not starts:
                continue
            for threshold in thresholds:
                if size[intent] >= threshold:
                    counts = popular.setdefault((threshold, arm_id), [0, 0])
                    counts[0] += starts
                    counts[1] += exports
        segments["popularity"] = [
            queries.SegmentCounts(arm_id, f"r{threshold}", starts, exports)
            for (threshold, arm_id), (starts, exports) in sorted(popular.items())
        ]
    daily = [
        queries.ArmDay(arm_id, day, starts, exports)
        for (arm_id, day), (starts, exports) in sorted(by_day.items())
        if starts or exports
    ]
    return ProjectCounts(daily, segments)


def guardrail_stats(
    connection: Connection, experiment_id: int, until: datetime | None = None
) -> list[ArmGuardrails]:
    """Per-arm guardrails from ``call_rollups``; latency percentiles from its histogram."""
    if not covers(until) or _use_scan(connection, experiment_id):
        return queries.guardrail_stats(connection, experiment_id, until)
    c = call_rollups.c
    conditions = [c.experiment_id == experiment_id]
    if until is not None:
        conditions.append(c.day < (until.astimezone(UTC) if until.tzinfo else until).date())
    rows = connection.execute(
        sa.select(
            c.arm_id,
            c.bucket,
            func.sum(c.calls),
            func.sum(c.fallbacks),
            func.sum(c.errors),
            func.sum(c.cache_hits),
            func.sum(c.cost_usd),
        )
        .where(*conditions)
        .group_by(c.arm_id, c.bucket)
        .order_by(c.arm_id, c.bucket)
    ).all()
    arms: dict[int, dict[str, Any]] = {}
    for arm_id, bucket, calls, fallbacks, errors, cache_hits, cost in rows:
        arm = arms.setdefault(int(arm_id), {"sums": [0, 0, 0, 0, 0.0], "histogram": {}})
        sums = arm["sums"]
        sums[0] += int(calls)
        sums[1] += int(fallbacks or 0)
        sums[2] += int(errors or 0)
        sums[3] += int(cache_hits or 0)
        sums[4] += float(cost or 0.0)
        if int(bucket) != NO_LATENCY:
            arm["histogram"][int(bucket)] = int(calls)
    result = []
    for arm_id, arm in sorted(arms.items()):
        histogram: dict[int, int] = arm["histogram"]
        p50 = p95 = None
        if histogram:
            top = max(histogram)
            bounds = [bucket_upper_bound(k) for k in range(top + 1)]
            counts = [histogram.get(k, 0) for k in range(top + 1)]
            latency = stats.latency_from_histogram(bounds, counts)
            p50, p95 = latency.p50, latency.p95
        calls, fallbacks, errors, cache_hits, cost = arm["sums"]
        result.append(
            ArmGuardrails(
                arm_id=arm_id,
                calls=calls,
                latency_count=sum(histogram.values()),
                latency_p50_ms=p50,
                latency_p95_ms=p95,
                fallbacks=fallbacks,
                errors=errors,
                cache_hits=cache_hits,
                cost_usd=cost,
            )
        )
    return result
