"""Benchmark: the full report of one experiment in PostgreSQL, from the rollup versus pandas.

    python bench/bench_report.py --projects 10000000

Creates a throwaway PostgreSQL database (ABTEST_BENCH_POSTGRES_URL, default
postgresql+psycopg://postgres@127.0.0.1:5432/postgres is the admin connection), migrates it,
and generates N projects over 14 days server-side with generate_series (FK triggers off,
secondary indexes dropped and rebuilt, UNLOGGED events/assignments: the database is throwaway):
assignments, start events (2% of projects start twice), exports (about 90%; 1% of them logged
without experiment/arm, some before their start), latency, cost, fallback/cache flags,
platform/country attributes and a skewed intent distribution. Then, in one process:

(a) `analysis.rollup.refresh` from scratch (the one-off backfill; afterwards the scheduler pays
    only increments);
(b) one more day of projects is inserted (indexes in place) and the rollup refreshed
    incrementally;
(c) `analysis.report_model.build_report` (its incremental refresh included, then the per-arm-and-day
    counts, guardrails, platform/country/popularity segments and all statistics from the
    rollup) — best of --repeat runs;
(d) pandas: COPY the same rows (events of the experiment plus the unlabelled ones, and the
    assignments) into DataFrames and compute the same sufficient statistics there, then the same
    `assemble_report`.

It prints the times and the ratio (d)/(c), checks that both paths give the same counts and
segments (latency p95 within one histogram bucket, 2%), and drops the database unless --keep.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scratch_db import create_database, drop_database  # noqa: E402

from abtest import db, promotion, services  # noqa: E402
from analysis import queries, report_model, rollup  # noqa: E402
from analysis.gate_policy import BASELINE_POLICY  # noqa: E402

DAY0 = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 14
KEY = "bench"

GENERATE = """
INSERT INTO assignments (experiment_id, project_id, arm_id, source, assigned_at)
SELECT :experiment_id, 'p' || i,
       CASE WHEN hashtext('arm' || i) & 1 = 0 THEN :control ELSE :treatment END,
       'hash', :day0 + ((i - 1)::float8 / :per_day) * interval '1 day'
FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS i;

INSERT INTO events (client_event_id, type, project_id, experiment_id, arm_id, occurred_at,
                    received_at, latency_ms, fallback, error, cache_hit, cost_usd, intent,
                    attributes)
SELECT 's' || a.id || '-' || k, 'start', a.project_id, :experiment_id, a.arm_id,
       a.assigned_at + k * interval '1 minute', a.assigned_at,
       200 + 800 * random() * random(), random() < 0.01,
       CASE WHEN random() < 0.002 THEN 'timeout' END, random() < 0.2,
       CASE WHEN a.arm_id = :control THEN 0.002 ELSE 0.0005 END,
       'intent ' || floor(power(random(), 3) * 5000)::int,
       jsonb_build_object(
           'platform', (ARRAY['ios', 'android', 'web'])[1 + (a.id % 3)],
           'country', (ARRAY['us', 'de', 'fr', 'br', 'in'])[1 + (a.id % 5)])
FROM assignments a
CROSS JOIN LATERAL generate_series(0, CASE WHEN a.id % 50 = 0 THEN 1 ELSE 0 END) AS k
WHERE a.experiment_id = :experiment_id AND a.id > :after;

INSERT INTO events (client_event_id, type, project_id, experiment_id, arm_id, occurred_at,
                    received_at, fallback, cache_hit)
SELECT 'x' || a.id, 'export', a.project_id,
       CASE WHEN a.id % 100 = 7 THEN NULL ELSE :experiment_id END,
       CASE WHEN a.id % 100 = 7 THEN NULL ELSE a.arm_id END,
       a.assigned_at + (CASE WHEN a.id % 200 = 3 THEN -2 ELSE 5 + 55 * random() END)
                       * interval '1 minute',
       a.assigned_at, false, false
FROM assignments a
WHERE a.experiment_id = :experiment_id AND a.id > :after
  AND random() < CASE WHEN a.arm_id = :control THEN 0.90 ELSE 0.89 END;
