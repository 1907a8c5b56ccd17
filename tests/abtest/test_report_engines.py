"""`--engine` and ABTEST_REPORT_ENGINE: the engine-neutral SQL gives the rollup's counts."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from abtest.cli import app
from tests.online_data import create_experiment, simulate


def test_sql_engine_matches_the_rollup(engine, monkeypatch):
    seeded = create_experiment(engine)
    simulate(engine, seeded, {"control": 0.7, "treatment": 0.6}, projects_per_day=20, days=3)
    monkeypatch.setenv("ABTEST_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    runner = CliRunner()
    args = ["report", "exp", "--format", "json", "--as-of", "2026-11-03"]
    by_rollup = runner.invoke(app, args)
    by_sql = runner.invoke(app, [*args, "--engine", "sql"])
    if engine.dialect.name == "sqlite":  # no GROUPING SETS: a clear refusal
        assert by_sql.exit_code == 1 and "sql needs PostgreSQL" in by_sql.output
        return
    assert by_rollup.exit_code == 0 and by_sql.exit_code == 0, by_sql.output
    rollup, sql = json.loads(by_rollup.output), json.loads(by_sql.output)
    assert rollup["arms"] == sql["arms"] and rollup["segments"] == sql["segments"]
    assert rollup["timeline"] == sql["timeline"] and rollup["comparisons"] == sql["comparisons"]
    # three days of 20 projects: the last day's are still in their 24 h attribution window
    assert sum(a["starts"] for a in sql["arms"]) == 40
    assert sum(a["pending"] for a in sql["arms"]) == 20
    monkeypatch.setenv("ABTEST_REPORT_ENGINE", "sql")
    stored = runner.invoke(app, ["reports", "run", "--all", "--as-of", "2026-11-03", "--json"])
    assert stored.exit_code == 0, stored.output
    assert [r["experiment"] for r in json.loads(stored.output)] == ["exp"]


def test_an_unknown_report_engine_setting_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("ABTEST_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("ABTEST_REPORT_ENGINE", "duckdb")
    result = CliRunner().invoke(app, ["reports", "run", "--all"])
    assert result.exit_code == 2 and "ABTEST_REPORT_ENGINE" in result.output
