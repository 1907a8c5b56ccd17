"""Experiment settings for decisions: margin scale, export window, plan -> fixed horizon,
allocation periods recorded by the service."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from abtest import db, services
from abtest.errors import Invalid
from abtest.tables import AllocationPeriod, Experiment
from analysis import report_model, stats
from tests.online_data import create_experiment


def test_horizon_is_planned_at_the_start_and_never_moves(engine):
    seeded = create_experiment(
        engine, settings={"baseline": 0.93, "margin": "-2%", "sequential": True}
    )
    with db.session_scope(engine) as session:
        experiment = session.get(Experiment, seeded.experiment_id)
        horizon = experiment.settings["horizon"]
        periods = session.scalars(select(AllocationPeriod)).all()
    plan = stats.plan(0.93, -0.02, kind="non-inferiority", sequential=True)
    assert horizon == plan.control
    assert report_model.planned_horizon(experiment.settings) == (
        horizon,
        "plan (fixed at the start)",
    )
    assert [p.version for p in periods] == [0]
    # without a baseline the horizon is a documented default of the settings, not of the data
    assert report_model.planned_horizon({"margin": "-2%"})[1].startswith("default")
    assert report_model.planned_horizon({"margin": "-2%"}) == report_model.planned_horizon(
        {"margin": "-2%"}
    )


def test_weight_changes_record_allocation_periods(engine):
    create_experiment(engine, key="w")
    with db.session_scope(engine) as session:
        services.update_arm_weights(session, "w", {"control": 0.7, "treatment": 0.3})
        services.update_arm_weights(session, "w", {"control": 0.7, "treatment": 0.3})  # no change
        services.update_arm_weights(session, "w", {"control": 0.5, "treatment": 0.5})
        rows = session.scalars(select(AllocationPeriod).order_by(AllocationPeriod.version)).all()
        assert [r.version for r in rows] == [0, 1, 2]
        assert sorted(rows[1].weights.values()) == [0.3, 0.7]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"margin": "-2 percent"}, "settings.margin"),
        ({"margin": 0.05}, "settings.margin"),
        ({"export_window_h": 0}, "settings.export_window_h"),
        ({"export_window_h": "a day"}, "settings.export_window_h"),
        ({"mde": -0.1}, "settings.mde"),
        ({"power": 1}, "settings.power"),
        ({"baseline": 1.5}, "settings.baseline"),
        ({"horizon": -5}, "settings.horizon"),
    ],
)
def test_bad_decision_settings_name_the_field(engine, settings, field):
    with pytest.raises(Invalid) as info:
        create_experiment(engine, key="bad", settings=settings)
    assert info.value.field == field
    with db.session_scope(engine) as session:
        assert session.scalar(select(Experiment).where(Experiment.key == "bad")) is None


def test_margin_strings_are_accepted_and_bare_numbers_refused(engine):
    for i, margin in enumerate(("-2%", "-1pts", None)):
        create_experiment(engine, key=f"m{i}", settings={"margin": margin})
    # A bare number meant points before margins became relative: it must name its unit.
    with pytest.raises(Invalid, match="'-2pts' .* or '-2%'") as info:
        create_experiment(engine, key="bare", settings={"margin": -0.02})
    assert info.value.field == "settings.margin"
