"""SQL aggregation for the online analysis: sufficient statistics per arm and day.

Everything here runs inside the database (GROUP BY arm and day) and returns a handful of small
records, so memory does not grow with the number of events. The module never imports `abtest`:
it takes a SQLAlchemy `Connection` and names the tables with lightweight `table()/column()`
clauses that mirror `abtest/tables.py` (a test checks they agree).

Counting rules (the project is the unit):

* **Scope.** An event belongs to experiment X when its `experiment_id` is X, or when it has no
  experiment at all and its project is assigned in X (an export logged without experiment/arm).
  Events at or after `until` (the report's period end, exclusive) are ignored.
* **Arm.** A project's arm is its sticky assignment in `assignments` (experiment, project); a
  project without an assignment row falls back to the arm on its start events. Projects with no
  arm either way are not counted.
* **Starts.** Distinct projects with at least one start event; duplicates (retries, reloads)
  count once. A project's start day is the UTC day of its first start.
* **Exports.** Distinct started projects with at least one export event. An export that arrives
  before its start still counts (the events are matched per project, not in order); an export
  of a project that never started is not counted (it cannot complete a project it never began).
* **Attribution window** (`window_h`, the experiment's ``settings.export_window_h``, default
  24 h): an export counts only when the project's first export is at most ``window_h`` after its
  first start. A project is *mature* (counted at all) once its window has closed: first start
  + ``window_h`` <= the cut-off (the report's period end, or now for a partial day); younger
  projects are *pending*, left out of the rate and reported apart, so an arm whose users export
  later is not behind until its window closes. The rule depends only on the start time, so it
  selects the same projects in every arm. Starts at or after the experiment's ``stopped_at``
  are not counted.
  (`analysis.stats.attributed` is the same rule over arrays, for the simulations.)
  A project's completion day is the UTC day of ``max(first start, first export)``, so the
  cumulative sums of the daily rows are exactly the counts an analyst would have seen as of
  that day.
* **Guardrails** are per call: start events of the experiment (the routed model calls),
  attributed to the arm that served the call (the arm on the event; a call logged without one
  falls back to the project's assignment). Latency percentiles use linear interpolation
  (PostgreSQL's ``percentile_cont``; the same ranks computed with window functions on SQLite).
  Cost per project divides the cost of the calls by the number of started projects.
* **Segments.** A JSON attribute of the project's first start (``platform``, ``country``; a
  missing attribute is ``"(none)"``), or intent popularity: the number of started projects in the
  experiment whose normalised intent (lower-cased, trimmed) equals the project's, reported as
  the paper's nested subsets r1 (all), r3 and r5 (intents with at least 1, 3, 5 projects).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import Connection, column, func, table
from sqlalchemy.dialects.postgresql import JSONB, array
from sqlalchemy.sql.elements import ColumnElement

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
NO_SEGMENT = "(none)"
POPULARITY_THRESHOLDS = (1, 3, 5)
ATTRIBUTE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# --- table clauses (names from abtest/tables.py) -----------------------------------------------

events = table(
    "events",
    column("id", sa.BigInteger),
    column("client_event_id", sa.String),
    column("type", sa.String),
    column("project_id", sa.String),
    column("experiment_id", sa.Integer),
    column("arm_id", sa.Integer),
    column("occurred_at", TIMESTAMP),
    column("latency_ms", sa.Float),
    column("fallback", sa.Boolean),
    column("error", sa.Text),
    column("cache_hit", sa.Boolean),
    column("cost_usd", sa.Float),
    column("intent", sa.Text),
    column("attributes", JSON_TYPE),
)
assignments = table(
    "assignments",
    column("id", sa.BigInteger),
    column("experiment_id", sa.Integer),
    column("project_id", sa.String),
    column("arm_id", sa.Integer),
)
experiments = table(
    "experiments",
    column("id", sa.Integer),
    column("key", sa.String),
    column("status", sa.String),
    column("settings", JSON_TYPE),
    column("started_at", TIMESTAMP),
    column("stopped_at", TIMESTAMP),
    column("shipped_arm", sa.String),
)
experiment_arms = table(
    "experiment_arms",
    column("id", sa.Integer),
    column("experiment_id", sa.Integer),
    column("name", sa.String),
    column("weight", sa.Float),
    column("is_control", sa.Boolean),
)

allocation_period_rows = table(
    "allocation_periods",
    column("id", sa.Integer),
    column("experiment_id", sa.Integer),
    column("version", sa.Integer),
    column("started_at", TIMESTAMP),
    column("weights", JSON_TYPE),
)

# --- result records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmInfo:
    id: int
    name: str
    weight: float
    is_control: bool


@dataclass(frozen=True)
class ExperimentInfo:
    id: int
    key: str
    status: str
    settings: dict[str, Any]
    started_at: datetime | None
    stopped_at: datetime | None
    arms: tuple[ArmInfo, ...]
    shipped_arm: str | None = None


@dataclass(frozen=True)
class ArmDay:
    """Projects that started (by start day) and completed (by completion day) on one UTC day."""

    arm_id: int
    day: date
    starts: int
    exports: int


@dataclass(frozen=True)
class ArmGuardrails:
    arm_id: int
    calls: int
    latency_count: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    fallbacks: int
    errors: int
    cache_hits: int
    cost_usd: float


@dataclass(frozen=True)
class SegmentCounts:
    arm_id: int
    segment: str
    starts: int
    exports: int


# --- helpers -----------------------------------------------------------------------------------


def _is_postgres(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def _utc_day(connection: Connection, value: ColumnElement[Any]) -> ColumnElement[Any]:
    if _is_postgres(connection):
        return sa.cast(func.timezone("UTC", value), sa.Date)
    # SQLite stores UTC timestamps as ISO text: the day is its first ten characters.
    return func.substr(value, 1, 10)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


DEFAULT_EXPORT_WINDOW_H = 24.0


def export_window_hours(settings: dict[str, Any]) -> float:
    """The experiment's attribution window in hours (``settings.export_window_h``)."""
    return float(settings.get("export_window_h", DEFAULT_EXPORT_WINDOW_H))


