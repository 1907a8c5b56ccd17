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

``--parquet-direct 1000000,100000000`` skips the database: the Parquet files are written
directly by `parquet_events` (same layout and schema as the export) and only Spark and pandas
run, pandas under an address-space cap (``--memory-cap-gb``), both under ``--time-cap-s``; an
engine that runs out of either is reported with the peak it reached. Run it under ``nice``.
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
from dataclasses import dataclass
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


def measure(engine_name: str, url: str, folder: str, limits: Limits | None = None) -> dict:
    """Run one engine in its own process; its peak RSS comes from the kernel (wait4)."""
    command = [sys.executable, __file__, "--engine", engine_name, "--url", url, "--folder", folder]
    if limits is not None:
        command += ["--memory-cap-gb", str(limits.memory_gb)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        start = time.perf_counter()
        status, usage = _wait(child, limits.seconds if limits else None)
        took = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if status == 0:
        return json.loads(stdout.strip().splitlines()[-1])
    if limits is None:
        raise SystemExit(f"{engine_name} failed:\n{stderr[-3000:]}")
    why = "timed out" if status is None else f"failed ({stderr.strip().splitlines()[-1:]})"
    return {"engine": engine_name, "failed": why, "seconds": took, "peak_mb": usage / 1024}


@dataclass(frozen=True)
class Limits:
    memory_gb: float  # RLIMIT_AS of the engine's process
    seconds: float  # killed after this


def _wait(child: subprocess.Popen, seconds: float | None) -> tuple[int | None, int]:
    """Wait for the child (killing it after `seconds`): its exit status (None: killed for
    time) and its own peak RSS in KB."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode, usage.ru_maxrss
        if deadline is not None and time.monotonic() > deadline:
            child.kill()
            _, _, usage = os.wait4(child.pid, 0)
            child.returncode = -9
            return None, usage.ru_maxrss
        time.sleep(0.5)


def _report(results: list[dict]) -> None:
    reference = next(r["totals"] for r in results if "totals" in r)
    for r in results:
        if "failed" in r:
            print(
                f"  {r['engine']:10s} {r['failed']} after {r['seconds']:.1f} s,"
                f" peak {r['peak_mb']:7.0f} MB"
            )
            continue
        extra = ""
        if "jvm_start_s" in r:
            extra = f" (counts {r['counts_s']:.1f} s; +{r['jvm_start_s']:.1f} s JVM start)"
        if "refresh_s" in r:
            extra = f" (full refresh {r['refresh_s']:.1f} s)"
        same = "same totals" if r["totals"] == reference else f"DIFFERENT {r['totals']}"
        print(
            f"  {r['engine']:10s} {r['seconds']:7.2f} s{extra}  peak {r['peak_mb']:7.0f} MB"
            f"  {same} {r['totals']}",
            flush=True,
        )


def run_direct(sizes: list[int], engines: list[str], limits: Limits, root: str | None) -> None:
    """Parquet written by `parquet_events` (no database): Spark and pandas over the files."""
    import parquet_events

    for events in sizes:
        projects = events * 100 // 161  # 1 start + ~61 % exports per project
        with tempfile.TemporaryDirectory(dir=root, prefix="bench-parquet-") as folder:
            start = time.perf_counter()
            written = parquet_events.write(Path(folder), projects)
            took = time.perf_counter() - start
            files = list(Path(folder).rglob("*.parquet"))
            size_mb = sum(p.stat().st_size for p in files) / 2**20
            print(
                f"\n{projects} projects, {written} events written directly: {len(files)} files,"
                f" {size_mb:.0f} MB, {took:.1f} s",
                flush=True,
            )
            _report([measure(e, "", folder, limits) for e in engines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000", help="projects per run, comma-separated")
    parser.add_argument("--engines", default="pg-sql,pg-rollup,spark,pandas")
    parser.add_argument(
        "--parquet-direct",
        metavar="EVENTS",
        help="events per run, comma-separated: Parquet written directly (bench/parquet_events.py),"
        " no database; only the spark and pandas engines",
    )
    parser.add_argument("--memory-cap-gb", type=float, default=14.0, help="per engine process")
    parser.add_argument("--time-cap-s", type=float, default=3600.0, help="per engine process")
    parser.add_argument("--root", help="folder for the Parquet files (default: the temp dir)")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        if args.engine == "pandas":  # the JVM reserves far more address space than it uses
            cap = int(args.memory_cap_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(run_engine(args.engine, args.url, args.folder)))
        return
    if args.parquet_direct:
        engines = [e for e in args.engines.split(",") if e in ("spark", "pandas")]
        sizes = [int(s) for s in args.parquet_direct.split(",")]
        run_direct(sizes, engines, Limits(args.memory_cap_gb, args.time_cap_s), args.root)
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
            print(f"\n{size} projects, {events} events (generated in {took:.1f} s)", flush=True)
            engines = args.engines.split(",")
            if not {"spark", "pandas"} & set(engines):  # the database engines need no export
                _report([measure(e, url, "") for e in engines])
                continue
            with tempfile.TemporaryDirectory(dir=args.root) as folder:
                engine = db.make_engine(url)
                start = time.perf_counter()
                with engine.connect() as connection:
                    exported = export.export(connection, Path(folder))
                engine.dispose()
                took = time.perf_counter() - start
                size_mb = sum(p.stat().st_size for p in Path(folder).rglob("*.parquet")) / 2**20
                print(
                    f"  export: {exported.rows['events']} events in {len(exported.files)} files, "
                    f"{size_mb:.1f} MB, {took:.1f} s",
                    flush=True,
                )
                _report([measure(e, url, folder) for e in engines])
        finally:
            drop_database(name)


if __name__ == "__main__":
    main()
