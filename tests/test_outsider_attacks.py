"""Attacks on the round's guarantees, tried as an outsider would (review of issues 12-17).

Each test names the bypass it tries; it fails when the bypass works.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from abtest import db, gating, services
from abtest.api import create_app
from abtest.cli import app as cli_app
from abtest.errors import Conflict
from abtest.settings import get_settings
from abtest.tables import AllocationPeriod, Promotion
from tests import online_data


@pytest.fixture
def knn_file(tmp_path, monkeypatch):
    """A second valid kNN config: a JSON model file under the model directory."""
    monkeypatch.setenv("ABTEST_MODEL_DIR", str(tmp_path))
    get_settings.cache_clear()
    (tmp_path / "knn.json").write_text("{}")
    yield {"path": "knn.json"}
    get_settings.cache_clear()


# --- issue 12: gate bypasses --------------------------------------------------------------------


def test_a_running_arm_config_cannot_be_swapped_for_an_ungated_one(engine, knn_file):
    """Routing serves the stored config of a running arm: an edit would serve it ungated."""
    online_data.create_experiment(engine)
    with db.session_scope(engine) as session:
        with pytest.raises(Conflict) as refused:
            services.update_variant_config(session, "student", knn_file)
        assert refused.value.field == "name" and "running experiment 'exp'" in refused.value.reason
    with db.session_scope(engine) as session:
        student = services.get_variant(session, "student")
        assert student.config == {"fit": "train"} and student.status == "approved"


def test_conclude_never_crowns_a_variant_whose_config_changed_after_its_gate(engine, knn_file):
    """Stop, edit the treatment's config, then ship it (even with an override): refused."""
    seeded = online_data.create_experiment(engine, settings={"sequential": False})
    online_data.simulate(engine, seeded, {"control": 0.5, "treatment": 0.9}, 150, 3)
    with db.session_scope(engine) as session:
        services.stop_experiment(session, "exp")
    with db.session_scope(engine) as session:
        services.update_variant_config(session, "student", knn_file)
    for override in (False, True):
        with db.session_scope(engine) as session:
            with pytest.raises(Conflict) as refused:
                gating.conclude_experiment(
                    session, "exp", "treatment", "mallory", override=override, reason="go"
                )
            assert refused.value.field == "ship"
            assert "gate" in refused.value.reason
    with db.session_scope(engine) as session:
        assert services.champion(session).name == "teacher"
        assert services.get_experiment(session, "exp").status == "stopped"
        crowned = select(Promotion.experiment_key).where(Promotion.to_status == "champion")
        assert session.scalars(crowned).all() == [None]  # only the reference's registration


def test_no_service_crowns_an_ungated_student_with_a_made_up_experiment_key(engine):
    online_data.create_experiment(engine, start=False)
    with db.session_scope(engine) as session:
        rogue = services.register_variant(session, "rogue", "knn_student", {"fit": "train"})
        with pytest.raises(Conflict) as refused:
            services.record_promotion(
                session, rogue, "registered", "champion", "mallory", experiment_key="exp"
            )
        assert refused.value.field == "gate"
    with db.session_scope(engine) as session:
        assert services.champion(session).name == "teacher"
        assert services.get_variant(session, "rogue").status == "registered"


def test_weights_of_a_concluded_experiment_are_history(settings, engine):
    online_data.create_experiment(engine)
    with db.session_scope(engine) as session:
        gating.conclude_experiment(session, "exp", "control", "x", override=True, reason="r")
    with TestClient(create_app(settings)) as client:
        weights = {"weights": {"control": 0.1, "treatment": 0.9}}
        refused = client.patch("/v1/experiments/exp/weights", json=weights)
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"][0]["loc"] == ["status"]
        arms = client.get("/v1/experiments/exp").json()["arms"]
        assert [a["weight"] for a in arms] == [0.5, 0.5]
    with db.session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(AllocationPeriod)) == 1


# --- issue 13: verdicts that overclaim ----------------------------------------------------------


def _stats(*args: str):
    return CliRunner().invoke(cli_app, ["stats", *args])


def test_alpha_at_or_above_a_half_is_refused_rather_than_calling_ten_projects_equivalent():
    counts = ["proportions", "--control", "5/10", "--treatment", "5/10", "--margin", "-50%"]
    for alpha in ("0.5", "0.99"):
        result = _stats(*counts, "--alpha", alpha)
        assert result.exit_code == 1, result.output
        assert "alpha" in result.output and "equivalent" not in result.output
    allowed = _stats(*counts, "--alpha", "0.2", "--json")
    assert allowed.exit_code == 0, allowed.output
    decision = json.loads(allowed.stdout)["treatments"]["treatment"]["decision"]
    assert decision not in ("equivalent", "non-inferior")


@pytest.mark.parametrize(
    "args",
    [
        ["proportions", "--control", "50/100", "--treatment", "51/100", "--days", "inf"],
        ["power", "--baseline", "0.5", "--mde", "2%", "--daily-projects", "inf"],
    ],
)
def test_infinite_days_are_a_one_line_error_not_a_traceback(args):
    result = _stats(*args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "must be" in result.output and "Traceback" not in result.output
