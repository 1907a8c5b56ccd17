"""Synthetic online-experiment data for the analysis, report, API, dashboard and notebook tests.

Rows are inserted directly with SQL (no routing, no `abtest demo`) so the counts are known.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from abtest import db, services
from abtest.tables import Assignment, Event
from tests.gate_helpers import FIT, pass_gate

DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
OPTIONAL = ("latency_ms", "error", "cost_usd", "intent", "attributes")


@dataclass
class Seeded:
    experiment_id: int
    arm_ids: dict[str, int]


def create_experiment(
    engine: Engine,
    key: str = "exp",
    arms: tuple[tuple[str, float], ...] = (("control", 0.5), ("treatment", 0.5)),
    settings: dict | None = None,
    start: bool = True,
) -> Seeded:
    """An experiment whose first arm is the control (teacher); the others use a kNN student."""
    with db.session_scope(engine) as session:
        if services.champion(session) is None:
            services.register_variant(session, "teacher", "teacher", reference=True)
        try:
            services.get_variant(session, "student")
        except Exception:
            student = services.register_variant(session, "student", "knn_student", FIT)
            run = pass_gate(session, "student")
            services.record_promotion(
                session, student, "registered", "approved", "test", gate_run_id=run.id
            )
        spec = services.ExperimentSpec(
            key=key,
            arms=[
                services.ArmSpec(name, "teacher" if i == 0 else "student", w, control=i == 0)
                for i, (name, w) in enumerate(arms)
            ],
            settings=settings or {},
        )
        experiment = services.create_experiment(session, spec)
        if start:
            services.start_experiment(session, key)
        experiment.started_at = DAY0
        return Seeded(experiment.id, {arm.name: arm.id for arm in experiment.arms})


def event(
    seeded: Seeded,
    type_: str,
    project: str,
    arm: str | None,
    at: datetime,
    *,
    labelled: bool = True,
    **extra: object,
) -> dict:
    unknown = set(extra) - {"fallback", "cache_hit", *OPTIONAL}
    assert not unknown, f"unknown event fields {unknown}"
    return {
        "client_event_id": uuid.uuid4().hex,
        "type": type_,
        "project_id": project,
        "experiment_id": seeded.experiment_id if labelled else None,
        "arm_id": seeded.arm_ids[arm] if (labelled and arm) else None,
        "occurred_at": at,
        "received_at": at,
        "fallback": bool(extra.pop("fallback", False)),
        "cache_hit": bool(extra.pop("cache_hit", False)),
        **{name: extra.get(name) for name in OPTIONAL},
    }


def insert(engine: Engine, events: list[dict], assignments: list[dict] | None = None) -> None:
    with engine.begin() as connection:
        if assignments:
            connection.execute(sa.insert(Assignment), assignments)
        if events:
            connection.execute(sa.insert(Event), events)


def assignment(seeded: Seeded, project: str, arm: str, at: datetime = DAY0) -> dict:
    return {
        "experiment_id": seeded.experiment_id,
        "project_id": project,
        "arm_id": seeded.arm_ids[arm],
        "source": "hash",
        "assigned_at": at,
    }


def simulate(
    engine: Engine,
    seeded: Seeded,
    rates: dict[str, float],
    projects_per_day: int = 200,
    days: int = 7,
    seed: int = 1,
    weights: dict[str, float] | None = None,
) -> dict[str, tuple[int, int]]:
    """Random projects per day with the given completion rate per arm; returns (exports, starts)."""
    rng = random.Random(seed)
    names = list(rates)
    weights = weights or {name: 1 / len(names) for name in names}
    platforms, countries = ["ios", "android", "web"], ["us", "de", "fr"]
    intents = [f"intent {i}" for i in range(40)]
    events: list[dict] = []
    assigned: list[dict] = []
    truth = {name: [0, 0] for name in names}
    for day in range(days):
        for i in range(projects_per_day):
            project = f"p{day}-{i}"
            arm = rng.choices(names, weights=[weights[n] for n in names])[0]
            at = DAY0 + timedelta(days=day, minutes=rng.randrange(0, 1400))
            assigned.append(assignment(seeded, project, arm, at))
            attrs = {"platform": rng.choice(platforms), "country": rng.choice(countries)}
            events.append(
                event(
                    seeded,
                    "start",
                    project,
                    arm,
                    at,
                    latency_ms=rng.uniform(100, 900),
                    cost_usd=0.002 if arm == names[0] else 0.0005,
                    fallback=rng.random() < 0.01,
                    cache_hit=rng.random() < 0.2,
                    intent=rng.choice(intents[: 5 + int(rng.random() * 35)]),
                    attributes=attrs,
                )
            )
            truth[arm][1] += 1
            if rng.random() < rates[arm]:
                truth[arm][0] += 1
                events.append(event(seeded, "export", project, arm, at + timedelta(minutes=5)))
    insert(engine, events, assigned)
    return {name: (e, s) for name, (e, s) in truth.items()}
