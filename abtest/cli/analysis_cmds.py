"""`abtest stats ...`: the analysts' calculator over counts (no database needed)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import typer

from abtest.cli.common import JSON_OPTION, LazyModule, console, fail, print_json, print_table

stats: Any = LazyModule("analysis.stats")
DEFAULT_ALPHA = 0.05  # analysis.stats.DEFAULT_ALPHA, without importing scipy to show --help

stats_app = typer.Typer(
    help="Calculator for completion rates: compare arms, plan sample sizes.",
    no_args_is_help=True,
)

_COUNTS = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_counts(option: str, text: str) -> tuple[int, int]:
    """'EXPORTS/STARTS' -> (exports, starts), or a CLI error naming the option."""
    match = _COUNTS.match(text)
    if match is None:
        fail(f"{option}: {text!r} is not EXPORTS/STARTS (two whole numbers, e.g. 9300/10000)")
    exports, starts = int(match.group(1)), int(match.group(2))
    if starts == 0:
        fail(f"{option}: {text!r} has no starts; a completion rate needs at least one project")
    if exports > starts:
        fail(f"{option}: {text!r} has more exports ({exports}) than starts ({starts})")
    return exports, starts


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        fail(f"alpha: must be between 0 and 1, got {alpha}")


def _json_ready(value: Any) -> Any:
    """Dataclasses to dicts, NaN/inf to None (strict JSON)."""
    if is_dataclass(value) and not isinstance(value, type):
        return _json_ready(asdict(value))
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pct(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def _num(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _pts(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:+.2f}"


def _interval(low: float, high: float, fmt: Any = _pct) -> str:
    return f"[{fmt(low)}, {fmt(high)}]"


@stats_app.command("proportions")
def proportions(
    control: str = typer.Option(..., "--control", help="Control arm as EXPORTS/STARTS."),
    treatment: list[str] = typer.Option(
        ..., "--treatment", help="Treatment arm as EXPORTS/STARTS; repeat for several."
    ),
    margin: float | None = typer.Option(
        None,
        "--margin",
        help="Non-inferiority margin on the difference, <= 0 (e.g. -0.01 = one point worse); "
        "equivalence uses +-|margin|.",
    ),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Two-sided level."),
    sequential: bool = typer.Option(
        False, "--sequential", help="Always-valid (mixture SPRT) intervals and p-values."
    ),
    horizon: float | None = typer.Option(
        None,
        "--horizon",
        help="Planned projects per arm for --sequential (default: the current per-arm count).",
    ),
    weights: str | None = typer.Option(
        None, "--weights", help="Configured weights, control first (e.g. 0.5,0.5): SRM check."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare treatments with control: rates, difference, ratio, p-values and a decision."""
    _check_alpha(alpha)
    if margin is not None and (not math.isfinite(margin) or margin > 0):
        fail(f"margin: must be <= 0 (how much worse is acceptable), e.g. -{abs(margin)}")
    if horizon is not None and not horizon > 0:
        fail(f"horizon: must be a positive number of projects per arm, got {horizon}")
    if horizon is not None and not sequential:
        fail("horizon: only applies with --sequential")
    control_counts = parse_counts("control", control)
    treatments = {
        ("treatment" if i == 0 else f"treatment {i + 1}"): parse_counts(
            "treatment" if len(treatment) == 1 else f"treatment {i + 1}", text
        )
        for i, text in enumerate(treatment)
    }
    weight_values = _parse_weights(weights, 1 + len(treatments))
    result = stats.decide(
        control_counts,
        treatments,
        margin=margin,
        alpha=alpha,
        sequential=sequential,
        horizon=horizon,
        weights=weight_values,
    )
    # the same level as the decision: alpha / k with k treatments
    extras = {
        arm: _margin_tests(control_counts, counts, margin, alpha / len(treatments))
        for arm, counts in treatments.items()
    }
    if as_json:
        print_json(_proportions_json(result, extras))
        return
    _print_proportions(result, extras)


def _parse_weights(text: str | None, arms: int) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        fail(f"weights: {text!r} is not a comma-separated list of numbers")
    if len(values) != arms:
        fail(f"weights: {len(values)} given for {arms} arms (control first, then treatments)")
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        fail("weights: must be non-negative numbers with a positive sum")
    return values


def _margin_tests(
    control: tuple[int, int], treatment: tuple[int, int], margin: float | None, alpha: float
) -> dict[str, Any]:
    if margin is None:
        return {}
    out: dict[str, Any] = {
        "non_inferiority": stats.non_inferiority(*control, *treatment, margin, alpha)
    }
    if margin != 0:
        out["equivalence"] = stats.equivalence(*control, *treatment, margin, alpha)
    return out


