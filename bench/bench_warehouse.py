"""The report's sufficient statistics on Spark local[2] vs PostgreSQL vs pandas: time and memory.

For each size: a scratch PostgreSQL database gets N projects of experiment "bench" (an
assignment and a start event each, an export for ~60 %, platform/country/intent on the start),
written by generate_series. The events are exported to Parquet (`analysis.export`, timed), then
each engine computes the report's counts (daily per arm, platform and country segments, intent
popularity) and guardrails (calls, exact latency p50/p95, cost), each in its own process so its
peak memory is its own:

* ``pg-sql``: `analysis.sufficient_stats` in PostgreSQL (the query Spark runs);
* ``pg-rollup``: `analysis.rollup.refresh` from scratch (a full rebuild) and the rollup read;
* ``spark``: the same statements on Spark local[2] over the Parquet files (JVM start excluded
  from the query time, reported apart);
* ``pandas``: the Parquet files read into pandas and grouped (the daily counts and guardrail
  sums only: what a notebook would do).

Peak memory: the PostgreSQL backend's VmHWM (this machine's server), the JVM's VmHWM for Spark,
the Python process's max RSS for pandas. Every engine's per-arm totals are checked against the
others.

    python bench/bench_warehouse.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

ATTRIBUTES = ("platform", "country")


def populate(url: str, projects: int) -> int:
    import sqlalchemy as sa
    from scratch_db import two_arm_experiment

    from abtest import db

    engine = db.make_engine(url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        experiment = two_arm_experiment(session, start=True)
        experiment_id = experiment.id
        arms = [arm.id for arm in experiment.arms]
    seed = f"""
        WITH p AS (
            SELECT g, 'p' || g AS project, CASE WHEN random() < 0.5 THEN {arms[0]} ELSE {arms[1]}
                   END AS arm,
                   timestamptz '2026-11-01 00:00:00+00' + (random() * 14 * 86400) * interval '1 s'
                   AS at
            FROM generate_series(1, {projects}) g
        ), a AS (
            INSERT INTO assignments (experiment_id, project_id, arm_id, source, assigned_at)
            SELECT {experiment_id}, project, arm, 'hash', at FROM p
        ), s AS (
            INSERT INTO events (client_event_id, type, project_id, experiment_id, arm_id,
                                occurred_at, received_at, latency_ms, fallback, cache_hit,
                                cost_usd, intent, attributes)
            SELECT 's' || g, 'start', project, {experiment_id}, arm, at, at,
                   100 + random() * 900, random() < 0.01, random() < 0.2,
                   CASE WHEN arm = {arms[0]} THEN 0.002 ELSE 0.0005 END,
                   'intent ' || (g % 2000),
                   jsonb_build_object('platform', (ARRAY['ios','android','web'])[1 + g % 3],
                                      'country', (ARRAY['us','de','fr','jp'])[1 + g % 4])
            FROM p
        )
        INSERT INTO events (client_event_id, type, project_id, experiment_id, arm_id,
                            occurred_at, received_at, fallback, cache_hit)
        SELECT 'e' || g, 'export', project, {experiment_id}, arm,
               at + interval '5 minutes', at + interval '5 minutes', false, false
        FROM p WHERE random() < CASE WHEN arm = {arms[0]} THEN 0.62 ELSE 0.60 END
    """
    with engine.begin() as connection:
        connection.execute(sa.text(seed))
    with engine.connect() as connection:
        events = connection.scalar(sa.text("SELECT count(*) FROM events"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE events")
        connection.exec_driver_sql("VACUUM ANALYZE assignments")
    engine.dispose()
    return int(events)


def _backend_peak_kb(connection) -> int:  # noqa: ANN001
    pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    return _vm_hwm(pid)


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def totals(counts) -> dict[str, list[int]]:  # noqa: ANN001
    out: dict[str, list[int]] = {}
    for row in counts.daily:
        pair = out.setdefault(str(row.arm_id), [0, 0])
        pair[0] += row.starts
        pair[1] += row.exports
    return out


def run_engine(engine_name: str, url: str, folder: str) -> dict:
    from analysis import sufficient_stats
    from analysis.sufficient_stats import Scope

    result: dict = {"engine": engine_name}
    if engine_name in ("pg-sql", "pg-rollup"):
        import sqlalchemy as sa

        from abtest import db
        from analysis import queries, rollup

        engine = db.make_engine(url)
        with engine.begin() as connection:
            experiment_id = connection.scalar(sa.text("SELECT id FROM experiments"))
            queries.tune_for_analytics(connection)
            start = time.perf_counter()
            if engine_name == "pg-sql":
                source = sufficient_stats.SqlSource(connection)
                counts = source.project_counts(Scope(experiment_id), ATTRIBUTES, True)
                guardrails = source.guardrail_stats(Scope(experiment_id))
            else:
                rollup.refresh(connection, experiment_id, rebuild=True)
                result["refresh_s"] = time.perf_counter() - start
                counts = rollup.project_counts(connection, experiment_id, None, ATTRIBUTES, True)
                guardrails = rollup.guardrail_stats(connection, experiment_id)
            result["seconds"] = time.perf_counter() - start
            result["peak_mb"] = _backend_peak_kb(connection) / 1024
        engine.dispose()
    elif engine_name == "spark":
        from analysis.spark import SparkSource, spark_session

        start = time.perf_counter()
        session = spark_session("local[2]", "bench")
        result["jvm_start_s"] = time.perf_counter() - start
        experiment_id = 1
        start = time.perf_counter()
        source = SparkSource(session, Path(folder))
        counts = source.project_counts(Scope(experiment_id), ATTRIBUTES, True)
        result["counts_s"] = time.perf_counter() - start
        guardrails = source.guardrail_stats(Scope(experiment_id))
        result["seconds"] = time.perf_counter() - start
        import psutil

        jvms = [p for p in psutil.Process().children(recursive=True) if p.name() == "java"]
        result["peak_mb"] = sum(_vm_hwm(p.pid) for p in jvms) / 1024
        session.stop()
    else:
        import pyarrow.dataset as ds

        from analysis import export

        start = time.perf_counter()
        files = [str(p) for p in export.manifest_files(Path(folder), "events")]
        dataset = ds.dataset(
            files, format="parquet", partitioning="hive", partition_base_dir=f"{folder}/events"
        )
        columns = ["project_id", "type", "arm_id", "occurred_at", "latency_ms", "cost_usd"]
        frame = dataset.to_table(columns=columns).to_pandas()
        starts = frame[frame["type"] == "start"]
        per_project = starts.groupby("project_id").agg(
            first_start=("occurred_at", "min"), arm_id=("arm_id", "min")
        )
        first_export = frame[frame["type"] == "export"].groupby("project_id")["occurred_at"].min()
        per_project = per_project.join(first_export.rename("first_export"))
        per_project["day"] = per_project["first_start"].dt.floor("D")
        daily = per_project.groupby(["arm_id", "day"]).agg(
            starts=("first_start", "size"), exports=("first_export", "count")
        )
        guard = starts.groupby("arm_id").agg(
            calls=("latency_ms", "size"),
            p50=("latency_ms", lambda s: s.quantile(0.5)),
            p95=("latency_ms", lambda s: s.quantile(0.95)),
            cost=("cost_usd", "sum"),
        )
        result["seconds"] = time.perf_counter() - start
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        by_arm = daily.groupby(level=0).sum()
        result["totals"] = {str(a): [int(r.starts), int(r.exports)] for a, r in by_arm.iterrows()}
        result["p50"] = {str(a): float(v) for a, v in guard["p50"].items()}
        return result
    result["totals"] = totals(counts)
    result["p50"] = {str(g.arm_id): g.latency_p50_ms for g in guardrails}
    return result


def measure(engine_name: str, url: str, folder: str) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--engine", engine_name, "--url", url, "--folder", folder],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    if output.returncode:
        raise SystemExit(f"{engine_name} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000", help="projects per run, comma-separated")
    parser.add_argument("--engines", default="pg-sql,pg-rollup,spark,pandas")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.url, args.folder)))
        return
    from scratch_db import create_database, drop_database

    from abtest import db
    from analysis import export

    for size in (int(s) for s in args.sizes.split(",")):
        name, url = create_database()
        try:
            start = time.perf_counter()
            events = populate(url, size)
            took = time.perf_counter() - start
            print(f"\n{size} projects, {events} events (generated in {took:.1f} s)")
            with tempfile.TemporaryDirectory() as folder:
                engine = db.make_engine(url)
                start = time.perf_counter()
                with engine.connect() as connection:
                    exported = export.export(connection, Path(folder))
                engine.dispose()
                took = time.perf_counter() - start
                size_mb = sum(p.stat().st_size for p in Path(folder).rglob("*.parquet")) / 2**20
                print(
                    f"  export: {exported.rows['events']} events in {len(exported.files)} files, "
                    f"{size_mb:.1f} MB, {took:.1f} s"
                )
                results = [measure(e, url, folder) for e in args.engines.split(",")]
            reference = results[0]["totals"]
            for r in results:
                extra = ""
                if "jvm_start_s" in r:
                    extra = f" (counts {r['counts_s']:.1f} s; +{r['jvm_start_s']:.1f} s JVM start)"
                if "refresh_s" in r:
                    extra = f" (full refresh {r['refresh_s']:.1f} s)"
                same = "same totals" if r["totals"] == reference else f"DIFFERENT {r['totals']}"
                print(
                    f"  {r['engine']:10s} {r['seconds']:7.2f} s{extra}  peak {r['peak_mb']:7.0f} MB"
                    f"  {same}"
                )
        finally:
            drop_database(name)


if __name__ == "__main__":
    main()
