"""`abtest stats ...`: the analysts' calculator over counts (no database needed)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import typer

from abtest.cli.common import JSON_OPTION, LazyModule, console, fail, print_json, print_table

stats: Any = LazyModule("analysis.stats")
plots: Any = LazyModule("analysis.plots")
DEFAULT_ALPHA = 0.05  # analysis.stats.DEFAULT_ALPHA, without importing scipy to show --help
DEFAULT_POWER = 0.8  # analysis.stats.DEFAULT_POWER, likewise

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
    # the experiments' own bound (services): at alpha >= 0.5 the "confidence" interval is
    # narrower than a coin flip, and 10 projects per arm read "equivalent"
    if not 0 < alpha < 0.5:
        fail(f"alpha: must be between 0 and 0.5 (exclusive), got {alpha}")


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


def _pair(interval: Any) -> tuple[float, float]:
    low, high = interval
    return low, high


def _interval(low: float, high: float, fmt: Any = _pct) -> str:
    return f"[{fmt(low)}, {fmt(high)}]"


MARGIN_HELP = (
    "Non-inferiority margin, how much worse the treatment may be: '-2%' = 2% of the control "
    "rate (relative, the default scale; a bare number is a relative fraction), '-1pts' = one "
    "percentage point (absolute). Equivalence uses +-|margin|."
)


def _margin(text: str | None) -> stats.Margin | None:
    if text is None:
        return None
    try:
        return stats.parse_margin(text)
    except ValueError as exc:
        fail(f"margin: {exc}")


def _effect(option: str, text: str) -> stats.Margin:
    """An effect size: '5%' / 0.05 relative, '1pts' absolute (sign kept, may be positive)."""
    try:
        return stats.parse_margin(text if text.startswith("-") else f"-{text}")
    except ValueError:
        fail(f"{option}: {text!r} is not 'N%' (relative), 'N pts' (absolute) or a fraction")


@stats_app.command("proportions")
def proportions(
    control: str = typer.Option(..., "--control", help="Control arm as EXPORTS/STARTS."),
    treatment: list[str] = typer.Option(
        ..., "--treatment", help="Treatment arm as EXPORTS/STARTS; repeat for several."
    ),
    margin: str | None = typer.Option(None, "--margin", help=MARGIN_HELP),
    mde: str = typer.Option(
        "2%",
        "--mde",
        help="Without a margin: the change whose power decides 'underpowered' vs "
        "'inconclusive' ('2%' relative, or '1pts').",
    ),
    target_power: float = typer.Option(DEFAULT_POWER, "--power", help="Power wanted."),
    days: float | None = typer.Option(
        None, "--days", help="Days the counts took: turns projects still needed into days."
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
    """Compare treatments with control: rates, difference, ratio, power and a decision."""
    _check_alpha(alpha)
    parsed_margin = _margin(margin)
    effect = _effect("mde", mde)
    if effect.value == 0:
        fail("mde: must be a non-zero change, e.g. 2%")
    if not 0 < target_power < 1:
        fail(f"power: must be between 0 and 1 (exclusive), got {target_power}")
    if days is not None and not (days > 0 and math.isfinite(days)):
        fail(f"days: must be a positive number of days, got {days}")
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
        margin=parsed_margin,
        alpha=alpha,
        sequential=sequential,
        horizon=horizon,
        weights=weight_values,
        mde=_relative_mde(effect, control_counts),
        power=target_power,
        days_elapsed=days,
    )
    if as_json:
        print_json(_proportions_json(result))
        return
    _print_proportions(result)


def _relative_mde(effect: stats.Margin, control: tuple[int, int]) -> float:
    """The power check's change as a fraction of the control rate ('1pts' at 3% = 33%)."""
    size = -effect.value
    return size if effect.scale == stats.RELATIVE else size / max(control[0] / control[1], 1e-4)


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


def _margin_json(margin: stats.Margin | None) -> dict[str, Any] | None:
    if margin is None:
        return None
    return {"value": margin.value, "scale": margin.scale, "label": margin.label}


def _proportions_json(result: stats.ExperimentDecision) -> Any:
    body: dict[str, Any] = {
        "alpha": result.alpha,
        "margin": _margin_json(result.margin),
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
            "scale": decision.scale,
            "decision_interval": list(decision.interval),
            "decision_interval_label": decision.interval_label,
            "difference_interval": list(decision.difference_interval),
            "ratio_interval": list(decision.ratio_interval),
            "p_value_adjusted": decision.p_value,
            "p_value_label": _p_label(result),
            "power": decision.power,
            "comparison": decision.comparison,
            "sequential": decision.sequential,
        }
    return _json_ready(body)


