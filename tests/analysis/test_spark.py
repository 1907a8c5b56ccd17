"""Spark over the Parquet export gives PostgreSQL's numbers (one query definition, two engines).

All Spark tests share the session-scoped `spark` fixture: one JVM for the run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from abtest import db
from abtest.cli import app
from analysis import export, queries, report_model, sufficient_stats
from analysis.spark import SparkSource
from analysis.sufficient_stats import Scope, SqlSource
from tests.online_data import DAY0, assignment, create_experiment, event, insert, simulate

pytestmark = pytest.mark.postgres
ATTRIBUTES = ("platform", "country")
STOPPED = DAY0 + timedelta(days=5)  # after the simulated days


@pytest.fixture
def pg(postgres_url):
    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def seed_edge_cases(engine, seeded):
    d = DAY0 + timedelta(days=1)
    rows = [
        # export logged without experiment: in scope through the assignment
        event(seeded, "start", "u1", "control", d, latency_ms=300.0),
        event(seeded, "export", "u1", None, d + timedelta(hours=1), labelled=False),
        # start without arm: the assignment's arm, also for its guardrail call
        {**event(seeded, "start", "u2", "treatment", d, latency_ms=250.0), "arm_id": None},
        # no assignment and no arm: not counted
        {**event(seeded, "start", "u3", "control", d), "arm_id": None},
        # export before its start (clock skew)
        event(seeded, "export", "u4", "treatment", d - timedelta(minutes=5)),
        event(seeded, "start", "u4", "treatment", d, latency_ms=None, error="timeout"),
        # export two days after the start: outside a 24 h window
        event(seeded, "start", "u5", "control", d, latency_ms=410.0, cost_usd=0.25),
        event(seeded, "export", "u5", "control", d + timedelta(days=2)),
        # started after the experiment stopped
        event(seeded, "start", "u6", "treatment", STOPPED + timedelta(hours=1), latency_ms=5.0),
        # a start before a cut-off `until`, its export after it
        event(seeded, "start", "u8", "control", DAY0 + timedelta(days=2, hours=23), latency_ms=1.0),
        event(seeded, "export", "u8", "control", DAY0 + timedelta(days=3, hours=1)),
        # two starts with different segment values and a messy intent
        event(
            seeded,
            "start",
            "u7",
            "control",
            d,
            intent="  Golden HOUR ",
            attributes={"platform": "web"},
        ),
        event(
            seeded,
            "start",
            "u7",
            "control",
            d + timedelta(hours=1),
            attributes={"platform": "android"},
        ),
    ]
    assigned = [
        assignment(seeded, p, arm)
        for p, arm in [
            ("u1", "control"),
            ("u2", "treatment"),
            ("u4", "treatment"),
            ("u5", "control"),
            ("u6", "treatment"),
            ("u7", "control"),
        ]
    ]
    insert(engine, rows, assigned)


def close(a, b, tolerance=1e-12):
    """Equal, with floats equal to `tolerance` (relative and absolute)."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(close(x, y, tolerance) for x, y in zip(a, b, strict=True))
    return a == b