def _proportions_json(result: stats.ExperimentDecision, extras: dict[str, Any]) -> Any:
    body: dict[str, Any] = {
        "alpha": result.alpha,
        "margin": result.margin,
        "sequential": result.sequential,
        "control": result.control,
        "srm": result.srm,
        "notes": list(result.notes),
        "treatments": {},
    }
    for arm, decision in result.treatments.items():
        body["treatments"][arm] = {
            "decision": decision.decision,
            "notes": list(decision.notes),
            "p_value_adjusted": decision.p_value,
            "decision_interval": list(decision.interval),
            "comparison": decision.comparison,
            "sequential": decision.sequential,
            **extras[arm],
        }
    return _json_ready(body)


def _print_proportions(result: stats.ExperimentDecision, extras: dict[str, Any]) -> None:
    arms = [("control", result.control)] + [
        (arm, d.comparison.treatment) for arm, d in result.treatments.items()
    ]
    level = f"{100 * (1 - result.alpha):g}%"
    print_table(
        "Completion rate per arm",
        [
            {
                "arm": arm,
                "exports/starts": f"{rate.exports}/{rate.starts}",
                "rate": _pct(rate.rate),
                f"{level} CI (Wilson)": _interval(rate.ci_low, rate.ci_high),
            }
            for arm, rate in arms
        ],
        ["arm", "exports/starts", "rate", f"{level} CI (Wilson)"],
    )
    names = list(result.treatments)
    k = len(names)
    rows: list[dict[str, str]] = []

    def add(label: str, values: list[str]) -> None:
        rows.append({"measure": label, **dict(zip(names, values, strict=True))})

    decisions = list(result.treatments.values())
    comps = [d.comparison for d in decisions]
    add("difference", [f"{100 * c.difference:+.2f} pts" if math.isfinite(c.difference)
                       else "n/a" for c in comps])  # fmt: skip
    add(
        f"{level} CI (pts)",
        [_interval(c.difference_ci_low, c.difference_ci_high, _pts) for c in comps],
    )
    add("ratio treatment/control", [_pct(c.ratio, 1) for c in comps])
    add(
        f"{level} CI of ratio",
        [_interval(c.ratio_ci_low, c.ratio_ci_high, lambda v: _pct(v, 1)) for c in comps],
    )
    add("p-value", [_num(c.p_value) for c in comps])
    if result.sequential:
        seqs = [d.sequential for d in decisions]
        seq_level = f"{100 * (1 - result.alpha / k):g}%"
        add(f"always-valid {seq_level} CI (pts)", [
            _interval(s.difference_ci_low, s.difference_ci_high, _pts) if s else "n/a"
            for s in seqs
        ])  # fmt: skip
        add(f"always-valid {seq_level} CI of ratio", [
            _interval(s.ratio_ci_low, s.ratio_ci_high, lambda v: _pct(v, 1)) if s else "n/a"
            for s in seqs
        ])  # fmt: skip
        add("always-valid p", [_num(s.p_value) if s else "n/a" for s in seqs])
    if k > 1:
        add("p-value (Holm)" if not result.sequential else "always-valid p (Holm)",
            [_num(d.p_value) for d in decisions])  # fmt: skip
        add(f"CI decided on (alpha/{k}, pts)", [_interval(*d.interval, _pts) for d in decisions])
    if result.margin is not None and not result.sequential:
        ni = [extras[arm].get("non_inferiority") for arm in names]
        eq = [extras[arm].get("equivalence") for arm in names]
        add(f"non-inferior at {100 * result.margin:+.2f} pts",
            [f"{'yes' if r.non_inferior else 'no'} (p = {_num(r.p_value)})" if r else "n/a"
             for r in ni])  # fmt: skip
        add(f"equivalent within +-{100 * abs(result.margin):.2f} pts",
            [f"{'yes' if r.equivalent else 'no'} (TOST p = {_num(r.p_value)})" if r else "n/a"
             for r in eq])  # fmt: skip
    add("decision", [d.decision for d in decisions])
    print_table("Treatment versus control", rows, ["measure", *names])
    if result.srm is not None:
        srm = result.srm
        if srm.flagged:
            console.print(f"[bold red]SRM:[/] {srm.message}", highlight=False)
        else:
            console.print(f"SRM check: p = {_num(srm.p_value)} (no mismatch)", highlight=False)
    for arm, d in result.treatments.items():
        for note in d.notes:
            console.print(f"{arm}: {note}", highlight=False)
    for note in result.notes:
        console.print(note, highlight=False)


