"""`--engine` and ABTEST_REPORT_ENGINE: the engine-neutral SQL gives the rollup's counts."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, tzinfo

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from abtest import db, report_service
from abtest.cli import app
from analysis import export
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


def _run_scheduled_job(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """`abtest scheduler` with its scheduler's start replaced by one run of each job it
    scheduled (the job the cron would run); returns the stored report bodies."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    def run_jobs_once(scheduler: BlockingScheduler) -> None:
        (job,) = scheduler.get_jobs()
        job.func()

    monkeypatch.setattr(BlockingScheduler, "start", run_jobs_once)
    result = CliRunner().invoke(app, ["scheduler"])
    assert result.exit_code == 0, result.output
    assert "stored 2 report(s)" in result.output  # yesterday's and today's
    engine = db.get_engine(os.environ["ABTEST_DATABASE_URL"])
    with db.session_scope(engine) as session:
        return [dict(r.body) for r in report_service.stored_reports(session, "exp")]


def _assert_same_numbers(spark: object, other: object, path: str = "", loose: float = 0.0) -> None:
    """Equal structure; equal floats to 1e-12 (relative, or absolute near zero); latency
    percentiles to `loose` (relative)."""
    if isinstance(spark, float) or isinstance(other, float):
        assert isinstance(spark, int | float) and isinstance(other, int | float), path
        tolerance = loose if path.endswith(("latency_p50_ms", "latency_p95_ms")) else 1e-12
        close = math.isclose(spark, other, rel_tol=max(tolerance, 1e-12), abs_tol=1e-12)
        assert close, (path, spark, other)
    elif isinstance(spark, dict) and isinstance(other, dict):
        assert spark.keys() == other.keys(), path
        for key in spark:
            _assert_same_numbers(spark[key], other[key], f"{path}.{key}", loose)
    elif isinstance(spark, list) and isinstance(other, list):
        assert len(spark) == len(other), path
        for index, (a, b) in enumerate(zip(spark, other, strict=True)):
            _assert_same_numbers(a, b, f"{path}[{index}]", loose)
    else:
        assert spark == other, (path, spark, other)


NOW = datetime(2026, 11, 4, 12, tzinfo=UTC)  # day 4 of the experiment, at noon


class _Frozen(datetime):
    """The reports' clock, pinned: today's partial report depends on the time it runs."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        return NOW.astimezone(tz) if tz else NOW.replace(tzinfo=None)


def test_the_scheduled_job_on_spark_stores_the_sql_and_rollup_numbers(
    engine, spark, monkeypatch, tmp_path
):
    """ABTEST_REPORT_ENGINE=spark: the scheduler's job exports the events to the warehouse
    folder and counts them on Spark (the session fixture's JVM). The stored reports equal the
    sql engine's to 1e-12 (PostgreSQL) and the rollup's, whose latency percentiles come from
    log-spaced buckets (within 2 %, `analysis.rollup`)."""
    seeded = create_experiment(engine)
    simulate(engine, seeded, {"control": 0.7, "treatment": 0.55}, projects_per_day=30, days=3)
    warehouse = tmp_path / "warehouse"
    monkeypatch.setattr("analysis.report_model.datetime", _Frozen)
    monkeypatch.setattr("abtest.report_service.datetime", _Frozen)
    monkeypatch.setenv("ABTEST_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ABTEST_WAREHOUSE_DIR", str(warehouse))
    monkeypatch.setenv("ABTEST_REPORT_ENGINE", "spark")
    by_spark = _run_scheduled_job(monkeypatch)
    files = export.manifest_files(warehouse, "events")
    assert files and sum(pq.read_metadata(f).num_rows for f in files) > 90  # exported first
    assert [b["as_of"] for b in by_spark] == ["2026-11-03", "2026-11-04"]
    arms = by_spark[-1]["arms"]
    assert sum(a["starts"] + a["pending"] for a in arms) == 90  # day 3's last half is pending
    assert sum(a["pending"] for a in arms) > 0
    others = {"rollup": 0.02}
    if engine.dialect.name == "postgresql":  # the sql engine needs GROUPING SETS
        others["sql"] = 0.0
    for name, loose in others.items():
        monkeypatch.setenv("ABTEST_REPORT_ENGINE", name)
        for ours, theirs in zip(by_spark, _run_scheduled_job(monkeypatch), strict=True):
            _assert_same_numbers(ours, theirs, name, loose)