def within_window(
    connection: Connection, start: ColumnElement[Any], export: ColumnElement[Any], hours: float
) -> ColumnElement[bool]:
    """The first export is at most `hours` after the first start (SQL, both backends)."""
    if _is_postgres(connection):
        return export <= start + sa.literal(timedelta(hours=hours), sa.Interval())
    return (func.julianday(export) - func.julianday(start)) * 24 <= hours + 1e-9


def _in_scope(experiment_id: int, until: datetime | None) -> list[ColumnElement[bool]]:
    """Events of the experiment, plus unlabelled events of its assigned projects."""
    assigned = sa.exists().where(
        assignments.c.experiment_id == experiment_id,
        assignments.c.project_id == events.c.project_id,
    )
    conditions: list[ColumnElement[bool]] = [
        sa.or_(
            events.c.experiment_id == experiment_id,
            sa.and_(events.c.experiment_id.is_(None), assigned),
        )
    ]
    if until is not None:
        conditions.append(events.c.occurred_at < until)
    return conditions


@dataclass(frozen=True)
class Attribution:
    """How projects are counted: the export window, the stop, and (for a report) maturity."""

    window_h: float | None = None  # None: every export counts, whenever it came
    stopped_at: datetime | None = None
    mature_before: datetime | None = None  # first starts from here on are pending

    @classmethod
    def for_report(
        cls,
        settings: dict[str, Any],
        stopped_at: datetime | None,
        until: datetime | None,
        now: datetime | None = None,
    ) -> Attribution:
        """Projects count once their window closed before the cut-off: the period end, or now
        for a period that has not ended (a partial day)."""
        window = export_window_hours(settings)
        cutoff = min(x for x in (until, now) if x is not None) if (until or now) else None
        mature = cutoff - timedelta(hours=window) if cutoff is not None else None
        return cls(window, stopped_at, mature)


