"""Every route: body limits before auth, NUL/NaN/Infinity/surrogates are 422, error bodies
never echo large or unencodable input; /metrics and /docs are private unless configured."""

import json

import pytest
from fastapi.testclient import TestClient

from abtest import auth, db
from abtest.api import create_app
from abtest.settings import Settings
from tests.abtest.test_serving_api import TEACHER, Instant
from tests.serving_setup import start_two_arm_experiment


@pytest.fixture
def setup(tmp_path):
    url = f"sqlite:///{tmp_path / 'abtest.db'}"
    engine = start_two_arm_experiment(url)
    with db.session_scope(engine) as session:
        keys = {role: auth.create_key(session, role, role)[1] for role in auth.ROLES}
    engine.dispose()
    settings = Settings(
        database_url=url,
        spool_dir=tmp_path / "spool",
        auth_enabled=True,
        max_body_bytes=64 * 1024,
        max_batch_body_bytes=256 * 1024,
    )
    return settings, keys


def client(settings, **overrides):
    app = create_app(settings.model_copy(update=overrides))
    app.state.abtest.extras["arms"] = {
        "teacher": Instant("teacher", TEACHER),
        "student": Instant("student", TEACHER),
    }
    return TestClient(app)


def test_bodies_over_the_limit_are_413_before_auth(setup):
    settings, keys = setup
    huge = b'{"events": [' + b'{"x": 1},' * 100_000 + b'{"x": 1}]}'  # ~1 MB
    with client(settings) as c:
        for path in ("/v1/events:batch", "/v1/variants", "/v1/projects"):
            for headers in ({}, {"X-API-Key": "abt_" + "n" * 40}, {"X-API-Key": keys["app"]}):
                response = c.post(path, content=huge, headers=headers)
                assert response.status_code == 413, (path, headers, response.text)
                assert len(response.content) < 300 and "larger than" in response.text

        def chunks():  # no Content-Length: counted while reading
            for _ in range(100):
                yield b" " * 10_000

        streamed = c.post("/v1/events:batch", content=chunks(), headers={"X-API-Key": keys["app"]})
        assert streamed.status_code == 413
        small = c.post("/v1/variants", json={"name": "v", "kind": "teacher"})
        assert small.status_code == 401  # under the limit: auth as usual


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/variants/a%00b"),
        ("get", "/v1/experiments?status=a%00b"),
        ("post", "/v1/projects/a%00b/export"),
    ],
)
def test_nul_in_path_or_query_is_422(setup, method, path):
    settings, keys = setup
    with client(settings) as c:
        response = getattr(c, method)(path, headers={"X-API-Key": keys["engineer"]})
    assert response.status_code == 422
    assert "NUL" in response.json()["detail"][0]["msg"]


def _raw(c, path, text, key):
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    return c.post(path, content=text.encode("utf-8"), headers=headers)


EXPORT = '"client_event_id": "a", "type": "export", "project_id": "p"'


@pytest.mark.parametrize(
    "event",
    [
        "{" + EXPORT + ', "latency_ms": NaN}',
        "{" + EXPORT + ', "latency_ms": Infinity}',
        "{" + EXPORT + ', "attributes": {"x": NaN}}',
        "{" + EXPORT + ', "attributes": {"k": "\\ud83d"}}',
        '{"client_event_id": "\\ud83d", "type": "export", "project_id": "p"}',
        "{" + EXPORT + ', "intent": "a\\u0000b"}',
    ],
)
def test_unstorable_batch_values_are_422(setup, event):
    settings, keys = setup
    with client(settings) as c:
        response = _raw(c, "/v1/events:batch", '{"events": [' + event + "]}", keys["app"])
    assert response.status_code == 422, response.text
    json.loads(response.text)  # a body any client can parse


@pytest.mark.parametrize(
    "body",
    [
        '{"project_id": "p", "intent": "\\ud83d"}',
        '{"project_id": "p", "intent": "x", "client_event_id": "\\udfff"}',
        '{"project_id": "p", "intent": "x", "attributes": {"a": Infinity}}',
        '{"project_id": "p\\u0000", "intent": "x"}',
    ],
)
def test_unstorable_project_values_are_422(setup, body):
    settings, keys = setup
    with client(settings) as c:
        response = _raw(c, "/v1/projects", body, keys["app"])
    assert response.status_code == 422, response.text
    json.loads(response.text)  # never an unencodable echo