def _p_label(result: stats.ExperimentDecision) -> str:
    kind = "always-valid p (mixture SPRT)" if result.sequential else "p (pooled z, two-sided)"
    return kind + (", Holm-adjusted" if len(result.treatments) > 1 else "")


def _pts_label(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:+.2f} pts"


def _ratio_pct(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "∞" if math.isinf(value) else f"{100 * value:.1f}%"


def _print_proportions(result: stats.ExperimentDecision) -> None:
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
    rows: list[dict[str, str]] = []

    def add(label: str, values: list[str]) -> None:
        rows.append({"measure": label, **dict(zip(names, values, strict=True))})

    decisions = list(result.treatments.values())
    k = len(names)
    kind = "always-valid " if result.sequential else ""
    ci = f"{kind}{100 * (1 - result.alpha / k):.4g}% CI"
    add("difference (pts)", [_pts_label(d.comparison.difference) for d in decisions])
    differences = [_interval(*_pair(d.difference_interval), _pts) for d in decisions]
    add(f"{ci} of the difference (pts, Newcombe)", differences)
    add("ratio treatment/control (%)", [_ratio_pct(d.comparison.ratio) for d in decisions])
    ratios = [_interval(*_pair(d.ratio_interval), _ratio_pct) for d in decisions]
    add(f"{ci} of the ratio (%, MOVER-R)", ratios)
    add(_p_label(result), [_num(d.p_value) for d in decisions])
    margin = result.margin
    if margin is not None:
        if margin.scale == stats.RELATIVE:
            ni_label = f"non-inferior at {margin.label} (lower bound > {_ratio_pct(margin.bound)})"
        else:
            ni_label = f"non-inferior at {margin.label} (lower bound > {_pts(margin.bound)})"
        add(ni_label, ["yes" if d.interval[0] > margin.bound else "no" for d in decisions])
        low, high = margin.equivalence_bounds
        add(f"equivalent within ±{abs(margin.value) * 100:.4g}"
            + ("%" if margin.scale == stats.RELATIVE else " pts"),
            ["yes" if low < d.interval[0] and d.interval[1] < high else "no"
             for d in decisions])  # fmt: skip
    add("decided on", [d.interval_label for d in decisions])
    add("power reached", [_power_text(d.power) for d in decisions])
    add("projects per arm still needed", [_needed_text(d) for d in decisions])
    add("decision", [d.decision for d in decisions])
    print_table("Treatment versus control", rows, ["measure", *names])
    if result.srm is not None:
        srm = result.srm
        if srm.flagged:
            console.print(f"[bold red]SRM:[/] {srm.message}", highlight=False)
        else:
            console.print(f"SRM check: p = {_num(srm.p_value)} (no mismatch)", highlight=False)
    if margin is not None:
        console.print(
            f"Margin {margin.label}: non-inferiority is one-sided at alpha/2 = "
            f"{result.alpha / 2 / k:g}, read from the two-sided {ci} above.",
            highlight=False,
        )
    for arm, d in result.treatments.items():
        for note in d.notes:
            console.print(f"{arm}: {note}", highlight=False)
    for note in result.notes:
        console.print(note, highlight=False)


def _power_text(check: stats.PowerCheck | None) -> str:
    if check is None:
        return "n/a"
    what = "margin" if check.kind == "non-inferiority" else "change"
    return f"{100 * check.power:.1f}% ({what} {check.effect_label})"


def _needed_text(decision: stats.TreatmentDecision) -> str:
    check = decision.power
    if check is None:
        return "n/a"
    if decision.decision in (stats.TREATMENT_BETTER, stats.TREATMENT_WORSE):
        return "0 (decided)"
    if not check.more_per_arm:
        return "0"
    days = f" (about {check.days_more:.0f} days)" if check.days_more is not None else ""
    return f"{check.more_per_arm}{days}"


@stats_app.command("power")
def power(
    baseline: float = typer.Option(..., "--baseline", help="Control completion rate, e.g. 0.93."),
    mde: str | None = typer.Option(
        None,
        "--mde",
        help="Change to detect: '5%' (relative; a bare number is a relative fraction) or "
        "'1pts' (absolute); a minus sign for a drop.",
    ),
    margin: str | None = typer.Option(
        None, "--margin", help="Plan a non-inferiority test instead. " + MARGIN_HELP
    ),
    expected: float = typer.Option(
        0.0,
        "--expected",
        help="With an absolute --margin and a fixed design: the true difference you expect.",
    ),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Two-sided level."),
    target_power: float = typer.Option(0.8, "--power", help="Wanted power, e.g. 0.8."),
    ratio: float = typer.Option(1.0, "--ratio", help="Treatment size / control size."),
    sequential: bool = typer.Option(
        False,
        "--sequential",
        help="Size the always-valid sequential test (what experiments decide with by default).",
    ),
    daily_projects: float | None = typer.Option(
        None, "--daily-projects", help="Projects per day, all arms together: days needed."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also write an HTML page with the power curve to this file."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Projects per arm for the deciding test to detect MDE (or to show non-inferiority)."""
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
    if daily_projects is not None and not (daily_projects > 0 and math.isfinite(daily_projects)):
        fail(f"daily-projects: must be positive, got {daily_projects}")
    design = "sequential design" if sequential else "fixed horizon"
    if mde is not None:
        value, scale, label = _signed_effect(mde)
        if value == 0:
            fail(f"mde: must be a non-zero change, got {mde}")
        absolute = value if scale == stats.ABSOLUTE else baseline * value
        if not 0 < baseline + absolute < 1:
            fail(f"mde: baseline + mde = {baseline + absolute:g} is not a rate between 0 and 1")
        plan = stats.plan(
            baseline, value, scale=scale, alpha=alpha, power=target_power,
            ratio=ratio, sequential=sequential, daily_projects=daily_projects,
        )  # fmt: skip
        power_at = _design_power(baseline, value, scale, "superiority", alpha, ratio, sequential)
        title = f"Sample size to detect {label} ({design})"
    else:
        parsed = _margin(margin)
        assert parsed is not None
        if parsed.value == 0:
            fail(f"margin: must be below 0 (how much worse is acceptable), got {margin}")
        if expected != 0:
            if parsed.scale != stats.ABSOLUTE or sequential:
                fail("expected: only with an absolute margin ('-1pts') and a fixed design")
            if not expected > parsed.value:
                fail(f"expected: {expected} must be above the margin {parsed.value}")
            if not 0 < baseline + expected < 1:
                fail(f"expected: baseline + expected = {baseline + expected:g} is not a rate")
            plan = stats.non_inferiority_sample_size(
                baseline, parsed.value, expected, alpha, target_power, ratio, daily_projects
            )
            power_at = plots.fixed_non_inferiority_power(plan)
        else:
            plan = stats.plan(
                baseline, parsed.value, scale=parsed.scale, kind="non-inferiority", alpha=alpha,
                power=target_power, ratio=ratio, sequential=sequential,
                daily_projects=daily_projects,
            )  # fmt: skip
            power_at = _design_power(
                baseline, parsed.value, parsed.scale, "non-inferiority", alpha, ratio, sequential
            )
        title = f"Sample size to show non-inferiority at {parsed.label} ({design})"
    if plot is not None:
        plot.write_text(_power_html(plan, title, power_at), encoding="utf-8")
    if as_json:
        print_json({**_json_ready(plan), "sequential": sequential, "title": title})
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


def _design_power(
    baseline: float, effect: float, scale: str, kind: str, alpha: float, ratio: float, seq: bool
) -> Callable[[Any], Any]:
    """The power of the design `stats.plan` sized, as a function of control projects."""
    return functools.partial(
        stats.plan_power, baseline, effect, scale=scale, kind=kind, alpha=alpha, ratio=ratio,
        sequential=seq,
    )  # fmt: skip


def _power_html(plan: Any, title: str, power_at: Callable[[Any], Any]) -> str:
    curve = plots.power_curve(plan, power_at)
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


def _signed_effect(text: str) -> tuple[float, str, str]:
    """'5%' / '-5%' / 0.05 relative, '1pts' absolute -> (signed value, scale, label)."""
    raw = text.strip()
    parsed = _effect("mde", raw.lstrip("+-"))
    value = parsed.value if raw.startswith("-") else -parsed.value
    unit = "% relative" if parsed.scale == stats.RELATIVE else " pts"
    return value, parsed.scale, f"{100 * value:+.4g}{unit}"


def register(app: typer.Typer) -> None:
    """Add `abtest stats ...` to the top-level app."""
    app.add_typer(stats_app, name="stats")
