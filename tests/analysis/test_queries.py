"""SQL sufficient statistics on both backends: the counting rules, guardrails and segments."""

from datetime import timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from analysis import queries
from tests.online_data import DAY0, assignment, create_experiment, event, insert, simulate


@pytest.fixture
def seeded(engine):
    return create_experiment(engine)


def daily(engine, seeded, until=None):
    with engine.connect() as connection:
        return queries.arm_daily_counts(connection, seeded.experiment_id, until)


def totals(rows, seeded):
    by_name = {v: k for k, v in seeded.arm_ids.items()}
    out = {}
    for row in rows:
        starts, exports = out.get(by_name[row.arm_id], (0, 0))
        out[by_name[row.arm_id]] = (starts + row.starts, exports + row.exports)
    return out


def test_table_clauses_match_the_orm_tables():
    from abtest.tables import Base

    for clause in (
        queries.events,
        queries.assignments,
        queries.experiments,
        queries.experiment_arms,
    ):
        orm = Base.metadata.tables[clause.name]
        for col in clause.columns:
            assert col.name in orm.c, f"{clause.name}.{col.name} is not in abtest.tables"
            assert type(col.type)._type_affinity is type(orm.c[col.name].type)._type_affinity or (
                isinstance(col.type, sa.JSON) and isinstance(orm.c[col.name].type, sa.JSON)
            ), f"{clause.name}.{col.name} type differs"


def test_counting_rules(engine, seeded):
    d1, d2, d3 = DAY0, DAY0 + timedelta(days=1), DAY0 + timedelta(days=2)
    rows = [
        # a: plain start then export, same day
        event(seeded, "start", "a", "control", d1),
        event(seeded, "export", "a", "control", d1 + timedelta(hours=1)),
        # b: duplicate starts and duplicate exports count once; export a day later
        event(seeded, "start", "b", "control", d1),
        event(seeded, "start", "b", "control", d1 + timedelta(minutes=3)),
        event(seeded, "export", "b", "control", d2),
        event(seeded, "export", "b", "control", d2 + timedelta(minutes=1)),
        # c: export arrives before its start (clock skew): counts on the start day
        event(seeded, "export", "c", "treatment", d1),
        event(seeded, "start", "c", "treatment", d2),
        # d: export without experiment/arm: resolved through its assignment
        event(seeded, "start", "d", "treatment", d2),
        event(seeded, "export", "d", None, d3, labelled=False),
        # e: export of a project that never started: not counted
        event(seeded, "export", "e", "treatment", d1),
        # f: started, never exported
        event(seeded, "start", "f", "treatment", d3),
        # g: unlabelled export of a project NOT assigned in this experiment: ignored
        event(seeded, "export", "g", None, d1, labelled=False),
    ]
    assigned = [
        assignment(seeded, p, arm)
        for p, arm in [
            ("a", "control"),
            ("b", "control"),
            ("c", "treatment"),
            ("d", "treatment"),
            ("e", "treatment"),
            ("f", "treatment"),
        ]
    ]
    insert(engine, rows, assigned)

    result = daily(engine, seeded)
    control, treatment = seeded.arm_ids["control"], seeded.arm_ids["treatment"]
    as_tuples = {(r.arm_id, r.day.isoformat(), r.starts, r.exports) for r in result}
    assert as_tuples == {
        (control, "2026-11-01", 2, 1),  # a, b start; a completes
        (control, "2026-11-02", 0, 1),  # b completes on its export day
        (treatment, "2026-11-02", 2, 1),  # c, d start; c completes on its (later) start day
        (treatment, "2026-11-03", 1, 1),  # f starts; d completes
    }
    assert totals(result, seeded) == {"control": (2, 2), "treatment": (3, 2)}

    # As of the start of day 2, only day-1 events are seen.
    early = totals(daily(engine, seeded, until=d2), seeded)
    assert early == {"control": (2, 1)}


def test_assignment_wins_over_the_arm_on_the_event(engine, seeded):
    insert(
        engine,
        [event(seeded, "start", "x", "treatment", DAY0)],
        [assignment(seeded, "x", "control")],
    )
    (row,) = daily(engine, seeded)
    assert row.arm_id == seeded.arm_ids["control"]


def test_other_experiments_do_not_leak(engine, seeded):
    other = create_experiment(engine, key="other")
    insert(
        engine,
        [event(other, "start", "z", "control", DAY0), event(seeded, "start", "y", "control", DAY0)],
        [assignment(other, "z", "control"), assignment(seeded, "y", "control")],
    )
    assert totals(daily(engine, seeded), seeded) == {"control": (1, 0)}


