"""Significance reports: SQL sufficient statistics -> `analysis.stats` -> a JSON-able dict.

`build_report` runs the queries of `analysis.queries` and hands the counts to `assemble_report`
(pure: counts in, dict out). `render_markdown`, `render_html` (with plots) and `render_json`
present the dict. Storing reports is the caller's business (`abtest.reporting`).

Shape of a report (every number is a float, an int or None; NaN and infinity become None):

    {"schema": 1, "experiment": {key, id, status, started_at, stopped_at, shipped_arm},
     "period_end", "as_of", "generated_at", "partial", "alpha",
     "margin": {value, scale, label} | None, "sequential", "horizon", "horizon_source",
     "export_window_h", "labels": {difference, ratio, decision_interval, p_value, ...},
     "decision",                       # overall: the strongest warning among the treatments
     "callouts": [{kind, message, ...}],   # SRM, decision changes since the previous report
     "arms": [{name, control, weight, starts, exports, rate, ci_low, ci_high, pending}],
     "comparisons": [{arm, decision, scale, difference, difference_ci (Newcombe), ratio,
                      ratio_ci (MOVER-R), relative_difference, p_value, decision_interval,
                      decision_interval_label, non_inferiority{...}, equivalence{...},
                      sequential{...}|None, notes}],
     "srm": {flagged, p_value, statistic, starts, expected, threshold, message, periods},
     "power": [{arm, kind, effect, effect_label, target_power, power_reached,
                required_per_arm, more_per_arm, days_elapsed, days_remaining, message}],
     "guardrails": [{arm, calls, projects, latency_p50_ms, latency_p95_ms, fallback_rate,
                     error_rate, cache_hit_rate, cost_usd, cost_per_project}],
     "segments": {name: [{segment, arms: [{name, starts, exports, rate, ci_low, ci_high}],
                          comparisons: [{arm, difference, difference_ci, p_value}]}]},
     "timeline": [{day, arms: {name: {starts, exports, rate, ci_low, ci_high}},   # cumulative
                   relative: {arm: {estimate, ci_low, ci_high}}}]}  # always-valid ratio - 1
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Connection

from analysis import queries, rollup, stats
from analysis.sufficient_stats import Scope

SCHEMA_VERSION = 1
DEFAULT_SEGMENT_ATTRIBUTES = ("platform", "country")
EXPLORATORY = "exploratory: segment comparisons are not multiplicity-corrected decisions"


class ReportError(ValueError):
    """A report cannot be built (e.g. unknown experiment); the message says why."""


# --- helpers -----------------------------------------------------------------------------------


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def period_end_for(as_of: date) -> datetime:
    """A report "as of day D" covers every event before the start of D + 1 (UTC)."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC) + timedelta(days=1)