@stats_app.command("power")
def power(
    baseline: float = typer.Option(..., "--baseline", help="Control completion rate, e.g. 0.93."),
    mde: float | None = typer.Option(
        None, "--mde", help="Minimum detectable absolute difference, e.g. 0.01 = one point."
    ),
    margin: float | None = typer.Option(
        None,
        "--margin",
        help="Plan a non-inferiority test instead: margin < 0 on the difference (e.g. -0.01).",
    ),
    expected: float = typer.Option(
        0.0, "--expected", help="With --margin: the true difference you expect (default 0)."
    ),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Two-sided level."),
    target_power: float = typer.Option(0.8, "--power", help="Wanted power, e.g. 0.8."),
    ratio: float = typer.Option(1.0, "--ratio", help="Treatment size / control size."),
    daily_projects: float | None = typer.Option(
        None, "--daily-projects", help="Projects per day, all arms together: days needed."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also write an HTML page with the power curve to this file."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Projects per arm needed to detect a difference of MDE (or to show non-inferiority)."""
    if plot is not None and not plot.parent.is_dir():
        fail(f"plot: the directory {plot.parent} does not exist")
    _check_alpha(alpha)
    for name, value in (("baseline", baseline), ("power", target_power)):
        if not 0 < value < 1:
            fail(f"{name}: must be between 0 and 1 (exclusive), got {value}")
    if (mde is None) == (margin is None):
        fail("mde: give --mde (detect a difference) or --margin (non-inferiority), not both")
    if not ratio > 0 or not math.isfinite(ratio):
        fail(f"ratio: must be a positive number, got {ratio}")
    if daily_projects is not None and not daily_projects > 0:
        fail(f"daily-projects: must be positive, got {daily_projects}")
    if mde is not None:
        if mde == 0 or not math.isfinite(mde):
            fail(f"mde: must be a non-zero absolute difference, got {mde}")
        if not 0 < baseline + mde < 1:
            fail(f"mde: baseline + mde = {baseline + mde:g} is not a rate between 0 and 1")
        plan = stats.sample_size(baseline, mde, alpha, target_power, ratio, daily_projects)
        title = f"Sample size to detect {100 * mde:+.2f} pts"
    else:
        assert margin is not None
        if not math.isfinite(margin) or margin >= 0:
            fail(f"margin: must be below 0 (how much worse is acceptable), got {margin}")
        if not expected > margin:
            fail(f"expected: {expected} must be above the margin {margin}")
        if not 0 < baseline + expected < 1:
            fail(f"expected: baseline + expected = {baseline + expected:g} is not a rate in (0, 1)")
        plan = stats.non_inferiority_sample_size(
            baseline, margin, expected, alpha, target_power, ratio, daily_projects
        )
        title = f"Sample size to show non-inferiority at {100 * margin:+.2f} pts"
    if plot is not None:
        plot.write_text(_power_html(plan, title, margin is not None), encoding="utf-8")
    if as_json:
        print_json(_json_ready(plan))
        return
    row = {
        "baseline": _pct(plan.baseline),
        "treatment rate": _pct(plan.treatment_rate),
        "control projects": str(plan.control),
        "treatment projects": str(plan.treatment),
        "total": str(plan.total),
    }
    columns = list(row)
    if plan.days_needed is not None:
        row["days"] = str(plan.days_needed)
        columns.append("days")
    print_table(f"{title} (alpha {alpha:g}, power {target_power:g})", [row], columns)
    if plot is not None:
        console.print(f"power curve: {plot}")


def _power_html(plan: Any, title: str, non_inferiority: bool) -> str:
    from analysis import plots

    curve = plots.power_curve(plan, non_inferiority)
    rows = [
        ("baseline", _pct(plan.baseline)),
        ("treatment rate", _pct(plan.treatment_rate)),
        ("alpha / power", f"{plan.alpha:g} / {plan.power:g}"),
        ("projects per arm (control, treatment)", f"{plan.control}, {plan.treatment}"),
    ]
    if plan.days_needed is not None:
        rows.append(("days", str(plan.days_needed)))
    png = plots.power_curve_png(curve, title)
    return plots.html_page(title, rows, png, "power curve")


def register(app: typer.Typer) -> None:
    """Add `abtest stats ...` to the top-level app."""
    app.add_typer(stats_app, name="stats")
