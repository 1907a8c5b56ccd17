"""Faults against real servers (issue 14), bounded to a few seconds each:

- a poison event sent while PostgreSQL is down is refused (422), every acknowledged event is
  stored after recovery; a row the database still refuses at replay lands in the dead letters,
  reported by /readyz, /metrics and `abtest spool status`;
- a hung PostgreSQL (every process SIGSTOPped) makes requests spool within the timeouts
  instead of stalling; an `abtest serve` killed with SIGKILL restarts (while the database is
  still hung), answers, and after recovery every acknowledged event is stored exactly once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from abtest import auth, db, services
from abtest.api import create_app
from abtest.cli import app as cli
from abtest.settings import Settings
from models.dataset import load_split
from routing.eventlog import row_to_json
from tests.conftest import unavailable
from tests.routing.test_faults import ARMS, ThrowawayPostgres, free_port
from tests.serving_setup import start_two_arm_experiment

pytestmark = [pytest.mark.fault, pytest.mark.postgres]


@pytest.fixture
def pg():
    try:
        server = ThrowawayPostgres()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        unavailable("a throwaway PostgreSQL (initdb/pg_ctl)", exc)
    yield server
    server.destroy()


def stored_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT client_event_id FROM events")).scalars())


def export_event(i: int, **extra) -> dict:
    return {"client_event_id": f"b{i}", "type": "export", "project_id": f"bp{i}", **extra}


def test_poison_during_an_outage_loses_nothing_and_is_reported(pg, tmp_path, monkeypatch):
    engine = start_two_arm_experiment(pg.url)
    spool_dir = tmp_path / "spool"
    settings = Settings(database_url=pg.url, spool_dir=spool_dir, metrics_public=True)
    app = create_app(settings)
    app.state.abtest.extras["arms"] = ARMS
    acknowledged: set[str] = set()
    with TestClient(app) as client:

        def batch(events) -> httpx.Response:
            response = client.post(  # json.dumps: \ud83d escapes, as a client would send
                "/v1/events:batch",
                content=json.dumps({"events": events}),
                headers={"Content-Type": "application/json"},
            )
            if response.status_code == 200:
                acknowledged.update(e["client_event_id"] for e in events)
            return response

        assert batch([export_event(i) for i in range(5)]).json()["stored"] == 5
        pg.stop()
        assert batch([export_event(i) for i in range(5, 10)]).json()["spooled"] == 5
        poison = batch([export_event(10), export_event(11, attributes={"k": "\ud83d"})])
        assert poison.status_code == 422 and "surrogate" in poison.text
        assert poison.json()["detail"][0]["loc"] == ["body", "events", 1, "attributes"]
        for i in range(12, 16):
            routed = client.post("/v1/projects", json={"project_id": f"p{i}", "intent": "x"})
            assert routed.status_code == 200 and routed.json()["spooled"] is True
            acknowledged.add(routed.json()["event_id"])
        assert batch([export_event(i) for i in range(16, 20)]).json()["spooled"] == 4
        # a row the database refuses, spooled by an older version (no ingest check then)
        router = app.state.abtest.extras["router"]
        old = export_event(99, attributes={"k": "\ud83d"}, experiment_id=None, arm_id=None)
        conn = router.spool._open()
        conn.execute("INSERT INTO spool (kind, payload) VALUES ('event', ?)", (row_to_json(old),))
        router.spool._depth += 1
        assert client.get("/readyz").status_code == 503
        pg.start()
        for _ in range(100):
            if router.spool.depth == 0:
                break
            time.sleep(0.1)
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
    assert ready == {"status": "ready", "spool_depth": 0, "dead_letters": 1}
    assert "abtest_dead_letters 1.0" in metrics
    ids = stored_ids(engine)
    assert len(ids) == len(set(ids)) and set(ids) == acknowledged  # none lost, none twice
    monkeypatch.setenv("ABTEST_DATABASE_URL", pg.url)
    monkeypatch.setenv("ABTEST_SPOOL_DIR", str(spool_dir))
    status = CliRunner().invoke(cli, ["spool", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["dead_letters"] == 1
    letters = CliRunner().invoke(cli, ["spool", "dead-letters", "--json"])
    assert '"b99"' in json.loads(letters.output)[0]["payload"]
    engine.dispose()


def _serve(url: str, spool_dir, port: int, log) -> subprocess.Popen:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ABTEST_")},
        "ABTEST_DATABASE_URL": url,
        "ABTEST_SPOOL_DIR": str(spool_dir),
        "ABTEST_DB_STATEMENT_TIMEOUT_S": "1",
        "ABTEST_DB_CONNECT_TIMEOUT_S": "2",
        "PYTHONPATH": os.getcwd(),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "abtest", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait_up(base: str, server: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "abtest serve exited"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError("abtest serve did not start")


def test_hung_database_spools_in_time_and_kill_9_loses_nothing(pg, tmp_path):
    engine = db.make_engine(pg.url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        services.register_variant(
            session, "rec-a", "recorded", config={"split": "test"}, reference=True
        )
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
    intent = load_split("test")[0].intent
    headers = {"Authorization": f"Bearer {key}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed at the end
    acknowledged: set[str] = set()
    server = _serve(pg.url, tmp_path / "spool", port, log)
    try:
        _wait_up(base, server)
        http = httpx.Client(base_url=base, headers=headers, timeout=30)

        def project(i: int) -> tuple[float, httpx.Response]:
            started = time.monotonic()
            response = http.post("/v1/projects", json={"project_id": f"p{i}", "intent": intent})
            return time.monotonic() - started, response

        def export(i: int) -> tuple[float, httpx.Response]:
            started = time.monotonic()
            response = http.post(f"/v1/projects/p{i}/export", json={"client_event_id": f"x{i}"})
            return time.monotonic() - started, response

        def note(response: httpx.Response) -> str:
            assert response.status_code == 200, response.text
            body = response.json()
            acknowledged.add(body.get("event_id") or body["client_event_id"])
            return "spooled" if body.get("spooled") or body.get("outcome") == "spooled" else "ok"

        for i in range(5):  # healthy: the key and the experiments become known
            note(project(i)[1])
        with pg.hung(), concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(project, range(5, 13))) + list(pool.map(export, range(5, 9)))
            outcomes = [note(response) for _, response in results]
            slowest = max(elapsed for elapsed, _ in results)
            assert outcomes.count("spooled") == len(results), outcomes
            # each request waited at most a connect and a statement timeout, never the hang
            assert slowest < 8, slowest
            ready = httpx.get(f"{base}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["spool_depth"] >= len(results)
            server.send_signal(signal.SIGKILL)  # the spool survives the process
            server.wait(timeout=10)
            server = _serve(pg.url, tmp_path / "spool", port, log)  # still hung
            _wait_up(base, server)
            elapsed, restarted = project(20)  # a cold process: key and experiments recalled
            assert note(restarted) == "spooled" and elapsed < 8
        for i in range(21, 24):  # recovered: stored directly again
            note(project(i)[1])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if httpx.get(f"{base}/readyz", timeout=5).json().get("spool_depth") == 0:
                break
            time.sleep(0.2)
        http.post("/v1/projects/p5/export", json={"client_event_id": "x5"})  # a client retry
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    ids = stored_ids(engine)
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert set(ids) == acknowledged, (
        f"lost: {sorted(acknowledged - set(ids))}\n" + (tmp_path / "serve.log").read_text()[-3000:]
    )
    engine.dispose()
