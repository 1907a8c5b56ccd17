"""The request path's one-commit assignment on both backends: allocation versions, weight
changes, a project stored first in another arm, orphan exports, and the FastAPI route and the
fast lane answering alike."""

import asyncio

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from abtest import auth, db, services
from abtest.api import create_app
from abtest.runtime import build_router, close_router
from models.arms.base import Prediction
from models.tools import Filter, ToolConfig
from routing.assignment import decide
from routing.eventlog import FirstAssignment
from tests.serving_setup import make_two_arm_experiment

CONFIGS = {"teacher": ToolConfig(filter=Filter("vivid", 40.0)), "student": ToolConfig()}


class Instant:
    def __init__(self, name):
        self.name = name

    async def predict(self, intent):
        return Prediction(CONFIGS[self.name], 0.1)


ARMS = {name: Instant(name) for name in CONFIGS}


def arm_ids(engine):
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT name, id FROM experiment_arms")).all())


def stored(engine, table, project):
    names = {v: k for k, v in arm_ids(engine).items()}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT arm_id FROM {table} WHERE project_id = :p"), {"p": project}
        ).scalars()
        return [names.get(arm) for arm in rows]


def route(settings, engine, projects):
    async def scenario():
        router = build_router(settings, engine, ARMS)
        try:
            return [await router.handle_project(p, "warm") for p in projects], router
        finally:
            await close_router(router)

    return asyncio.run(scenario())


def allocation_version(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT allocation_version FROM experiments")).scalar_one()


def test_weight_changes_of_a_started_experiment_bump_the_allocation_version(engine):
    make_two_arm_experiment(engine, start=False)
    with db.session_scope(engine) as session:
        services.update_arm_weights(session, "e1", {"control": 0.7, "treatment": 0.3})
    assert allocation_version(engine) == 0  # never started: nobody is assigned yet
    with db.session_scope(engine) as session:
        services.start_experiment(session, "e1")
        services.update_arm_weights(session, "e1", {"control": 0.7})  # no change
    assert allocation_version(engine) == 0
    with db.session_scope(engine) as session:
        services.update_arm_weights(session, "e1", {"control": 0.2, "treatment": 0.8})
    assert allocation_version(engine) == 1


def test_new_projects_store_assignment_and_start_together(settings, engine):
    make_two_arm_experiment(engine)
    projects = [f"p{i}" for i in range(40)]
    routed, _ = route(settings, engine, projects)
    definition = asyncio.run(build_router(settings, engine).catalog.resolve("e1"))
    assert {answer.arm for answer in routed} == {"control", "treatment"}
    for project, answer in zip(projects, routed, strict=True):
        assert answer.arm == decide(definition, project).arm
        assert stored(engine, "assignments", project) == [answer.arm]
        assert stored(engine, "events", project) == [answer.arm]


def test_a_burst_of_new_projects_is_stored_once_with_eager_group_commits(settings, engine):
    """100 requests ready at once (10 of them retries) with eager flushes of 8: every project
    is answered, stored once, in the arm it was answered with."""
    make_two_arm_experiment(engine)
    settings = settings.model_copy(update={"commit_eager_batch": 8, "commit_in_flight": 3})
    projects = [f"b{i}" for i in range(90)] + [f"b{i}" for i in range(10)]

    async def scenario():
        router = build_router(settings, engine, ARMS)
        try:
            return await asyncio.gather(*(router.handle_project(p, "warm") for p in projects))
        finally:
            await close_router(router)

    routed = asyncio.run(scenario())
    arms = {}
    for project, answer in zip(projects, routed, strict=True):
        assert arms.setdefault(project, answer.arm) == answer.arm
    for project, arm in arms.items():
        assert stored(engine, "assignments", project) == [arm]
        assert stored(engine, "events", project) == [arm]


def test_a_project_stored_in_another_arm_counts_there(settings, engine):
    """Version 0 skips the lookup; the database's first-writer-wins insert still decides."""
    make_two_arm_experiment(engine, weights=(1.0, 0.0))  # hashing picks control for everybody
    ids = arm_ids(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO assignments (experiment_id, project_id, arm_id, source, assigned_at)"
                " VALUES (1, 'early', :arm, 'hash', CURRENT_TIMESTAMP)"
            ),
            {"arm": ids["treatment"]},
        )
    (answer,), router = route(settings, engine, ["early"])
    assert answer.arm == "treatment" and answer.variant == "student"
    assert answer.served_by == "teacher"  # what hashing picked answered: recorded as such
    assert stored(engine, "assignments", "early") == ["treatment"]
    assert stored(engine, "events", "early") == ["treatment"]  # intention to treat
    assert b"abtest_assignment_conflicts_total 1.0" in generate_latest(router.metrics.registry)


