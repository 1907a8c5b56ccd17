"""Plots in HTML reports: the gate's scores against its floors, and the power curve."""

import base64
import functools
import json
import re

import pytest
from typer.testing import CliRunner

from abtest.cli import app
from abtest.settings import get_settings
from analysis import plots, stats

runner = CliRunner()


def _png_of(page: str) -> bytes:
    match = re.search(r'<img class="plot"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert match, page[:500]
    png = base64.b64decode(match.group(1))
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    return png


DESIGNS = [
    dict(baseline=0.93, effect=0.01, scale=stats.ABSOLUTE),
    dict(baseline=0.3, effect=-0.05, ratio=2.0),
    dict(baseline=0.93, effect=-0.02, sequential=True),
    dict(baseline=0.93, effect=-0.02, kind="non-inferiority", sequential=True),
]


def _curve_of(design, power):
    baseline, effect = design["baseline"], design["effect"]
    options = {k: v for k, v in design.items() if k not in ("baseline", "effect")}
    plan = stats.plan(baseline, effect, power=power, **options)
    power_at = functools.partial(stats.plan_power, baseline, effect, **options)
    return plan, plots.power_curve(plan, power_at, points=400)


@pytest.mark.parametrize("design", DESIGNS)
def test_power_curve_reaches_the_target_at_the_planned_size(design):
    """The curve is the power of the design that sized the plan (fixed or sequential)."""
    plan, curve = _curve_of(design, 0.8)
    assert curve.power == sorted(curve.power)  # more projects, more power
    at_required = min(
        zip(curve.control_per_arm, curve.power, strict=True),
        key=lambda point: abs(point[0] - plan.control),
    )
    assert at_required[1] == pytest.approx(plan.power, abs=0.01)
    assert curve.power[-1] > plan.power > curve.power[0]


def test_fixed_non_inferiority_curve_with_an_expected_difference():
    plan = stats.non_inferiority_sample_size(0.93, -0.01, 0.0, power=0.8)
    curve = plots.power_curve(plan, plots.fixed_non_inferiority_power(plan), points=400)
    nearest = min(zip(curve.control_per_arm, curve.power, strict=True),
                  key=lambda point: abs(point[0] - plan.control))  # fmt: skip
    assert nearest[1] == pytest.approx(0.8, abs=0.01)


def _metrics(criteria):
    interval = {"estimate": 0.55, "low": 0.5, "high": 0.6}
    return {
        "candidate": {"bootstrap": {"finals": {"adjust": interval, "filter": interval},
                                    "overall": {"estimate": 0.58, "low": 0.55, "high": 0.61}}},
        "verdict": {"criteria": criteria},
    }  # fmt: skip


def test_gate_bars_take_floors_and_outcomes_from_the_verdict():
    bars = plots.gate_score_bars(
        _metrics(
            [
                {"name": "final.adjust", "passed": True, "threshold": 0.5},
                {"name": "final.filter", "passed": False, "threshold": 0.6},
                {"name": "overall_vs_teacher", "passed": False, "threshold": 0.6},
                {"name": "parse_failure_rate", "passed": True, "threshold": 0.01},
            ]
        )
    )
    assert [(b.name, b.floor, b.passed) for b in bars] == [
        ("adjust", 0.5, True), ("filter", 0.6, False), ("overall", 0.6, False)
    ]  # fmt: skip
    no_floor = plots.gate_score_bars(_metrics([]))
    assert {b.floor for b in no_floor} == {None}
    _png_of(plots.html_page("t", [], plots.gate_scores_png(bars, "t"), "scores"))


@pytest.fixture
def cli(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    return lambda *args: runner.invoke(app, list(args))


def test_stats_power_plot_writes_an_html_power_curve(cli, tmp_path):
    out = tmp_path / "power.html"
    result = cli("stats", "power", "--baseline", "0.93", "--mde", "1pts", "--plot", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Sample size to detect +1 pts" in page and "9537, 9537" in page
    _png_of(page)
    as_json = cli("stats", "power", "--baseline", "0.93", "--margin", "-1%", "--json",
                  "--plot", str(tmp_path / "ni.html"))  # fmt: skip
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["control"] > 0
    _png_of((tmp_path / "ni.html").read_text())


def test_stats_power_plot_into_a_missing_directory_fails_first(cli, tmp_path):
    out = tmp_path / "nope" / "power.html"
    result = cli("stats", "power", "--baseline", "0.93", "--mde", "0.01", "--plot", str(out))
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not out.parent.exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_gate_html_report_plots_scores_against_floors(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    invoke = lambda *args: runner.invoke(app, list(args))  # noqa: E731
    assert (
        invoke("variants", "register", "teacher", "--kind", "teacher", "--reference").exit_code == 0
    )
    config = json.dumps({"fit": "train"})
    assert (
        invoke("variants", "register", "knn", "--kind", "knn_student", "--config", config).exit_code
        == 0
    )
    out = tmp_path / "gate.html"
    result = invoke("gate", "knn", "--html", str(out))
    assert result.exit_code == 1  # knn fails the default gate; the report is written anyway
    page = out.read_text()
    assert "gate run #1 for knn: FAILED" in page
    assert "FAIL: final.filter" in page and "floor 0.500" in page
    _png_of(page)
