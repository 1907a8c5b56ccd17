"""A throwaway PostgreSQL database for a benchmark, and the two-arm experiment most of them use.

The server is `ABTEST_BENCH_POSTGRES_URL` (default: the local one, database `postgres`).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from abtest import db, services  # noqa: E402
from abtest.tables import Experiment  # noqa: E402

ADMIN_URL = os.environ.get(
    "ABTEST_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _admin() -> sa.Engine:
    return sa.create_engine(db.normalize_url(ADMIN_URL), isolation_level="AUTOCOMMIT")


def create_database() -> tuple[str, str]:
    """A new empty database: its name and URL."""
    name = f"abtest_bench_{uuid.uuid4().hex[:8]}"
    admin = _admin()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.make_url(db.normalize_url(ADMIN_URL)).set(database=name)
    return name, url.render_as_string(hide_password=False)


def drop_database(name: str) -> None:
    admin = _admin()
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def two_arm_experiment(session: Session, key: str = "bench", start: bool = False) -> Experiment:
    """Variants teacher (the reference) and student (the kNN baseline, admitted by the real
    gate under the named baseline policy), and experiment `key`: control=teacher,
    treatment=student, 50/50 (started when `start`). Benchmarks serve both with their own arms."""
    from abtest import promotion
    from analysis.gate_policy import BASELINE_POLICY

    services.register_variant(session, "teacher", "teacher", reference=True)
    services.register_variant(session, "student", "knn_student", {"fit": "train"})
    from abtest.settings import get_settings

    # The benchmarks' student is the kNN baseline: its policy is the floor these runs accept.
    floor = get_settings().model_copy(update={"gate_policy_minimum": BASELINE_POLICY.version})
    promotion.run_gate(session, "student", "bench", BASELINE_POLICY, progress=False, settings=floor)
    promotion.promote(session, "student", "bench")
    experiment = services.create_experiment(
        session,
        services.ExperimentSpec(
            key,
            [
                services.ArmSpec("control", "teacher", 0.5, True),
                services.ArmSpec("treatment", "student", 0.5),
            ],
        ),
    )
    if start:
        services.start_experiment(session, key)
    return experiment