def project_outcomes(
    experiment_id: int,
    until: datetime | None = None,
    attributes: tuple[str, ...] = (),
    *,
    intent: bool = False,
    connection: Connection | None = None,
    attribution: Attribution = Attribution(),
) -> sa.Subquery:
    """One row per started project: arm, first start, first export (or NULL; only within the
    attribution window), completion time, and optionally segment attributes and the
    normalised intent of its first start. Projects started at or after the stop are left out."""
    is_start = events.c.type == "start"
    columns: list[ColumnElement[Any]] = [
        events.c.project_id.label("project_id"),
        func.min(sa.case((is_start, events.c.occurred_at))).label("first_start"),
        func.min(sa.case((events.c.type == "export", events.c.occurred_at))).label("first_export"),
        func.min(sa.case((is_start, events.c.arm_id))).label("event_arm_id"),
    ]
    for index, attribute in enumerate(attributes):
        value = events.c.attributes[attribute].as_string()
        # min() over the project's starts: deterministic when a retry logged another value.
        columns.append(func.min(sa.case((is_start, value))).label(f"segment_{index}"))
    if intent:
        normalized = func.lower(func.trim(events.c.intent))
        columns.append(func.min(sa.case((is_start, normalized))).label("intent"))
    per_project = (
        sa.select(*columns)
        .where(*_in_scope(experiment_id, until))
        .group_by(events.c.project_id)
        .subquery("per_project")
    )
    first_export: ColumnElement[Any] = per_project.c.first_export
    if attribution.window_h is not None and connection is not None:
        inside = within_window(
            connection, per_project.c.first_start, per_project.c.first_export,
            attribution.window_h,
        )  # fmt: skip
        first_export = sa.case((inside, per_project.c.first_export))
    completed_at = sa.case(
        (first_export > per_project.c.first_start, first_export),
        else_=per_project.c.first_start,
    )
    selected: list[ColumnElement[Any]] = [
        func.coalesce(assignments.c.arm_id, per_project.c.event_arm_id).label("arm_id"),
        per_project.c.first_start,
        first_export.label("first_export"),
        completed_at.label("completed_at"),
    ]
    for index, _ in enumerate(attributes):
        column = per_project.c[f"segment_{index}"]
        selected.append(func.coalesce(column, NO_SEGMENT).label(f"segment_{index}"))
    if intent:
        selected.append(per_project.c.intent)
    # The assignment wins over the arm on the events (a hash join for the bulk case).
    return (
        sa.select(*selected)
        .select_from(
            per_project.outerjoin(
                assignments,
                sa.and_(
                    assignments.c.experiment_id == experiment_id,
                    assignments.c.project_id == per_project.c.project_id,
                ),
            )
        )
        .where(
            per_project.c.first_start.is_not(None),
            *(
                [per_project.c.first_start < attribution.stopped_at]
                if attribution.stopped_at is not None
                else []
            ),
        )
        .subquery("projects")
    )


# --- queries -----------------------------------------------------------------------------------


def experiment_info(connection: Connection, key: str) -> ExperimentInfo | None:
    """The experiment's id, settings and arms (control first), or None for an unknown key."""
    row = connection.execute(
        sa.select(
            experiments.c.id,
            experiments.c.key,
            experiments.c.status,
            experiments.c.settings,
            experiments.c.started_at,
            experiments.c.stopped_at,
            experiments.c.shipped_arm,
        ).where(experiments.c.key == key)
    ).one_or_none()
    if row is None:
        return None
    arms = connection.execute(
        sa.select(
            experiment_arms.c.id,
            experiment_arms.c.name,
            experiment_arms.c.weight,
            experiment_arms.c.is_control,
        )
        .where(experiment_arms.c.experiment_id == row.id)
        .order_by(experiment_arms.c.is_control.desc(), experiment_arms.c.id)
    ).all()
    return ExperimentInfo(
        id=row.id,
        key=row.key,
        status=row.status,
        settings=dict(row.settings or {}),
        started_at=row.started_at,
        stopped_at=row.stopped_at,
        arms=tuple(ArmInfo(a.id, a.name, float(a.weight), bool(a.is_control)) for a in arms),
        shipped_arm=row.shipped_arm,
    )


