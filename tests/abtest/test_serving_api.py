"""Serving API on both backends: projects, exports, batches, idempotency, 4xx, auth, metrics."""

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from abtest import auth, db, services
from abtest.api import create_app
from abtest.cli import app as cli
from abtest.tables import Event
from models.arms.base import Prediction
from models.tools import Filter, ToolConfig
from tests.gate_helpers import approved_student, reference_teacher

TEACHER = ToolConfig(filter=Filter("vivid", 40.0))
STUDENT = ToolConfig(filter=Filter("winter", 10.0))


class Instant:
    def __init__(self, name, config):
        self.name = name
        self.config = config

    async def predict(self, intent):
        return Prediction(self.config, 0.1)

    async def predict_batch(self, intents):
        return [await self.predict(i) for i in intents]


def make_experiment(engine, key="e1", start=True, weights=(0.5, 0.5)):
    with db.session_scope(engine) as session:
        for name in ("teacher", "student"):
            if (
                session.scalar(
                    sa.select(sa.func.count())
                    .select_from(sa.table("variants"))
                    .where(sa.column("name") == name)
                )
                == 0
            ):
                if name == "teacher":
                    reference_teacher(session)
                else:
                    approved_student(session, name)
        services.create_experiment(
            session,
            services.ExperimentSpec(
                key,
                [
                    services.ArmSpec("control", "teacher", weights[0], True),
                    services.ArmSpec("treatment", "student", weights[1]),
                ],
            ),
        )
        if start:
            services.start_experiment(session, key)


def client_for(settings, **overrides):
    app = create_app(settings.model_copy(update=overrides))
    app.state.abtest.extras["arms"] = {
        "teacher": Instant("teacher", TEACHER),
        "student": Instant("student", STUDENT),
    }
    return TestClient(app)


@pytest.fixture
def engine_for(settings):
    engine = db.make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def client(settings, engine_for):
    make_experiment(engine_for)
    with client_for(settings) as c:
        yield c


def events(engine, where="1=1"):
    with engine.connect() as conn:
        query = sa.select(Event.__table__).where(sa.text(where))
        return conn.execute(query).mappings().all()


def test_project_is_assigned_answered_and_logged(client, engine_for):
    body = client.post("/v1/projects", json={"project_id": "p1", "intent": "warm"}).json()
    assert body["experiment"] == "e1" and body["arm"] in {"control", "treatment"}
    expected = STUDENT if body["arm"] == "treatment" else TEACHER
    assert body["tools"] == expected.to_record() and body["in_experiment"]
    assert body["latency_ms"] >= 0 and not body["fallback"]
    arms = {
        client.post("/v1/projects", json={"project_id": "p1", "intent": "x"}).json()["arm"]
        for _ in range(3)
    }
    assert arms == {body["arm"]}  # sticky
    starts = events(engine_for, "type = 'start'")
    assert len(starts) == 1  # a retried start is stored once
    assert starts[0]["served_by"] in {"teacher", "student"} and starts[0]["latency_ms"] >= 0
    with engine_for.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM assignments")).scalar() == 1


def test_exports_are_idempotent_and_reconciled(client, engine_for):
    # export first (out of order), then the start
    first = client.post(
        "/v1/projects/early/export", json={"kept_tools": ["filter"], "client_event_id": "x1"}
    )
    assert first.status_code == 200 and first.json()["outcome"] == "stored"
    again = client.post("/v1/projects/early/export", json={"client_event_id": "x1"})
    assert again.json()["outcome"] == "duplicate"
    started = client.post("/v1/projects", json={"project_id": "early", "intent": "x"}).json()
    rows = events(engine_for, "project_id = 'early'")
    assert len(rows) == 2 and len({r["arm_id"] for r in rows}) == 1 and rows[0]["arm_id"]
    export = next(r for r in rows if r["type"] == "export")
    assert export["attributes"] == {"kept_tools": ["filter"]}
    assert started["arm"] in {"control", "treatment"}
    assert client.post("/v1/projects/early/export").status_code == 200  # no body at all


def test_event_batch(client, engine_for):
    client.post("/v1/projects", json={"project_id": "b0", "intent": "x"})
    batch = [
        {"client_event_id": f"ev{i}", "type": "export", "project_id": f"b{i}"} for i in range(500)
    ]
    first = client.post("/v1/events:batch", json={"events": batch}).json()
    assert first == {"received": 500, "stored": 500, "duplicates": 0, "spooled": 0}
    retry = client.post("/v1/events:batch", json={"events": batch[:100]}).json()
    assert retry["stored"] == 0 and retry["duplicates"] == 100
    assert len(events(engine_for, "type = 'export'")) == 500
    assert events(engine_for, "client_event_id = 'ev0'")[0]["arm_id"] is not None


