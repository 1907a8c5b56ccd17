"""Variant and experiment services on both backends: rules, and bad input changes nothing."""

import pytest
from sqlalchemy import func, select

from abtest import db, services
from abtest.errors import Conflict, Invalid, NotFound
from abtest.tables import Experiment, ExperimentArm, Promotion, Variant
from tests.gate_helpers import pass_gate


@pytest.fixture
def session(engine):
    with db.session_factory(engine)() as s:
        yield s


def two_arms(student="student", weights=(0.5, 0.5)):
    return [
        services.ArmSpec("control", "teacher", weights[0], control=True),
        services.ArmSpec("treatment", student, weights[1]),
    ]


def seed_variants(session, approve=True):
    services.register_variant(session, "teacher", "teacher", reference=True)
    student = services.register_variant(session, "student", "knn_student", {"fit": "train"})
    if approve:
        run = pass_gate(session, "student")
        services.record_promotion(
            session, student, "registered", "approved", "test", "gate", run.id
        )
    session.commit()


def count(session, table):
    return session.scalar(select(func.count()).select_from(table))


def test_first_teacher_becomes_champion_with_audit(session):
    teacher = services.register_variant(session, "teacher", "teacher", reference=True)
    assert teacher.status == "champion"
    assert count(session, Promotion) == 1


def test_duplicate_variant_name_is_a_conflict_and_changes_nothing(session):
    seed_variants(session)
    with pytest.raises(Conflict, match="already exists"):
        services.register_variant(session, "student", "knn_student")
    session.rollback()
    assert count(session, Variant) == 2


@pytest.mark.parametrize(
    ("name", "kind", "field"),
    [("bad name!", "teacher", "name"), ("ok", "gpt-5", "kind"), ("", "teacher", "name")],
)
def test_invalid_variant_is_rejected_with_the_field(session, name, kind, field):
    with pytest.raises(Invalid) as info:
        services.register_variant(session, name, kind)
    assert info.value.field == field


def test_create_start_stop_experiment(session):
    seed_variants(session)
    experiment = services.create_experiment(session, services.ExperimentSpec("exp1", two_arms()))
    assert experiment.status == "draft" and experiment.seed == "exp1"
    assert services.start_experiment(session, "exp1").status == "running"
    with pytest.raises(Conflict, match="already running"):
        services.start_experiment(session, "exp1")
    assert services.stop_experiment(session, "exp1").status == "stopped"


@pytest.mark.parametrize(
    ("arms", "field", "message"),
    [
        (two_arms(weights=(0.5, 0.6)), "arms", "sum to 1"),
        (two_arms(student="ghost"), "arms.1.variant", "no variant"),
        ([services.ArmSpec("control", "teacher", 1.0, control=True)], "arms", "two arms"),
        (
            [services.ArmSpec("a", "teacher", 0.5), services.ArmSpec("b", "student", 0.5)],
            "arms",
            "control",
        ),
        (two_arms(weights=(-0.5, 1.5)), "arms.0.weight", "outside"),
    ],
)
def test_bad_experiments_are_rejected_and_nothing_is_stored(session, arms, field, message):
    seed_variants(session)
    with pytest.raises((Invalid, NotFound)) as info:
        services.create_experiment(session, services.ExperimentSpec("exp1", arms))
    assert info.value.field == field and message in info.value.reason
    session.rollback()
    assert count(session, Experiment) == 0 and count(session, ExperimentArm) == 0


def test_bad_settings_and_overrides_are_rejected(session):
    seed_variants(session)
    with pytest.raises(Invalid) as info:
        services.create_experiment(
            session, services.ExperimentSpec("e", two_arms(), settings={"alpah": 0.1})
        )
    assert info.value.field == "settings.alpah"
    with pytest.raises(Invalid) as info:
        services.create_experiment(
            session,
            services.ExperimentSpec("e", two_arms(), settings={"overrides": {"p1": "nope"}}),
        )
    assert info.value.field == "settings.overrides.p1"


