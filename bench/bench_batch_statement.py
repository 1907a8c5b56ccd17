"""The group-commit statement alone: what one `POST /v1/projects` batch costs PostgreSQL.

Times `routing.eventlog.postgres.batch_statement` (first assignments + start events of new
projects, one statement per batch) on a scratch database, with no HTTP server or load generator
competing for the CPUs: the hot path's database cost, before and after a schema change. Run it
from a checkout of each commit to compare (it imports the checkout's code and migrations).

    python bench/bench_batch_statement.py --batches 400 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

import orjson
from scratch_db import create_database, drop_database, two_arm_experiment

from abtest import db
from routing.eventlog import EventRecord
from routing.eventlog.postgres import batch_statement
from routing.eventlog.schema import rows_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    name, url = create_database()
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        with db.session_scope(engine) as session:
            exp = two_arm_experiment(session, start=True)
            exp_id, arms = exp.id, [a.id for a in exp.arms]
        statement = batch_statement("assignments", "events")
        raw = engine.raw_connection()
        cursor = raw.driver_connection.cursor()
        timings = []
        for b in range(args.batches):
            projects = [f"p{b}-{i}" for i in range(args.batch)]
            assignments = [
                {"e": exp_id, "p": p, "a": arms[i % 2], "s": "hash"} for i, p in enumerate(projects)
            ]
            now = datetime.now(UTC)
            rows = [
                EventRecord(
                    f"s-{p}", "start", p, exp_id, arms[i % 2], occurred_at=now, received_at=now
                ).to_row()
                for i, p in enumerate(projects)
            ]
            params = {"a": orjson.dumps(assignments).decode(), "r": rows_json(rows)}
            started = time.perf_counter()
            cursor.execute(statement, params)
            cursor.fetchall()
            raw.driver_connection.commit()
            timings.append(time.perf_counter() - started)
        cursor.execute("SELECT count(*) FROM events")
        assert cursor.fetchone()[0] == args.batches * args.batch
        raw.close()
        kept = sorted(timings[len(timings) // 10 :])  # the first tenth warms the caches
        median = statistics.median(kept)
        print(
            f"batch statement, {args.batch} projects: median {median * 1000:.2f} ms, "
            f"p90 {kept[int(len(kept) * 0.9)] * 1000:.2f} ms, "
            f"{args.batch / median:,.0f} projects/s on one connection"
        )
    finally:
        engine.dispose()
        drop_database(name)


if __name__ == "__main__":
    main()
