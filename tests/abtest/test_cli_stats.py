"""`abtest stats proportions` and `abtest stats power` (no database involved)."""

from __future__ import annotations

import json
import math

import pytest
from statsmodels.stats import proportion as smp
from typer.testing import CliRunner

from abtest.cli import app
from analysis import stats

runner = CliRunner()


def _decision_row(stdout: str) -> str:
    """The decision row of the comparison table, table-drawn (terminal) or vertical (piped)."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if "│ decision" in line:
            return line
        if line.replace(" ", "") == "measure:decision":
            return lines[i + 1]
    raise AssertionError(f"no decision row in:\n{stdout}")


def invoke(*args: str):
    return runner.invoke(app, ["stats", *args], env={"COLUMNS": "120"})


def test_proportions_json_matches_statsmodels():
    result = invoke("proportions", "--control", "9300/10000", "--treatment", "9210/10000", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    t = body["treatments"]["treatment"]
    low, high = smp.confint_proportions_2indep(
        9210, 10000, 9300, 10000, method="newcomb", compare="diff"
    )
    assert t["difference_interval"] == pytest.approx([low, high], abs=1e-12)
    assert t["comparison"]["ratio"] == pytest.approx(0.921 / 0.93)
    assert t["scale"] == "relative" and t["decision_interval"] == t["ratio_interval"]
    assert "ratio" in t["decision_interval_label"] and "pooled z" in t["p_value_label"]
    assert t["decision"] == "treatment worse"
    assert body["control"]["rate"] == pytest.approx(0.93)
    assert body["srm"] is None and body["margin"] is None


def test_proportions_table_with_margin():
    result = invoke(
        "proportions", "--control", "9300/10000", "--treatment", "9353/10000", "--margin", "-1.2%"
    )
    assert result.exit_code == 0, result.output
    assert "Completion rate per arm" in result.stdout
    assert "93.00%" in result.stdout and "93.53%" in result.stdout
    assert "non-inferior at -1.2% relative" in result.stdout
    assert "one-sided at alpha/2" in result.stdout
    decision_row = _decision_row(result.stdout)
    assert "non-inferior" in decision_row
    points = invoke(
        "proportions", "--control", "930/1000", "--treatment", "945/1000", "--margin", "-3pts"
    )
    assert points.exit_code == 0, points.output
    assert "non-inferior at -3 pts" in points.stdout
    decision_row = _decision_row(points.stdout)
    assert "underpowered" in decision_row  # the interval clears -3 pts, with 75% power


@pytest.mark.parametrize("margin", [None, "-2%", "-5%"])
@pytest.mark.parametrize("counts", [("2830/94317", "2695/93495"), ("609/20294", "602/20282")])
def test_seed_replays_are_underpowered_with_projects_needed(counts, margin):
    args = ["proportions", "--control", counts[0], "--treatment", counts[1], "--days", "14"]
    result = invoke(*args, *(["--margin", margin] if margin else []), "--json")
    assert result.exit_code == 0, result.output
    t = json.loads(result.stdout)["treatments"]["treatment"]
    assert t["decision"] == "underpowered"
    assert t["power"]["more_per_arm"] > 0 and t["power"]["days_more"] > 0
    table = invoke(*args, *(["--margin", margin] if margin else []))
    assert (
        "more projects per arm" in table.stdout
        and "equivalent" not in table.stdout.split("decision")[-1]
    )


def test_degenerate_all_versus_nothing_is_treatment_worse():
    result = invoke("proportions", "--control", "1000/1000", "--treatment", "0/1000", "--json")
    assert result.exit_code == 0, result.output
    t = json.loads(result.stdout)["treatments"]["treatment"]
    assert t["decision"] == "treatment worse"
    assert t["p_value_adjusted"] < 1e-6
    table = invoke("proportions", "--control", "1000/1000", "--treatment", "0/1000")
    decision_row = _decision_row(table.stdout)
    assert "treatment worse" in decision_row


def test_proportions_several_treatments_sequential_and_srm():
    result = invoke(
        "proportions",
        "--control", "9300/10000",
        "--treatment", "9210/10000",
        "--treatment", "9400/12000",
        "--sequential", "--horizon", "20000",
        "--weights", "1,1,1",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["srm"]["flagged"] is True
    assert set(body["treatments"]) == {"treatment", "treatment 2"}
    for t in body["treatments"].values():
        assert t["decision"] == stats.SRM_DO_NOT_TRUST
        assert t["sequential"]["horizon"] == 20000
    table = invoke(
        "proportions", "--control", "9300/10000", "--treatment", "9210/10000",
        "--treatment", "9400/12000", "--weights", "1,1,1", "--sequential",
    )  # fmt: skip
    assert table.exit_code == 0, table.output
    assert "SRM:" in table.stdout and "always-valid" in table.stdout and "Holm" in table.stdout


def test_proportions_json_is_strict_when_numbers_are_undefined():
    result = invoke("proportions", "--control", "10/10", "--treatment", "10/10", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)  # NaN would not parse as strict JSON below
    json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert body["treatments"]["treatment"]["comparison"]["p_value"] is None
    assert body["treatments"]["treatment"]["p_value_adjusted"] == 1.0  # pooled z: no difference
    assert body["treatments"]["treatment"]["decision"] == "underpowered"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--control", "9300/0", "--treatment", "1/2"], "no starts"),
        (["--control", "9300/10000", "--treatment", "11/10"], "more exports"),
        (["--control", "9300-10000", "--treatment", "1/2"], "not EXPORTS/STARTS"),
        (["--control", "a/b", "--treatment", "1/2"], "not EXPORTS/STARTS"),
        (["--control", "1.5/3", "--treatment", "1/2"], "not EXPORTS/STARTS"),
        (["--control", "-1/3", "--treatment", "1/2"], "not EXPORTS/STARTS"),
        (["--control", "1/3", "--treatment", "1/2", "--margin", "0.01"], "margin"),
        (["--control", "1/3", "--treatment", "1/2", "--margin", "-2 percent"], "margin"),
        (["--control", "1/3", "--treatment", "1/2", "--mde", "lots"], "mde"),
        (["--control", "1/3", "--treatment", "1/2", "--days", "0"], "days"),
        (["--control", "1/3", "--treatment", "1/2", "--alpha", "1.5"], "alpha"),
        (["--control", "1/3", "--treatment", "1/2", "--horizon", "100"], "horizon"),
        (["--control", "1/3", "--treatment", "1/2", "--sequential", "--horizon", "0"], "horizon"),
        (["--control", "1/3", "--treatment", "1/2", "--weights", "1"], "weights"),
        (["--control", "1/3", "--treatment", "1/2", "--weights", "1,x"], "weights"),
        (["--control", "1/3", "--treatment", "1/2", "--weights", "0,0"], "weights"),
        (["--control", "1/3", "--treatment", "1/2", "--treatment", "3/2"], "treatment 2"),
    ],
)
def test_proportions_bad_input_is_a_clear_error(args, needle):
    result = invoke("proportions", *args)
    assert result.exit_code != 0
    assert needle in result.output
    assert "Traceback" not in result.output


def test_proportions_requires_a_treatment():
    result = invoke("proportions", "--control", "1/3")
    assert result.exit_code != 0


def test_power_json_matches_the_library():
    result = invoke("power", "--baseline", "0.93", "--mde", "1pts", "--daily-projects", "2000",
                    "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    plan = stats.sample_size(0.93, 0.01, daily_projects=2000)
    assert body["control"] == plan.control == 9537
    assert body["treatment"] == 9537 and body["total"] == 19074
    assert body["days_needed"] == 10
    assert math.isclose(body["control_exact"], plan.control_exact)


def test_power_sequential_plans_for_the_test_that_decides():
    fixed = json.loads(invoke("power", "--baseline", "0.3", "--mde", "5%", "--json").stdout)
    seq = invoke("power", "--baseline", "0.3", "--mde", "5%", "--sequential", "--json")
    assert seq.exit_code == 0, seq.output
    body = json.loads(seq.stdout)
    assert body["sequential"] is True
    assert body["control"] == stats.plan(0.3, 0.05, sequential=True).control
    assert body["control"] > 1.8 * fixed["control"]
    # that size gives the sequential test its power (0.80), the fixed size does not (~0.41)
    at = stats.power_check(0.3, body["control"], body["control"], effect=0.05, sequential=True,
                           horizon=body["control"])  # fmt: skip
    assert at.power == pytest.approx(0.8, abs=0.01)
    table = invoke("power", "--baseline", "0.93", "--margin", "-2%", "--sequential")
    assert "non-inferiority at -2% relative (sequential design)" in table.stdout


def test_power_table_with_ratio_and_alpha():
    result = invoke("power", "--baseline", "0.5", "--mde", "-4pts", "--ratio", "2",
                    "--alpha", "0.01", "--power", "0.9")  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = stats.sample_size(0.5, -0.04, 0.01, 0.9, 2.0)
    assert str(plan.control) in result.stdout and str(plan.treatment) in result.stdout
    assert "days" not in result.stdout


def test_power_for_non_inferiority():
    result = invoke("power", "--baseline", "0.93", "--margin", "-1pts", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["control"] == stats.non_inferiority_sample_size(0.93, -0.01).control == 10220
    table = invoke("power", "--baseline", "0.93", "--margin", "-1pts", "--expected", "0.005")
    assert table.exit_code == 0, table.output
    assert "non-inferiority at -1 pts" in table.stdout
    assert str(stats.non_inferiority_sample_size(0.93, -0.01, 0.005).control) in table.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--baseline", "1.2", "--mde", "0.01"], "baseline"),
        (["--baseline", "0.93", "--mde", "0"], "mde"),
        (["--baseline", "0.99", "--mde", "0.02"], "mde"),
        (["--baseline", "0.9", "--mde", "0.01", "--power", "1"], "power"),
        (["--baseline", "0.9", "--mde", "0.01", "--alpha", "0"], "alpha"),
        (["--baseline", "0.9", "--mde", "0.01", "--ratio", "0"], "ratio"),
        (["--baseline", "0.9", "--mde", "0.01", "--daily-projects", "-5"], "daily-projects"),
        (["--baseline", "0.9"], "mde"),
        (["--baseline", "0.9", "--mde", "0.01", "--margin", "-0.01"], "not both"),
        (["--baseline", "0.9", "--margin", "0.01"], "margin"),
        (["--baseline", "0.9", "--margin", "-1pts", "--expected", "-0.02"], "expected"),
        (["--baseline", "0.95", "--margin", "-1pts", "--expected", "0.05"], "expected"),
        (["--baseline", "0.95", "--margin", "-1%", "--expected", "0.001"], "expected"),
        (["--baseline", "0.9", "--mde", "often"], "mde"),
    ],
)
def test_power_bad_input_is_a_clear_error(args, needle):
    result = invoke("power", *args)
    assert result.exit_code != 0
    assert needle in result.output
    assert "Traceback" not in result.output


def test_the_cli_imports_no_statistics_stack_until_a_command_needs_it():
    """Every command pays the CLI's import time: scipy, statsmodels and pandas load lazily."""
    import subprocess
    import sys

    from abtest.cli import analysis_cmds
    from analysis import stats

    assert analysis_cmds.DEFAULT_ALPHA == stats.DEFAULT_ALPHA
    heavy = "{'scipy', 'statsmodels', 'pandas'}"
    code = f"import sys, abtest.cli; print(sorted({heavy} & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
