"""API keys while the database is down: valid keys keep working (Redis, then the last known
roles), unknown keys get a clear 503 (never a 500), and floods of random keys never evict a
valid one."""

import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from abtest import auth, db
from abtest.api import create_app
from abtest.settings import Settings
from tests.abtest.test_serving_api import TEACHER, Instant
from tests.serving_setup import start_two_arm_experiment

PROJECT = {"project_id": "p1", "intent": "warm"}


def test_a_flood_of_random_keys_never_evicts_a_valid_one():
    cache = auth.RoleCache(refused_maxsize=1000)
    cache.put("valid-app-key-0123456789", "app")
    for _ in range(10_000):
        cache.put(f"abt_{uuid.uuid4().hex}", None)
    assert cache.peek("valid-app-key-0123456789") == ("fresh", "app")
    assert len(cache._refused) == 1000


def test_the_last_known_roles_survive_a_restart_and_forget_revoked_keys(tmp_path):
    snapshot = tmp_path / "roles.json"
    first = auth.RoleCache(snapshot=snapshot)
    first.put("key-a-0123456789abcdef", "app")
    first.put("key-b-0123456789abcdef", "analyst")
    first.put("key-b-0123456789abcdef", None)  # revoked
    assert "key-a" not in snapshot.read_text()  # hashes only, as in the database
    restarted = auth.RoleCache(snapshot=snapshot)
    assert restarted.peek("key-a-0123456789abcdef") == ("missing", None)  # not trusted as fresh
    assert restarted.last_known("key-a-0123456789abcdef") == "app"
    assert restarted.last_known("key-b-0123456789abcdef") is None


@pytest.fixture
def keyed(tmp_path):
    url = f"sqlite:///{tmp_path / 'abtest.db'}"
    engine = start_two_arm_experiment(url)
    with db.session_scope(engine) as session:
        _, app_key = auth.create_key(session, "app", "app")
    engine.dispose()
    return url, app_key


def _client(settings):
    app = create_app(settings)
    app.state.abtest.extras["arms"] = {
        "teacher": Instant("teacher", TEACHER),
        "student": Instant("student", TEACHER),
    }
    return TestClient(app)


def _database_down(monkeypatch):
    def unreachable(session, key):
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(auth, "role_of", unreachable)


def test_a_restarted_server_knows_valid_keys_while_the_database_is_down(
    keyed, tmp_path, monkeypatch
):
    url, app_key = keyed
    settings = Settings(database_url=url, spool_dir=tmp_path / "spool", auth_enabled=True)
    headers = {"X-API-Key": app_key}
    with _client(settings) as c:
        assert c.post("/v1/projects", json=PROJECT, headers=headers).status_code == 200
    _database_down(monkeypatch)
    with _client(settings) as c:  # a fresh process: empty in-process cache
        ok = c.post("/v1/projects", json={**PROJECT, "project_id": "p2"}, headers=headers)
        assert ok.status_code == 200, ok.text
        unknown = c.post("/v1/projects", json=PROJECT, headers={"X-API-Key": "abt_" + "x" * 40})
        assert unknown.status_code == 503
        assert "database is unreachable" in unknown.json()["detail"][0]["msg"]
        assert unknown.headers["retry-after"] == "1"
        for i in range(300):  # a flood of random keys during the outage
            c.post("/v1/projects", json=PROJECT, headers={"X-API-Key": f"abt_flood{i:040d}"})
        again = c.post("/v1/projects", json={**PROJECT, "project_id": "p3"}, headers=headers)
        assert again.status_code == 200
        cache = c.app.state.abtest.extras["role_cache"]
        assert cache.peek(app_key) == ("stale", "app")  # answered without waiting, re-checked


def test_redis_shares_roles_with_a_server_that_never_saw_the_key(
    keyed, tmp_path, monkeypatch, redis_url, redis_prefix
):
    url, app_key = keyed
    headers = {"X-API-Key": app_key}
    common = {"database_url": url, "auth_enabled": True, "redis_url": redis_url}
    first = Settings(**common, redis_prefix=redis_prefix, spool_dir=tmp_path / "a")
    with _client(first) as c:
        assert c.post("/v1/projects", json=PROJECT, headers=headers).status_code == 200
    _database_down(monkeypatch)
    other = Settings(**common, redis_prefix=redis_prefix, spool_dir=tmp_path / "b")
    with _client(other) as c:  # another server: no snapshot of its own
        ok = c.post("/v1/projects", json={**PROJECT, "project_id": "p2"}, headers=headers)
        assert ok.status_code == 200, ok.text
    stranger = Settings(**common, redis_prefix=redis_prefix + "x:", spool_dir=tmp_path / "c")
    with _client(stranger) as c:  # neither Redis nor a snapshot knows the key: 503, not 500
        assert c.post("/v1/projects", json=PROJECT, headers=headers).status_code == 503