def as_plain(value):
    if isinstance(value, list):
        return [as_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


def without(report, *paths):
    report = json.loads(json.dumps(report))
    report.pop("generated_at")
    for row in report["guardrails"]:
        for name in paths:
            row.pop(name)
    return report


def test_spark_matches_postgresql_on_the_same_events(pg, tmp_path, spark):
    seeded = create_experiment(pg)
    simulate(pg, seeded, {"control": 0.6, "treatment": 0.55}, projects_per_day=40, days=5)
    seed_edge_cases(pg, seeded)
    folder = tmp_path / "wh"
    with pg.connect() as connection:
        export.export(connection, folder)
    on_spark = SparkSource(spark, folder)
    scopes = [
        Scope(seeded.experiment_id),
        Scope(
            seeded.experiment_id,
            until=DAY0 + timedelta(days=6),
            stopped_at=STOPPED,
            export_window=timedelta(hours=24),
        ),
    ]
    with pg.connect() as connection:
        in_pg = SqlSource(connection)
        # Spark runs only the scope with every cut-off (each Spark query costs seconds here).
        cut_scope = scopes[1]
        pg_counts = in_pg.project_counts(cut_scope, ATTRIBUTES, True)
        assert pg_counts == on_spark.project_counts(cut_scope, ATTRIBUTES, True)
        assert sum(d.starts for d in pg_counts.daily) > 0
        pg_guardrails = in_pg.guardrail_stats(cut_scope)
        assert close(as_plain(pg_guardrails), as_plain(on_spark.guardrail_stats(cut_scope)))
        # The cut-offs change the counts (else the test above proves little about them).
        plain = in_pg.project_counts(
            Scope(seeded.experiment_id, until=scopes[1].until), ATTRIBUTES, True
        )
        cut = in_pg.project_counts(scopes[1], ATTRIBUTES, True)
        arm = seeded.arm_ids
        assert sum(d.exports for d in plain.daily if d.arm_id == arm["control"]) - 1 == sum(
            d.exports for d in cut.daily if d.arm_id == arm["control"]
        )  # u5's late export
        assert sum(d.starts for d in plain.daily if d.arm_id == arm["treatment"]) - 1 == sum(
            d.starts for d in cut.daily if d.arm_id == arm["treatment"]
        )  # u6's start after the stop

        # Without cut-offs the definition agrees with the reference event scan ...
        reference = queries.project_counts(connection, seeded.experiment_id, None, ATTRIBUTES, True)
        assert reference == in_pg.project_counts(scopes[0], ATTRIBUTES, True)
        exact = queries.guardrail_stats(connection, seeded.experiment_id)
        assert close(as_plain(exact), as_plain(in_pg.guardrail_stats(scopes[0])), 1e-9)

        # ... and whole reports agree: Spark vs the same SQL in PostgreSQL to 1e-12, and Spark vs
        # the rollup (default engine) on everything but its histogram latency percentiles.
        end, now = DAY0 + timedelta(days=3), datetime(2026, 12, 1, tzinfo=UTC)
        by_spark, by_sql, by_rollup = (
            report_model.build_report(connection, "exp", end, now=now, source=source).model_dump(
                mode="json"
            )
            for source in (on_spark, in_pg, None)
        )
    assert close(by_spark, by_sql)
    assert close(
        without(by_spark, "latency_p50_ms", "latency_p95_ms"),
        without(by_rollup, "latency_p50_ms", "latency_p95_ms"),
    )
    assert by_spark["arms"][0]["starts"] > 30


def test_report_engine_spark_from_the_command_line(pg, tmp_path, spark, monkeypatch):
    seeded = create_experiment(pg)
    simulate(pg, seeded, {"control": 0.6, "treatment": 0.5}, projects_per_day=30, days=3)
    monkeypatch.setenv("ABTEST_DATABASE_URL", pg.url.render_as_string(hide_password=False))
    monkeypatch.setenv("ABTEST_SPARK_MASTER", "local[2]")
    runner = CliRunner()
    args = ["report", "exp", "--format", "json", "--as-of", "2026-11-05"]
    folder = str(tmp_path / "wh")
    by_spark = runner.invoke(app, [*args, "--engine", "spark", "--warehouse", folder])
    assert by_spark.exit_code == 0, by_spark.output
    by_sql = runner.invoke(app, [*args, "--engine", "sql"])
    assert by_sql.exit_code == 0, by_sql.output
    spark_report, sql_report = json.loads(by_spark.output), json.loads(by_sql.output)
    spark_report.pop("generated_at"), sql_report.pop("generated_at")
    assert close(spark_report, sql_report)
    assert spark_report["arms"][0]["starts"] + spark_report["arms"][1]["starts"] == 90
    # The spark engine exported the events first (incrementally) into the warehouse folder.
    manifest = json.loads((tmp_path / "wh" / "manifest.json").read_text())
    assert manifest["tables"]["events"]["last_id"] > 0


def test_missing_java_or_a_bad_engine_is_one_line(pg, tmp_path, monkeypatch):
    create_experiment(pg)
    monkeypatch.setenv("ABTEST_DATABASE_URL", pg.url.render_as_string(hide_password=False))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    runner = CliRunner()
    result = runner.invoke(
        app, ["report", "exp", "--engine", "spark", "--warehouse", str(tmp_path)]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no Java runtime" in lines[0], result.output
    assert not (tmp_path / "manifest.json").exists()  # failed before exporting anything
    result = runner.invoke(app, ["report", "exp", "--engine", "duckdb"])
    assert result.exit_code == 1 and "engine" in result.output


def test_spark_sql_is_compiled_from_the_same_statement():
    """Not a second copy: the Spark text is the PostgreSQL statement compiled per dialect."""
    from sqlalchemy.dialects import postgresql

    statement = sufficient_stats.counts_statement(
        Scope(1, export_window=timedelta(hours=24)), ("platform",), True
    )
    text, params = sufficient_stats.compile_for_spark(statement, {"experiment_id": 1})
    pg_text = str(statement.compile(dialect=postgresql.dialect()))
    assert "get_json_object(events.attributes, '$.platform')" in text
    assert "timestampadd(MICROSECOND" in text and "to_date(" in text
    assert "->> 'platform'" in pg_text and "interval '1 microsecond'" in pg_text
    assert params["experiment_id"] == 1 and params["window_micros"] == 86_400_000_000
    with pytest.raises(ValueError, match="plain identifier"):
        sufficient_stats.counts_statement(Scope(1), ("platform'; drop table events; --",))


def _bench_writer():
    """bench/parquet_events.py (the 100M-event benchmark's writer; bench/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "parquet_events.py"
    spec = importlib.util.spec_from_file_location("bench_parquet_events", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _layout(folder, table):
    files = export.manifest_files(folder, table)
    schemas = {str(pq.read_schema(f).remove_metadata()) for f in files}
    return sorted({f.parent.relative_to(folder).as_posix() for f in files}), schemas


def test_the_benchmarks_direct_parquet_is_what_the_export_writes(pg, tmp_path, spark):
    """bench_warehouse --parquet-direct skips the database: its files must be the ones an
    export of the same rows writes (layout, schema, rows) and count the same on Spark."""
    writer = _bench_writer()
    seeded = create_experiment(pg)
    arms = (seeded.arm_ids["control"], seeded.arm_ids["treatment"])
    direct, exported = tmp_path / "direct", tmp_path / "exported"
    events = writer.write(direct, 3000, chunk=1000, shape=writer.Shape(seeded.experiment_id, arms))
    rows = {table: writer.rows(direct, table) for table in ("events", "assignments")}
    for kind in ("start", "export"):  # SQL NULLs left out (None would store JSON null)
        same_kind = [
            {k: json.loads(v) if k == "attributes" else v for k, v in r.items() if v is not None}
            for r in rows["events"]
            if r["type"] == kind
        ]
        assert len({frozenset(r) for r in same_kind}) == 1  # one set of columns per insert
        insert(pg, same_kind)
    insert(pg, [], rows["assignments"])
    with pg.connect() as connection:
        result = export.export(connection, exported)
    assert result.rows == {"events": events, "assignments": 3000} and 4500 < events < 5200
    for source in export.SOURCES:
        assert _layout(direct, source.name) == _layout(exported, source.name)
        assert _layout(direct, source.name)[1] == {str(export.arrow_schema(source))}
        written, read_back = (
            sorted(writer.rows(folder, source.name), key=lambda r: r["id"])
            for folder in (direct, exported)
        )
        assert len(written) == len(read_back)
        for ours, theirs in zip(written, read_back, strict=True):  # JSON text included
            assert ours == theirs, {k: (v, theirs[k]) for k, v in ours.items() if v != theirs[k]}
    scope = Scope(seeded.experiment_id)
    counted = []
    for folder in (direct, exported):
        by_spark = SparkSource(spark, folder)
        counted.append(
            (by_spark.project_counts(scope, ATTRIBUTES, True), by_spark.guardrail_stats(scope))
        )
    assert close(as_plain(list(counted[0])), as_plain(list(counted[1])))
    assert sum(day.starts for day in counted[0][0].daily) == 3000