def test_error_bodies_never_echo_large_input(setup):
    settings, keys = setup
    big_intent = "x" * 200_000
    event = {"client_event_id": "a", "type": "export", "project_id": "p", "intent": big_intent}
    with client(settings) as c:
        batch = c.post(
            "/v1/events:batch", json={"events": [event]}, headers={"X-API-Key": keys["app"]}
        )
        project = c.post(
            "/v1/projects",
            json={"project_id": "p", "intent": big_intent[:60_000]},
            headers={"X-API-Key": keys["app"]},
        )
    for response in (batch, project):
        assert response.status_code == 422
        assert len(response.content) < 1000, response.text[:300]


def test_metrics_need_a_key_unless_public(setup):
    settings, keys = setup
    with client(settings) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": keys["app"]}).status_code == 403
        assert c.get("/metrics", headers={"X-API-Key": keys["analyst"]}).status_code == 200
    with client(settings, metrics_public=True) as c:
        assert c.get("/metrics").status_code == 200


def test_docs_are_off_with_auth_unless_public(setup):
    settings, _ = setup
    with client(settings) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 404
    with client(settings, docs_public=True) as c:
        assert c.get("/docs").status_code == 200
        assert c.get("/openapi.json").status_code == 200
    with client(settings, auth_enabled=False) as c:
        assert c.get("/openapi.json").status_code == 200


def test_a_long_name_in_the_path_is_not_echoed_in_full(setup):
    settings, keys = setup
    with client(settings) as c:
        response = c.get("/v1/variants/" + "n" * 20_000, headers={"X-API-Key": keys["analyst"]})
    assert response.status_code in (404, 422)
    assert len(response.content) < 1000


@pytest.mark.parametrize(
    "headers, refused",
    [
        ({"Origin": "https://evil.example"}, True),
        ({"Sec-Fetch-Site": "cross-site"}, True),
        ({"Origin": "null"}, True),
        ({"Origin": "http://testserver"}, False),  # the server's own page
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}, False),
        ({}, False),  # curl, SDKs, the app's backend: not a browser
    ],
    ids=["other-origin", "fetch-cross-site", "null-origin", "same-origin", "same-site", "none"],
)
def test_cross_site_browser_writes_are_refused_even_without_keys(setup, headers, refused):
    """Any body reads as JSON (plain `curl -d` works), so without this a page an operator
    visits could post a form to a server running without keys and register a variant."""
    settings, _ = setup
    body = json.dumps({"name": "k9", "kind": "knn_student", "config": {"fit": "train"}})
    with client(settings, auth_enabled=False) as c:
        answer = c.post("/v1/variants", content=body.encode(),
                        headers={"Content-Type": "text/plain", **headers})  # fmt: skip
        assert (answer.status_code == 403) is refused, answer.text
        if refused:
            assert answer.json()["detail"][0]["loc"] == ["header", "origin"]
        project = c.post(
            "/v1/projects", content=b'{"project_id": "p1", "intent": "x"}', headers=headers
        )  # fmt: skip (the pure-ASGI hot path checks it too)
        assert (project.status_code == 403) is refused, project.text
        listed = [v["name"] for v in c.get("/v1/variants", headers=headers).json()]
    assert ("k9" in listed) is not refused  # reads stay open; a refused write stored nothing


def test_the_audit_trail_names_the_key_that_acted_not_only_the_claimed_actor(setup):
    """A body's `actor` is whatever the client typed; with keys required, the promotion
    history also records the fingerprint of the key that made the change (as `keys list`
    shows it), so "alice" cannot be claimed anonymously."""
    from sqlalchemy import select

    from abtest.tables import Promotion, Variant

    settings, keys = setup
    engineer = {"Authorization": f"Bearer {keys['engineer']}"}
    body = {"name": "k9", "kind": "knn_student", "config": {"fit": "train"}}
    with client(settings) as c:
        assert c.post("/v1/variants", json=body, headers=engineer).status_code == 201
        archived = c.post("/v1/variants/k9/archive", json={"actor": "alice"}, headers=engineer)
        assert archived.status_code == 200, archived.text
    engine = db.make_engine(settings.database_url)
    with db.session_scope(engine) as session:
        fingerprint = next(
            auth.key_summary(k)["fingerprint"] for k in auth.list_keys(session)
            if k.role == "engineer"
        )  # fmt: skip
        actors = session.scalars(
            select(Promotion.actor).join(Variant).where(Variant.name == "k9")
        ).all()
    engine.dispose()
    assert fingerprint == auth.key_fingerprint(keys["engineer"])
    assert actors == [f"alice (key {fingerprint})"]
