"""Several `abtest serve` processes on one PostgreSQL and Redis keep every guarantee.

Three servers (two single processes and one `--workers 2`) get interleaved requests for the same
projects, including the same client event id sent to every server at once (a client retry
landing on another replica): one arm per project whichever process answers, each event stored
once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from abtest import auth, db, services
from abtest.tables import Assignment, Event

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
INTENTS = ["candle lit", "xpro", "golden hour", "the matrix"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server on {port} not ready after {timeout} s")


def prepare(url: str) -> str:
    engine = db.make_engine(url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        services.register_variant(session, "rec-a", "recorded", reference=True)
        services.create_experiment(
            session,
            services.ExperimentSpec(
                "e1",
                [
                    services.ArmSpec("control", "rec-a", 0.5, True),
                    services.ArmSpec("treatment", "rec-a", 0.5),  # an A/A: both recorded
                ],
            ),
        )
        services.start_experiment(session, "e1")
        _, key = auth.create_key(session, "app", "app")
    engine.dispose()
    return key


@pytest.fixture
def servers(postgres_url, redis_url, redis_prefix, tmp_path):
    key = prepare(postgres_url)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ABTEST_DATABASE_URL": postgres_url,
        "ABTEST_REDIS_URL": redis_url,
        "ABTEST_REDIS_PREFIX": redis_prefix,
        "ABTEST_AUTH_ENABLED": "true",
    }
    started = []
    for index, workers in enumerate((1, 1, 2)):
        port = free_port()
        command = [sys.executable, "-m", "abtest", "serve", "--port", str(port)]
        command += ["--workers", str(workers), "--log-level", "warning"]
        spool = {"ABTEST_SPOOL_DIR": str(tmp_path / f"spool{index}")}
        process = subprocess.Popen(command, cwd=tmp_path, env={**env, **spool})
        started.append((process, port))
    try:
        for process, port in started:
            wait_ready(port, process)
        yield key, [port for _, port in started]
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


async def interleaved(key: str, ports: list[int], projects: int) -> dict[str, list[dict]]:
    headers = {"Authorization": f"Bearer {key}"}
    answers: dict[str, list[dict]] = {}
    limits = httpx.Limits(max_connections=30)
    async with httpx.AsyncClient(headers=headers, timeout=30, limits=limits) as client:

        async def post(port: int, path: str, body: dict) -> httpx.Response:
            response = await client.post(f"http://127.0.0.1:{port}{path}", json=body)
            assert response.status_code == 200, (port, path, response.text)
            return response

        async def project(n: int) -> None:
            pid = f"p{n}"
            intent = INTENTS[n % len(INTENTS)]
            body = {"project_id": pid, "intent": intent, "client_event_id": f"start-{pid}"}
            # the same request (same event id) to every server at once, then a second call
            same = await asyncio.gather(*(post(p, "/v1/projects", body) for p in ports))
            again = {**body, "client_event_id": f"start2-{pid}"}
            later = await post(ports[n % len(ports)], "/v1/projects", again)
            answers[pid] = [r.json() for r in [*same, later]]
            export = {"client_event_id": f"export-{pid}"}
            path = f"/v1/projects/{pid}/export"
            await asyncio.gather(*(post(p, path, export) for p in ports))

        await asyncio.gather(*(project(n) for n in range(projects)))
        batch = {
            "events": [
                {"client_event_id": f"batch-{i}", "type": "start", "project_id": f"b{i}"}
                for i in range(20)
            ]
        }
        await asyncio.gather(*(post(p, "/v1/events:batch", batch) for p in ports))
    return answers


def test_three_servers_one_arm_per_project_and_each_event_once(servers, postgres_url):
    key, ports = servers
    projects = 30
    answers = asyncio.run(interleaved(key, ports, projects))
    engine = db.make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            stored = dict(
                connection.execute(sa.select(Assignment.project_id, Assignment.arm_id)).all()
            )
            counts = connection.execute(
                sa.select(Assignment.project_id, sa.func.count()).group_by(Assignment.project_id)
            ).all()
            ids = connection.execute(sa.select(Event.client_event_id)).scalars().all()
            arm_names = dict(
                connection.execute(sa.text("SELECT id, name FROM experiment_arms")).all()
            )
    finally:
        engine.dispose()
    double = [p for p, n in counts if n != 1]
    assert double == []  # 0 double assignments
    for pid, replies in answers.items():
        arms = {r["arm"] for r in replies}
        assert len(arms) == 1, (pid, arms)  # one arm whichever process answered
        assert arm_names[stored[pid]] == arms.pop()
    assert len(ids) == len(set(ids))  # 0 duplicate events
    expected = {f"start-p{n}" for n in range(projects)}
    expected |= {f"start2-p{n}" for n in range(projects)}
    expected |= {f"export-p{n}" for n in range(projects)}
    expected |= {f"batch-{i}" for i in range(20)}
    assert set(ids) == expected
    assert {a for r in answers.values() for a in {r[0]["arm"]}} == {"control", "treatment"}