def _pair(low: float, high: float) -> list[float | None]:
    return clean([low, high])


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
    previous: dict[str, Any] | None = None,
    segment_attributes: Sequence[str] = DEFAULT_SEGMENT_ATTRIBUTES,
    now: datetime | None = None,
    source: StatsSource | None = None,
) -> dict[str, Any]:
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
    segments: dict[str, Sequence[queries.SegmentCounts]],
    period_end: datetime,
    previous: dict[str, Any] | None = None,
    now: datetime | None = None,
    *,
    pending: dict[int, int] | None = None,
    periods: Sequence[queries.PeriodCounts] | None = None,
) -> dict[str, Any]:
    """The report dict from sufficient statistics (pure: no I/O).

    `previous` only feeds the call-outs (what changed since the last stored report): every
    number is a function of the counts and the experiment's settings, so reading the same data
    twice gives the same report.
    """
    now = _utc(now) or datetime.now(UTC)
    period_end = _utc(period_end)  # type: ignore[assignment]
    if len(info.arms) < 2 or not any(arm.is_control for arm in info.arms):
        raise ReportError(f"experiment {info.key!r} needs a control and at least one treatment")
    settings = info.settings
    alpha = float(settings.get("alpha", stats.DEFAULT_ALPHA))
    margin = _margin(settings)
    sequential = bool(settings.get("sequential", True))
    mde = float(settings.get("mde", stats.DEFAULT_MDE))
    target_power = float(settings.get("power", stats.DEFAULT_POWER))
    control, treatments = info.arms[0], info.arms[1:]
    names = {arm.id: arm.name for arm in info.arms}
    pending = pending or {}

    days = _day_range(daily)
    series = {arm.id: _daily_series(daily, arm.id, days) for arm in info.arms}
    totals = {arm_id: (int(x.sum()), int(n.sum())) for arm_id, (x, n) in series.items()}

    horizon, horizon_source = planned_horizon(settings)
    started = _utc(info.started_at) or (
        datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC) if days else None
    )
    ended = min(x for x in (period_end, now, _utc(info.stopped_at)) if x is not None)
    days_elapsed = max(0.0, (ended - started).total_seconds() / 86400) if started else 0.0
    stat_periods = _stat_periods(periods, info) if periods else None
    # One look at the cumulative totals: today's confidence sequence alone is always valid (it
    # skips the intersection with earlier looks, so it is conservative). Daily arrays cannot be
    # passed: exports are bucketed by completion day, so a day may have more exports than starts.
    decision = stats.decide(
        totals[control.id],
        {arm.name: totals[arm.id] for arm in treatments},
        margin=margin,
        alpha=alpha,
        sequential=sequential,
        horizon=horizon,
        weights=None if stat_periods else [arm.weight for arm in info.arms],
        mde=mde,
        power=target_power,
        days_elapsed=days_elapsed or None,
        periods=stat_periods,
    )

    arms = [
        {**_arm_row(arm, *totals[arm.id], alpha), "pending": int(pending.get(arm.id, 0))}
        for arm in info.arms
    ]
    comparisons = [
        _comparison_row(decision.treatments[arm.name], margin, decision) for arm in treatments
    ]
    srm = _srm_row(decision)
    overall = _overall(comparisons, srm)
    window = queries.export_window_hours(settings)
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "experiment": {
            "key": info.key,
            "id": info.id,
            "status": info.status,
            "started_at": _utc(info.started_at),
            "stopped_at": _utc(info.stopped_at),
            "shipped_arm": info.shipped_arm,
        },
        "period_end": period_end,
        "as_of": (period_end - timedelta(microseconds=1)).date(),
        "generated_at": now,
        "partial": period_end > now,
        "alpha": alpha,
        "margin": _margin_row(margin),
        "sequential": sequential,
        "horizon": horizon,
        "horizon_source": horizon_source,
        "export_window_h": window,
        "labels": _labels(decision, margin, sequential, alpha),
        "decision": overall,
        "arms": arms,
        "comparisons": comparisons,
        "srm": srm,
        "power": [
            _power_row(arm.name, decision.treatments[arm.name], days_elapsed) for arm in treatments
        ],
        "guardrails": _guardrail_rows(guardrails, names, totals),
        "segments": {name: _segment_rows(rows, info, alpha) for name, rows in segments.items()},
        "timeline": _timeline(days, series, info, alpha, horizon),
        "notes": list(decision.notes),
    }
    if sum(pending.values()):
        report["notes"].append(
            f"{sum(pending.values())} projects started less than the {window:g} h export window "
            "before the cut-off are pending: not in the rates yet"
        )
    report["callouts"] = callouts(report, previous)
    return clean(report)


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


def _margin_row(margin: stats.Margin | None) -> dict[str, Any] | None:
    if margin is None:
        return None
    return {"value": margin.value, "scale": margin.scale, "label": margin.label}


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
    kwargs = {
        "alpha": float(settings.get("alpha", stats.DEFAULT_ALPHA)),
        "power": float(settings.get("power", stats.DEFAULT_POWER)),
        "sequential": bool(settings.get("sequential", True)),
    }
    if margin is not None and margin.value != 0:
        plan = stats.plan(
            float(baseline), margin.value, scale=margin.scale, kind="non-inferiority", **kwargs
        )
    else:
        plan = stats.plan(float(baseline), float(settings.get("mde", stats.DEFAULT_MDE)), **kwargs)
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
) -> dict[str, str]:  # fmt: skip
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
    return labels


