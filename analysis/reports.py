"""Significance reports: SQL sufficient statistics -> `analysis.stats` -> a JSON-able dict.

`build_report` runs the queries of `analysis.queries` and hands the counts to `assemble_report`
(pure: counts in, dict out). `render_markdown`, `render_html` (with plots) and `render_json`
present the dict. Storing reports is the caller's business (`abtest.reporting`).

Shape of a report (every number is a float, an int or None; NaN and infinity become None):

    {"schema": 1, "experiment": {key, id, status, started_at, stopped_at},
     "period_end", "as_of", "generated_at", "partial", "alpha", "margin", "sequential", "horizon",
     "decision",                       # overall: the strongest warning among the treatments
     "callouts": [{kind, message, ...}],   # SRM, decision changes since the previous report
     "arms": [{name, control, weight, starts, exports, rate, ci_low, ci_high}],
     "comparisons": [{arm, decision, difference, difference_ci, p_value, p_value_adjusted,
                      decision_interval, ratio, ratio_ci, relative_difference,
                      non_inferiority{...}, equivalence{...}, sequential{...}|None, notes}],
     "srm": {flagged, p_value, statistic, starts, expected, threshold, message},
     "power": [{arm, baseline, mde, power_reached, required_per_arm, days_elapsed,
                days_remaining, message}],
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
DEFAULT_MDE = -0.01  # without a margin: power to see one percentage point worse
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
    (refreshed first) by default, else from `source` (the experiment's metadata always comes
    from the connection)."""
    info = queries.experiment_info(connection, key)
    if info is None:
        raise ReportError(f"no experiment with key {key!r}")
    attributes = tuple(segment_attributes)
    if source is None:
        queries.tune_for_analytics(connection)
        rollup.refresh(connection, info.id)  # incremental: only the events since the last one
        counts = rollup.project_counts(connection, info.id, period_end, attributes, True)
        guardrails = rollup.guardrail_stats(connection, info.id, period_end)
    else:
        scope = Scope(info.id, until=period_end)
        counts = source.project_counts(scope, attributes, True)
        guardrails = source.guardrail_stats(scope)
    daily, segments = counts.daily, counts.segments
    return assemble_report(info, daily, guardrails, segments, period_end, previous, now)


