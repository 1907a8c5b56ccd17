"""API: health, variants and experiments on both backends; 4xx bodies name the field."""

import pytest
from fastapi.testclient import TestClient

from abtest import db
from abtest.api import create_app
from abtest.settings import Settings


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_app_refuses_an_unmigrated_database(sqlite_url):
    with pytest.raises(db.DatabaseNotMigrated, match="abtest db upgrade"):
        create_app(Settings(database_url=sqlite_url))


def test_health(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def register(client, name, kind, config=None):
    body = {"name": name, "kind": kind, "reference": kind == "teacher"}
    if config is not None or kind == "knn_student":
        body["config"] = config or {"fit": "train"}
    return client.post("/v1/variants", json=body)


def test_variant_and_experiment_flow(client):
    assert register(client, "teacher", "teacher").status_code == 201
    assert register(client, "knn", "knn_student").status_code == 201
    duplicate = register(client, "knn", "knn_student")
    assert duplicate.status_code == 409
    assert duplicate.json()["detail"][0]["loc"] == ["name"]
    body = {
        "key": "exp1",
        "arms": [
            {"name": "control", "variant": "teacher", "weight": 0.5, "control": True},
            {"name": "treatment", "variant": "knn", "weight": 0.5},
        ],
    }
    assert client.post("/v1/experiments", json=body).status_code == 201
    assert client.get("/v1/experiments/exp1").json()["arms"][1]["variant"] == "knn"
    refused = client.post("/v1/experiments/exp1/start")
    assert refused.status_code == 409 and "passing gate" in refused.json()["detail"][0]["msg"]
    assert [e["status"] for e in client.get("/v1/experiments").json()] == ["draft"]


@pytest.mark.parametrize(
    ("arms", "status", "loc"),
    [
        ([("control", "teacher", 0.5, True), ("t", "teacher", 0.6, False)], 422, ["arms"]),
        (
            [("control", "teacher", 0.5, True), ("t", "ghost", 0.5, False)],
            404,
            ["arms", "1", "variant"],
        ),
        ([("control", "teacher", 1.5, True), ("t", "teacher", 0.5, False)], 422, None),
    ],
)
def test_bad_experiment_is_rejected_and_nothing_stored(client, arms, status, loc):
    register(client, "teacher", "teacher")
    body = {
        "key": "exp1",
        "arms": [{"name": n, "variant": v, "weight": w, "control": c} for n, v, w, c in arms],
    }
    response = client.post("/v1/experiments", json=body)
    assert response.status_code == status
    detail = response.json()["detail"][0]
    assert detail["msg"]
    if loc:
        assert detail["loc"] == loc
    assert client.get("/v1/experiments").json() == []


def test_unknown_variant_is_404(client):
    response = client.get("/v1/variants/ghost")
    assert response.status_code == 404
    assert "ghost" in response.json()["detail"][0]["msg"]