"""


def generate(engine: sa.Engine, projects: int) -> queries.ExperimentInfo:
    with db.session_scope(engine) as session:
        services.register_variant(session, "teacher", "teacher", reference=True)
        services.register_variant(session, "student", "knn_student", {"fit": "train"})
        promotion.run_gate(session, "student", "bench", BASELINE_POLICY, progress=False)
        promotion.promote(session, "student", "bench")
        spec = services.ExperimentSpec(
            key=KEY,
            arms=[
                services.ArmSpec("control", "teacher", 0.5, control=True),
                services.ArmSpec("treatment", "student", 0.5),
            ],
            settings={"margin": "-1pts"},
        )
        experiment = services.create_experiment(session, spec)
        services.start_experiment(session, KEY)
        experiment.started_at = DAY0
    with engine.connect() as connection:
        info = queries.experiment_info(connection, KEY)
    assert info is not None
    load(engine, info, 1, projects, projects // DAYS, bulk=True)
    return info


def load(
    engine: sa.Engine,
    info: queries.ExperimentInfo,
    first: int,
    last: int,
    per_day: int,
    *,
    bulk: bool,
) -> None:
    """Projects first..last (per_day a day from DAY0) with their events, all server-side.

    The bench database is throwaway: FK triggers are off for the load (session_replication_role
    = replica; the generated rows are valid by construction). A bulk load (`bulk`) also runs
    without the secondary indexes and rebuilds them after, into UNLOGGED events/assignments.
    """
    with engine.connect() as connection:
        after = connection.scalar(sa.text("SELECT coalesce(max(id), 0) FROM assignments"))
    params = {
        "experiment_id": info.id,
        "control": info.arms[0].id,
        "treatment": info.arms[1].id,
        "first": first,
        "last": last,
        "per_day": per_day,
        "after": after,
        "day0": DAY0,
    }
    with engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        connection.exec_driver_sql("SET LOCAL maintenance_work_mem = '1GB'")
        if bulk:
            connection.exec_driver_sql("ALTER TABLE events SET UNLOGGED")
            connection.exec_driver_sql("ALTER TABLE assignments SET UNLOGGED")
            connection.exec_driver_sql("DROP INDEX ix_events_experiment_arm_type_day")
            connection.exec_driver_sql("DROP INDEX ix_events_project")
            connection.exec_driver_sql(
                "ALTER TABLE events DROP CONSTRAINT uq_events_client_event_id"
            )
        for statement in GENERATE.split(";\n\n"):
            connection.execute(sa.text(statement), params)
        if bulk:
            connection.exec_driver_sql(
                "ALTER TABLE events ADD CONSTRAINT uq_events_client_event_id "
                "UNIQUE (client_event_id)"
            )
            connection.exec_driver_sql(
                "CREATE INDEX ix_events_experiment_arm_type_day "
                "ON events (experiment_id, arm_id, type, occurred_at)"
            )
            connection.exec_driver_sql(
                "CREATE INDEX ix_events_project ON events (project_id, experiment_id)"
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE events")
        connection.exec_driver_sql("VACUUM ANALYZE assignments")


def refresh_rollup(engine: sa.Engine, info: queries.ExperimentInfo, rebuild: bool) -> dict:
    with engine.begin() as connection:
        queries.tune_for_analytics(connection)
        return rollup.refresh(connection, info.id, rebuild=rebuild)


def event_counts(engine: sa.Engine) -> str:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT type, count(*) FROM events GROUP BY type ORDER BY type")
        ).all()
    return ", ".join(f"{t}={n:,}" for t, n in rows)


def sql_report(engine: sa.Engine, period_end: datetime) -> report_model.Report:
    with engine.connect() as connection:
        return report_model.build_report(connection, KEY, period_end)


# --- the pandas path ----------------------------------------------------------------------------

EVENT_COLUMNS = (
    "type, project_id, experiment_id, arm_id, occurred_at, latency_ms, fallback::int AS fallback, "
    "(error IS NOT NULL)::int AS has_error, cache_hit::int AS cache_hit, cost_usd, "
    "lower(trim(intent)) AS intent, "
    "attributes->>'platform' AS platform, attributes->>'country' AS country"
)


def _copy_frame(engine: sa.Engine, query: str) -> pd.DataFrame:
    raw = engine.raw_connection()
    try:
        buffer = io.BytesIO()
        with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY ({query}) TO STDOUT WITH CSV HEADER") as copy,
        ):
            for chunk in copy:
                buffer.write(chunk)
        buffer.seek(0)
        return pd.read_csv(buffer, low_memory=False)
    finally:
        raw.close()


def pandas_report(
    engine: sa.Engine, info: queries.ExperimentInfo, period_end: datetime
) -> report_model.Report:
    end = period_end.isoformat()
    events = _copy_frame(
        engine,
        f"SELECT {EVENT_COLUMNS} FROM events WHERE (experiment_id = {info.id} "
        f"OR experiment_id IS NULL) AND occurred_at < '{end}'",
    )
    assigned = _copy_frame(
        engine,
        f"SELECT project_id, arm_id FROM assignments WHERE experiment_id = {info.id}",
    )
    events["occurred_at"] = pd.to_datetime(events["occurred_at"], utc=True, format="ISO8601")
    events = events[
        events["experiment_id"].notna() | events["project_id"].isin(assigned["project_id"])
    ]
    starts = events[events["type"] == "start"].copy()
    for column in ("platform", "country", "intent"):
        # Ordered categoricals: groupby-min stays in Cython (object columns fall back to Python).
        values = sorted(starts[column].dropna().unique())
        starts[column] = starts[column].astype(pd.CategoricalDtype(values, ordered=True))
    first = starts.groupby("project_id").agg(
        first_start=("occurred_at", "min"),
        event_arm_id=("arm_id", "min"),
        platform=("platform", "min"),
        country=("country", "min"),
        intent=("intent", "min"),
    )
    exports = events[events["type"] == "export"].groupby("project_id")["occurred_at"].min()
    projects = first.join(exports.rename("first_export"), how="left")
    projects = projects.join(assigned.set_index("project_id")["arm_id"], how="left")
    projects["arm_id"] = projects["arm_id"].fillna(projects["event_arm_id"])
    projects = projects[projects["arm_id"].notna()]
    projects["arm_id"] = projects["arm_id"].astype(int)
    exported = projects["first_export"].notna()
    completed = projects[["first_start", "first_export"]].max(axis=1)
    start_days = projects.groupby(["arm_id", projects["first_start"].dt.date]).size()
    export_days = projects[exported].groupby(["arm_id", completed[exported].dt.date]).size()
    both = pd.concat([start_days.rename("starts"), export_days.rename("exports")], axis=1)
    both = both.fillna(0).astype(int)
    daily = [
        queries.ArmDay(int(arm), day, int(row.starts), int(row.exports))
        for (arm, day), row in both.iterrows()
    ]
    segments = {}
    for attribute in report_model.DEFAULT_SEGMENT_ATTRIBUTES:
        values = projects[attribute].astype(object).fillna(queries.NO_SEGMENT)
        grouped = (
            projects.assign(segment=values, exported=exported)
            .groupby(["arm_id", "segment"])["exported"]
            .agg(["size", "sum"])
        )
        segments[attribute] = [
            queries.SegmentCounts(int(arm), str(seg), int(r["size"]), int(r["sum"]))
            for (arm, seg), r in grouped.iterrows()
        ]
    with_intent = projects[projects["intent"].notna()].assign(exported=exported)
    with_intent["intent"] = with_intent["intent"].astype(object)
    popularity = with_intent.groupby("intent")["arm_id"].transform("size")
    rows = []
    for threshold in queries.POPULARITY_THRESHOLDS:
        subset = with_intent[popularity >= threshold]
        grouped = subset.groupby("arm_id")["exported"].agg(["size", "sum"])
        rows += [
            queries.SegmentCounts(int(arm), f"r{threshold}", int(r["size"]), int(r["sum"]))
            for arm, r in grouped.iterrows()
        ]
    segments["popularity"] = rows
    calls = starts[starts["experiment_id"] == info.id].merge(
        assigned, on="project_id", how="left", suffixes=("_event", "")
    )
    calls["arm_id"] = calls["arm_id_event"].fillna(calls["arm_id"])  # the serving arm first
    guardrails = []
    for arm, group in calls.groupby("arm_id"):
        latency = group["latency_ms"].dropna().to_numpy()
        p50, p95 = np.percentile(latency, [50, 95]) if latency.size else (None, None)
        guardrails.append(
            queries.ArmGuardrails(
                int(arm),
                len(group),
                int(latency.size),
                float(p50),
                float(p95),
                int(group["fallback"].sum()),
                int(group["has_error"].sum()),
                int(group["cache_hit"].sum()),
                float(group["cost_usd"].sum()),
            )  # fmt: skip
        )
    return report_model.assemble_report(info, daily, guardrails, segments, period_end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="Do not drop the database.")
    parser.add_argument("--url", help="Reuse a database made with --keep (skips generation).")
    parser.add_argument("--skip-pandas", action="store_true")
    args = parser.parse_args()

    name = None
    if args.url:
        url = args.url
        engine = db.make_engine(url)
        with engine.connect() as connection:
            info = queries.experiment_info(connection, KEY)
        assert info is not None, f"no experiment {KEY!r} in {url}"
    else:
        name, url = create_database()
        engine = db.make_engine(url)
        db.upgrade(engine)
        began = time.perf_counter()
        info = generate(engine, args.projects)
        print(f"generated {args.projects:,} projects in {time.perf_counter() - began:.1f} s")
    try:
        print("events:", event_counts(engine))
        began = time.perf_counter()
        refresh_rollup(engine, info, rebuild=True)
        print(f"(a) rollup refresh from scratch: {time.perf_counter() - began:.2f} s")
        # (b) one more day of projects arrives (indexes in place), then an incremental refresh.
        per_day = args.projects // DAYS
        began = time.perf_counter()
        load(engine, info, args.projects + 1, args.projects + per_day, per_day, bulk=False)
        print(f"loaded one more day ({per_day:,} projects) in {time.perf_counter() - began:.1f} s")
        print("events:", event_counts(engine))
        began = time.perf_counter()
        done = refresh_rollup(engine, info, rebuild=False)
        print(
            f"(b) incremental rollup refresh after a day: {time.perf_counter() - began:.2f} s "
            f"(events {done['after_id'] + 1:,}..{done['up_to_id']:,}, call days {done['days']})"
        )
        period_end = DAY0 + timedelta(days=DAYS + 2)
        sql_times = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            sql = sql_report(engine, period_end)
            sql_times.append(time.perf_counter() - began)
        sql_best = min(sql_times)
        print(
            f"(c) report from the rollup: best {sql_best:.2f} s "
            f"of {[round(t, 2) for t in sql_times]}"
        )
        print("  arms:", [(a.name, a.starts, a.exports) for a in sql.arms])
        print("  decision:", sql.decision)
        if args.skip_pandas:
            return
        began = time.perf_counter()
        frame = pandas_report(engine, info, period_end)
        pandas_time = time.perf_counter() - began
        print(f"(d) pandas report: {pandas_time:.2f} s")
        same = [(a.starts, a.exports) for a in sql.arms] == [
            (a.starts, a.exports) for a in frame.arms
        ]
        same_segments = sql.segments == frame.segments
        tolerance = rollup.BUCKET_BASE - 1  # histogram percentiles: within one bucket
        same_guardrails = all(
            a.calls == b.calls
            and abs((a.latency_p95_ms or 0) - (b.latency_p95_ms or 0))
            <= tolerance * (b.latency_p95_ms or 0)
            and abs((a.cost_usd or 0) - (b.cost_usd or 0)) < 1e-6 * max(1.0, b.cost_usd or 0)
            for a, b in zip(sql.guardrails, frame.guardrails, strict=True)
        )
        print(
            f"same arm counts: {same}; same segments: {same_segments}; "
            f"same guardrails (p95 within {tolerance:.0%}): {same_guardrails}"
        )
        print(f"ratio pandas / report from the rollup: {pandas_time / sql_best:.1f}x")
        if not (same and same_segments and same_guardrails):
            raise SystemExit("the rollup and pandas paths disagree")
    finally:
        engine.dispose()
        if name and not args.keep:
            drop_database(name)
        elif name:
            print("kept database:", url)


if __name__ == "__main__":
    main()
