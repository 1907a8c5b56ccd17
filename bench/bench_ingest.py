"""Event batch ingestion into PostgreSQL vs a raw COPY of the same rows.

Ingestion is `routing.eventlog.SqlEventStore.insert` as `/v1/events:batch` runs it: check the
batch's experiment/arm references (one query), dedupe, probe a sample of the client_event_ids
(all of them when the sample finds a stored one), resolve each export's arm from the project's
assignment (one query per experiment), then a binary `COPY events` of the new rows inside a
savepoint (a stored id met by the COPY rolls it back: COPY into a temp table + `INSERT ... ON
CONFLICT DO NOTHING`). The baseline is the same binary `COPY events FROM STDIN` of the same rows
(`routing.eventlog.copy_events`: no idempotency, no reference check, no arm resolution). Both run
in this process against a fresh database; the table is truncated between runs.

    python bench/bench_ingest.py --events 100000 --batch 10000 --repeats 3
    (ABTEST_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/postgres)
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import sqlalchemy as sa
from scratch_db import create_database, drop_database, two_arm_experiment

from abtest import db
from abtest.runtime import TABLES
from routing.eventlog import EventRecord, copy_events, open_event_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--bulk-threshold",
        type=int,
        default=None,
        help="batches from this size use the direct COPY, smaller ones jsonb_to_recordset "
        "(default: the writer's own threshold)",
    )
    args = parser.parse_args()

    name, url = create_database()
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        with db.session_scope(engine) as session:
            exp = two_arm_experiment(session)
            exp_id, arm_ids = exp.id, [a.id for a in exp.arms]
        projects = args.events // 2
        with engine.begin() as conn:  # every project started: exports resolve to an arm
            conn.execute(
                sa.insert(TABLES.assignments),
                [
                    {
                        "experiment_id": exp_id,
                        "project_id": f"p{i}",
                        "arm_id": arm_ids[i % 2],
                        "source": "hash",
                    }
                    for i in range(projects)
                ],
            )
            conn.execute(sa.text("ANALYZE assignments"))
        now = datetime.now(UTC)
        rows = [
            EventRecord(
                f"ev-{i}",
                "export",
                f"p{i % projects}",
                exp_id,
                None,
                occurred_at=now,
                received_at=now,
                attributes={"kept_tools": ["adjust", "filter"]},
            ).to_row()
            for i in range(args.events)
        ]
        batches = [rows[i : i + args.batch] for i in range(0, len(rows), args.batch)]
        writer = open_event_store(engine, TABLES, None)
        if args.bulk_threshold is not None:
            writer.copy_threshold = args.bulk_threshold

        def truncate() -> None:
            with engine.begin() as conn:
                # the ids live in event_keys too (migration 0009): both go, or a re-run
                # of the same ids would be skipped as retries
                keys = ", event_keys" if sa.inspect(conn).has_table("event_keys") else ""
                conn.execute(sa.text(f"TRUNCATE events{keys}"))

        def ingest() -> None:
            for batch in batches:
                writer.insert(batch)

        def raw_copy() -> None:
            for batch in batches:
                raw = engine.raw_connection()
                try:
                    with raw.driver_connection.cursor() as cursor:
                        copy_events(cursor, "events", batch)
                    raw.commit()
                finally:
                    raw.close()

        best = {"raw COPY": float("inf"), "batch ingest": float("inf")}
        for _ in range(args.repeats):  # interleaved, best of N (shared, noisy machine)
            for label, fn in (("raw COPY", raw_copy), ("batch ingest", ingest)):
                truncate()
                started = time.perf_counter()
                fn()
                best[label] = min(best[label], time.perf_counter() - started)
        with engine.connect() as conn:
            stored, with_arm = conn.execute(
                sa.text("SELECT count(*), count(arm_id) FROM events")
            ).one()
        assert stored == with_arm == args.events, (stored, with_arm)
        ingest()  # a full retry: nothing new is stored
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == args.events
        for label, seconds in best.items():
            print(f"{label:>13}: {args.events / seconds:>10,.0f} events/s ({seconds:.3f} s)")
        ratio = best["raw COPY"] / best["batch ingest"]
        rate = args.events / best["batch ingest"]
        verdict = "PASS" if ratio >= 0.5 and rate >= 50_000 else "FAIL"
        print(
            f"ingest/COPY: {ratio:.0%} (target >= 50%), {rate:,.0f} events/s "
            f"(target >= 50,000) -> {verdict}"
        )
    finally:
        engine.dispose()
        drop_database(name)


if __name__ == "__main__":
    main()
