"""Significance reports as typed models: SQL sufficient statistics -> `analysis.stats` -> `Report`.

`build_report` runs the queries of `analysis.queries` and hands the counts to `assemble_report`
(pure: counts in, `Report` out). `analysis.report_render` presents a `Report` (markdown, HTML,
plots, JSON); storing it is the caller's business (`abtest.report_service`).

The models are the report's schema: `Report.model_dump(mode="json")` is the JSON the API returns
and the `reports` table stores (every number a float, an int or null: NaN and infinity become
null), and `Report.model_validate` reads a stored report back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from sqlalchemy import Connection

from analysis import queries, rollup, stats
from analysis.sufficient_stats import Scope

SCHEMA_VERSION = 1
DEFAULT_SEGMENT_ATTRIBUTES = ("platform", "country")
EXPLORATORY = "exploratory: segment comparisons are not multiplicity-corrected decisions"


class ReportError(ValueError):
    """A report cannot be built (e.g. unknown experiment); the message says why."""


# --- the models --------------------------------------------------------------------------------


def finite(value: Any) -> Any:
    """numpy scalars -> Python numbers; NaN and infinity -> None (JSON has neither)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: A number that may be undefined (no projects, an unbounded interval): None, never NaN. An int
#: stays an int, so the JSON keeps the spelling the counts gave it.
Real = Annotated[int | float | None, BeforeValidator(finite)]
#: An interval [low, high]; either end may be undefined.
Pair = tuple[Real, Real]
#: A UTC instant, written as `datetime.isoformat` (`+00:00`, as stored reports have it).
Instant = Annotated[
    datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json")
]


class Decision(StrEnum):
    """The decision vocabulary of `analysis.stats` (`stats.DECISIONS`)."""

    SRM_DO_NOT_TRUST = stats.SRM_DO_NOT_TRUST
    INSUFFICIENT_DATA = stats.INSUFFICIENT_DATA
    TREATMENT_BETTER = stats.TREATMENT_BETTER
    TREATMENT_WORSE = stats.TREATMENT_WORSE
    EQUIVALENT = stats.EQUIVALENT
    NON_INFERIOR = stats.NON_INFERIOR
    UNDERPOWERED = stats.UNDERPOWERED
    INCONCLUSIVE = stats.INCONCLUSIVE


class ReportPart(BaseModel):
    """Immutable; JSON names are the field names unless an alias says otherwise."""

    model_config = ConfigDict(
        frozen=True, serialize_by_alias=True, validate_by_name=True, validate_by_alias=True
    )


class ExperimentRef(ReportPart):
    key: str
    id: int
    status: str
    started_at: Instant | None
    stopped_at: Instant | None
    shipped_arm: str | None


class MarginInfo(ReportPart):
    value: Real
    scale: str
    label: str


