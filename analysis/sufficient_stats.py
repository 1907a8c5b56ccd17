"""One definition of the sufficient-statistics queries, run by PostgreSQL and by Spark SQL.

The queries are SQLAlchemy Core statements over the ``events`` and ``assignments`` table clauses
of `analysis.queries`; the few things that differ between engines (the UTC day of a timestamp, a
JSON attribute as text, a cast to text, adding microseconds to a timestamp) are small custom
constructs compiled per dialect. PostgreSQL runs them through its SQLAlchemy dialect
(`SqlSource`); Spark runs the same statements compiled by `SparkDialect`, with named parameters
(`analysis.spark.SparkSource`). The rows are folded in Python by the same functions, so both
engines feed `analysis.stats` the same counts.

Counting rules: those of `analysis.queries` (scope, arm, starts, exports, completion day,
segments, popularity, guardrails), plus two cut-offs that a report may pass:

* ``stopped_at``: start events at or after it are ignored (no new projects, no calls after the
  experiment stopped); exports still count.
* ``export_window``: a project counts as exported only when its first export is at most this
  long after its first start (an export logged before the start still counts, as in
  `analysis.queries`). None: no window.

Latency percentiles are exact (linear interpolation, like PostgreSQL's ``percentile_cont``): the
engine returns the two values around each rank, ranked with ``row_number()``, and Python
interpolates, so both engines give the same floats.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, func
from sqlalchemy.engine import default
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import compiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from analysis.queries import (
    NO_SEGMENT,
    POPULARITY_THRESHOLDS,
    ArmGuardrails,
    KeyedCount,
    ProjectCounts,
    _check_attribute,
    assignments,
    events,
    fold_keyed_counts,
    guardrail_sums,
    ranked_latencies,
    tune_for_analytics,
)

LEVELS = (0.5, 0.95)

# --- per-dialect constructs --------------------------------------------------------------------


class utc_day(FunctionElement):  # noqa: N801 - SQL function style
    """The UTC calendar day of a timestamp."""

    type = sa.Date()
    inherit_cache = True


@compiles(utc_day, "postgresql")
def _utc_day_pg(element: utc_day, comp: compiler.SQLCompiler, **kw: Any) -> str:
    return f"CAST(timezone('UTC', {comp.process(element.clauses, **kw)}) AS DATE)"


@compiles(utc_day, "spark")
def _utc_day_spark(element: utc_day, comp: compiler.SQLCompiler, **kw: Any) -> str:
    return f"to_date({comp.process(element.clauses, **kw)})"  # the session time zone is UTC


@compiles(utc_day)
def _utc_day_sqlite(element: utc_day, comp: compiler.SQLCompiler, **kw: Any) -> str:
    return f"substr({comp.process(element.clauses, **kw)}, 1, 10)"


class as_text(FunctionElement):  # noqa: N801
    type = sa.String()
    inherit_cache = True


@compiles(as_text)
def _as_text(element: as_text, comp: compiler.SQLCompiler, **kw: Any) -> str:
    return f"CAST({comp.process(element.clauses, **kw)} AS TEXT)"


@compiles(as_text, "spark")
def _as_text_spark(element: as_text, comp: compiler.SQLCompiler, **kw: Any) -> str:
    return f"CAST({comp.process(element.clauses, **kw)} AS STRING)"


class json_text(FunctionElement):  # noqa: N801
    """A top-level attribute of a JSON column as text (the attribute name is checked)."""

    type = sa.String()
    inherit_cache = True

    def __init__(self, column: ColumnElement[Any], attribute: str) -> None:
        self.attribute = _check_attribute(attribute)
        super().__init__(column)


@compiles(json_text, "postgresql")
def _json_text_pg(element: json_text, comp: compiler.SQLCompiler, **kw: Any) -> str:
    return f"({comp.process(element.clauses, **kw)} ->> '{element.attribute}')"


@compiles(json_text, "spark")
def _json_text_spark(element: json_text, comp: compiler.SQLCompiler, **kw: Any) -> str:
    return f"get_json_object({comp.process(element.clauses, **kw)}, '$.{element.attribute}')"


@compiles(json_text)
def _json_text_sqlite(element: json_text, comp: compiler.SQLCompiler, **kw: Any) -> str:
    return f"json_extract({comp.process(element.clauses, **kw)}, '$.{element.attribute}')"


class plus_micros(FunctionElement):  # noqa: N801
    """A timestamp plus a whole number of microseconds."""

    type = sa.DateTime(timezone=True)
    inherit_cache = True


@compiles(plus_micros, "postgresql")
def _plus_micros_pg(element: plus_micros, comp: compiler.SQLCompiler, **kw: Any) -> str:
    ts, micros = (comp.process(c, **kw) for c in element.clauses)
    return f"({ts} + {micros} * interval '1 microsecond')"


@compiles(plus_micros, "spark")
def _plus_micros_spark(element: plus_micros, comp: compiler.SQLCompiler, **kw: Any) -> str:
    ts, micros = (comp.process(c, **kw) for c in element.clauses)
    return f"timestampadd(MICROSECOND, {micros}, {ts})"


@compiles(plus_micros)
def _plus_micros_other(element: plus_micros, comp: compiler.SQLCompiler, **kw: Any) -> str:
    raise sa.exc.CompileError("export_window needs PostgreSQL or Spark")


class SparkIdentifierPreparer(compiler.IdentifierPreparer):
    def __init__(self, dialect: default.DefaultDialect) -> None:
        super().__init__(dialect, initial_quote="`")


class SparkDialect(default.DefaultDialect):
    """Just enough of a dialect to compile these statements to Spark SQL (named parameters)."""

    name = "spark"
    paramstyle = "named"
    positional = False
    supports_native_boolean = True
    preparer = SparkIdentifierPreparer  # type: ignore[assignment]  # a subclass, as dialects do


# --- the statements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What a report counts: one experiment's events before ``until``, with the cut-offs."""

    experiment_id: int
    until: datetime | None = None
    stopped_at: datetime | None = None
    export_window: timedelta | None = None
    mature_before: datetime | None = None  # projects first started from here on are pending


