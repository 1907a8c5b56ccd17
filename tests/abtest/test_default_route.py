"""After conclusion the champion serves; every server stops assigning within a second.

The second server is a real `python -m abtest serve` process on a free 127.0.0.1 port, sharing
the PostgreSQL database with the in-process app (the first server).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from abtest import auth, db, services
from abtest.api import create_app
from abtest.settings import Settings
from abtest.tables import Assignment, Event
from models.dataset import load_split
from tests.gate_helpers import approved_student, reference_teacher

INTENT = load_split("test")[0].intent
ROOT = Path(__file__).resolve().parents[2]


def setup_experiment(engine) -> None:
    with db.session_scope(engine) as session:
        reference_teacher(session, "teacher", kind="recorded")
        approved_student(session, "student")
        arms = [
            services.ArmSpec("control", "teacher", 0.5, True),
            services.ArmSpec("treatment", "student", 0.5),
        ]
        services.create_experiment(session, services.ExperimentSpec("e1", arms))
        services.start_experiment(session, "e1")


def rows(engine, table) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(table))


CONCLUDE = {"ship": "control", "override": True, "reason": "end-to-end test", "actor": "t"}


def test_after_conclude_the_champion_answers_the_next_project(settings):
    engine = db.make_engine(settings.database_url)
    setup_experiment(engine)
    with TestClient(create_app(settings)) as client:
        before = client.post("/v1/projects", json={"project_id": "p1", "intent": INTENT})
        assert before.status_code == 200 and before.json()["route"] == "experiment"
        events = rows(engine, Event)
        assert client.post("/v1/experiments/e1/conclude", json=CONCLUDE).status_code == 200
        after = client.post("/v1/projects", json={"project_id": "p2", "intent": INTENT})
        assert after.status_code == 200, after.text
        body = after.json()
        assert body["route"] == "champion" and body["experiment"] is None
        assert body["variant"] == body["served_by"] == "teacher"
        assert body["in_experiment"] is False and body["event_id"] is None
        assert body["tools"] != {} and not body["fallback"]
        # nothing enters an experiment's analysis
        assert rows(engine, Event) == events and rows(engine, Assignment) == events
    engine.dispose()


def test_without_a_champion_and_experiment_the_answer_is_409(settings):
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/projects", json={"project_id": "p", "intent": INTENT})
        assert response.status_code == 409
        assert "no champion" in response.json()["detail"][0]["msg"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def second_server(postgres_url, tmp_path):
    """`python -m abtest serve` (auth on) on the shared database; yields its base URL."""
    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    setup_experiment(engine)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ABTEST_", "OPENAI_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        ABTEST_DATABASE_URL=postgres_url,
        ABTEST_SPOOL_DIR=str(tmp_path / "spool-b"),
    )
    command = [sys.executable, "-m", "abtest", "serve", "--port", str(port), "--auth"]
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"server exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("the second server did not start")
        yield url, engine
    finally:
        process.terminate()
        process.wait(timeout=10)
        engine.dispose()


def wait_until(check, limit_s: float, started: float | None = None) -> float:
    """Seconds from `started` (default: now) until `check()` is true (polled every 20 ms);
    fails past `limit_s`."""
    started = time.monotonic() if started is None else started
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < limit_s, f"not within {limit_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_second_server_stops_assigning_and_honours_revocation_within_a_second(
    second_server, postgres_url, tmp_path
):
    url, engine = second_server
    with db.session_scope(engine) as session:
        _, key = auth.create_key(session, "ios", "app")
    headers = {"Authorization": f"Bearer {key}"}
    counter = iter(range(10_000))

    def route() -> str:
        body = {"project_id": f"b{next(counter)}", "intent": INTENT}
        response = httpx.post(f"{url}/v1/projects", json=body, headers=headers, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()["route"]

    assert wait_until(lambda: route() == "experiment", 5) < 5
    settings = Settings(database_url=postgres_url, spool_dir=tmp_path / "spool-a")
    with TestClient(create_app(settings)) as first:
        assert first.post("/v1/experiments/e1/conclude", json=CONCLUDE).status_code == 200
        concluded = time.monotonic()
        next_project = {"project_id": "a1", "intent": INTENT}
        assert first.post("/v1/projects", json=next_project).json()["route"] == "champion"
        assert wait_until(lambda: route() == "champion", 1.0, concluded) < 1.0

    with db.session_scope(engine) as session:
        auth.revoke_key(session, "ios")
    revoked = time.monotonic()

    def refused() -> bool:
        body = {"project_id": "r", "intent": INTENT}
        status = httpx.post(f"{url}/v1/projects", json=body, headers=headers, timeout=5)
        return status.status_code == 401

    assert wait_until(refused, 1.0, revoked) < 1.0
