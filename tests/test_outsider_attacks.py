"""Attacks on the round's guarantees, tried as an outsider would (review of issues 12-17).

Each test names the bypass it tries; it fails when the bypass works.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from abtest import db, gating, services
from abtest.api import create_app
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