def _joined() -> sa.Join:
    """Events with their project's assignment in the experiment (at most one: unique key)."""
    return events.outerjoin(
        assignments,
        sa.and_(
            assignments.c.experiment_id == sa.bindparam("experiment_id"),
            assignments.c.project_id == events.c.project_id,
        ),
    )


def _time_limits(scope: Scope) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if scope.until is not None:
        conditions.append(events.c.occurred_at < sa.bindparam("until", scope.until))
    if scope.stopped_at is not None:
        late_start = sa.and_(
            events.c.type == "start",
            events.c.occurred_at >= sa.bindparam("stopped_at", scope.stopped_at),
        )
        conditions.append(sa.not_(late_start))
    return conditions


def projects_cte(scope: Scope, attributes: tuple[str, ...] = (), intent: bool = False) -> sa.CTE:
    """One row per started project: arm, first start, whether it counts as exported, the time
    it completed, its segment values and normalised intent."""
    experiment: sa.BindParameter[int] = sa.bindparam("experiment_id")
    is_start = events.c.type == "start"

    def first_start(value: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.min(sa.case((is_start, value)))

    columns: list[ColumnElement[Any]] = [
        events.c.project_id.label("project_id"),
        first_start(events.c.occurred_at).label("first_start"),
        func.min(sa.case((events.c.type == "export", events.c.occurred_at))).label("first_export"),
        first_start(events.c.arm_id).label("event_arm_id"),
        func.max(assignments.c.arm_id).label("assigned_arm_id"),
    ]
    for index, attribute in enumerate(attributes):
        columns.append(first_start(json_text(events.c.attributes, attribute)).label(f"seg{index}"))
    if intent:
        columns.append(first_start(func.lower(func.trim(events.c.intent))).label("intent"))
    in_scope = sa.or_(
        events.c.experiment_id == experiment,
        sa.and_(events.c.experiment_id.is_(None), assignments.c.project_id.is_not(None)),
    )
    per_project = (
        sa.select(*columns)
        .select_from(_joined())
        .where(in_scope, *_time_limits(scope))
        .group_by(events.c.project_id)
        .subquery("per_project")
    )
    p = per_project.c
    exported: ColumnElement[bool] = p.first_export.is_not(None)
    if scope.export_window is not None:
        micros = round(scope.export_window / timedelta(microseconds=1))
        deadline = plus_micros(p.first_start, sa.bindparam("window_micros", micros, sa.BigInteger))
        exported = sa.and_(exported, p.first_export <= deadline)
    completed = sa.case((p.first_export > p.first_start, p.first_export), else_=p.first_start)
    selected: list[ColumnElement[Any]] = [
        func.coalesce(p.assigned_arm_id, p.event_arm_id).label("arm_id"),
        p.first_start,
        sa.case((exported, 1), else_=0).label("exported"),
        completed.label("completed_at"),
    ]
    for index, _ in enumerate(attributes):
        selected.append(func.coalesce(p[f"seg{index}"], NO_SEGMENT).label(f"seg{index}"))
    if intent:
        selected.append(p.intent)
    started: list[ColumnElement[bool]] = [p.first_start.is_not(None)]
    if scope.mature_before is not None:
        started.append(p.first_start < sa.bindparam("mature_before", scope.mature_before))
    return sa.select(*selected).where(*started).cte("projects")


def counts_statement(
    scope: Scope, attributes: tuple[str, ...] = (), popularity: bool = False
) -> sa.Select:
    """Starts and exports per arm and start day, completion day, each attribute's value and
    intent popularity (the number of started projects with the project's intent): ONE
    aggregation with GROUPING SETS over the projects, so every engine scans the events once.

    Rows: (arm_id, key, grouping flag, ... per key, starts, exports), keys in the order
    start_day, completion_day, the attributes, popularity (`fold_counts` reads them).
    """
    attributes = tuple(_check_attribute(a) for a in attributes)
    projects = projects_cte(scope, attributes, popularity)
    p = projects.c
    keys: list[ColumnElement[Any]] = [
        as_text(utc_day(p.first_start)).label("k_start_day"),
        sa.case((p.exported == 1, as_text(utc_day(p.completed_at)))).label("k_completion_day"),
    ]
    keys += [p[f"seg{i}"].label(f"k_seg{i}") for i in range(len(attributes))]
    if popularity:
        size = func.count().over(partition_by=p.intent)
        keys.append(sa.case((p.intent.is_not(None), as_text(size))).label("k_popularity"))
    keyed = sa.select(p.arm_id, p.exported, *keys).where(p.arm_id.is_not(None)).subquery("keyed")
    key_columns = [keyed.c[k.name] for k in keys]
    columns: list[ColumnElement[Any]] = [keyed.c.arm_id]
    for column in key_columns:
        columns += [column, func.grouping(column).label(f"g_{column.name}")]
    columns += [func.count().label("starts"), func.sum(keyed.c.exported).label("exports")]
    sets = func.grouping_sets(*(sa.tuple_(keyed.c.arm_id, column) for column in key_columns))
    return sa.select(*columns).group_by(sets)


def _calls(scope: Scope) -> sa.Subquery:
    """Start events of the experiment (the routed calls) with the arm that served them (its
    own, else the project's assignment)."""
    return (
        sa.select(
            func.coalesce(events.c.arm_id, assignments.c.arm_id).label("arm_id"),
            events.c.latency_ms,
            events.c.fallback,
            events.c.error,
            events.c.cache_hit,
            events.c.cost_usd,
        )
        .select_from(_joined())
        .where(
            events.c.experiment_id == sa.bindparam("experiment_id"),
            events.c.type == "start",
            *_time_limits(scope),
        )
        .subquery("calls")
    )


def guardrail_sums_statement(scope: Scope) -> sa.Select:
    return guardrail_sums(_calls(scope))


def rank_positions(n: int, levels: Sequence[float] = LEVELS) -> list[tuple[int, int, float]]:
    """(low rank, high rank, fraction) of each level among n sorted values (0-based)."""
    out = []
    for level in levels:
        position = (n - 1) * level
        low = math.floor(position)
        out.append((low, math.ceil(position), position - low))
    return out


def latency_ranks_statement(scope: Scope, wanted: dict[int, set[int]]) -> sa.Select:
    """The latencies at the wanted 0-based ranks per arm: rows (arm_id, rank, latency_ms)."""
    calls = _calls(scope)
    ranked = ranked_latencies(calls)
    picks = [
        sa.and_(ranked.c.arm_id == arm, sa.or_(*(ranked.c.rank == r for r in sorted(ranks))))
        for arm, ranks in sorted(wanted.items())
    ]
    return sa.select(ranked.c.arm_id, ranked.c.rank, ranked.c.latency_ms).where(sa.or_(*picks))


# --- running and folding -----------------------------------------------------------------------

Runner = Callable[[sa.Executable, dict[str, Any]], Iterable[Sequence[Any]]]


def parameters(scope: Scope) -> dict[str, Any]:
    return {"experiment_id": scope.experiment_id}


def _kinds(attributes: tuple[str, ...], popularity: bool) -> list[str]:
    kinds = ["start_day", "completion_day", *(f"attribute:{a}" for a in attributes)]
    return kinds + (["popularity"] if popularity else [])


def fold_counts(
    rows: Iterable[Sequence[Any]],
    attributes: tuple[str, ...],
    popularity: bool,
    thresholds: tuple[int, ...] = POPULARITY_THRESHOLDS,
) -> ProjectCounts:
    """Rows of `counts_statement` -> daily counts per arm and segment counts."""
    kinds = _kinds(attributes, popularity)

    def keyed(row: Sequence[Any]) -> KeyedCount:
        grouped = [
            (kind, row[1 + 2 * i]) for i, kind in enumerate(kinds) if int(row[2 + 2 * i]) == 0
        ]
        (kind, key), *others = grouped
        assert not others, "one key per grouping set"
        return KeyedCount(kind, int(row[0]), key, int(row[-2]), int(row[-1] or 0))

    return fold_keyed_counts(map(keyed, rows), attributes, popularity, thresholds)


def project_counts(
    run: Runner,
    scope: Scope,
    attributes: tuple[str, ...] = (),
    popularity: bool = False,
    thresholds: tuple[int, ...] = POPULARITY_THRESHOLDS,
) -> ProjectCounts:
    attributes = tuple(_check_attribute(a) for a in attributes)
    rows = run(counts_statement(scope, attributes, popularity), parameters(scope))
    counts = fold_counts(rows, attributes, popularity, thresholds)
    if scope.mature_before is None:
        return counts
    pending = {int(arm): int(n) for arm, n in run(pending_statement(scope), parameters(scope)) if n}
    return ProjectCounts(counts.daily, counts.segments, pending)


def pending_statement(scope: Scope) -> sa.Select:
    """Projects per arm still inside their attribution window: first started from
    `scope.mature_before` on, so left out of the rate and reported apart."""
    p = projects_cte(dataclasses.replace(scope, mature_before=None)).c
    young = p.first_start >= sa.bindparam("mature_before", scope.mature_before)
    return sa.select(p.arm_id, func.count()).where(p.arm_id.is_not(None), young).group_by(p.arm_id)


def guardrail_stats(run: Runner, scope: Scope) -> list[ArmGuardrails]:
    """Per arm: calls, exact latency p50/p95, fallback/error/cache-hit counts and cost."""
    sums = sorted(
        (tuple(r) for r in run(guardrail_sums_statement(scope), parameters(scope))),
        key=lambda r: int(r[0]),
    )
    positions = {int(r[0]): rank_positions(int(r[2])) for r in sums if int(r[2])}
    values: dict[tuple[int, int], float] = {}
    if positions:
        wanted = {arm: {r for p in ps for r in p[:2]} for arm, ps in positions.items()}
        for arm, rank, latency in run(latency_ranks_statement(scope, wanted), parameters(scope)):
            values[(int(arm), int(rank))] = float(latency)
    result = []
    for arm, calls, latency_count, fallbacks, errors, cache_hits, cost in sums:
        arm_id = int(arm)
        p50 = p95 = None
        if arm_id in positions:
            (p50, p95) = (
                values[(arm_id, low)] + (values[(arm_id, high)] - values[(arm_id, low)]) * frac
                for low, high, frac in positions[arm_id]
            )
        result.append(
            ArmGuardrails(
                arm_id=arm_id,
                calls=int(calls),
                latency_count=int(latency_count),
                latency_p50_ms=p50,
                latency_p95_ms=p95,
                fallbacks=int(fallbacks or 0),
                errors=int(errors or 0),
                cache_hits=int(cache_hits or 0),
                cost_usd=float(cost or 0.0),
            )
        )
    return result


def connection_runner(connection: Connection) -> Runner:
    """Run the statements in a SQLAlchemy connection (PostgreSQL: SQLite has no GROUPING SETS)."""

    def run(statement: sa.Executable, params: dict[str, Any]) -> list[Sequence[Any]]:
        return [tuple(row) for row in connection.execute(statement, params)]

    return run


def compile_for_spark(
    statement: sa.Executable, params: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Spark SQL text with named parameter markers, and every parameter's value."""
    bound = statement.params(**params)  # type: ignore[attr-defined]
    compiled = bound.compile(dialect=SparkDialect())
    return str(compiled), dict(compiled.params)


class SqlSource:
    """Sufficient statistics from the database the connection points at (same definition)."""

    def __init__(self, connection: Connection) -> None:
        tune_for_analytics(connection)  # work_mem for the GROUP BYs, for this transaction
        self.run = connection_runner(connection)

    def project_counts(
        self, scope: Scope, attributes: tuple[str, ...], popularity: bool
    ) -> ProjectCounts:
        return project_counts(self.run, scope, attributes, popularity)

    def guardrail_stats(self, scope: Scope) -> list[ArmGuardrails]:
        return guardrail_stats(self.run, scope)