def _bound_text(margin: stats.Margin) -> str:
    if margin.scale == stats.RELATIVE:
        return f"{100 * margin.bound:.4g}% of control"
    return f"{100 * margin.bound:+.4g} pts"


def _arm_row(arm: queries.ArmInfo, exports: int, starts: int, alpha: float) -> dict[str, Any]:
    rate = stats.completion_rate(exports, starts, alpha)
    return {
        "name": arm.name,
        "control": arm.is_control,
        "weight": arm.weight,
        "starts": starts,
        "exports": exports,
        "rate": rate.rate,
        "ci_low": rate.ci_low,
        "ci_high": rate.ci_high,
    }


def _comparison_row(
    verdict: stats.TreatmentDecision, margin: stats.Margin | None,
    decision: stats.ExperimentDecision,
) -> dict[str, Any]:  # fmt: skip
    cmp = verdict.comparison
    low, high = verdict.interval
    row: dict[str, Any] = {
        "arm": verdict.arm,
        "decision": verdict.decision,
        "scale": verdict.scale,
        "difference": cmp.difference,
        "difference_ci": _pair(*verdict.difference_interval),
        "ratio": cmp.ratio,
        "ratio_ci": _pair(*verdict.ratio_interval),
        "relative_difference": cmp.relative_lift,
        "p_value": verdict.p_value,
        "decision_interval": _pair(low, high),
        "decision_interval_label": verdict.interval_label,
        "non_inferiority": None,
        "equivalence": None,
        "sequential": None,
        "notes": list(verdict.notes),
    }
    if margin is not None and not math.isnan(low):
        eq_low, eq_high = margin.equivalence_bounds
        row["non_inferiority"] = {
            "margin": margin.label, "bound": margin.bound, "lower": low,
            "non_inferior": bool(low > margin.bound),
            "one_sided_alpha": decision.alpha / 2 / len(decision.treatments),
        }  # fmt: skip
        if margin.value != 0:
            row["equivalence"] = {
                "bounds": [eq_low, eq_high],
                "equivalent": bool(eq_low < low and high < eq_high),
            }
    seq = verdict.sequential
    if seq is not None:
        row["sequential"] = {
            "difference_ci": _pair(seq.difference_ci_low, seq.difference_ci_high),
            "p_value": seq.p_value,
            "ratio_ci": _pair(seq.ratio_ci_low, seq.ratio_ci_high),
            "horizon": seq.horizon,
            "looks": seq.looks,
            "message": seq.message,
        }
    return row


def _srm_row(decision: stats.ExperimentDecision) -> dict[str, Any]:
    srm = decision.srm
    if srm is None:  # decide() always checks when weights or periods are given
        raise ReportError("the SRM check did not run")
    row = {
        "flagged": srm.flagged,
        "p_value": srm.p_value,
        "statistic": srm.statistic,
        "starts": list(srm.starts),
        "expected": list(srm.expected),
        "threshold": srm.threshold,
        "message": srm.message,
        "periods": None,
    }
    if decision.allocation_srm is not None:
        row["periods"] = [
            {"starts": list(p.starts), "weights": list(p.weights), "p_value": p.p_value}
            for p in decision.allocation_srm.periods
        ]
    return row


def _overall(comparisons: list[dict[str, Any]], srm: dict[str, Any]) -> str:
    if srm["flagged"]:
        return stats.SRM_DO_NOT_TRUST
    order = {name: i for i, name in enumerate(stats.DECISIONS)}
    return min((c["decision"] for c in comparisons), key=lambda d: order.get(d, len(order)))


def _power_row(arm: str, verdict: stats.TreatmentDecision, days_elapsed: float) -> dict[str, Any]:
    """Power of the test that decides (same design, level and scale as the verdict)."""
    check = verdict.power
    if check is None:
        return {"arm": arm, "message": "no power without projects in both arms",
                "power_reached": None, "days_elapsed": days_elapsed}  # fmt: skip
    kind = "show non-inferiority at" if check.kind == "non-inferiority" else "detect"
    return {
        "arm": arm,
        "kind": check.kind,
        "effect": check.effect,
        "effect_label": check.effect_label,
        "target_power": check.target,
        "power_reached": check.power,
        "required_per_arm": check.required_per_arm,
        "more_per_arm": check.more_per_arm,
        "days_elapsed": days_elapsed,
        "days_remaining": check.days_more,
        "message": f"power to {kind} {check.effect_label}",
    }