def test_experiment_cannot_start_with_an_ungated_arm(session):
    seed_variants(session, approve=False)
    services.create_experiment(session, services.ExperimentSpec("exp1", two_arms()))
    session.commit()
    with pytest.raises(Conflict, match="passing gate"):
        services.start_experiment(session, "exp1")
    session.rollback()
    assert services.get_experiment(session, "exp1").status == "draft"


def test_duplicate_experiment_key_is_a_conflict(session):
    seed_variants(session)
    services.create_experiment(session, services.ExperimentSpec("exp1", two_arms()))
    with pytest.raises(Conflict):
        services.create_experiment(session, services.ExperimentSpec("exp1", two_arms()))


def test_weight_update_validates_and_applies(session):
    seed_variants(session)
    services.create_experiment(session, services.ExperimentSpec("exp1", two_arms()))
    with pytest.raises(Invalid, match="sum to 1"):
        services.update_arm_weights(session, "exp1", {"control": 0.9})
    experiment = services.update_arm_weights(session, "exp1", {"control": 0.8, "treatment": 0.2})
    assert [a.weight for a in experiment.arms] == [0.8, 0.2]


def test_two_racing_reference_registrations_leave_one_reference(engine, monkeypatch):
    """Both registrations pass the service's "no reference yet" check (as two requests at the
    same moment would); the database's partial unique index refuses the second with a 409."""
    with db.session_scope(engine) as first:
        services.register_variant(first, "teacher", "teacher", reference=True)
    monkeypatch.setattr(services, "reference_variant", lambda session: None)
    with pytest.raises(Conflict) as refused, db.session_scope(engine) as second:
        services.register_variant(second, "teacher2", "teacher", reference=True)
    assert refused.value.field == "kind" and "same time" in refused.value.reason
    with db.session_scope(engine) as check:
        assert [v.name for v in check.scalars(select(Variant))] == ["teacher"]
    # an archived reference leaves room for a new one (the index covers active ones only)
    with db.session_scope(engine) as session:
        session.execute(
            Variant.__table__.update().where(Variant.name == "teacher").values(status="archived")
        )
    with db.session_scope(engine) as session:
        services.register_variant(session, "teacher3", "teacher", reference=True)


def test_racing_names_get_the_name_conflict(engine, monkeypatch):
    with db.session_scope(engine) as first:
        services.register_variant(first, "student", "knn_student", {"fit": "train"})
    with pytest.raises(Conflict) as refused, db.session_scope(engine) as second:
        monkeypatch.setattr(second, "scalar", lambda *a, **k: None)  # the name check raced
        services.register_variant(second, "student", "knn_student", {"fit": "train"})
    assert refused.value.field == "name"


def test_upgrade_refuses_a_database_with_two_active_references(empty_engine):
    import sqlalchemy as sa

    db.upgrade(empty_engine, "0007_decisions")
    variants = sa.table(
        "variants", *map(sa.column, ("name", "kind", "status", "version", "description")),
        sa.column("config", sa.JSON()), sa.column("created_at"),
    )  # fmt: skip
    with empty_engine.begin() as connection:
        for name, kind in (("gpt", "teacher"), ("answers", "recorded")):
            connection.execute(
                variants.insert().values(name=name, kind=kind, config={}, status="registered",
                                         version=1, description="", created_at=sa.func.now())
            )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"2 active reference teachers \(gpt, answers\)"):
        db.upgrade(empty_engine)
    # the refused upgrade rolled back whole, on SQLite too (no table of 0008 left behind)
    assert db.current_revision(empty_engine) == "0007_decisions"
    assert "jobs" not in sa.inspect(empty_engine).get_table_names()
    with empty_engine.begin() as connection:
        connection.execute(variants.update().where(variants.c.name == "answers")
                           .values(status="archived"))  # fmt: skip
    db.upgrade(empty_engine)
    assert db.current_revision(empty_engine) == db.head_revision()