def experiment_keys(connection: Connection, statuses: tuple[str, ...] | None = None) -> list[str]:
    query = sa.select(experiments.c.key).order_by(experiments.c.id)
    if statuses:
        query = query.where(experiments.c.status.in_(statuses))
    return list(connection.execute(query).scalars())


@dataclass(frozen=True)
class ProjectCounts:
    """Everything counted per project, from one pass over the events."""

    daily: list[ArmDay]
    segments: dict[str, list[SegmentCounts]]
    pending: dict[int, int] = field(default_factory=dict)  # arm id -> projects still in window


def _check_attribute(attribute: str) -> str:
    if not isinstance(attribute, str) or not ATTRIBUTE_PATTERN.match(attribute):
        raise ValueError(f"segment attribute {attribute!r} must be a plain identifier")
    return attribute


def project_counts(
    connection: Connection,
    experiment_id: int,
    until: datetime | None = None,
    attributes: tuple[str, ...] = (),
    popularity: bool = False,
    thresholds: tuple[int, ...] = POPULARITY_THRESHOLDS,
    attribution: Attribution = Attribution(),
) -> ProjectCounts:
    """Daily starts/exports per arm and segment counts, from ONE aggregation of the events.

    The per-project rows are a materialised CTE; each grouping is a small GROUP BY over it,
    glued with UNION ALL, so the events are scanned and grouped by project once. With
    `attribution.mature_before`, younger projects are only counted as pending per arm.
    """
    attributes = tuple(_check_attribute(a) for a in attributes)
    projects = (
        sa.select(
            project_outcomes(
                experiment_id, until, attributes, intent=popularity, connection=connection,
                attribution=attribution,
            )
        )
        .cte("projects")
        .prefix_with("MATERIALIZED")
    )  # fmt: skip
    young = (
        projects.c.first_start >= attribution.mature_before
        if attribution.mature_before is not None
        else sa.false()
    )
    known = sa.and_(projects.c.arm_id.is_not(None), sa.not_(young))
    exported = projects.c.first_export.is_not(None)
    text = sa.String()

    def grouped(kind: str, key: ColumnElement[Any], *where: ColumnElement[bool]) -> sa.Select:
        return (
            sa.select(
                sa.literal(kind, text).label("kind"),
                projects.c.arm_id,
                sa.cast(key, text).label("key"),
                func.count().label("starts"),
                func.count(projects.c.first_export).label("exports"),
            )
            .where(known, *where)
            .group_by(projects.c.arm_id, key)
        )

    pending = (
        sa.select(
            sa.literal("pending", text).label("kind"),
            projects.c.arm_id,
            sa.cast(sa.literal(""), text).label("key"),
            func.count().label("starts"),
            sa.literal(0).label("exports"),
        )
        .where(projects.c.arm_id.is_not(None), young)
        .group_by(projects.c.arm_id)
    )
    parts = [
        pending,
        grouped("start_day", _utc_day(connection, projects.c.first_start)),
        grouped("completion_day", _utc_day(connection, projects.c.completed_at), exported),
    ]
    for index, attribute in enumerate(attributes):
        parts.append(grouped(f"attribute:{attribute}", projects.c[f"segment_{index}"]))
    if popularity:
        per_intent = (
            sa.select(projects.c.intent, func.count().label("calls"))
            .where(known, projects.c.intent.is_not(None))
            .group_by(projects.c.intent)
            .subquery("per_intent")
        )
        parts.append(
            sa.select(
                sa.literal("popularity", text).label("kind"),
                projects.c.arm_id,
                sa.cast(per_intent.c.calls, text).label("key"),
                func.count().label("starts"),
                func.count(projects.c.first_export).label("exports"),
            )
            .select_from(projects.join(per_intent, per_intent.c.intent == projects.c.intent))
            .where(known)
            .group_by(projects.c.arm_id, per_intent.c.calls)
        )
    rows = connection.execute(sa.union_all(*parts)).all()
    waiting = {int(r.arm_id): int(r.starts) for r in rows if r.kind == "pending"}
    keyed = (
        KeyedCount(r.kind, int(r.arm_id), r.key, int(r.starts), int(r.exports or 0))
        for r in rows
        if r.kind != "pending"
    )
    return fold_keyed_counts(keyed, attributes, popularity, thresholds, waiting)