def _guardrail_rows(
    guardrails: Sequence[queries.ArmGuardrails],
    names: dict[int, str],
    totals: dict[int, tuple[int, int]],
) -> list[dict[str, Any]]:
    by_arm = {g.arm_id: g for g in guardrails}
    rows = []
    for arm_id, name in names.items():
        g = by_arm.get(arm_id)
        calls = g.calls if g else 0
        projects = totals[arm_id][1]
        cost = g.cost_usd if g else 0.0
        rows.append(
            {
                "arm": name,
                "calls": calls,
                "projects": projects,
                "latency_p50_ms": g.latency_p50_ms if g else None,
                "latency_p95_ms": g.latency_p95_ms if g else None,
                "fallback_rate": g.fallbacks / calls if calls else None,
                "error_rate": g.errors / calls if calls else None,
                "cache_hit_rate": g.cache_hits / calls if calls else None,
                "cost_usd": cost,
                "cost_per_project": stats.cost_per_project(cost, projects).mean,
            }
        )
    return rows


def _segment_rows(
    rows: Sequence[queries.SegmentCounts], info: queries.ExperimentInfo, alpha: float
) -> list[dict[str, Any]]:
    by_segment: dict[str, dict[int, tuple[int, int]]] = {}
    for row in rows:
        by_segment.setdefault(row.segment, {})[row.arm_id] = (row.exports, row.starts)
    control, treatments = info.arms[0], info.arms[1:]
    out = []
    for segment, counts in by_segment.items():
        arm_rows = [_arm_row(arm, *counts.get(arm.id, (0, 0)), alpha) for arm in info.arms]
        xc, nc = counts.get(control.id, (0, 0))
        comparisons = []
        for arm in treatments:
            xt, nt = counts.get(arm.id, (0, 0))
            cmp = stats.compare(xc, nc, xt, nt, alpha)
            low, high = stats.newcombe_difference(xc, nc, xt, nt, stats.design_z(alpha, False))
            comparisons.append(
                {
                    "arm": arm.name,
                    "difference": cmp.difference,
                    "difference_ci": _pair(float(low), float(high)),  # Newcombe, as above
                    "p_value": float(stats.pooled_p_value(xc, nc, xt, nt)),
                    "message": cmp.message,
                }
            )
        out.append({"segment": segment, "arms": arm_rows, "comparisons": comparisons})
    return out


def _timeline(
    days: list[date],
    series: dict[int, tuple[np.ndarray, np.ndarray]],
    info: queries.ExperimentInfo,
    alpha: float,
    horizon: float,
) -> list[dict[str, Any]]:
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
    timeline = []
    for i, day in enumerate(days):
        timeline.append(
            {
                "day": day,
                "arms": {
                    name: {
                        "starts": int(c[1][i]),
                        "exports": int(c[0][i]),
                        "rate": float(c[2][i]),
                        "ci_low": float(c[3][i]),
                        "ci_high": float(c[4][i]),
                    }  # fmt: skip
                    for name, c in cumulative.items()
                },
                "relative": {
                    name: {"estimate": est[i], "ci_low": low[i], "ci_high": high[i]}
                    for name, (est, low, high) in relative.items()
                },
            }
        )
    return timeline


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