def test_after_a_weight_change_assigned_projects_keep_their_arm(settings, engine):
    make_two_arm_experiment(engine, weights=(0.5, 0.5))
    projects = [f"p{i}" for i in range(60)]
    before, _ = route(settings, engine, projects)
    with db.session_scope(engine) as session:
        services.update_arm_weights(session, "e1", {"control": 0.0, "treatment": 1.0})
    after, router = route(settings, engine, projects + ["newcomer"])
    assert [a.arm for a in after[:-1]] == [b.arm for b in before]
    assert [a.served_by for a in after[:-1]] == [b.served_by for b in before]  # looked up first
    assert after[-1].arm == "treatment"
    assert b"abtest_assignment_conflicts_total 0.0" in generate_latest(router.metrics.registry)


def test_an_export_before_its_start_takes_the_arm_of_the_start(settings, engine):
    make_two_arm_experiment(engine)

    async def scenario():
        router = build_router(settings, engine, ARMS)
        try:
            await router.record_export("late", ["filter"], "x1", None, "e1")
            return await router.handle_project("late", "warm")
        finally:
            await close_router(router)

    answer = asyncio.run(scenario())
    assert stored(engine, "events", "late") == [answer.arm, answer.arm]


def test_integers_beyond_64_bits_in_attributes_are_stored(settings, engine):
    make_two_arm_experiment(engine)

    async def scenario():
        router = build_router(settings, engine, ARMS)
        try:
            return await router.handle_project("big", "warm", {"n": 2**70})
        finally:
            await close_router(router)

    assert not asyncio.run(scenario()).spooled
    with engine.connect() as conn:
        attributes = conn.execute(sa.text("SELECT attributes FROM events")).scalar_one()
    assert "1180591620717411303424" in str(attributes)