def test_simulated_totals_match_the_truth(engine, seeded):
    truth = simulate(engine, seeded, {"control": 0.9, "treatment": 0.85}, 60, 4)
    got = totals(daily(engine, seeded), seeded)
    assert got == {name: (s, e) for name, (e, s) in truth.items()}


def test_guardrails_match_numpy(engine, seeded):
    rng = np.random.default_rng(3)
    latencies = {"control": rng.uniform(50, 500, 41), "treatment": rng.uniform(50, 900, 20)}
    rows, assigned = [], []
    for arm, values in latencies.items():
        for i, latency in enumerate(values):
            project = f"{arm}-{i}"
            assigned.append(assignment(seeded, project, arm))
            rows.append(
                event(
                    seeded,
                    "start",
                    project,
                    arm,
                    DAY0,
                    latency_ms=float(latency),
                    fallback=i % 5 == 0,
                    error="timeout" if i % 10 == 0 else None,
                    cache_hit=i % 2 == 0,
                    cost_usd=0.01,
                )
            )
    # A start without latency and a repeated start of project 0: two more calls, same projects.
    rows.append(event(seeded, "start", "control-0", "control", DAY0, cost_usd=0.01))
    insert(engine, rows, assigned)
    with engine.connect() as connection:
        stats = {g.arm_id: g for g in queries.guardrail_stats(connection, seeded.experiment_id)}
    control = stats[seeded.arm_ids["control"]]
    assert control.calls == 42 and control.latency_count == 41
    assert control.latency_p50_ms == pytest.approx(np.percentile(latencies["control"], 50))
    assert control.latency_p95_ms == pytest.approx(np.percentile(latencies["control"], 95))
    assert control.fallbacks == 9 and control.errors == 5 and control.cache_hits == 21
    assert control.cost_usd == pytest.approx(0.42)
    treatment = stats[seeded.arm_ids["treatment"]]
    assert treatment.latency_p95_ms == pytest.approx(np.percentile(latencies["treatment"], 95))


def test_segments_by_attribute_and_popularity(engine, seeded):
    rows, assigned = [], []
    plan = [
        ("p1", "control", "ios", "Make it darker", True),
        ("p2", "control", "ios", "make it darker ", False),
        ("p3", "control", None, "MAKE IT DARKER", True),
        ("p4", "treatment", "web", "make it darker", True),
        ("p5", "treatment", "web", "cyberpunk", False),
        ("p6", "treatment", "ios", "cyberpunk", True),
        ("p7", "treatment", "ios", "rare wish", True),
    ]
    for project, arm, platform, intent, exported in plan:
        assigned.append(assignment(seeded, project, arm))
        attrs = {"platform": platform} if platform else {"country": "de"}
        rows.append(event(seeded, "start", project, arm, DAY0, intent=intent, attributes=attrs))
        if exported:
            rows.append(event(seeded, "export", project, arm, DAY0 + timedelta(minutes=1)))
    insert(engine, rows, assigned)
    control, treatment = seeded.arm_ids["control"], seeded.arm_ids["treatment"]
    with engine.connect() as connection:
        platform = queries.segment_counts(connection, seeded.experiment_id, "platform")
        popularity = queries.popularity_counts(connection, seeded.experiment_id)
    assert {(s.segment, s.arm_id, s.starts, s.exports) for s in platform} == {
        ("ios", control, 2, 1),
        ("(none)", control, 1, 1),
        ("web", treatment, 2, 1),
        ("ios", treatment, 2, 2),
    }
    # "make it darker" has 4 projects, "cyberpunk" 2, "rare wish" 1.
    assert {(s.segment, s.arm_id, s.starts, s.exports) for s in popularity} == {
        ("r1", control, 3, 2),
        ("r1", treatment, 4, 3),
        ("r3", control, 3, 2),
        ("r3", treatment, 1, 1),
    }


def test_bad_segment_attribute_is_refused(engine, seeded):
    with engine.connect() as connection, pytest.raises(ValueError, match="identifier"):
        queries.segment_counts(connection, seeded.experiment_id, "platform'; drop table x")


def test_experiment_info_lists_control_first(engine):
    seeded = create_experiment(engine, arms=(("control", 0.4), ("b", 0.3), ("c", 0.3)))
    with engine.connect() as connection:
        info = queries.experiment_info(connection, "exp")
        assert queries.experiment_info(connection, "missing") is None
        assert queries.experiment_keys(connection) == ["exp"]
    assert info.id == seeded.experiment_id
    assert [a.name for a in info.arms] == ["control", "b", "c"]
    assert info.arms[0].is_control and info.settings["alpha"] == 0.05