class KeyedCount(NamedTuple):
    """Projects started and exported in one arm for one key of one kind (start_day,
    completion_day, attribute:NAME or popularity): what every engine's aggregation returns."""

    kind: str
    arm_id: int
    key: Any
    starts: int
    exports: int


def fold_keyed_counts(
    counts: Iterable[KeyedCount],
    attributes: Sequence[str],
    popularity: bool,
    thresholds: Sequence[int] = POPULARITY_THRESHOLDS,
    pending: dict[int, int] | None = None,
) -> ProjectCounts:
    """Keyed counts -> daily counts per arm and segment counts (the popularity keys fold into
    the nested subsets r_i: projects whose intent was started at least i times)."""
    by_day: dict[tuple[int, date], list[int]] = {}
    segments: dict[str, list[SegmentCounts]] = {a: [] for a in attributes}
    popular: dict[tuple[int, int], list[int]] = {}
    for c in counts:
        if c.key is None and c.kind in ("completion_day", "popularity"):
            continue  # not exported / no intent
        if c.kind == "start_day":
            by_day.setdefault((c.arm_id, _as_date(c.key)), [0, 0])[0] += c.starts
        elif c.kind == "completion_day":
            by_day.setdefault((c.arm_id, _as_date(c.key)), [0, 0])[1] += c.exports
        elif c.kind == "popularity":
            for threshold in thresholds:
                if int(c.key) >= threshold:
                    subset = popular.setdefault((threshold, c.arm_id), [0, 0])
                    subset[0] += c.starts
                    subset[1] += c.exports
        else:
            attribute = c.kind.removeprefix("attribute:")
            segments[attribute].append(SegmentCounts(c.arm_id, str(c.key), c.starts, c.exports))
    for attribute in attributes:
        segments[attribute].sort(key=lambda s: (s.segment, s.arm_id))
    if popularity:
        segments["popularity"] = [
            SegmentCounts(arm_id, f"r{threshold}", starts, exports)
            for (threshold, arm_id), (starts, exports) in sorted(popular.items())
        ]
    daily = [
        ArmDay(arm_id, day, starts, exports)
        for (arm_id, day), (starts, exports) in sorted(by_day.items())
    ]
    return ProjectCounts(daily, segments, pending or {})


def arm_daily_counts(
    connection: Connection, experiment_id: int, until: datetime | None = None
) -> list[ArmDay]:
    """Starts by start day and exports by completion day, per arm; sorted by arm and day."""
    return project_counts(connection, experiment_id, until).daily


def segment_counts(
    connection: Connection, experiment_id: int, attribute: str, until: datetime | None = None
) -> list[SegmentCounts]:
    """Starts and exports per arm and value of a JSON attribute of the project's first start."""
    counts = project_counts(connection, experiment_id, until, (attribute,))
    return counts.segments[attribute]


def popularity_counts(
    connection: Connection,
    experiment_id: int,
    until: datetime | None = None,
    thresholds: tuple[int, ...] = POPULARITY_THRESHOLDS,
) -> list[SegmentCounts]:
    """Starts and exports per arm for the nested subsets r_i: intents with >= i projects."""
    counts = project_counts(
        connection, experiment_id, until, popularity=True, thresholds=thresholds
    )
    return counts.segments["popularity"]


def tune_for_analytics(connection: Connection) -> None:
    """PostgreSQL: memory for in-memory hash aggregates and sorts, no JIT, for this transaction.

    The report's few big GROUP BYs spill to disk with the default 4 MB work_mem, and JIT
    compilation costs more than it saves on them. SET LOCAL ends with the transaction.
    """
    if _is_postgres(connection):
        connection.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        connection.exec_driver_sql("SET LOCAL jit = off")