class RouteOnly:
    """The app as plain FastAPI: POST /v1/projects through its route, not the lane."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await FastAPI.__call__(self.app, scope, receive, send)


@pytest.mark.parametrize(
    "headers, body",
    [
        ({}, {"project_id": "p1", "intent": "warm"}),  # 401: no key
        ("analyst", {"project_id": "p1", "intent": "warm"}),  # 403: wrong role
        ("app", {"project_id": "", "intent": "warm"}),  # 422: the field and the reason
        ("app", {"project_id": "p1", "intent": "warm", "extra": 1}),
        ("app", {"project_id": "p1", "intent": "warm", "experiment_key": "nope"}),  # 404
        ("app", {"project_id": "p1", "intent": "warm"}),  # 200
    ],
)
def test_the_fast_lane_answers_like_the_fastapi_route(settings, engine, headers, body):
    make_two_arm_experiment(engine)
    if isinstance(headers, str):
        with db.session_scope(engine) as session:
            _, key = auth.create_key(session, headers, headers)
        headers = {"X-API-Key": key}
    answers = []
    for build in (lambda app: app, RouteOnly):
        app = create_app(settings.model_copy(update={"auth_enabled": True}))
        app.state.abtest.extras["arms"] = ARMS
        with TestClient(build(app)) as client:
            response = client.post("/v1/projects", json=body, headers=headers)
            answer = response.json()
            if response.status_code == 200:
                answer.pop("latency_ms")
            answers.append((response.status_code, answer, response.headers.get("www-authenticate")))
    assert answers[0] == answers[1]
    assert answers[0][0] in (200, 401, 403, 404, 422)


def test_other_requests_go_through_fastapi_and_big_bodies_get_413(settings, engine):
    make_two_arm_experiment(engine)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/projects").status_code == 405
        assert client.get("/healthz").status_code == 200
        exported = client.post("/v1/projects/p/export", json={})
        assert exported.status_code == 200, exported.text
        huge = client.post(
            "/v1/projects",
            json={"project_id": "p", "intent": "x" * (settings.max_body_bytes + 10)},
        )
        assert huge.status_code == 413 and huge.json()["detail"][0]["loc"] == ["body"]
    assert stored(engine, "assignments", "p") == []


def test_the_gateway_refuses_unknown_arms_without_spooling(settings, engine):
    """No foreign keys on events or assignments: the gateway checks the ids it writes."""
    from routing.eventlog import InvalidEventReference, utcnow

    make_two_arm_experiment(engine)
    router = build_router(settings, engine, ARMS)
    gateway = router.close_hooks[0].__self__
    row = {
        "client_event_id": "bad",
        "type": "start",
        "project_id": "p",
        "experiment_id": 1,
        "arm_id": 999,
        "occurred_at": utcnow(),
        "received_at": utcnow(),
    }

    async def scenario():
        try:
            return await gateway.write_first(FirstAssignment(1, "p", 999, "hash"), row)
        finally:
            await close_router(router)

    with pytest.raises(InvalidEventReference, match="arm_id 999"):
        asyncio.run(scenario())
    assert stored(engine, "assignments", "p") == [] and router.spool.depth == 0


def test_an_expired_role_is_refreshed_once_in_the_background(settings, engine, monkeypatch):
    """Expiry must not send every in-flight request to the database (nor fail them while it
    is down): the stale role answers while one lookup refreshes it; a revoked key then fails."""
    from abtest import auth as auth_module
    from abtest.api.deps import AppState, authorize

    with db.session_scope(engine) as session:
        _, key = auth.create_key(session, "app-1", "app")
    state = AppState.build(settings.model_copy(update={"auth_enabled": True}))
    lookups = []
    real_role_of = auth_module.role_of

    def counting_role_of(session, given):
        lookups.append(given)
        return real_role_of(session, given)

    monkeypatch.setattr(auth_module, "role_of", counting_role_of)

    async def scenario():
        assert await authorize(state, key, ("app",)) == "app"  # missing: waits for the lookup
        cache = state.extras["role_cache"]
        cache.ttl_s = 0.0
        cache.put(key, "app")  # now stale
        with db.session_scope(engine) as session:
            auth.revoke_key(session, "app-1")
        roles = await asyncio.gather(*(authorize(state, key, ("app",)) for _ in range(20)))
        assert roles == ["app"] * 20  # the stale role answered at once
        while cache.pending:
            await asyncio.sleep(0.01)
        assert cache.peek(key)[1] is None
        with pytest.raises(Exception, match="invalid or revoked"):
            await authorize(state, key, ("app",))

    asyncio.run(scenario())
    assert len(lookups) == 2  # the first lookup, then one refresh for 20 requests


def test_a_first_assignment_committed_by_a_concurrent_batch_is_read_back(postgres_url, tmp_path):
    """PostgreSQL, batches in flight on several connections: a batch whose insert waited for
    another's (same project) does not see that row in its own snapshot; it reads it back."""
    import psycopg

    from abtest.settings import Settings

    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    make_two_arm_experiment(engine)
    ids = arm_ids(engine)
    settings = Settings(database_url=postgres_url, spool_dir=tmp_path / "spool")
    router = build_router(settings, engine, ARMS)
    gateway = router.close_hooks[0].__self__
    other = psycopg.connect(postgres_url.replace("+psycopg", ""))
    other.execute(
        "INSERT INTO assignments (experiment_id, project_id, arm_id, source, assigned_at) "
        "VALUES (1, 'race', %s, 'hash', now())",
        [ids["treatment"]],
    )  # not committed yet: the gateway's insert of 'race' will wait for it
    from routing.eventlog import EventRecord

    row = EventRecord("start:race", "start", "race", 1, ids["control"]).to_row()

    async def scenario():
        try:
            write = asyncio.ensure_future(
                gateway.write_first(FirstAssignment(1, "race", ids["control"], "hash"), row)
            )
            await asyncio.sleep(0.3)
            assert not write.done()  # blocked on the other transaction's row
            other.commit()
            return await write
        finally:
            await close_router(router)

    try:
        (stored_arm, source), outcome = asyncio.run(scenario())
    finally:
        other.close()
    assert (stored_arm, source, outcome) == (ids["treatment"], "hash", "stored")
    assert stored(engine, "events", "race") == ["treatment"]  # the start took the stored arm
    engine.dispose()
