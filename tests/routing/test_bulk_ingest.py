"""Big event batches (PostgreSQL: direct binary COPY) and the writer's reference checks.

The events table has no foreign keys (migration 0004): the writer refuses unknown experiments
and arms itself, on both backends, for small and big batches alike.
"""

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from abtest import db, services
from abtest.runtime import TABLES
from routing.eventlog import (
    EventRecord,
    EventSpool,
    InvalidEventReference,
    open_event_store,
)
from tests.gate_helpers import FIT, reference_teacher

SMALL, BIG = 5, 120  # batch sizes below and above the test writers' copy_threshold


def make_experiment(engine, key):
    with db.session_scope(engine) as session:
        if services.reference_variant(session) is None:
            reference_teacher(session, f"{key}-teacher")
        else:
            services.register_variant(session, f"{key}-teacher", "knn_student", FIT)
        services.register_variant(session, f"{key}-other", "knn_student", FIT)
        exp = services.create_experiment(
            session,
            services.ExperimentSpec(
                key,
                [
                    services.ArmSpec("control", f"{key}-teacher", 0.5, True),
                    services.ArmSpec("student", f"{key}-other", 0.5),
                ],
            ),
        )
        return exp.id, exp.arms[0].id, exp.arms[1].id


@pytest.fixture
def experiment(engine):
    return make_experiment(engine, "e1")


def writer_for(engine, spool=None):
    writer = open_event_store(engine, TABLES, spool)
    writer.copy_threshold = 50
    return writer


def export(event_id, project, experiment_id=None, arm_id=None, **extra):
    return {**EventRecord(event_id, "export", project, experiment_id, arm_id).to_row(), **extra}


def stored(engine):
    with engine.connect() as conn:
        return {
            row.client_event_id: row
            for row in conn.execute(
                sa.text(
                    "SELECT client_event_id, project_id, experiment_id, arm_id, served_by, "
                    "tokens, fallback, occurred_at, attributes FROM events"
                )
            )
        }


def test_events_have_no_foreign_keys(engine):
    assert sa.inspect(engine).get_foreign_keys("events") == []


def test_big_batch_dedupes_and_skips_stored_ids(engine, experiment):
    exp_id, control, student = experiment
    writer = writer_for(engine)
    early = [export(f"b{i}", f"p{i}", exp_id, control, served_by="first") for i in range(0, 30, 3)]
    assert writer.write_events(early).stored == 10
    batch = [export(f"b{i}", f"p{i}", exp_id, student, served_by="second") for i in range(BIG)]
    repeats = [export(f"b{i}", f"p{i}", exp_id, control, served_by="repeat") for i in range(40, 60)]
    result = writer.write_events(batch + repeats)
    assert (result.received, result.stored, result.duplicates) == (BIG + 20, BIG - 10, 30)
    assert result.new_ids == {f"b{i}" for i in range(BIG)} - {f"b{i}" for i in range(0, 30, 3)}
    rows = stored(engine)
    assert len(rows) == BIG
    assert {rows[f"b{i}"].served_by for i in range(0, 30, 3)} == {"first"}  # kept, not replaced
    assert rows["b1"].served_by == rows["b45"].served_by == "second"  # the first of a repeat wins
    again = writer.write_events(batch)  # a full retry: the sampled probe finds it, nothing is new
    assert (again.stored, again.duplicates, again.new_ids) == (0, BIG, set())
    assert len(stored(engine)) == BIG


def test_a_stored_id_the_sample_misses_takes_the_conflict_route(engine, experiment, monkeypatch):
    exp_id, control, _ = experiment
    writer = writer_for(engine)
    batch = [export(f"m{i}", f"p{i}", exp_id, control) for i in range(BIG)]
    assert writer.write_events([batch[37]]).stored == 1  # not in the probed sample (every 3rd)
    fallbacks = []
    if writer.postgres:
        insert = writer._pg_insert_events

        def spy(cursor, rows, direct_copy=True):
            if not direct_copy:
                fallbacks.append(len(rows))
            return insert(cursor, rows, direct_copy)

        monkeypatch.setattr(writer, "_pg_insert_events", spy)
        monkeypatch.setattr(writer, "probe_sample", 40)
    result = writer.write_events(batch)
    assert (result.stored, result.duplicates) == (BIG - 1, 1)
    assert result.new_ids == {f"m{i}" for i in range(BIG)} - {"m37"}
    assert len(stored(engine)) == BIG
    if writer.postgres:
        assert fallbacks == [BIG]  # the COPY met the stored id and rolled back to its savepoint


def test_big_batch_resolves_arms_from_assignments(engine, experiment):
    exp_id, control, student = experiment
    writer = writer_for(engine)
    writer.write_first([(exp_id, f"p{i}", (control, student)[i % 2], "hash") for i in range(50)])
    batch = [export(f"r{i}", f"p{i}", exp_id) for i in range(BIG)]  # p50.. have no assignment
    batch += [export("started-elsewhere", "p1", None), export("explicit", "p2", exp_id, student)]
    result = writer.write_events(batch)
    assert result.stored == BIG + 2
    rows = stored(engine)
    assert [rows[f"r{i}"].arm_id for i in range(50)] == [
        (control, student)[i % 2] for i in range(50)
    ]
    assert {rows[f"r{i}"].arm_id for i in range(50, BIG)} == {None}  # reconciled later
    assert (rows["started-elsewhere"].experiment_id, rows["started-elsewhere"].arm_id) == (
        exp_id,
        student,
    )  # no experiment: the project's assignment is adopted after the write
    assert rows["explicit"].arm_id == student
    writer.write_first([(exp_id, "p77", control, "hash")])  # an orphan adopted later
    assert stored(engine)["r77"].arm_id == control