def call_arm(experiment_id: int) -> ColumnElement[Any]:
    """The arm of a start event: its own, else its project's assignment (looked up only
    then)."""
    assigned_arm = (
        sa.select(assignments.c.arm_id)
        .where(
            assignments.c.experiment_id == experiment_id,
            assignments.c.project_id == events.c.project_id,
        )
        .scalar_subquery()
    )
    return func.coalesce(events.c.arm_id, assigned_arm)


def _calls(experiment_id: int, until: datetime | None) -> sa.Subquery:
    """Start events of the experiment (the routed calls) with the arm that served them.

    A call logged without an arm falls back to the project's assignment (looked up only then).
    """
    conditions = [events.c.experiment_id == experiment_id, events.c.type == "start"]
    if until is not None:
        conditions.append(events.c.occurred_at < until)
    return (
        sa.select(
            call_arm(experiment_id).label("arm_id"),
            events.c.latency_ms,
            events.c.fallback,
            events.c.error,
            events.c.cache_hit,
            events.c.cost_usd,
        )
        .where(*conditions)
        .subquery("calls")
    )


def _as_int(flag: ColumnElement[Any]) -> ColumnElement[int]:
    return sa.case((flag, 1), else_=0)


def guardrail_sums(calls: sa.Subquery) -> sa.Select:
    """Per arm of `calls` (arm_id, latency_ms, fallback, error, cache_hit, cost_usd): calls,
    latencies present, fallback/error/cache-hit counts and total cost, for every engine."""
    return (
        sa.select(
            calls.c.arm_id,
            func.count().label("calls"),
            func.count(calls.c.latency_ms).label("latency_count"),
            func.sum(_as_int(calls.c.fallback)).label("fallbacks"),
            func.sum(_as_int(calls.c.error.is_not(None))).label("errors"),
            func.sum(_as_int(calls.c.cache_hit)).label("cache_hits"),
            func.coalesce(func.sum(calls.c.cost_usd), 0.0).label("cost"),
        )
        .where(calls.c.arm_id.is_not(None))
        .group_by(calls.c.arm_id)
    )


def guardrail_stats(
    connection: Connection, experiment_id: int, until: datetime | None = None
) -> list[ArmGuardrails]:
    """Per arm: calls, latency p50/p95, fallback/error/cache-hit counts and total cost."""
    calls = _calls(experiment_id, until)
    sums = connection.execute(guardrail_sums(calls).order_by(calls.c.arm_id)).all()
    percentiles = _latency_percentiles(connection, calls)
    return [
        ArmGuardrails(
            arm_id=int(r.arm_id),
            calls=int(r.calls),
            latency_count=int(r.latency_count),
            latency_p50_ms=percentiles.get(int(r.arm_id), (None, None))[0],
            latency_p95_ms=percentiles.get(int(r.arm_id), (None, None))[1],
            fallbacks=int(r.fallbacks or 0),
            errors=int(r.errors or 0),
            cache_hits=int(r.cache_hits or 0),
            cost_usd=float(r.cost or 0.0),
        )
        for r in sums
    ]


def _latency_percentiles(
    connection: Connection, calls: sa.Subquery, levels: tuple[float, float] = (0.5, 0.95)
) -> dict[int, tuple[float | None, float | None]]:
    measured = calls.c.latency_ms.is_not(None)
    if _is_postgres(connection):
        query = (
            sa.select(
                calls.c.arm_id,
                func.percentile_cont(array(list(levels))).within_group(calls.c.latency_ms),
            )
            .where(calls.c.arm_id.is_not(None), measured)
            .group_by(calls.c.arm_id)
        )
        return {int(arm): (float(v[0]), float(v[1])) for arm, v in connection.execute(query)}
    return _ranked_percentiles(connection, calls, levels)


def ranked_latencies(calls: sa.Subquery, *extra: sa.ColumnElement[Any]) -> sa.Subquery:
    """Each measured call's latency with its 0-based rank within its arm (fastest first)."""
    rank = func.row_number().over(partition_by=calls.c.arm_id, order_by=calls.c.latency_ms) - 1
    return (
        sa.select(calls.c.arm_id, calls.c.latency_ms, rank.label("rank"), *extra)
        .where(calls.c.arm_id.is_not(None), calls.c.latency_ms.is_not(None))
        .subquery("ranked")
    )


