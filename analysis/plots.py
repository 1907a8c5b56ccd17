"""Plots people would rather look at than read: the offline gate's per-tool scores with their
bootstrap intervals against the policy's floors, and the power curve of a sample-size plan.
Each comes as a standalone HTML page with the PNG embedded (no files beside it)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from analysis import stats
from analysis.stats import FloatArray


@dataclass(frozen=True)
class ScoreBar:
    """One gate score: estimate and interval, and the floor it must clear (None: no floor)."""

    name: str
    estimate: float
    low: float
    high: float
    floor: float | None
    passed: bool | None


def gate_score_bars(metrics: dict[str, Any]) -> list[ScoreBar]:
    """Per-tool final scores and the overall score of a stored gate run (`GateRun.metrics`),
    each with its bootstrap interval and the threshold of the verdict's criterion on it."""
    boot = metrics["candidate"]["bootstrap"]
    criteria = {c["name"]: c for c in metrics.get("verdict", {}).get("criteria", [])}

    def floor_of(*names: str) -> tuple[float | None, bool | None]:
        for name in names:
            criterion = criteria.get(name)
            if criterion is not None and criterion.get("threshold") is not None:
                return float(criterion["threshold"]), bool(criterion["passed"])
        return None, None

    bars = []
    for tool, interval in boot["finals"].items():
        floor, passed = floor_of(f"final.{tool}")
        bars.append(
            ScoreBar(tool, interval["estimate"], interval["low"], interval["high"], floor, passed)
        )
    overall = boot["overall"]
    floor, passed = floor_of("overall_vs_teacher", "overall")
    bars.append(
        ScoreBar("overall", overall["estimate"], overall["low"], overall["high"], floor, passed)
    )
    return bars


def gate_scores_png(bars: Sequence[ScoreBar], title: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global state

    figure = Figure(figsize=(7, 3.6))
    ax = figure.subplots()
    x = np.arange(len(bars))
    colors = ["#2a7a2a" if b.passed is not False else "#c00" for b in bars]
    estimates = [b.estimate for b in bars]
    errors = [[b.estimate - b.low for b in bars], [b.high - b.estimate for b in bars]]
    ax.bar(x, estimates, color=colors, alpha=0.75, width=0.6)
    ax.errorbar(x, estimates, yerr=errors, fmt="none", ecolor="black", capsize=6)
    for i, bar in enumerate(bars):
        if bar.floor is not None:
            ax.hlines(bar.floor, i - 0.4, i + 0.4, colors="black", linestyles="--")
            ax.annotate(f"floor {bar.floor:.2f}", (i, bar.floor), textcoords="offset points",
                        xytext=(0, 4), ha="center", fontsize=8)  # fmt: skip
    ax.set_xticks(x, [b.name for b in bars])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (bootstrap interval)")
    ax.set_title(title)
    figure.tight_layout()
    return _png(figure)


@dataclass(frozen=True)
class PowerCurve:
    control_per_arm: list[int]
    power: list[float]
    required: int
    target_power: float


def power_curve(
    plan: stats.SampleSize, power_at: Callable[[FloatArray], FloatArray], points: int = 60
) -> PowerCurve:
    """Power against projects per control arm, from 0 to twice the plan's requirement;
    `power_at` is the power of the very design that sized `plan` (e.g. `stats.plan_power`), so
    the curve crosses the target exactly at the planned size."""
    n = np.unique(np.linspace(1, max(2 * plan.control, 10), points).round().astype(int))
    power = power_at(n.astype(float))
    return PowerCurve([int(v) for v in n], [float(v) for v in power], plan.control, plan.power)


def fixed_non_inferiority_power(plan: stats.SampleSize) -> Callable[[FloatArray], FloatArray]:
    """Power of `stats.non_inferiority_sample_size`'s fixed design (its `mde` is the distance
    between the expected difference and the margin)."""
    pc, pt = plan.baseline, plan.treatment_rate
    z = float(special.ndtri(1 - plan.alpha / 2))

    def power_at(n: FloatArray) -> FloatArray:
        se = np.sqrt(pc * (1 - pc) / n + pt * (1 - pt) / (n * plan.ratio))
        return np.asarray(special.ndtr(plan.mde / se - z))

    return power_at


def power_curve_png(curve: PowerCurve, title: str) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.6))
    ax = figure.subplots()
    ax.plot(curve.control_per_arm, curve.power, color="#4a7ab5")
    ax.axhline(curve.target_power, color="grey", linestyle="--", linewidth=1)
    ax.axvline(curve.required, color="black", linestyle=":", linewidth=1)
    ax.annotate(
        f"{curve.required} per arm -> power {curve.target_power:.0%}",
        (curve.required, curve.target_power),
        textcoords="offset points",
        xytext=(6, -14),
        fontsize=8,
    )
    ax.set_ylim(0, 1)
    ax.set_xlabel("projects in the control arm")
    ax.set_ylabel("power")
    ax.set_title(title)
    figure.tight_layout()
    return _png(figure)


def html_page(title: str, rows: Sequence[tuple[str, str]], png: bytes, alt: str) -> str:
    """A standalone page: a title, a two-column table of facts, and the plot."""
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    image = base64.b64encode(png).decode("ascii")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;"
        "margin:2rem;max-width:60rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
        "text-align:left}table{border-collapse:collapse}img{max-width:100%}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><table>{cells}</table>"
        f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{image}">'
        "</body></html>\n"
    )


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
