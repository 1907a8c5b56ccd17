"""The rollup gives the same counts as the event scan (the reference), on both backends."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from analysis import queries, rollup
from tests.online_data import DAY0, assignment, create_experiment, event, insert, simulate

ATTRIBUTES = ("platform", "country")


@pytest.fixture
def seeded(engine):
    return create_experiment(engine)


def refresh(engine, seeded, **options):
    with engine.begin() as connection:
        return rollup.refresh(connection, seeded.experiment_id, **options)


def counts(engine, seeded, until=None, module=rollup):
    with engine.connect() as connection:
        return module.project_counts(
            connection, seeded.experiment_id, until, ATTRIBUTES, popularity=True
        )


def assert_same_as_events(engine, seeded, until=None):
    expected = counts(engine, seeded, until, queries)
    got = counts(engine, seeded, until, rollup)
    assert got.daily == expected.daily
    assert got.segments == expected.segments
    return got


def starts_and_exports(result):
    return sum(d.starts for d in result.daily), sum(d.exports for d in result.daily)


def test_table_clauses_match_the_orm_tables():
    from abtest.tables import Base

    for clause in (
        rollup.project_outcomes,
        rollup.outcome_counts,
        rollup.intent_counts,
        rollup.call_rollups,
        rollup.rollup_watermarks,
    ):
        orm = Base.metadata.tables[clause.name]
        assert {c.name for c in clause.columns} == set(orm.c.keys())
        for col in clause.columns:
            assert type(col.type)._type_affinity is type(orm.c[col.name].type)._type_affinity


def test_simulated_data_matches_the_event_scan_for_every_period_end(engine, seeded):
    simulate(engine, seeded, {"control": 0.9, "treatment": 0.8}, 40, 4, seed=7)
    # Repeated starts on later days with other attributes/intents/arms: the min-over-starts
    # values of these projects differ before and after each midnight (recomputed from events).
    extra = [
        event(seeded, "start", f"p0-{i}", "treatment", DAY0 + timedelta(days=2, hours=i),
              intent=" ZZZ ", attributes={"platform": "aaa", "country": "aa"})
        for i in range(5)
    ]  # fmt: skip
    insert(engine, extra)
    assert refresh(engine, seeded)["mode"] == "full"
    for day in range(6):
        assert_same_as_events(engine, seeded, DAY0 + timedelta(days=day))
    total = assert_same_as_events(engine, seeded)
    assert starts_and_exports(total)[0] == 160


def test_counting_rules_and_incremental_refresh(engine, seeded):
    d1, d2, d3 = DAY0, DAY0 + timedelta(days=1), DAY0 + timedelta(days=2)
    insert(
        engine,
        [event(seeded, "start", "a", "control", d1), event(seeded, "start", "b", "control", d1)],
        [assignment(seeded, p, arm) for p, arm in [("a", "control"), ("b", "control")]],
    )
    refresh(engine, seeded)
    assert starts_and_exports(assert_same_as_events(engine, seeded)) == (2, 0)

    insert(
        engine,
        [
            event(seeded, "export", "a", "control", d1 + timedelta(hours=1)),
            event(seeded, "export", "a", "control", d1 + timedelta(hours=2)),  # duplicate
            event(seeded, "start", "b", "control", d1 - timedelta(hours=1)),  # out of order
            event(seeded, "export", "c", "treatment", d1),  # export before its start...
            event(seeded, "export", "e", "treatment", d1),  # never started: not counted
            event(seeded, "export", "g", None, d1, labelled=False),  # not assigned here
        ],
        [assignment(seeded, p, "treatment") for p in ("c", "e")],
    )
    assert refresh(engine, seeded)["mode"] == "incremental"
    assert starts_and_exports(assert_same_as_events(engine, seeded)) == (2, 1)
    insert(engine, [event(seeded, "start", "c", "treatment", d2)])  # ...and its start later
    refresh(engine, seeded)
    result = assert_same_as_events(engine, seeded)
    assert starts_and_exports(result) == (3, 2)
    treatment = seeded.arm_ids["treatment"]
    assert queries.ArmDay(treatment, d2.date(), 1, 1) in result.daily  # completes on start day
    b_start = sa.text("SELECT start_day FROM project_outcomes WHERE project_id = 'b'")
    with engine.connect() as connection:
        assert str(connection.scalar(b_start))[:10] == "2026-10-31"

    # Unlabelled export first, assignment later: the new assignment brings it into scope.
    insert(engine, [event(seeded, "start", "d", "treatment", d2, labelled=True)])
    insert(engine, [event(seeded, "export", "d", None, d3, labelled=False)])
    refresh(engine, seeded)
    insert(engine, [], [assignment(seeded, "d", "control")])  # the assignment wins
    refresh(engine, seeded)
    result = assert_same_as_events(engine, seeded)
    assert starts_and_exports(result) == (4, 3)
    assert queries.ArmDay(seeded.arm_ids["control"], d3.date(), 0, 1) in result.daily


def test_refresh_is_idempotent_and_rebuild_agrees(engine, seeded):
    simulate(engine, seeded, {"control": 0.9, "treatment": 0.9}, 20, 3, seed=2)
    refresh(engine, seeded)
    first = counts(engine, seeded)
    first_calls = guardrails(engine, seeded)
    for _ in range(2):
        assert refresh(engine, seeded)["mode"] == "incremental"
        assert counts(engine, seeded) == first
        assert guardrails(engine, seeded) == first_calls
    # A re-scan from id 0 (as for events committed late below the watermark) changes nothing.
    refresh(engine, seeded, rescan_ids=10**9)
    assert counts(engine, seeded) == first and guardrails(engine, seeded) == first_calls
    assert refresh(engine, seeded, rebuild=True)["mode"] == "full"
    assert counts(engine, seeded) == first and guardrails(engine, seeded) == first_calls


def test_late_committed_event_below_the_watermark_is_picked_up(engine, seeded):
    insert(
        engine, [event(seeded, "start", "a", "control", DAY0)], [assignment(seeded, "a", "control")]
    )
    refresh(engine, seeded)
    # Simulate an event whose id was allocated before the last refresh but committed after it.
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE rollup_watermarks SET last_event_id = last_event_id + 5")
        )
    insert(engine, [event(seeded, "export", "a", "control", DAY0 + timedelta(hours=1))])
    refresh(engine, seeded)
    assert starts_and_exports(assert_same_as_events(engine, seeded)) == (1, 1)


def guardrails(engine, seeded, until=None, module=rollup):
    with engine.connect() as connection:
        return module.guardrail_stats(connection, seeded.experiment_id, until)


def test_guardrails_counts_exact_and_percentiles_within_a_bucket(engine, seeded):
    simulate(engine, seeded, {"control": 0.9, "treatment": 0.8}, 50, 3, seed=11)
    # A call without an arm takes the assignment's; a call without latency has no bucket.
    insert(
        engine,
        [
            event(seeded, "start", "p0-1", None, DAY0 + timedelta(hours=3), latency_ms=None),
            event(seeded, "start", "p1-2", None, DAY0 + timedelta(days=1), latency_ms=0.5,
                  error="timeout", cost_usd=0.25),
        ],
    )  # fmt: skip
    refresh(engine, seeded)
    for until in (None, DAY0 + timedelta(days=1), DAY0 + timedelta(days=3)):
        expected = guardrails(engine, seeded, until, queries)
        got = guardrails(engine, seeded, until)
        assert [g.arm_id for g in got] == [g.arm_id for g in expected]
        for a, b in zip(got, expected, strict=True):
            assert (a.calls, a.latency_count, a.fallbacks, a.errors, a.cache_hits) == (
                b.calls, b.latency_count, b.fallbacks, b.errors, b.cache_hits
            )  # fmt: skip
            assert a.cost_usd == pytest.approx(b.cost_usd)
            assert a.latency_p50_ms == pytest.approx(b.latency_p50_ms, rel=rollup.BUCKET_BASE - 1)
            assert a.latency_p95_ms == pytest.approx(b.latency_p95_ms, rel=rollup.BUCKET_BASE - 1)


def test_periods_the_rollup_cannot_answer_fall_back_to_the_event_scan(engine, seeded):
    simulate(engine, seeded, {"control": 0.9, "treatment": 0.8}, 10, 2, seed=3)
    insert(
        engine,
        [event(seeded, "start", "p0-0", "control", DAY0 + timedelta(hours=25),
               attributes={"plan": "pro"})],
    )  # fmt: skip
    noon = datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert not rollup.covers(noon) and not rollup.covers(None, ("plan",))
    # Not refreshed at all: a fallback does not read the (empty) rollup.
    with engine.connect() as connection:
        got = rollup.project_counts(connection, seeded.experiment_id, noon, ("plan",))
        expected = queries.project_counts(connection, seeded.experiment_id, noon, ("plan",))
        assert got == expected and got.daily
        assert rollup.guardrail_stats(connection, seeded.experiment_id, noon) == (
            queries.guardrail_stats(connection, seeded.experiment_id, noon)
        )


def test_bad_attribute_is_refused(engine, seeded):
    with engine.connect() as connection, pytest.raises(ValueError, match="plain identifier"):
        rollup.project_counts(connection, seeded.experiment_id, None, ("x'; drop",))


def test_attribution_window_stop_and_pending_agree_on_both_paths(engine, seeded):
    """Export 1 h after the start: counted; 30 h after: not; start after the stop: left out;
    start less than 24 h before the cut-off: pending. Event scan and rollup agree."""
    from analysis.queries import Attribution, experiments

    d = DAY0
    insert(
        engine,
        [
            event(seeded, "start", "quick", "control", d),
            event(seeded, "export", "quick", "control", d + timedelta(hours=1)),
            event(seeded, "start", "late", "treatment", d),
            event(seeded, "export", "late", "treatment", d + timedelta(hours=30)),
            event(seeded, "start", "after-stop", "control", d + timedelta(days=2, hours=1)),
            event(seeded, "start", "young", "treatment", d + timedelta(days=2, minutes=10)),
            event(seeded, "export", "young", "treatment", d + timedelta(days=2, minutes=20)),
        ],
    )
    stopped = d + timedelta(days=2, minutes=30)
    with engine.begin() as connection:
        connection.execute(
            sa.update(experiments)
            .where(experiments.c.id == seeded.experiment_id)
            .values(stopped_at=stopped)
        )
    refresh(engine, seeded)
    until = d + timedelta(days=3)
    mature = until - timedelta(hours=24)
    with engine.connect() as connection:
        scan = queries.project_counts(
            connection, seeded.experiment_id, until, ATTRIBUTES,
            attribution=Attribution(24.0, stopped, mature),
        )  # fmt: skip
        rolled = rollup.project_counts(
            connection, seeded.experiment_id, until, ATTRIBUTES, mature_before=mature
        )
    for result in (scan, rolled):
        per_arm = {}
        for day in result.daily:
            starts, exports = per_arm.get(day.arm_id, (0, 0))
            per_arm[day.arm_id] = (starts + day.starts, exports + day.exports)
        assert per_arm == {seeded.arm_ids["control"]: (1, 1), seeded.arm_ids["treatment"]: (1, 0)}
        assert result.pending == {seeded.arm_ids["treatment"]: 1}
    assert scan.daily == rolled.daily and scan.segments == rolled.segments