MALFORMED = [
    ("/v1/projects", {"intent": "x"}, ["body", "project_id"]),
    ("/v1/projects", {"project_id": "", "intent": "x"}, ["body", "project_id"]),
    ("/v1/projects", {"project_id": "p", "intent": "x", "extra": 1}, ["body", "extra"]),
    ("/v1/projects", {"project_id": "p\x00", "intent": "x"}, ["body", "project_id"]),
    ("/v1/projects", {"project_id": "p", "intent": "   "}, ["intent"]),
    ("/v1/projects/p/export", {"kept_tools": ["paint"]}, ["body", "kept_tools", 0]),
    ("/v1/projects/p/export", {"occurred_at": "1900-01-01T00:00:00Z"}, ["body", "occurred_at"]),
    ("/v1/events:batch", {"events": []}, ["body", "events"]),
    (
        "/v1/events:batch",
        {"events": [{"client_event_id": "a", "type": "click", "project_id": "p"}]},
        ["body", "events", 0, "type"],
    ),
    (
        "/v1/events:batch",
        {"events": [{"client_event_id": "a", "type": "start", "project_id": "p", "arm": "ghost"}]},
        ["events", "0", "arm"],
    ),
]


def test_malformed_requests_get_422_naming_the_field(client, engine_for):
    for path, body, loc in MALFORMED:
        response = client.post(path, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == loc, (path, body)
    for raw in (b"\x80", b"{not json", b""):
        response = client.post(
            "/v1/projects", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body"]
    assert events(engine_for) == []  # nothing stored


def test_experiment_choice_errors(settings, engine_for):
    with client_for(settings) as c:
        none = c.post("/v1/projects", json={"project_id": "p", "intent": "x"})
        assert none.status_code == 409 and none.json()["detail"][0]["loc"] == ["experiment_key"]
        make_experiment(engine_for, "a")
        make_experiment(engine_for, "b")
        c.app.state.abtest.extras["router"].catalog.invalidate()
        both = c.post("/v1/projects", json={"project_id": "p", "intent": "x"})
        assert both.status_code == 409 and "a, b" in both.json()["detail"][0]["msg"]
        chosen = c.post(
            "/v1/projects", json={"project_id": "p", "intent": "x", "experiment_key": "b"}
        )
        assert chosen.json()["experiment"] == "b"
        unknown = c.post(
            "/v1/projects", json={"project_id": "p", "intent": "x", "experiment_key": "zz"}
        )
        assert unknown.status_code == 404


def test_auth_roles(settings, engine_for):
    make_experiment(engine_for)
    with db.session_scope(engine_for) as session:
        _, app_key = auth.create_key(session, "app", "app")
        _, analyst = auth.create_key(session, "analyst", "analyst")
        _, engineer = auth.create_key(session, "eng", "engineer")
        stored = [k.key_hash for k in auth.list_keys(session)]
    assert app_key not in stored and auth.hash_key(app_key) in stored
    project = {"project_id": "p", "intent": "x"}
    with client_for(settings, auth_enabled=True) as c:
        missing = c.post("/v1/projects", json=project)
        assert (
            missing.status_code == 401 and "missing API key" in missing.json()["detail"][0]["msg"]
        )
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/v1/projects", json=project, headers={"X-API-Key": "abt_nope" * 3})
        assert wrong.status_code == 401 and "invalid" in wrong.json()["detail"][0]["msg"]
        forbidden = c.post("/v1/projects", json=project, headers={"X-API-Key": analyst})
        assert forbidden.status_code == 403
        assert "role 'analyst'" in forbidden.json()["detail"][0]["msg"]
        assert "needs role app" in forbidden.json()["detail"][0]["msg"]
        ok = c.post("/v1/projects", json=project, headers={"Authorization": f"Bearer {app_key}"})
        assert ok.status_code == 200
        assert c.get("/v1/experiments", headers={"X-API-Key": analyst}).status_code == 200
        assert c.get("/v1/experiments", headers={"X-API-Key": app_key}).status_code == 403
        assert (
            c.post(
                "/v1/variants",
                json={"name": "v", "kind": "knn_student", "config": {"fit": "train"}},
                headers={"X-API-Key": analyst},
            ).status_code
            == 403
        )
        assert (
            c.post(
                "/v1/variants",
                json={"name": "v", "kind": "knn_student", "config": {"fit": "train"}},
                headers={"X-API-Key": engineer},
            ).status_code
            == 201
        )
        assert c.get("/healthz").status_code == 200  # health stays open
    with db.session_scope(engine_for) as session:
        auth.revoke_key(session, "app")
    with client_for(settings, auth_enabled=True) as c:
        revoked = c.post("/v1/projects", json=project, headers={"X-API-Key": app_key})
        assert revoked.status_code == 401


def test_auth_disabled_by_default_in_settings(client):
    assert client.post("/v1/projects", json={"project_id": "p", "intent": "x"}).status_code == 200


def test_metrics_and_readyz(client):
    client.post("/v1/projects", json={"project_id": "p", "intent": "x"})
    text = client.get("/metrics").text
    assert "abtest_arm_latency_seconds_bucket" in text and 'experiment="e1"' in text
    assert "abtest_spool_depth 0.0" in text and "abtest_events_total" in text
    assert 'abtest_assignment_cache_lookups{result="miss"} 1.0' in text
    assert "abtest_dead_letters 0.0" in text
    ready = client.get("/readyz").json()
    assert ready == {"status": "ready", "spool_depth": 0, "dead_letters": 0}


def test_keys_cli(settings, monkeypatch):
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "ci", "--role", "app"])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("abt_")
    listed = runner.invoke(cli, ["keys", "list", "--json"])
    assert '"ci"' in listed.output and key not in listed.output
    bad = runner.invoke(cli, ["keys", "create", "x", "--role", "root"])
    assert bad.exit_code == 1 and "role" in bad.output
    assert runner.invoke(cli, ["keys", "revoke", "ci"]).exit_code == 0
    again = runner.invoke(cli, ["keys", "revoke", "ci"])
    assert again.exit_code == 1 and "already revoked" in again.output
    replay = runner.invoke(cli, ["spool", "replay"])
    assert replay.exit_code == 0 and "replayed 0" in replay.output


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, True),
        (["--no-auth"], {}, False),
        ([], {"ABTEST_AUTH_ENABLED": "false"}, False),
        (["--auth"], {"ABTEST_AUTH_ENABLED": "false"}, True),
    ],
)
def test_serve_enables_auth_unless_disabled(sqlite_url, monkeypatch, argv, env, expected):
    import uvicorn

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    engine.dispose()
    monkeypatch.setenv("ABTEST_DATABASE_URL", sqlite_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    result = CliRunner().invoke(cli, ["serve", "--port", "8123", *argv])
    assert result.exit_code == 0, result.output
    assert served["app"].state.abtest.settings.auth_enabled is expected
    assert served["port"] == 8123


def test_bodies_are_json_without_a_content_type_like_curl_d(client, engine_for):
    """`curl -d @events.json` sends application/x-www-form-urlencoded: the JSON is read anyway,
    on every app endpoint (as on /v1/projects); a malformed body is still a 422 naming the field."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    routed = client.post(
        "/v1/projects", content=b'{"project_id": "p1", "intent": "golden hour"}', headers=form
    )
    assert routed.status_code == 200, routed.text
    batch = (
        b'{"events": [{"client_event_id": "c1", "type": "export", "project_id": "p1",'
        b' "kept_tools": ["filter"]}]}'
    )
    stored = client.post("/v1/events:batch", content=batch, headers=form)
    assert stored.status_code == 200, stored.text
    assert stored.json()["stored"] == 1
    export = client.post("/v1/projects/p1/export", content=b"", headers=form)
    assert export.status_code == 200, export.text
    bad = client.post("/v1/events:batch", content=b'{"events": [{"type": "x"}]}', headers=form)
    assert bad.status_code == 422
    assert ["body", "events", 0, "type"] in [e["loc"] for e in bad.json()["detail"]]
    assert client.post("/v1/projects/p1/export", content=b"{", headers=form).status_code == 422


def test_the_readme_events_example_is_accepted(settings, engine_for):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "events.json"
    make_experiment(engine_for, key="minilm-vs-teacher")
    with client_for(settings) as c:
        c.post("/v1/projects", json={"project_id": "p2", "intent": "moody film noir"})
        answer = c.post("/v1/events:batch", content=example.read_bytes())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 2, "stored": 2, "duplicates": 0, "spooled": 0}
    stored = events(engine_for, "project_id = 'p2'")
    assert any(row.attributes == {"platform": "ios", "country": "DE"} for row in stored)