class Labels(ReportPart):
    """One set of labels for every renderer (CLI, report, dashboard, API)."""

    difference: str
    ratio: str
    difference_interval: str
    ratio_interval: str
    decision_interval: str
    p_value: str
    p_value_note: str
    non_inferiority: str | None = None  # only with a margin; absent from the JSON otherwise

    @model_serializer(mode="wrap")
    def _omit_absent_margin(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.non_inferiority is None:
            data.pop("non_inferiority", None)
        return data


class ArmRate(ReportPart):
    """One arm's completion rate with its Wilson interval."""

    name: str
    control: bool
    weight: Real
    starts: int
    exports: int
    rate: Real
    ci_low: Real
    ci_high: Real


class ArmResult(ArmRate):
    pending: int = 0  # projects still inside the export window: not in the rate yet


class NonInferiority(ReportPart):
    margin: str
    bound: Real
    lower: Real
    non_inferior: bool
    one_sided_alpha: Real


class Equivalence(ReportPart):
    bounds: Pair
    equivalent: bool


class SequentialInterval(ReportPart):
    difference_ci: Pair
    p_value: Real
    ratio_ci: Pair
    horizon: Real
    looks: int
    message: str | None


class Comparison(ReportPart):
    """One treatment against the control: Newcombe difference, MOVER-R ratio, the verdict."""

    arm: str
    decision: Decision
    scale: str
    difference: Real
    difference_ci: Pair
    ratio: Real
    ratio_ci: Pair
    relative_difference: Real
    p_value: Real
    decision_interval: Pair
    decision_interval_label: str
    non_inferiority: NonInferiority | None = None
    equivalence: Equivalence | None = None
    sequential: SequentialInterval | None = None
    notes: list[str] = []


class SrmPeriod(ReportPart):
    starts: list[int]
    weights: list[Real]
    p_value: Real


class SrmCheck(ReportPart):
    flagged: bool
    p_value: Real
    statistic: Real
    starts: list[int]
    expected: list[Real]
    threshold: Real
    message: str | None
    periods: list[SrmPeriod] | None = None


class PowerEstimate(ReportPart):
    """Power of the test that decides (same design, level and scale as the verdict)."""

    arm: str
    kind: str
    effect: Real
    effect_label: str
    target_power: Real
    power_reached: Real
    required_per_arm: int
    more_per_arm: int
    days_elapsed: Real
    days_remaining: Real
    message: str


class NoPower(ReportPart):
    """No power without projects in both arms (only these four fields in the JSON)."""

    model_config = ConfigDict(extra="forbid")

    arm: str
    message: str
    power_reached: None = None
    days_elapsed: Real


Power = PowerEstimate | NoPower


class Guardrail(ReportPart):
    arm: str
    calls: int
    projects: int
    latency_p50_ms: Real
    latency_p95_ms: Real
    fallback_rate: Real
    error_rate: Real
    cache_hit_rate: Real
    cost_usd: Real
    cost_per_project: Real


class SegmentComparison(ReportPart):
    arm: str
    difference: Real
    difference_ci: Pair  # Newcombe, as the report's
    p_value: Real
    message: str | None


class SegmentRow(ReportPart):
    segment: str
    arms: list[ArmRate]
    comparisons: list[SegmentComparison]


class TimelineArm(ReportPart):
    """Cumulative counts up to the day, the rate and its Wilson interval."""

    starts: int
    exports: int
    rate: Real
    ci_low: Real
    ci_high: Real


class RelativePoint(ReportPart):
    """ratio - 1 and its always-valid interval at one daily look."""

    estimate: Real
    ci_low: Real
    ci_high: Real


class TimelinePoint(ReportPart):
    day: date
    arms: dict[str, TimelineArm]
    relative: dict[str, RelativePoint]


class SrmCallout(ReportPart):
    kind: Literal["srm", "srm_cleared"]
    message: str


class DecisionChanged(ReportPart):
    kind: Literal["decision_changed"] = "decision_changed"
    arm: str
    from_: str = Field(validation_alias=AliasChoices("from", "from_"), serialization_alias="from")
    to: Decision
    previous_period_end: str | None
    message: str


Callout = Annotated[SrmCallout | DecisionChanged, Field(discriminator="kind")]


class Report(ReportPart):
    """One experiment's significance report as of a day."""

    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema")
    experiment: ExperimentRef
    period_end: Instant
    as_of: date
    generated_at: Instant
    partial: bool
    alpha: float
    margin: MarginInfo | None
    sequential: bool
    horizon: float
    horizon_source: str
    export_window_h: float
    labels: Labels
    decision: Decision  # overall: the strongest warning among the treatments
    arms: list[ArmResult]
    comparisons: list[Comparison]
    srm: SrmCheck
    power: list[Power]
    guardrails: list[Guardrail]
    segments: dict[str, list[SegmentRow]]
    timeline: list[TimelinePoint]
    notes: list[str]
    callouts: list[Callout]  # SRM, decision changes since the previous report


class PreviousComparison(BaseModel):
    arm: str
    decision: str


class PreviousSrm(BaseModel):
    flagged: bool = False


class PreviousReport(BaseModel):
    """What the call-outs read of the previous stored report (any stored schema version)."""

    period_end: str | None = None
    as_of: str | None = None
    srm: PreviousSrm = PreviousSrm()
    comparisons: list[PreviousComparison] = []


# --- helpers -----------------------------------------------------------------------------------


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def period_end_for(as_of: date) -> datetime:
    """A report "as of day D" covers every event before the start of D + 1 (UTC)."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC) + timedelta(days=1)


def _pair(low: float, high: float) -> Pair:
    return finite(low), finite(high)


# --- assembling --------------------------------------------------------------------------------


class StatsSource(Protocol):
    """Where sufficient statistics come from besides the rollup: `analysis.sufficient_stats.
    SqlSource` (the database) or `analysis.spark.SparkSource` (Spark over exported Parquet)."""

    def project_counts(
        self, scope: Scope, attributes: tuple[str, ...], popularity: bool
    ) -> queries.ProjectCounts: ...

    def guardrail_stats(self, scope: Scope) -> list[queries.ArmGuardrails]: ...


def build_report(
    connection: Connection,
    key: str,
    period_end: datetime,
    previous: PreviousReport | None = None,
    segment_attributes: Sequence[str] = DEFAULT_SEGMENT_ATTRIBUTES,
    now: datetime | None = None,
    source: StatsSource | None = None,
) -> Report:
    """Read the counts for `key` up to `period_end` and assemble the report: from the rollup
    (refreshed first) by default, else from `source` (e.g. Spark over the exported events; the
    experiment's metadata always comes from the connection).

    Projects are counted with the experiment's attribution window (young ones pending) and
    without starts after its stop; with more than one allocation period, the counts per period
    come from the event scan (`queries.period_counts`).
    """
    info = queries.experiment_info(connection, key)
    if info is None:
        raise ReportError(f"no experiment with key {key!r}")
    attribution = queries.Attribution.for_report(
        info.settings, info.stopped_at, period_end, _utc(now) or datetime.now(UTC)
    )
    attributes = tuple(segment_attributes)
    if source is None:
        queries.tune_for_analytics(connection)
        rollup.refresh(connection, info.id)  # incremental: only the events since the last one
        counts = rollup.project_counts(
            connection, info.id, period_end, attributes, popularity=True,
            mature_before=attribution.mature_before,
        )  # fmt: skip
        guardrails = rollup.guardrail_stats(connection, info.id, period_end)
    else:
        window = attribution.window_h
        scope = Scope(
            info.id,
            until=period_end,
            stopped_at=attribution.stopped_at,
            export_window=timedelta(hours=window) if window is not None else None,
            mature_before=attribution.mature_before,
        )
        counts = source.project_counts(scope, attributes, True)
        guardrails = source.guardrail_stats(scope)
    periods = queries.allocation_periods(connection, info.id)
    by_period = None
    if len(periods) > 1:
        by_period = queries.period_counts(connection, info.id, periods, period_end, attribution)
    return assemble_report(
        info, counts.daily, guardrails, counts.segments, period_end, previous, now,
        pending=counts.pending, periods=by_period,
    )  # fmt: skip


def assemble_report(
    info: queries.ExperimentInfo,
    daily: Sequence[queries.ArmDay],
    guardrails: Sequence[queries.ArmGuardrails],
    segments: Mapping[str, Sequence[queries.SegmentCounts]],
    period_end: datetime,
    previous: PreviousReport | None = None,
    now: datetime | None = None,
    *,
    pending: dict[int, int] | None = None,
    periods: Sequence[queries.PeriodCounts] | None = None,
) -> Report:
    """The report from sufficient statistics (pure: no I/O).

    `previous` only feeds the call-outs (what changed since the last stored report): every
    number is a function of the counts and the experiment's settings, so reading the same data
    twice gives the same report.
    """
    now = _utc(now) or datetime.now(UTC)
    end = _utc(period_end) or period_end
    if len(info.arms) < 2 or not any(arm.is_control for arm in info.arms):
        raise ReportError(f"experiment {info.key!r} needs a control and at least one treatment")
    settings = info.settings
    alpha = float(settings.get("alpha", stats.DEFAULT_ALPHA))
    margin = _margin(settings)
    sequential = bool(settings.get("sequential", True))
    treatments = info.arms[1:]
    names = {arm.id: arm.name for arm in info.arms}
    pending = pending or {}

    days = _day_range(daily)
    series = {arm.id: _daily_series(daily, arm.id, days) for arm in info.arms}
    totals = {arm_id: (int(x.sum()), int(n.sum())) for arm_id, (x, n) in series.items()}

    horizon, horizon_source = planned_horizon(settings)
    days_elapsed = _days_elapsed(info, days, min(end, now))
    decision = _decide(info, totals, horizon, days_elapsed, periods)
    comparisons = [
        _comparison_row(decision.treatments[arm.name], margin, decision) for arm in treatments
    ]
    srm = _srm_row(decision)
    window = queries.export_window_hours(settings)
    notes = list(decision.notes)
    if sum(pending.values()):
        notes.append(
            f"{sum(pending.values())} projects started less than the {window:g} h export window "
            "before the cut-off are pending: not in the rates yet"
        )
    return Report(
        experiment=ExperimentRef(
            key=info.key,
            id=info.id,
            status=info.status,
            started_at=_utc(info.started_at),
            stopped_at=_utc(info.stopped_at),
            shipped_arm=info.shipped_arm,
        ),
        period_end=end,
        as_of=(end - timedelta(microseconds=1)).date(),
        generated_at=now,
        partial=end > now,
        alpha=alpha,
        margin=_margin_row(margin),
        sequential=sequential,
        horizon=horizon,
        horizon_source=horizon_source,
        export_window_h=window,
        labels=_labels(decision, margin, sequential, alpha),
        decision=_overall(comparisons, srm),
        arms=[
            ArmResult(
                **_arm_row(arm, *totals[arm.id], alpha).model_dump(),
                pending=int(pending.get(arm.id, 0)),
            )
            for arm in info.arms
        ],
        comparisons=comparisons,
        srm=srm,
        power=[
            _power_row(arm.name, decision.treatments[arm.name], days_elapsed) for arm in treatments
        ],
        guardrails=_guardrail_rows(guardrails, names, totals),
        segments={name: _segment_rows(rows, info, alpha) for name, rows in segments.items()},
        timeline=_timeline(days, series, info, alpha, horizon),
        notes=notes,
        callouts=callouts(srm, comparisons, previous),
    )


def _days_elapsed(info: queries.ExperimentInfo, days: list[date], until: datetime) -> float:
    """Days from the start (else the first day with data) to `until` or the stop, if earlier."""
    started = _utc(info.started_at) or (
        datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC) if days else None
    )
    if started is None:
        return 0.0
    ended = min(x for x in (until, _utc(info.stopped_at)) if x is not None)
    return max(0.0, (ended - started).total_seconds() / 86400)


def _decide(
    info: queries.ExperimentInfo,
    totals: dict[int, tuple[int, int]],
    horizon: float,
    days_elapsed: float,
    periods: Sequence[queries.PeriodCounts] | None,
) -> stats.ExperimentDecision:
    """The verdicts on the cumulative totals, with the experiment's settings.

    One look at the cumulative totals: today's confidence sequence alone is always valid (it
    skips the intersection with earlier looks, so it is conservative). Daily arrays cannot be
    passed: exports are bucketed by completion day, so a day may have more exports than starts.
    """
    settings = info.settings
    control, treatments = info.arms[0], info.arms[1:]
    stat_periods = _stat_periods(periods, info) if periods else None
    return stats.decide(
        totals[control.id],
        {arm.name: totals[arm.id] for arm in treatments},
        margin=_margin(settings),
        alpha=float(settings.get("alpha", stats.DEFAULT_ALPHA)),
        sequential=bool(settings.get("sequential", True)),
        horizon=horizon,
        weights=None if stat_periods else [arm.weight for arm in info.arms],
        mde=float(settings.get("mde", stats.DEFAULT_MDE)),
        power=float(settings.get("power", stats.DEFAULT_POWER)),
        days_elapsed=days_elapsed or None,
        periods=stat_periods,
    )


def _day_range(daily: Sequence[queries.ArmDay]) -> list[date]:
    if not daily:
        return []
    first, last = min(r.day for r in daily), max(r.day for r in daily)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _daily_series(
    daily: Sequence[queries.ArmDay], arm_id: int, days: list[date]
) -> tuple[np.ndarray, np.ndarray]:
    index = {day: i for i, day in enumerate(days)}
    exports, starts = np.zeros(len(days), dtype=np.int64), np.zeros(len(days), dtype=np.int64)
    for row in daily:
        if row.arm_id == arm_id:
            exports[index[row.day]] += row.exports
            starts[index[row.day]] += row.starts
    return exports, starts


def _margin(settings: dict[str, Any]) -> stats.Margin | None:
    value = settings.get("margin")
    return None if value is None else stats.parse_margin(value)


def _margin_row(margin: stats.Margin | None) -> MarginInfo | None:
    if margin is None:
        return None
    return MarginInfo(value=margin.value, scale=margin.scale, label=margin.label)


DEFAULT_PLAN_BASELINE = 0.5


def planned_horizon(settings: dict[str, Any]) -> tuple[float, str]:
    """Projects per arm the sequential design is tuned for, and where that number came from.

    A function of the settings only (never of the data), so it cannot move between reads: the
    horizon stored at the start, else the plan from the settings' baseline, else the plan at a
    baseline of 0.5 (stated as a default: the confidence sequence is then valid, only not
    tightest where the experiment will end).
    """
    if settings.get("horizon"):
        return float(settings["horizon"]), "plan (fixed at the start)"
    baseline = settings.get("baseline")
    source = "plan from the settings' baseline"
    if baseline is None:
        baseline, source = DEFAULT_PLAN_BASELINE, "default (no baseline in the plan)"
    margin = _margin(settings)
    alpha = float(settings.get("alpha", stats.DEFAULT_ALPHA))
    power = float(settings.get("power", stats.DEFAULT_POWER))
    sequential = bool(settings.get("sequential", True))
    if margin is not None and margin.value != 0:
        plan = stats.plan(
            float(baseline), margin.value, scale=margin.scale, kind="non-inferiority",
            alpha=alpha, power=power, sequential=sequential,
        )  # fmt: skip
    else:
        mde = float(settings.get("mde", stats.DEFAULT_MDE))
        plan = stats.plan(float(baseline), mde, alpha=alpha, power=power, sequential=sequential)
    return float(plan.control), source


def _stat_periods(
    periods: Sequence[queries.PeriodCounts], info: queries.ExperimentInfo
) -> list[stats.Period]:
    out = []
    for period in periods:
        counts = tuple(period.counts.get(arm.id, (0, 0)) for arm in info.arms)
        weights = tuple(float(period.weights.get(arm.id, 0.0)) for arm in info.arms)
        out.append(stats.Period(counts, weights))
    return out


def _labels(
    decision: stats.ExperimentDecision, margin: stats.Margin | None, sequential: bool,
    alpha: float,
) -> Labels:  # fmt: skip
    """One set of labels for every renderer (CLI, report, dashboard, API)."""
    first = next(iter(decision.treatments.values()))
    k = len(decision.treatments)
    p_kind = "always-valid p (mixture SPRT)" if sequential else "p (pooled z, two-sided)"
    labels = {
        "difference": "difference treatment − control, in percentage points (pts)",
        "ratio": "ratio treatment / control, in % (relative difference = ratio − 1)",
        "difference_interval": "Newcombe interval of the difference (pts)",
        "ratio_interval": "MOVER-R interval of the ratio (%)",
        "decision_interval": first.interval_label,
        "p_value": p_kind + (", Holm-adjusted" if k > 1 else ""),
        "p_value_note": "the interval decides; the p-value is shown for reference",
    }
    if margin is not None:
        labels["non_inferiority"] = (
            f"non-inferior at {margin.label}: the lower bound of the deciding interval is above "
            f"{_bound_text(margin)}; a one-sided test at alpha/2 = {alpha / 2 / k:g}"
        )
    return Labels(**labels)


def _bound_text(margin: stats.Margin) -> str:
    if margin.scale == stats.RELATIVE:
        return f"{100 * margin.bound:.4g}% of control"
    return f"{100 * margin.bound:+.4g} pts"


def _arm_row(arm: queries.ArmInfo, exports: int, starts: int, alpha: float) -> ArmRate:
    rate = stats.completion_rate(exports, starts, alpha)
    return ArmRate(
        name=arm.name,
        control=arm.is_control,
        weight=arm.weight,
        starts=starts,
        exports=exports,
        rate=rate.rate,
        ci_low=rate.ci_low,
        ci_high=rate.ci_high,
    )


def _comparison_row(
    verdict: stats.TreatmentDecision, margin: stats.Margin | None,
    decision: stats.ExperimentDecision,
) -> Comparison:  # fmt: skip
    cmp = verdict.comparison
    low, high = verdict.interval
    non_inferiority = equivalence = None
    if margin is not None and not math.isnan(low):
        non_inferiority = NonInferiority(
            margin=margin.label, bound=margin.bound, lower=low,
            non_inferior=bool(low > margin.bound),
            one_sided_alpha=decision.alpha / 2 / len(decision.treatments),
        )  # fmt: skip
        if margin.value != 0:
            eq_low, eq_high = margin.equivalence_bounds
            equivalence = Equivalence(
                bounds=(eq_low, eq_high), equivalent=bool(eq_low < low and high < eq_high)
            )
    return Comparison(
        arm=verdict.arm,
        decision=Decision(verdict.decision),
        scale=verdict.scale,
        difference=cmp.difference,
        difference_ci=_pair(*verdict.difference_interval),
        ratio=cmp.ratio,
        ratio_ci=_pair(*verdict.ratio_interval),
        relative_difference=cmp.relative_lift,
        p_value=verdict.p_value,
        decision_interval=_pair(low, high),
        decision_interval_label=verdict.interval_label,
        non_inferiority=non_inferiority,
        equivalence=equivalence,
        sequential=_sequential_row(verdict.sequential),
        notes=list(verdict.notes),
    )


def _sequential_row(seq: stats.SequentialResult | None) -> SequentialInterval | None:
    if seq is None:
        return None
    return SequentialInterval(
        difference_ci=_pair(seq.difference_ci_low, seq.difference_ci_high),
        p_value=seq.p_value,
        ratio_ci=_pair(seq.ratio_ci_low, seq.ratio_ci_high),
        horizon=seq.horizon,
        looks=seq.looks,
        message=seq.message,
    )


def _srm_row(decision: stats.ExperimentDecision) -> SrmCheck:
    srm = decision.srm
    if srm is None:  # decide() always checks when weights or periods are given
        raise ReportError("the SRM check did not run")
    periods = None
    if decision.allocation_srm is not None:
        periods = [
            SrmPeriod(starts=list(p.starts), weights=list(p.weights), p_value=p.p_value)
            for p in decision.allocation_srm.periods
        ]
    return SrmCheck(
        flagged=srm.flagged,
        p_value=srm.p_value,
        statistic=srm.statistic,
        starts=list(srm.starts),
        expected=list(srm.expected),
        threshold=srm.threshold,
        message=srm.message,
        periods=periods,
    )


def _overall(comparisons: list[Comparison], srm: SrmCheck) -> Decision:
    if srm.flagged:
        return Decision.SRM_DO_NOT_TRUST
    order = {name: i for i, name in enumerate(stats.DECISIONS)}
    return min((c.decision for c in comparisons), key=lambda d: order.get(d, len(order)))


def _power_row(arm: str, verdict: stats.TreatmentDecision, days_elapsed: float) -> Power:
    """Power of the test that decides (same design, level and scale as the verdict)."""
    check = verdict.power
    if check is None:
        return NoPower(
            arm=arm, message="no power without projects in both arms", days_elapsed=days_elapsed
        )
    kind = "show non-inferiority at" if check.kind == "non-inferiority" else "detect"
    return PowerEstimate(
        arm=arm,
        kind=check.kind,
        effect=check.effect,
        effect_label=check.effect_label,
        target_power=check.target,
        power_reached=check.power,
        required_per_arm=check.required_per_arm,
        more_per_arm=check.more_per_arm,
        days_elapsed=days_elapsed,
        days_remaining=check.days_more,
        message=f"power to {kind} {check.effect_label}",
    )


def _guardrail_rows(
    guardrails: Sequence[queries.ArmGuardrails],
    names: dict[int, str],
    totals: dict[int, tuple[int, int]],
) -> list[Guardrail]:
    by_arm = {g.arm_id: g for g in guardrails}
    rows = []
    for arm_id, name in names.items():
        g = by_arm.get(arm_id)
        projects = totals[arm_id][1]
        if g is None:  # no call logged for the arm
            rows.append(
                Guardrail(
                    arm=name,
                    calls=0,
                    projects=projects,
                    latency_p50_ms=None,
                    latency_p95_ms=None,
                    fallback_rate=None,
                    error_rate=None,
                    cache_hit_rate=None,
                    cost_usd=0.0,
                    cost_per_project=stats.cost_per_project(0.0, projects).mean,
                )  # fmt: skip
            )
            continue
        rows.append(
            Guardrail(
                arm=name,
                calls=g.calls,
                projects=projects,
                latency_p50_ms=g.latency_p50_ms,
                latency_p95_ms=g.latency_p95_ms,
                fallback_rate=g.fallbacks / g.calls if g.calls else None,
                error_rate=g.errors / g.calls if g.calls else None,
                cache_hit_rate=g.cache_hits / g.calls if g.calls else None,
                cost_usd=g.cost_usd,
                cost_per_project=stats.cost_per_project(g.cost_usd, projects).mean,
            )
        )
    return rows


def _segment_rows(
    rows: Sequence[queries.SegmentCounts], info: queries.ExperimentInfo, alpha: float
) -> list[SegmentRow]:
    by_segment: dict[str, dict[int, tuple[int, int]]] = {}
    for row in rows:
        by_segment.setdefault(row.segment, {})[row.arm_id] = (row.exports, row.starts)
    control, treatments = info.arms[0], info.arms[1:]
    out = []
    for segment, counts in by_segment.items():
        xc, nc = counts.get(control.id, (0, 0))
        comparisons = []
        for arm in treatments:
            xt, nt = counts.get(arm.id, (0, 0))
            cmp = stats.compare(xc, nc, xt, nt, alpha)
            low, high = stats.newcombe_difference(xc, nc, xt, nt, stats.design_z(alpha, False))
            comparisons.append(
                SegmentComparison(
                    arm=arm.name,
                    difference=cmp.difference,
                    difference_ci=_pair(float(low), float(high)),
                    p_value=float(stats.pooled_p_value(xc, nc, xt, nt)),
                    message=cmp.message,
                )
            )
        arms = [_arm_row(arm, *counts.get(arm.id, (0, 0)), alpha) for arm in info.arms]
        out.append(SegmentRow(segment=segment, arms=arms, comparisons=comparisons))
    return out


def _timeline(
    days: list[date],
    series: dict[int, tuple[np.ndarray, np.ndarray]],
    info: queries.ExperimentInfo,
    alpha: float,
    horizon: float,
) -> list[TimelinePoint]:
    if not days:
        return []
    control, treatments = info.arms[0], info.arms[1:]
    cumulative = {}
    for arm in info.arms:
        exports, starts = (np.cumsum(a) for a in series[arm.id])
        low, high = stats.wilson_interval(exports, starts, alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = exports / starts
        cumulative[arm.name] = (exports, starts, rate, low, high)
    relative = {
        arm.name: _relative_path(
            series[control.id], series[arm.id], alpha / len(treatments), horizon
        )
        for arm in treatments
    }
    return [
        TimelinePoint(
            day=day,
            arms={
                name: TimelineArm(
                    starts=int(c[1][i]),
                    exports=int(c[0][i]),
                    rate=float(c[2][i]),
                    ci_low=float(c[3][i]),
                    ci_high=float(c[4][i]),
                )  # fmt: skip
                for name, c in cumulative.items()
            },
            relative={
                name: RelativePoint(estimate=est[i], ci_low=low[i], ci_high=high[i])
                for name, (est, low, high) in relative.items()
            },
        )
        for i, day in enumerate(days)
    ]


def _relative_path(
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    alpha: float,
    horizon: float,
) -> tuple[list[float], list[float], list[float]]:
    """ratio - 1 and its always-valid interval at each daily look, from cumulative counts.

    Each look is that day's MOVER-R interval at the confidence sequence's critical value (as
    the report's decision, one look), not intersected with earlier looks, so the last point
    equals the report's always-valid ratio interval. Never NaN once both arms have starts.
    """
    xc, nc = (np.cumsum(a) for a in control)
    xt, nt = (np.cumsum(a) for a in treatment)
    z = stats.sequential_z(np.minimum(nc, nt) / horizon, alpha)
    low, high = stats.mover_ratio(xc, nc, xt, nt, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (xt / nt) / (xc / nc)
    return (
        [float(v) for v in ratio - 1],
        [float(v) for v in low - 1],
        [float(v) for v in high - 1],
    )


def callouts(
    srm: SrmCheck, comparisons: Sequence[Comparison], previous: PreviousReport | None
) -> list[SrmCallout | DecisionChanged]:
    """What must be read first: an SRM flag, and decisions that changed since `previous`."""
    out: list[SrmCallout | DecisionChanged] = []
    was_flagged = previous is not None and previous.srm.flagged
    if srm.flagged:
        new = "NEW: " if previous is not None and not was_flagged else ""
        message = srm.message or "sample ratio mismatch: do not trust these results"
        out.append(SrmCallout(kind="srm", message=new + message))
    elif was_flagged:
        out.append(SrmCallout(kind="srm_cleared", message="the sample ratio mismatch has cleared"))
    if previous is None:
        return out
    before = {c.arm: c.decision for c in previous.comparisons}
    since = previous.as_of or str(previous.period_end)[:10]
    for comparison in comparisons:
        old = before.get(comparison.arm)
        if old is not None and old != comparison.decision:
            out.append(
                DecisionChanged(
                    arm=comparison.arm,
                    from_=old,
                    to=comparison.decision,
                    previous_period_end=previous.period_end,
                    message=f"{comparison.arm}: decision changed from {old!r} to "
                    f"{comparison.decision.value!r} since the report of {since}",
                )
            )
    return out