def callouts(report: dict[str, Any], previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What must be read first: an SRM flag, and decisions that changed since `previous`."""
    out: list[dict[str, Any]] = []
    srm = report["srm"]
    was_flagged = bool(previous and previous.get("srm", {}).get("flagged"))
    if srm["flagged"]:
        out.append(
            {
                "kind": "srm",
                "message": ("NEW: " if previous and not was_flagged else "")
                + (srm["message"] or "sample ratio mismatch: do not trust these results"),
            }
        )
    elif was_flagged:
        out.append({"kind": "srm_cleared", "message": "the sample ratio mismatch has cleared"})
    if previous:
        before = {c["arm"]: c["decision"] for c in previous.get("comparisons", [])}
        for comparison in report["comparisons"]:
            old = before.get(comparison["arm"])
            if old is not None and old != comparison["decision"]:
                out.append(
                    {
                        "kind": "decision_changed",
                        "arm": comparison["arm"],
                        "from": old,
                        "to": comparison["decision"],
                        "previous_period_end": previous.get("period_end"),
                        "message": f"{comparison['arm']}: decision changed from {old!r} to "
                        f"{comparison['decision']!r} since the report of "
                        f"{previous.get('as_of') or str(previous.get('period_end'))[:10]}",
                    }
                )
    return out


# --- rendering ---------------------------------------------------------------------------------


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False, allow_nan=False)


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _pts(value: float | None) -> str:
    """An absolute difference in percentage points, always labelled."""
    return "–" if value is None else f"{100 * value:+.2f} pts"


def _ratio(value: float | None) -> str:
    """A ratio treatment / control as a percentage of control (None: unbounded or undefined)."""
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "–" if value is None else format(value, fmt)


def _interval(pair: Sequence[float | None] | None, kind: str = "pct") -> str:
    """[low, high] as rates (pct), points (pts) or ratios (ratio; a missing high is ∞)."""
    if not pair:
        return "–"
    low, high = pair
    if kind == "ratio":
        if low is None:
            return "–"
        return f"[{_ratio(low)}, {'∞' if high is None else _ratio(high)}]"
    if low is None or high is None:
        return "–"
    if kind == "pts":
        return f"[{100 * low:+.2f}, {100 * high:+.2f}] pts"
    if kind == "pct":
        return f"[{_pct(low)}, {_pct(high)}]"
    return f"[{low:.4f}, {high:.4f}]"


def _days(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _margin_text(report: dict[str, Any]) -> str:
    margin = report.get("margin")
    return margin["label"] if margin else "none"


def render_markdown(report: dict[str, Any]) -> str:
    """A plain-text report for terminals, chat and pull requests."""
    exp = report["experiment"]
    labels = report["labels"]
    lines = [f"# Experiment {exp['key']} — report as of {report['as_of']}", ""]
    for callout in report["callouts"]:
        lines.append(f"> **{callout['kind'].upper()}**: {callout['message']}")
    if report["callouts"]:
        lines.append("")
    mode = "sequential (always-valid)" if report["sequential"] else "fixed horizon"
    lines += [
        f"**Decision: {report['decision']}** — alpha {report['alpha']}, margin "
        f"{_margin_text(report)}, {mode}, horizon {_num(report['horizon'], '.0f')} projects per "
        f"arm ({report['horizon_source']}), export window {report['export_window_h']:g} h"
        + (" — partial day" if report["partial"] else ""),
        "",
        "| arm | starts | exports | completion rate | 95% CI (Wilson) | pending |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for arm in report["arms"]:
        name = arm["name"] + (" (control)" if arm["control"] else "")
        lines.append(
            f"| {name} | {arm['starts']} | {arm['exports']} | {_pct(arm['rate'])} | "
            f"{_interval([arm['ci_low'], arm['ci_high']])} | {arm['pending']} |"
        )
    lines += [
        "",
        f"Decided on: {labels['decision_interval']}. {labels['p_value_note']}.",
        "",
        f"| treatment | decision | difference | CI (pts) | ratio | CI (ratio) | "
        f"{labels['p_value']} | power |",
        "|---|---|---:|---|---:|---|---:|---:|",
    ]
    powers = {p["arm"]: p for p in report["power"]}
    for c in report["comparisons"]:
        p = powers.get(c["arm"], {})
        lines.append(
            f"| {c['arm']} | {c['decision']} | {_pts(c['difference'])} | "
            f"{_interval(c['difference_ci'], 'pts')} | {_ratio(c['ratio'])} | "
            f"{_interval(c['ratio_ci'], 'ratio')} | {_num(c['p_value'])} | "
            f"{_pct(p.get('power_reached'), 1)} |"
        )
    if "non_inferiority" in labels:
        lines += ["", labels["non_inferiority"] + "."]
    srm = report["srm"]
    lines += [
        "",
        f"**SRM**: {'FLAGGED' if srm['flagged'] else 'ok'} (p = {_num(srm['p_value'])}, "
        f"starts {srm['starts']}, expected {[round(e, 1) for e in srm['expected']]}"
        + (f", checked in {len(srm['periods'])} allocation periods" if srm["periods"] else "")
        + ")",
        "",
        "## Power (the deciding test's design)",
    ]
    for p in report["power"]:
        lines.append(f"- {p['arm']}: {_power_text(p)}")
    lines += [
        "",
        "## Guardrails",
        "",
        "| arm | calls | latency p50 | p95 | fallback | errors | cache hits | cost / project |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in report["guardrails"]:
        lines.append(
            f"| {g['arm']} | {g['calls']} | {_num(g['latency_p50_ms'], '.0f')} ms | "
            f"{_num(g['latency_p95_ms'], '.0f')} ms | {_pct(g['fallback_rate'])} | "
            f"{_pct(g['error_rate'])} | {_pct(g['cache_hit_rate'])} | "
            f"${_num(g['cost_per_project'], '.5f')} |"
        )
    lines += ["", "## Segments", "", f"_{EXPLORATORY}_"]
    for name, rows in report["segments"].items():
        lines += ["", f"### {name}", "", "| segment | " + " | ".join(
            a["name"] for a in report["arms"]) + " | difference (95% CI, pts) |",
            "|---|" + "---:|" * len(report["arms"]) + "---|"]  # fmt: skip
        for row in rows:
            rates = " | ".join(f"{_pct(a['rate'], 1)} ({a['starts']})" for a in row["arms"])
            diffs = "; ".join(
                f"{c['arm']}: {_pts(c['difference'])} {_interval(c['difference_ci'], 'pts')}"
                for c in row["comparisons"]
            )
            lines.append(f"| {row['segment']} | {rates} | {diffs} |")
    if report["notes"]:
        lines += ["", "Notes: " + "; ".join(report["notes"])]
    return "\n".join(lines) + "\n"


def _power_text(p: dict[str, Any]) -> str:
    """ "power 11.7% to show non-inferiority at -2% relative (target 80%); 1155316 more ..."."""
    if p.get("power_reached") is None:
        return p.get("message") or "–"
    text = f"{p['message']}: {_pct(p['power_reached'], 1)} (target {_pct(p['target_power'], 0)})"
    if p["more_per_arm"]:
        days = f", about {_days(p['days_remaining'])} days" if p["days_remaining"] else ""
        text += f"; {p['more_per_arm']} more projects per arm needed{days}"
    else:
        text += f"; {p['required_per_arm']} projects per arm planned, reached"
    return text


def plot_images(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs: cumulative completion rate per arm, and the always-valid relative difference."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in web threads
    from matplotlib.ticker import PercentFormatter

    timeline = report["timeline"]
    if not timeline:
        return {}
    days = [datetime.fromisoformat(str(t["day"])) for t in timeline]
    images = {}
    fig = Figure(figsize=(7, 3.2), dpi=90)
    ax = fig.subplots()
    for arm in report["arms"]:
        name = arm["name"]
        rate = [_nan(t["arms"][name]["rate"]) for t in timeline]
        low = [_nan(t["arms"][name]["ci_low"]) for t in timeline]
        high = [_nan(t["arms"][name]["ci_high"]) for t in timeline]
        (line,) = ax.plot(days, rate, marker="o", label=name)
        ax.fill_between(days, low, high, alpha=0.2, color=line.get_color())
    _day_axis(ax, days)
    ax.set_title("Cumulative completion rate (95% Wilson interval)")
    ax.set_ylabel("exports / starts")
    ax.legend(loc="best")
    fig.autofmt_xdate()
    images["completion_rate"] = _png(fig)
    fig = Figure(figsize=(7, 3.2), dpi=90)
    ax = fig.subplots()
    for comparison in report["comparisons"]:
        name = comparison["arm"]
        estimate = [_nan(t["relative"][name]["estimate"]) for t in timeline]
        low = [_nan(t["relative"][name]["ci_low"]) for t in timeline]
        high = [_nan(t["relative"][name]["ci_high"]) for t in timeline]
        (line,) = ax.plot(days, estimate, marker="o", label=f"{name} / control - 1")
        ax.fill_between(days, low, high, alpha=0.2, color=line.get_color())
    ax.axhline(0, color="black", linewidth=0.8)
    _day_axis(ax, days)
    ax.set_title("Relative difference with its always-valid interval")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(loc="best")
    fig.autofmt_xdate()
    images["relative_difference"] = _png(fig)
    return images


def _day_axis(ax: Any, days: list[datetime]) -> None:
    """Whole days on the x axis; a single day gets a day of margin each side (matplotlib would
    otherwise spread one point over years)."""
    from matplotlib.dates import DateFormatter, DayLocator

    if len(set(days)) == 1:
        ax.set_xlim(days[0] - timedelta(days=1), days[0] + timedelta(days=1))
    ax.xaxis.set_major_locator(DayLocator(interval=max(1, len(days) // 8)))
    ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:75rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem}
td.n{text-align:right}.callout{padding:.6rem;margin:.4rem 0;border-left:6px solid #c00;
background:#fee}.callout.decision_changed{border-color:#e90;background:#fff6e0}
.badge{padding:.1rem .5rem;border-radius:.6rem;color:#fff;font-size:.9rem}
.srm-ok{background:#2a7a2a}
.srm-flagged{background:#c00}img{max-width:100%}.labels{color:#444;font-size:.9rem}
"""

#: The body of one experiment's report: the HTML report and every dashboard panel use it.
REPORT_BODY = """
{% for c in r.callouts %}<div class="callout {{ c.kind }}"><b>{{ c.kind|upper }}</b>:
{{ c.message }}</div>{% endfor %}
<h3>Decision: <span class="decision" data-testid="decision">{{ r.decision }}</span>
<span class="badge srm {{ 'srm-flagged' if r.srm.flagged else 'srm-ok' }}"
 title="sample ratio mismatch p = {{ num(r.srm.p_value) }}">SRM
{{ 'FLAGGED' if r.srm.flagged else 'ok' }}</span></h3>
{% if r.experiment.shipped_arm %}<p class="concluded">Concluded: shipped arm
<b>{{ r.experiment.shipped_arm }}</b>.</p>{% endif %}
<p>As of {{ r.as_of }} (UTC){% if r.partial %} (partial day){% endif %}; alpha {{ r.alpha }},
margin {{ margin_text(r) }}, {{ 'sequential (always-valid)' if r.sequential else 'fixed horizon' }},
horizon {{ num(r.horizon, '.0f') }} projects per arm ({{ r.horizon_source }}), export window
{{ num(r.export_window_h, 'g') }} h.</p>
<table class="arms"><tr><th>arm</th><th>starts</th><th>exports</th><th>completion rate</th>
<th>95% interval (Wilson)</th><th>pending</th></tr>
{% for a in r.arms %}<tr class="arm" data-arm="{{ a.name }}"><td>{{ a.name }}{% if a.control %}
(control){% endif %}</td><td class="n">{{ a.starts }}</td><td class="n">{{ a.exports }}</td>
<td class="n rate">{{ pct(a.rate) }}</td><td>{{ interval([a.ci_low, a.ci_high]) }}</td>
<td class="n">{{ a.pending }}</td></tr>{% endfor %}</table>
<p class="labels">Decided on: {{ r.labels.decision_interval }}; {{ r.labels.p_value_note }}.
{% if r.labels.get('non_inferiority') %}{{ r.labels.non_inferiority }}.{% endif %}</p>
<table class="comparisons"><tr><th>treatment</th><th>decision</th><th>difference (pts)</th>
<th>interval (pts, Newcombe)</th><th>ratio (% of control)</th><th>interval (ratio, MOVER-R)</th>
<th>{{ r.labels.p_value }}</th></tr>
{% for c in r.comparisons %}<tr><td>{{ c.arm }}</td><td>{{ c.decision }}</td>
{% set by_ratio = 'ratio' in r.labels.decision_interval %}
{% set deciding = ' data-testid="decision-interval"'|safe if loop.first else '' %}
<td class="n">{{ pts(c.difference) }}</td><td{{ '' if by_ratio else deciding }}>
{{ interval(c.difference_ci, 'pts') }}</td>
<td class="n">{{ ratio(c.ratio) }}</td><td{{ deciding if by_ratio else '' }}>
{{ interval(c.ratio_ci, 'ratio') }}</td>
<td class="n">{{ num(c.p_value) }}</td></tr>
{% for note in c.notes %}<tr><td></td><td colspan="6" class="note">{{ note }}</td></tr>{% endfor %}
{% endfor %}</table>
{% for name, png in images.items() %}<img class="plot" alt="{{ name }} of {{ r.experiment.key }}"
 src="data:image/png;base64,{{ png }}">{% endfor %}
{% if not images %}<p>No projects yet.</p>{% endif %}
<h4>Power (the deciding test's design)</h4>
<ul class="power" data-testid="power">{% for p in r.power %}
<li>{{ p.arm }}: {{ power_text(p) }}</li>{% endfor %}</ul>
<h4>Guardrails</h4>
<table class="guardrails" data-testid="guardrails"><tr><th>arm</th><th>calls</th>
<th>latency p50</th><th>p95</th>
<th>fallback</th><th>errors</th><th>cache hits</th><th>cost / project</th></tr>
{% for g in r.guardrails %}<tr><td>{{ g.arm }}</td><td class="n">{{ g.calls }}</td>
<td class="n">{{ num(g.latency_p50_ms, '.0f') }} ms</td>
<td class="n">{{ num(g.latency_p95_ms, '.0f') }} ms</td>
<td class="n">{{ pct(g.fallback_rate) }}</td><td class="n">{{ pct(g.error_rate) }}</td>
<td class="n">{{ pct(g.cache_hit_rate) }}</td>
<td class="n">${{ num(g.cost_per_project, '.5f') }}</td></tr>{% endfor %}</table>
<div data-testid="segments"><h4>Segments</h4><p><i>{{ exploratory }}</i></p>
{% for name, rows in r.segments.items() %}<h5>{{ name }}</h5><table class="segments"><tr>
<th>segment</th>{% for a in r.arms %}<th>{{ a.name }}</th>{% endfor %}
<th>difference (95% interval, pts)</th></tr>
{% for row in rows %}<tr><td>{{ row.segment }}</td>{% for a in row.arms %}
<td class="n">{{ pct(a.rate, 1) }} ({{ a.starts }})</td>{% endfor %}<td>
{% for c in row.comparisons %}{{ c.arm }}: {{ pts(c.difference) }}
{{ interval(c.difference_ci, 'pts') }} {% endfor %}</td></tr>{% endfor %}</table>{% endfor %}</div>
{% if r.notes %}<p class="notes">Notes: {{ r.notes|join('; ') }}</p>{% endif %}
"""

HTML_TEMPLATE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>abtest report {{ r.experiment.key }} {{ r.as_of }}</title>
<style>{{ style }}</style></head><body>
<h1>Experiment {{ r.experiment.key }}</h1>
<p>Generated {{ r.generated_at[:19] }} UTC.</p>
"""
    + REPORT_BODY
    + """</body></html>
"""
)


def render_panel(report: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """One experiment's report body as HTML (escaped), for the dashboard."""
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    images = plot_images(report) if images is None else images
    return environment.from_string(REPORT_BODY).render(
        r=report, images=images, **template_helpers()
    )


def template_helpers() -> dict[str, Any]:
    """Formatting functions shared by the report and dashboard templates."""
    return {
        "pct": _pct, "pts": _pts, "ratio": _ratio, "num": _num, "interval": _interval,
        "power_text": _power_text, "margin_text": _margin_text, "exploratory": EXPLORATORY,
    }  # fmt: skip


def render_html(report: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """A standalone HTML page with the plots embedded as base64 PNG."""
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(HTML_TEMPLATE)
    images = plot_images(report) if images is None else images
    return template.render(r=report, images=images, style=STYLE, **template_helpers())


def render(report: dict[str, Any], fmt: str) -> str:
    """Render in `fmt`: md, html or json."""
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    if fmt == "json":
        return render_json(report)
    raise ReportError(f"unknown format {fmt!r}; use md, html or json")