def _ranked_percentiles(
    connection: Connection, calls: sa.Subquery, levels: tuple[float, ...]
) -> dict[int, tuple[float | None, float | None]]:
    """percentile_cont with window functions: fetch only the two ranks around each position."""
    ranked = ranked_latencies(calls, func.count().over(partition_by=calls.c.arm_id).label("n"))
    columns: list[ColumnElement[Any]] = [ranked.c.arm_id, func.max(ranked.c.n).label("n")]
    for index, level in enumerate(levels):
        position = (ranked.c.n - 1) * level
        low = sa.cast(position, sa.Integer)  # SQLite truncates towards zero: floor for >= 0
        high = low + sa.case((position > low, 1), else_=0)
        columns.append(
            func.max(sa.case((ranked.c.rank == low, ranked.c.latency_ms))).label(f"lo{index}")
        )
        columns.append(
            func.max(sa.case((ranked.c.rank == high, ranked.c.latency_ms))).label(f"hi{index}")
        )
    rows = connection.execute(sa.select(*columns).group_by(ranked.c.arm_id)).mappings()
    result: dict[int, tuple[float | None, float | None]] = {}
    for row in rows:
        values: list[float | None] = []
        for index, level in enumerate(levels):
            rank = (int(row["n"]) - 1) * level
            fraction = rank - int(rank)
            lower, upper = float(row[f"lo{index}"]), float(row[f"hi{index}"])
            values.append(lower + (upper - lower) * fraction)
        result[int(row["arm_id"])] = (values[0], values[1])
    return result


# --- allocation periods ------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocationPeriodInfo:
    started_at: datetime
    weights: dict[int, float]  # arm id -> weight


@dataclass(frozen=True)
class PeriodCounts:
    """(exports, starts) per arm id of the projects that started within one allocation period."""

    started_at: datetime
    weights: dict[int, float]
    counts: dict[int, tuple[int, int]]


def allocation_periods(connection: Connection, experiment_id: int) -> list[AllocationPeriodInfo]:
    """The experiment's allocation periods, oldest first (empty for experiments started before
    periods were recorded: they are analysed as one period with the current weights)."""
    rows = connection.execute(
        sa.select(allocation_period_rows.c.started_at, allocation_period_rows.c.weights)
        .where(allocation_period_rows.c.experiment_id == experiment_id)
        .order_by(allocation_period_rows.c.version)
    ).all()
    return [
        AllocationPeriodInfo(row.started_at, {int(k): float(v) for k, v in row.weights.items()})
        for row in rows
    ]


def period_counts(
    connection: Connection,
    experiment_id: int,
    periods: list[AllocationPeriodInfo],
    until: datetime | None,
    attribution: Attribution,
) -> list[PeriodCounts]:
    """Counts per allocation period (by the project's first start) and arm, from the events.

    The first period also takes projects that started before it was recorded; the same
    attribution rules as `project_counts` apply (window, pending, stop).
    """
    projects = project_outcomes(
        experiment_id, until, connection=connection, attribution=attribution
    )
    index: ColumnElement[Any] = sa.literal(0)
    for i, period in enumerate(periods[1:], start=1):
        index = sa.case((projects.c.first_start >= period.started_at, i), else_=index)
    conditions: list[ColumnElement[bool]] = [projects.c.arm_id.is_not(None)]
    if attribution.mature_before is not None:
        conditions.append(projects.c.first_start < attribution.mature_before)
    rows = connection.execute(
        sa.select(
            index.label("period"),
            projects.c.arm_id,
            func.count().label("starts"),
            func.count(projects.c.first_export).label("exports"),
        )
        .where(*conditions)
        .group_by(index, projects.c.arm_id)
    ).all()
    out = [PeriodCounts(p.started_at, p.weights, {}) for p in periods]
    for row in rows:
        out[int(row.period)].counts[int(row.arm_id)] = (int(row.exports), int(row.starts))
    return out
