"""Event writes on both backends: idempotency, batches, out-of-order reconciliation, spool."""

import asyncio

import pytest
import sqlalchemy as sa

from abtest import db, services
from abtest.runtime import TABLES
from routing.eventlog import (
    EventRecord,
    EventSpool,
    GroupCommit,
    InvalidEventReference,
    is_unavailable,
    open_event_store,
    replay_spool,
)

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:9/nowhere?connect_timeout=1"


@pytest.fixture
def experiment(engine):
    with db.session_scope(engine) as session:
        services.register_variant(session, "teacher", "teacher", reference=True)
        services.register_variant(session, "other", "knn_student", {"fit": "train"})
        exp = services.create_experiment(
            session,
            services.ExperimentSpec(
                "e1",
                [
                    services.ArmSpec("control", "teacher", 0.5, True),
                    services.ArmSpec("student", "other", 0.5),
                ],
            ),
        )
        return exp.id, exp.arms[0].id, exp.arms[1].id


def rows_in(engine, where="1=1"):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"SELECT client_event_id, project_id, experiment_id, arm_id, type "
                f"FROM events WHERE {where} ORDER BY client_event_id"
            )
        ).all()


def export(event_id, project, experiment_id=None, arm_id=None):
    return EventRecord(event_id, "export", project, experiment_id, arm_id).to_row()


def test_retries_are_stored_once(engine, experiment):
    exp_id, control, _ = experiment
    writer = open_event_store(engine, TABLES, None)
    batch = [export(f"x{i}", f"p{i}", exp_id, control) for i in range(20)]
    first = writer.write_events(batch + batch[:5])  # duplicates inside one batch too
    second = writer.write_events(batch)
    assert (first.stored, first.duplicates) == (20, 5)
    assert (second.stored, second.duplicates) == (0, 20)
    assert len(rows_in(engine)) == 20


def test_large_batch_uses_the_bulk_path(engine, experiment):
    exp_id, control, student = experiment
    writer = open_event_store(engine, TABLES, None)
    writer.copy_threshold = 100
    batch = [export(f"b{i}", f"p{i}", exp_id, (control, student)[i % 2]) for i in range(600)]
    result = writer.write_events(batch + batch[:50])
    assert result.stored == 600 and result.duplicates == 50
    assert result.new_ids == {f"b{i}" for i in range(600)}
    with engine.connect() as conn:
        by_arm = dict(
            conn.execute(sa.text("SELECT arm_id, count(*) FROM events GROUP BY arm_id")).all()
        )
    assert by_arm == {control: 300, student: 300}


def test_export_before_start_is_reconciled(engine, experiment):
    exp_id, _, student = experiment
    writer = open_event_store(engine, TABLES, None)
    writer.write_events([export("early", "p1", exp_id), export("no-exp", "p1")])
    assert [r.arm_id for r in rows_in(engine)] == [None, None]
    stored = writer.write_first([(exp_id, "p1", student, "hash")])
    assert stored == {(exp_id, "p1"): (student, "hash")}
    assert {(r.experiment_id, r.arm_id) for r in rows_in(engine)} == {(exp_id, student)}
    # later exports of an assigned project get the arm at write time
    writer.write_events([export("late", "p1", exp_id), export("late-no-exp", "p1")])
    assert {(r.experiment_id, r.arm_id) for r in rows_in(engine)} == {(exp_id, student)}


def test_first_assignment_wins(engine, experiment):
    exp_id, control, student = experiment
    writer = open_event_store(engine, TABLES, None)
    writer.write_first([(exp_id, "p1", control, "hash")])
    again = writer.write_first(
        [(exp_id, "p1", student, "hash"), (exp_id, "p2", student, "override")]
    )
    assert again == {(exp_id, "p1"): (control, "hash"), (exp_id, "p2"): (student, "override")}
    assert writer.get_assignments([(exp_id, "p2"), (exp_id, "p3")]) == {
        (exp_id, "p2"): (student, "override")
    }


def test_reconcile_all_adopts_orphans(engine, experiment):
    exp_id, control, _ = experiment
    writer = open_event_store(engine, TABLES, None)
    writer.write_events([export("o1", "p9", exp_id)])
    with engine.begin() as conn:  # an assignment written behind the writer's back
        conn.execute(
            sa.insert(TABLES.assignments).values(
                experiment_id=exp_id, project_id="p9", arm_id=control, source="hash"
            )
        )
    assert writer.reconcile_all() == 1
    assert rows_in(engine)[0].arm_id == control


def test_unreachable_database_spools_and_replays(engine, experiment, tmp_path):
    exp_id, control, _ = experiment
    spool = EventSpool(tmp_path / "spool")
    down = open_event_store(db.make_engine(UNREACHABLE), TABLES, spool)
    batch = [export(f"s{i}", f"p{i}", exp_id, control) for i in range(30)]
    result = down.write_events(batch)
    assert result.spooled == 30 and result.stored == 0 and spool.depth == 30
    spool.append(
        "assignment",
        [{"experiment_id": exp_id, "project_id": "p1", "arm_id": control, "source": "hash"}],
    )
    # acknowledged means durable: a new process sees the spooled rows
    spool.close()
    reopened = EventSpool(tmp_path / "spool")
    assert reopened.depth == 31
    up = open_event_store(engine, TABLES, reopened)
    assert replay_spool(up, reopened, limit=7) == 31
    assert reopened.depth == 0
    reopened.append("event", batch[:3])  # replaying rows already stored stores nothing new
    replay_spool(up, reopened)
    assert len(rows_in(engine)) == 30
    assert up.get_assignments([(exp_id, "p1")]) == {(exp_id, "p1"): (control, "hash")}


def test_replay_while_still_down_keeps_the_spool(tmp_path):
    spool = EventSpool(tmp_path)
    spool.append("event", [export("k", "p")])
    down = open_event_store(db.make_engine(UNREACHABLE), TABLES, spool)
    with pytest.raises(Exception) as error:  # noqa: B017 - SQLAlchemy's or psycopg's own
        replay_spool(down, spool)
    assert is_unavailable(error.value) and spool.depth == 1


def test_bad_data_is_not_spooled(engine, tmp_path):
    spool = EventSpool(tmp_path)
    writer = open_event_store(engine, TABLES, spool)
    with pytest.raises(InvalidEventReference, match="experiment_id 999999 does not exist"):
        writer.write_events([export("fk", "p", 999_999, 999_999)])  # no such experiment
    assert spool.depth == 0 and not spool.path.exists()  # no file unless something is spooled


def test_group_commit_batches_and_propagates_errors():
    calls = []

    def flush(items):
        calls.append(list(items))
        if "bad" in items:
            raise RuntimeError("flush failed")
        return [item.upper() for item in items]

    async def scenario():
        commit = GroupCommit(flush)
        ok = await asyncio.gather(*(commit.submit(f"x{i}") for i in range(100)))
        failed = await asyncio.gather(
            commit.submit("bad"), commit.submit("y"), return_exceptions=True
        )
        return ok, failed

    ok, failed = asyncio.run(scenario())
    assert ok == [f"X{i}" for i in range(100)] and len(calls) <= 3
    assert all(isinstance(f, RuntimeError) for f in failed)
