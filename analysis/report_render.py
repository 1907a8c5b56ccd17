"""Presenting a `Report`: markdown for terminals, HTML with plots, the dashboard panel, JSON.

The renderers read the typed models of `analysis.report_model`; the templates here are the HTML
report's and every dashboard panel's (the dashboard page itself is `abtest/templates/`).
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np

from analysis.report_model import (
    EXPLORATORY,
    NoPower,
    Power,
    Report,
    ReportError,
)


def render_json(report: Report) -> str:
    """The report as the API returns it and the `reports` table stores it."""
    return json.dumps(report.model_dump(mode="json"), indent=2, allow_nan=False)


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


def _margin_text(report: Report) -> str:
    return report.margin.label if report.margin else "none"


def render_markdown(report: Report) -> str:
    """A plain-text report for terminals, chat and pull requests."""
    return "\n".join(
        _markdown_head(report) + _markdown_power(report) + _markdown_guardrails(report)
        + _markdown_segments(report)
    ) + "\n"  # fmt: skip


def _markdown_head(report: Report) -> list[str]:
    """Call-outs, the decision line, the arms and the comparisons, the SRM check."""
    labels = report.labels
    lines = [f"# Experiment {report.experiment.key} — report as of {report.as_of}", ""]
    for callout in report.callouts:
        lines.append(f"> **{callout.kind.upper()}**: {callout.message}")
    if report.callouts:
        lines.append("")
    mode = "sequential (always-valid)" if report.sequential else "fixed horizon"
    lines += [
        f"**Decision: {report.decision}** — alpha {report.alpha}, margin "
        f"{_margin_text(report)}, {mode}, horizon {_num(report.horizon, '.0f')} projects per "
        f"arm ({report.horizon_source}), export window {report.export_window_h:g} h"
        + (" — partial day" if report.partial else ""),
        "",
        "| arm | starts | exports | completion rate | 95% CI (Wilson) | pending |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for arm in report.arms:
        name = arm.name + (" (control)" if arm.control else "")
        lines.append(
            f"| {name} | {arm.starts} | {arm.exports} | {_pct(arm.rate)} | "
            f"{_interval([arm.ci_low, arm.ci_high])} | {arm.pending} |"
        )
    lines += [
        "",
        f"Decided on: {labels.decision_interval}. {labels.p_value_note}.",
        "",
        f"| treatment | decision | difference | CI (pts) | ratio | CI (ratio) | "
        f"{labels.p_value} | power |",
        "|---|---|---:|---|---:|---|---:|---:|",
    ]
    powers = {p.arm: p.power_reached for p in report.power}
    for c in report.comparisons:
        lines.append(
            f"| {c.arm} | {c.decision} | {_pts(c.difference)} | "
            f"{_interval(c.difference_ci, 'pts')} | {_ratio(c.ratio)} | "
            f"{_interval(c.ratio_ci, 'ratio')} | {_num(c.p_value)} | "
            f"{_pct(powers.get(c.arm), 1)} |"
        )
    if labels.non_inferiority is not None:
        lines += ["", labels.non_inferiority + "."]
    srm = report.srm
    periods = f", checked in {len(srm.periods)} allocation periods" if srm.periods else ""
    expected = [None if e is None else round(e, 1) for e in srm.expected]
    return lines + [
        "",
        f"**SRM**: {'FLAGGED' if srm.flagged else 'ok'} (p = {_num(srm.p_value)}, "
        f"starts {srm.starts}, expected {expected}{periods})",
    ]


def _markdown_power(report: Report) -> list[str]:
    lines = ["", "## Power (the deciding test's design)"]
    return lines + [f"- {p.arm}: {_power_text(p)}" for p in report.power]


def _markdown_guardrails(report: Report) -> list[str]:
    lines = [
        "",
        "## Guardrails",
        "",
        "| arm | calls | latency p50 | p95 | fallback | errors | cache hits | cost / project |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in report.guardrails:
        lines.append(
            f"| {g.arm} | {g.calls} | {_num(g.latency_p50_ms, '.0f')} ms | "
            f"{_num(g.latency_p95_ms, '.0f')} ms | {_pct(g.fallback_rate)} | "
            f"{_pct(g.error_rate)} | {_pct(g.cache_hit_rate)} | "
            f"${_num(g.cost_per_project, '.5f')} |"
        )
    return lines


def _markdown_segments(report: Report) -> list[str]:
    lines = ["", "## Segments", "", f"_{EXPLORATORY}_"]
    arm_names = " | ".join(a.name for a in report.arms)
    for name, rows in report.segments.items():
        lines += [
            "",
            f"### {name}",
            "",
            f"| segment | {arm_names} | difference (95% CI, pts) |",
            "|---|" + "---:|" * len(report.arms) + "---|",
        ]
        for row in rows:
            rates = " | ".join(f"{_pct(a.rate, 1)} ({a.starts})" for a in row.arms)
            diffs = "; ".join(
                f"{c.arm}: {_pts(c.difference)} {_interval(c.difference_ci, 'pts')}"
                for c in row.comparisons
            )
            lines.append(f"| {row.segment} | {rates} | {diffs} |")
    if report.notes:
        lines += ["", "Notes: " + "; ".join(report.notes)]
    return lines


def _power_text(p: Power) -> str:
    """ "power 11.7% to show non-inferiority at -2% relative (target 80%); 1155316 more ..."."""
    if isinstance(p, NoPower) or p.power_reached is None:
        return p.message or "–"
    text = f"{p.message}: {_pct(p.power_reached, 1)} (target {_pct(p.target_power, 0)})"
    if p.more_per_arm:
        days = f", about {_days(p.days_remaining)} days" if p.days_remaining else ""
        text += f"; {p.more_per_arm} more projects per arm needed{days}"
    else:
        text += f"; {p.required_per_arm} projects per arm planned, reached"
    return text


def plot_images(report: Report) -> dict[str, str]:
    """Base64 PNGs: cumulative completion rate per arm, and the always-valid relative difference."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in web threads
    from matplotlib.ticker import PercentFormatter

    timeline = report.timeline
    if not timeline:
        return {}
    days = [datetime(t.day.year, t.day.month, t.day.day) for t in timeline]
    x = np.array(days, dtype="datetime64[s]")
    images = {}
    fig = Figure(figsize=(7, 3.2), dpi=90)
    ax = fig.subplots()
    for arm in report.arms:
        points = [t.arms[arm.name] for t in timeline]
        _band(ax, x, [p.rate for p in points], points, arm.name)
    _day_axis(ax, days)
    ax.set_title("Cumulative completion rate (95% Wilson interval)")
    ax.set_ylabel("exports / starts")
    ax.legend(loc="best")
    fig.autofmt_xdate()
    images["completion_rate"] = _png(fig)
    fig = Figure(figsize=(7, 3.2), dpi=90)
    ax = fig.subplots()
    for comparison in report.comparisons:
        name = comparison.arm
        relative = [t.relative[name] for t in timeline]
        _band(ax, x, [p.estimate for p in relative], relative, f"{name} / control - 1")
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