def test_big_batch_of_two_experiments_resolves_each(engine, experiment):
    exp_id, control, student = experiment
    other_exp, other_control, other_student = make_experiment(engine, "e2")
    writer = writer_for(engine)
    writer.write_first(
        [(exp_id, f"p{i}", control, "hash") for i in range(BIG)]
        + [(other_exp, f"p{i}", other_student, "hash") for i in range(BIG)]
    )
    batch = [export(f"x{i}", f"p{i}", (exp_id, other_exp)[i % 2]) for i in range(BIG)]
    assert writer.write_events(batch).stored == BIG
    rows = stored(engine)
    assert [rows[f"x{i}"].arm_id for i in range(BIG)] == [
        (control, other_student)[i % 2] for i in range(BIG)
    ]


def test_concurrent_writer_between_probe_and_copy(postgres_url, monkeypatch):
    """Another writer stores one of the batch's ids after the probe: the direct COPY fails on
    the unique index, rolls back to its savepoint and the batch goes through ON CONFLICT."""
    engine = db.make_engine(postgres_url)
    try:
        db.upgrade(engine)
        exp_id, control, student = make_experiment(engine, "race")
        writer = writer_for(engine)
        writer.write_first([(exp_id, "p0", student, "hash")])
        other = writer_for(engine)

        def concurrent_insert():
            other.write_events([export("c7", "p7", exp_id, control, served_by="other writer")])

        writer._before_copy = concurrent_insert
        batch = [export(f"c{i}", f"p{i}", exp_id) for i in range(BIG)]
        result = writer.write_events(batch + batch[:3])
        assert (result.stored, result.duplicates) == (BIG - 1, 4)
        assert result.new_ids == {f"c{i}" for i in range(BIG)} - {"c7"}
        rows = stored(engine)
        assert len(rows) == BIG
        assert rows["c7"].served_by == "other writer"
        assert rows["c0"].arm_id == student  # the fallback resolves arms too
        writer._before_copy = None
        assert writer.write_events(batch).stored == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("size", [SMALL, BIG])
def test_invalid_references_are_refused_and_not_spooled(engine, experiment, tmp_path, size):
    exp_id, control, _ = experiment
    other_exp, other_control, _ = make_experiment(engine, "e2")
    spool = EventSpool(tmp_path)
    writer = writer_for(engine, spool)
    good = [export(f"g{i}", f"p{i}", exp_id, control) for i in range(size - 1)]
    cases = {
        "experiment_id 999999 does not exist": export("bad", "p", 999_999),
        "arm_id 999999 does not exist": export("bad", "p", exp_id, 999_999),
        f"arm_id {other_control} belongs to experiment {other_exp}, not to experiment_id "
        f"{exp_id}": export("bad", "p", exp_id, other_control),
        "arm_id 888888 does not exist": export("bad", "p", None, 888_888),
    }
    for message, bad in cases.items():
        with pytest.raises(InvalidEventReference, match=message):
            writer.write_events(good + [bad])
    assert stored(engine) == {}  # the whole batch is refused
    assert spool.depth == 0 and not spool.path.exists()
    assert writer.write_events(good + [export("ok", "p", other_exp, other_control)]).stored == size
    with pytest.raises(InvalidEventReference):  # a checked pair is cached, a bad one never
        writer.write_events(good + [cases["arm_id 999999 does not exist"]])


def test_binary_copy_values_are_checked(postgres_url, tmp_path):
    """What a binary COPY would not refuse by itself (it would wrap an int4, take any truthy
    flag) is refused before; naive times are UTC; odd JSON still goes through."""
    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    exp_id, control, _ = make_experiment(engine, "types")
    spool = EventSpool(tmp_path)
    writer = writer_for(engine, spool)

    def batch(prefix, **extra):
        return [export(f"{prefix}{i}", f"p{i}", exp_id, control, **extra) for i in range(BIG)]

    with pytest.raises(Exception, match="tokens|integer|range|overflow"):  # noqa: B017
        writer.write_events(batch("t", tokens=2**40))
    with pytest.raises(Exception, match="boolean|bool"):  # noqa: B017
        writer.write_events(batch("f", fallback="yes"))
    assert stored(engine) == {} and spool.depth == 0
    naive = datetime(2026, 1, 2, 3, 4, 5)
    odd = {1: "int key", "big": 2**70, "when": datetime(2026, 1, 1, tzinfo=UTC)}
    rows = batch("ok", occurred_at=naive, tokens=7, fallback=None, attributes=odd)
    rows[0]["fallback"] = 1
    assert writer.write_events(rows).stored == BIG
    row = stored(engine)["ok0"]
    assert row.occurred_at == naive.replace(tzinfo=UTC)
    assert (row.tokens, row.fallback, stored(engine)["ok1"].fallback) == (7, True, False)
    assert row.attributes == {"1": "int key", "big": 2**70, "when": "2026-01-01T00:00:00+00:00"}
    engine.dispose()