def assemble_report(
    info: queries.ExperimentInfo,
    daily: Sequence[queries.ArmDay],
    guardrails: Sequence[queries.ArmGuardrails],
    segments: dict[str, Sequence[queries.SegmentCounts]],
    period_end: datetime,
    previous: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report dict from sufficient statistics (pure: no I/O)."""
    now = _utc(now) or datetime.now(UTC)
    period_end = _utc(period_end)  # type: ignore[assignment]
    if len(info.arms) < 2 or not any(arm.is_control for arm in info.arms):
        raise ReportError(f"experiment {info.key!r} needs a control and at least one treatment")
    settings = info.settings
    alpha = float(settings.get("alpha", stats.DEFAULT_ALPHA))
    margin = settings.get("margin")
    margin = None if margin is None else float(margin)
    sequential = bool(settings.get("sequential", True))
    control, treatments = info.arms[0], info.arms[1:]
    names = {arm.id: arm.name for arm in info.arms}

    days = _day_range(daily)
    series = {arm.id: _daily_series(daily, arm.id, days) for arm in info.arms}
    totals = {arm_id: (int(x.sum()), int(n.sum())) for arm_id, (x, n) in series.items()}

    horizon = _horizon(previous, totals[control.id], margin, alpha)
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
        weights=[arm.weight for arm in info.arms],
    )

    arms = [_arm_row(arm, *totals[arm.id], alpha) for arm in info.arms]
    comparisons = [
        _comparison_row(decision.treatments[arm.name], margin, alpha, len(days))
        for arm in treatments
    ]
    srm = _srm_row(decision.srm)
    overall = _overall(comparisons, srm)
    started = _utc(info.started_at) or (
        datetime(days[0].year, days[0].month, days[0].day, tzinfo=UTC) if days else None
    )
    ended = min(x for x in (period_end, now, _utc(info.stopped_at)) if x is not None)
    days_elapsed = max(0.0, (ended - started).total_seconds() / 86400) if started else 0.0
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "experiment": {
            "key": info.key,
            "id": info.id,
            "status": info.status,
            "started_at": _utc(info.started_at),
            "stopped_at": _utc(info.stopped_at),
        },
        "period_end": period_end,
        "as_of": (period_end - timedelta(microseconds=1)).date(),
        "generated_at": now,
        "partial": period_end > now,
        "alpha": alpha,
        "margin": margin,
        "sequential": sequential,
        "horizon": horizon,
        "decision": overall,
        "arms": arms,
        "comparisons": comparisons,
        "srm": srm,
        "power": [
            _power_row(arm.name, totals[control.id], totals[arm.id], days_elapsed, margin, alpha)
            for arm in treatments
        ],
        "guardrails": _guardrail_rows(guardrails, names, totals),
        "segments": {name: _segment_rows(rows, info, alpha) for name, rows in segments.items()},
        "timeline": _timeline(days, series, info, alpha, horizon),
        "notes": list(decision.notes),
    }
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


def _baseline(control_totals: tuple[int, int]) -> float:
    exports, starts = control_totals
    rate = exports / starts if starts else 0.9
    return min(max(rate, 0.02), 0.98)


def _mde(margin: float | None, baseline: float) -> float:
    mde = margin if margin else DEFAULT_MDE
    return mde if 0 < baseline + mde < 1 else -mde


def _horizon(
    previous: dict[str, Any] | None, control_totals: tuple[int, int], margin: float | None,
    alpha: float,
) -> float:  # fmt: skip
    """Planned projects per arm; fixed by the first stored report and carried forward."""
    if previous and previous.get("horizon"):
        return float(previous["horizon"])
    baseline = _baseline(control_totals)
    return float(stats.sample_size(baseline, _mde(margin, baseline), alpha).control)


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
    verdict: stats.TreatmentDecision, margin: float | None, alpha: float, looks: int
) -> dict[str, Any]:
    cmp = verdict.comparison
    counts = (cmp.control.exports, cmp.control.starts, cmp.treatment.exports, cmp.treatment.starts)
    row: dict[str, Any] = {
        "arm": verdict.arm,
        "decision": verdict.decision,
        "difference": cmp.difference,
        "difference_ci": _pair(cmp.difference_ci_low, cmp.difference_ci_high),
        "p_value": cmp.p_value,
        "p_value_adjusted": verdict.p_value,
        "decision_interval": _pair(*verdict.interval),
        "ratio": cmp.ratio,
        "ratio_ci": _pair(cmp.ratio_ci_low, cmp.ratio_ci_high),
        "relative_difference": cmp.relative_lift,
        "non_inferiority": None,
        "equivalence": None,
        "sequential": None,
        "notes": list(verdict.notes),
    }
    has_data = cmp.control.starts > 0 and cmp.treatment.starts > 0
    if margin is not None and has_data:
        ni = stats.non_inferiority(*counts, margin=margin, alpha=alpha)
        row["non_inferiority"] = {
            "margin": ni.margin, "ci_low": ni.ci_low, "p_value": ni.p_value,
            "non_inferior": ni.non_inferior, "message": ni.message,
        }  # fmt: skip
        if margin != 0:
            eq = stats.equivalence(*counts, margin=margin, alpha=alpha)
            row["equivalence"] = {
                "bounds": [eq.low, eq.high], "p_value": eq.p_value,
                "equivalent": eq.equivalent, "message": eq.message,
            }  # fmt: skip
    seq = verdict.sequential
    if seq is not None:
        row["sequential"] = {
            "difference_ci": _pair(seq.difference_ci_low, seq.difference_ci_high),
            "p_value": seq.p_value,
            "ratio_ci": _pair(seq.ratio_ci_low, seq.ratio_ci_high),
            "looks": looks,
            "horizon": seq.horizon,
            "message": seq.message,
        }
    return row


def _srm_row(srm: stats.SrmResult | None) -> dict[str, Any]:
    if srm is None:  # decide() always checks when weights are given
        raise ReportError("the SRM check did not run")
    return {
        "flagged": srm.flagged,
        "p_value": srm.p_value,
        "statistic": srm.statistic,
        "starts": list(srm.starts),
        "expected": list(srm.expected),
        "threshold": srm.threshold,
        "message": srm.message,
    }


def _overall(comparisons: list[dict[str, Any]], srm: dict[str, Any]) -> str:
    if srm["flagged"]:
        return stats.SRM_DO_NOT_TRUST
    order = {name: i for i, name in enumerate(stats.DECISIONS)}
    return min((c["decision"] for c in comparisons), key=lambda d: order.get(d, len(order)))


def _power_row(
    arm: str,
    control: tuple[int, int],
    treatment: tuple[int, int],
    days_elapsed: float,
    margin: float | None,
    alpha: float,
) -> dict[str, Any]:
    baseline = _baseline(control)
    mde = _mde(margin, baseline)
    progress = stats.power_progress(baseline, mde, control[1], treatment[1], days_elapsed, alpha)
    return {
        "arm": arm,
        "baseline": baseline,
        "mde": mde,
        "target_power": progress.target_power,
        "power_reached": progress.power_reached,
        "required_per_arm": progress.required_per_arm,
        "days_elapsed": progress.days_elapsed,
        "daily_projects": progress.daily_projects,
        "days_remaining": progress.days_remaining,
        "message": progress.message,
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
            comparisons.append(
                {
                    "arm": arm.name,
                    "difference": cmp.difference,
                    "difference_ci": _pair(cmp.difference_ci_low, cmp.difference_ci_high),
                    "p_value": cmp.p_value,
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
    """ratio - 1 and its confidence sequence at each daily look, from cumulative counts.

    Each look is today's confidence sequence on log(ratio) (as in `stats.sequential_path`), not
    intersected with earlier looks, so the last point equals the report's always-valid interval.
    """
    xc, nc = (np.cumsum(a) for a in control)
    xt, nt = (np.cumsum(a) for a in treatment)
    log_ratio, variance = stats.log_ratio_stats(xc, nc, xt, nt)
    variance = np.where(np.isfinite(variance), variance, np.nan)
    per_arm = np.minimum(nc, nt)
    # One look per row: the running intersection of `sequential_bounds` runs over one element.
    low, high, _ = stats.sequential_bounds(
        log_ratio[:, None], variance[:, None], per_arm[:, None], horizon, alpha
    )
    with np.errstate(over="ignore", invalid="ignore"):
        return (
            [float(v) for v in np.exp(log_ratio) - 1],
            [float(v) for v in np.exp(low[:, 0]) - 1],
            [float(v) for v in np.exp(high[:, 0]) - 1],
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


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "–" if value is None else format(value, fmt)


def _interval(pair: Sequence[float | None], pct: bool = True) -> str:
    low, high = pair
    if low is None or high is None:
        return "–"
    if pct:
        return f"[{_pct(low)}, {_pct(high)}]"
    return f"[{low:.4f}, {high:.4f}]"


def render_markdown(report: dict[str, Any]) -> str:
    """A plain-text report for terminals, chat and pull requests."""
    exp = report["experiment"]
    lines = [f"# Experiment {exp['key']} — report as of {report['as_of']}", ""]
    for callout in report["callouts"]:
        lines.append(f"> **{callout['kind'].upper()}**: {callout['message']}")
    if report["callouts"]:
        lines.append("")
    mode = "sequential (always-valid)" if report["sequential"] else "fixed horizon"
    lines += [
        f"**Decision: {report['decision']}** — alpha {report['alpha']}, margin "
        f"{_num(report['margin'])}, {mode}" + (" — partial day" if report["partial"] else ""),
        "",
        "| arm | starts | exports | completion rate | CI |",
        "|---|---:|---:|---:|---|",
    ]
    for arm in report["arms"]:
        name = arm["name"] + (" (control)" if arm["control"] else "")
        lines.append(
            f"| {name} | {arm['starts']} | {arm['exports']} | {_pct(arm['rate'])} | "
            f"{_interval([arm['ci_low'], arm['ci_high']])} |"
        )
    lines += [
        "",
        "| treatment | decision | difference | CI | p | p (adjusted) | ratio | ratio CI "
        "| always-valid CI |",
        "|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for c in report["comparisons"]:
        seq = c["sequential"]
        lines.append(
            f"| {c['arm']} | {c['decision']} | {_pct(c['difference'])} | "
            f"{_interval(c['difference_ci'])} | {_num(c['p_value'])} | "
            f"{_num(c['p_value_adjusted'])} | {_num(c['ratio'], '.4f')} | "
            f"{_interval(c['ratio_ci'], pct=False)} | "
            f"{_interval(seq['difference_ci']) if seq else '–'} |"
        )
    srm = report["srm"]
    lines += [
        "",
        f"**SRM**: {'FLAGGED' if srm['flagged'] else 'ok'} (p = {_num(srm['p_value'])}, "
        f"starts {srm['starts']}, expected {[round(e, 1) for e in srm['expected']]})",
        "",
        "## Power",
    ]
    for p in report["power"]:
        lines.append(
            f"- {p['arm']}: power {_pct(p['power_reached'], 1)} to detect {_pct(p['mde'])} "
            f"(needs {p['required_per_arm']} projects per arm); days still needed: "
            f"{_num(p['days_remaining'], '.0f')}"
        )
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
            a["name"] for a in report["arms"]) + " | difference (CI) |",
            "|---|" + "---:|" * len(report["arms"]) + "---|"]  # fmt: skip
        for row in rows:
            rates = " | ".join(f"{_pct(a['rate'], 1)} ({a['starts']})" for a in row["arms"])
            diffs = "; ".join(
                f"{c['arm']}: {_pct(c['difference'])} {_interval(c['difference_ci'])}"
                for c in row["comparisons"]
            )
            lines.append(f"| {row['segment']} | {rates} | {diffs} |")
    if report["notes"]:
        lines += ["", "Notes: " + "; ".join(report["notes"])]
    return "\n".join(lines) + "\n"


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


HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>abtest report {{ r.experiment.key }} {{ r.as_of }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem}
td.n{text-align:right}.callout{padding:.6rem;margin:.4rem 0;border-left:6px solid #c00;
background:#fee}.callout.decision_changed{border-color:#e90;background:#fff6e0}
.badge{padding:.1rem .5rem;border-radius:.6rem;color:#fff}.srm-ok{background:#2a2}
.srm-flagged{background:#c00}
</style></head><body>
<h1>Experiment {{ r.experiment.key }}</h1>
<p>Report as of {{ r.as_of }} (UTC){% if r.partial %} (partial day){% endif %};
generated {{ r.generated_at[:19] }} UTC.</p>
{% for c in r.callouts %}<div class="callout {{ c.kind }}"><b>{{ c.kind|upper }}</b>:
{{ c.message }}</div>{% endfor %}
<h2>Decision: <span class="decision">{{ r.decision }}</span>
<span class="badge {{ 'srm-flagged' if r.srm.flagged else 'srm-ok' }}">SRM
{{ 'FLAGGED' if r.srm.flagged else 'ok' }}</span></h2>
<p>alpha {{ r.alpha }}, margin {{ r.margin }},
{{ 'sequential (always-valid)' if r.sequential else 'fixed horizon' }}.</p>
<table><tr><th>arm</th><th>starts</th><th>exports</th><th>rate</th><th>interval</th></tr>
{% for a in r.arms %}<tr><td>{{ a.name }}{% if a.control %} (control){% endif %}</td>
<td class="n">{{ a.starts }}</td><td class="n">{{ a.exports }}</td>
<td class="n">{{ pct(a.rate) }}</td><td>{{ interval([a.ci_low, a.ci_high]) }}</td></tr>
{% endfor %}</table>
<table><tr><th>treatment</th><th>decision</th><th>difference</th><th>interval</th><th>p</th>
<th>p (Holm)</th><th>ratio</th><th>ratio interval</th><th>always-valid interval</th></tr>
{% for c in r.comparisons %}<tr><td>{{ c.arm }}</td><td>{{ c.decision }}</td>
<td class="n">{{ pct(c.difference) }}</td><td>{{ interval(c.difference_ci) }}</td>
<td class="n">{{ num(c.p_value) }}</td><td class="n">{{ num(c.p_value_adjusted) }}</td>
<td class="n">{{ num(c.ratio, '.4f') }}</td><td>{{ interval(c.ratio_ci, False) }}</td>
<td>{{ interval(c.sequential.difference_ci) if c.sequential else '–' }}</td></tr>
{% endfor %}</table>
{% for name, png in images.items() %}<img alt="{{ name }}" src="data:image/png;base64,{{ png }}">
{% endfor %}
<h2>Power</h2><ul>{% for p in r.power %}<li>{{ p.arm }}: power {{ pct(p.power_reached, 1) }}
to detect {{ pct(p.mde) }}; {{ p.required_per_arm }} projects per arm needed; days still
needed: {{ num(p.days_remaining, '.0f') }}</li>{% endfor %}</ul>
<h2>Guardrails</h2>
<table><tr><th>arm</th><th>calls</th><th>latency p50</th><th>p95</th><th>fallback</th>
<th>errors</th><th>cache hits</th><th>cost / project</th></tr>
{% for g in r.guardrails %}<tr><td>{{ g.arm }}</td><td class="n">{{ g.calls }}</td>
<td class="n">{{ num(g.latency_p50_ms, '.0f') }} ms</td>
<td class="n">{{ num(g.latency_p95_ms, '.0f') }} ms</td>
<td class="n">{{ pct(g.fallback_rate) }}</td><td class="n">{{ pct(g.error_rate) }}</td>
<td class="n">{{ pct(g.cache_hit_rate) }}</td>
<td class="n">${{ num(g.cost_per_project, '.5f') }}</td></tr>{% endfor %}</table>
<h2>Segments</h2><p><i>{{ exploratory }}</i></p>
{% for name, rows in r.segments.items() %}<h3>{{ name }}</h3><table><tr><th>segment</th>
{% for a in r.arms %}<th>{{ a.name }}</th>{% endfor %}<th>difference (interval)</th></tr>
{% for row in rows %}<tr><td>{{ row.segment }}</td>{% for a in row.arms %}
<td class="n">{{ pct(a.rate, 1) }} ({{ a.starts }})</td>{% endfor %}<td>
{% for c in row.comparisons %}{{ c.arm }}: {{ pct(c.difference) }}
{{ interval(c.difference_ci) }} {% endfor %}</td></tr>{% endfor %}</table>{% endfor %}
</body></html>
"""


def template_helpers() -> dict[str, Any]:
    """Formatting functions shared by the report and dashboard templates."""
    return {"pct": _pct, "num": _num, "interval": _interval, "exploratory": EXPLORATORY}


def render_html(report: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """A standalone HTML page with the plots embedded as base64 PNG."""
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(HTML_TEMPLATE)
    images = plot_images(report) if images is None else images
    return template.render(r=report, images=images, **template_helpers())


def render(report: dict[str, Any], fmt: str) -> str:
    """Render in `fmt`: md, html or json."""
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    if fmt == "json":
        return render_json(report)
    raise ReportError(f"unknown format {fmt!r}; use md, html or json")