class Interval(Protocol):
    """A timeline point's interval (a `TimelineArm` or a `RelativePoint`)."""

    @property
    def ci_low(self) -> float | None: ...

    @property
    def ci_high(self) -> float | None: ...


def _band(
    ax: Any, x: Any, middle: Sequence[float | None], points: Sequence[Interval], label: str
) -> None:
    """One series over the days with each point's interval (`ci_low`, `ci_high`) shaded."""
    (line,) = ax.plot(x, [_nan(value) for value in middle], marker="o", label=label)
    low = [_nan(point.ci_low) for point in points]
    high = [_nan(point.ci_high) for point in points]
    ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())


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
{% if r.labels.non_inferiority %}{{ r.labels.non_inferiority }}.{% endif %}</p>
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
<p>Generated {{ r.generated_at.isoformat()[:19] }} UTC.</p>
"""
    + REPORT_BODY
    + """</body></html>
"""
)


def render_panel(report: Report, images: dict[str, str] | None = None) -> str:
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


def render_html(report: Report, images: dict[str, str] | None = None) -> str:
    """A standalone HTML page with the plots embedded as base64 PNG."""
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(HTML_TEMPLATE)
    images = plot_images(report) if images is None else images
    return template.render(r=report, images=images, style=STYLE, **template_helpers())


def render(report: Report, fmt: str) -> str:
    """Render in `fmt`: md, html or json."""
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    if fmt == "json":
        return render_json(report)
    raise ReportError(f"unknown format {fmt!r}; use md, html or json")
