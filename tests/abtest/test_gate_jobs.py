"""`POST /v1/variants/{name}/gate` is a job: 202 at once, the same `run_gate` in the background,
refusals still synchronous, roles kept, interrupted jobs reported and marked failed."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from abtest import auth, db, jobs, promotion, services
from abtest.api import create_app
from abtest.tables import GateRun, Job, Promotion, utcnow
from tests.gate_helpers import FIT, finished_job, reference_teacher


@pytest.fixture
def client(settings, engine):
    with db.session_scope(engine) as session:
        reference_teacher(session)
        services.register_variant(session, "knn", "knn_student", FIT)
    with TestClient(create_app(settings)) as c:
        yield c


def count(engine, table) -> int:
    with db.session_scope(engine) as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def count_status(engine, status: str) -> int:
    with db.session_scope(engine) as session:
        return int(session.scalar(select(func.count()).where(Job.status == status)) or 0)


def without_timings(value):
    """Measured latencies differ between two runs of the same arm; everything else must not."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "latency" not in k}
    if isinstance(value, list):
        timed = [isinstance(v, dict) and "latency" in str(v.get("name")) for v in value]
        return [without_timings(v) for v, skip in zip(value, timed, strict=True) if not skip]
    return value


def test_a_gate_job_gives_what_a_synchronous_run_gate_gives(client, engine, settings):
    accepted = client.post("/v1/variants/knn/gate", json={"actor": "dana"})
    assert accepted.status_code == 202, accepted.text
    queued = accepted.json()
    assert queued["kind"] == "gate" and queued["status"] in ("queued", "running")
    assert queued["result"] is None and queued["params"]["variant"] == "knn"
    job = finished_job(client, accepted)
    assert job["status"] == "succeeded", job
    assert job["started_at"] >= job["created_at"] and job["finished_at"] >= job["started_at"]
    with db.session_scope(engine) as session:
        direct = promotion.run_gate(session, "knn", "dana", progress=False, settings=settings)
        expected = promotion.gate_run_summary(direct)
    got = dict(job["result"])
    stored = [run["id"] for run in client.get("/v1/variants/knn/gate-runs").json()]
    assert stored == [expected["id"], got["id"]]  # the job stored its run like a direct call
    assert got["passed"] is expected["passed"] is False
    for key in ("id", "created_at"):
        got.pop(key), expected.pop(key)
    assert "candidate" in got["metrics"] and got["failures"]
    assert without_timings(got) == without_timings(expected)


def test_a_failing_gate_job_approves_nothing(client, engine):
    promotions = count(engine, Promotion)  # the teacher's, as champion
    job = finished_job(client, client.post("/v1/variants/knn/gate"))
    assert job["status"] == "succeeded" and job["result"]["passed"] is False
    assert job["result"]["failures"], job["result"]
    refused = client.post("/v1/variants/knn/promote")
    assert refused.status_code == 409 and refused.json()["detail"][0]["loc"] == ["gate"]
    assert client.get("/v1/variants/knn").json()["status"] == "registered"
    assert count(engine, Promotion) == promotions


@pytest.mark.parametrize(
    ("name", "body", "status", "loc"),
    [
        ("nobody", {}, 404, ["name"]),
        ("teacher", {}, 422, ["name"]),
        ("knn", {"policy": {"version": "x", "overall_floor": 0.1}}, 422, ["policy"]),
        ("knn", {"policy": {"tool_final_floor": 2}}, 422, ["policy", "version"]),
        ("knn", {"actor": ""}, 422, ["body", "actor"]),
    ],
)
def test_refusals_are_synchronous_and_queue_no_job(client, engine, name, body, status, loc):
    answer = client.post(f"/v1/variants/{name}/gate", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"][0]["loc"] == loc
    assert "location" not in answer.headers
    assert count(engine, Job) == 0 and count(engine, GateRun) == 0


def test_an_archived_variant_is_refused_before_a_job(client, engine):
    assert client.post("/v1/variants/knn/archive", json={}).status_code == 200
    answer = client.post("/v1/variants/knn/gate")
    assert answer.status_code == 409 and answer.json()["detail"][0]["loc"] == ["name"]
    assert count(engine, Job) == 0


@pytest.mark.parametrize("job_id", ["0", "abc", str(2**40)])
def test_a_bad_job_id_is_a_422_and_an_unknown_one_a_404(client, job_id):
    answer = client.get(f"/v1/jobs/{job_id}")
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["path", "job_id"]
    missing = client.get("/v1/jobs/99")
    assert missing.status_code == 404 and missing.json()["detail"][0]["loc"] == ["id"]


def test_engineers_start_gate_jobs_and_readers_of_gate_runs_read_them(settings, engine):
    with db.session_scope(engine) as session:
        services.register_variant(session, "knn", "knn_student", FIT)
        keys = {role: auth.create_key(session, role, role)[1] for role in auth.ROLES}
    headers = {role: {"Authorization": f"Bearer {key}"} for role, key in keys.items()}
    with TestClient(create_app(settings.model_copy(update={"auth_enabled": True}))) as client:
        for role in ("analyst", "app"):
            refused = client.post("/v1/variants/knn/gate", headers=headers[role])
            assert refused.status_code == 403, refused.text
        assert client.post("/v1/variants/knn/gate").status_code == 401
        assert count(engine, Job) == 0
        accepted = client.post("/v1/variants/knn/gate", headers=headers["engineer"])
        assert accepted.status_code == 202, accepted.text
        url = accepted.headers["location"]
        assert client.get(url, headers=headers["analyst"]).status_code == 200
        assert client.get(url, headers=headers["app"]).status_code == 403
        assert client.get(url).status_code == 401


def insert_job(engine, status: str, beat_ago_s: float, owner: str = "gone:1:x") -> int:
    with db.session_scope(engine) as session:
        job = jobs.create_job(session, "gate", "erin", {"variant": "knn"}, owner)
        job.status = status
        job.heartbeat_at = utcnow() - timedelta(seconds=beat_ago_s)
        session.flush()
        return job.id


def swept(client) -> None:
    """Wait for the start's sweep of interrupted jobs (it runs beside serving)."""
    sweep = client.app.state.abtest.extras["job_sweep"]
    sweep.join(10)
    assert not sweep.is_alive()


def job_row(engine, job_id: int) -> Job:
    with db.session_scope(engine) as session:
        return jobs.get_job(session, job_id)


def test_jobs_of_a_dead_server_are_marked_failed_when_a_server_starts(settings, engine):
    stale = 2 * jobs.STALE_AFTER_S
    dead_running = insert_job(engine, "running", stale)
    dead_queued = insert_job(engine, "queued", stale)
    alive = insert_job(engine, "running", 0, owner="other-server:2:y")
    with TestClient(create_app(settings)) as client:
        swept(client)
        for job_id in (dead_running, dead_queued):
            row = job_row(engine, job_id)
            assert row.status == "failed" and row.error == jobs.interrupted_error()
            assert row.finished_at is not None
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"
        assert job_row(engine, alive).status == "running"  # another live server's job
        assert client.get(f"/v1/jobs/{alive}").json()["status"] == "running"


def test_a_job_whose_server_stopped_reads_as_failed_without_a_write(client, engine):
    swept(client)
    job_id = insert_job(engine, "running", 2 * jobs.STALE_AFTER_S)  # died after this start
    seen = client.get(f"/v1/jobs/{job_id}").json()
    assert seen["status"] == "failed" and seen["error"]["type"] == "Interrupted"
    assert "interrupted" in seen["error"]["msg"]
    assert job_row(engine, job_id).status == "running"  # a GET only reads


def test_an_unexpected_error_fails_the_job_rolls_back_its_writes_and_hides_details(engine):
    runner = jobs.JobRunner(engine)
    with db.session_scope(engine) as session:
        job_id = jobs.create_job(session, "gate", "erin", {}, runner.owner).id

    def work(session):
        reference_teacher(session)  # a write that must not survive the failure
        session.flush()
        raise RuntimeError("secret connection string")

    runner.submit(job_id, work)
    runner.close()
    row = job_row(engine, job_id)
    assert row.status == "failed" and row.error["type"] == "InternalError"
    assert row.error["status"] == 500 and "secret" not in row.error["msg"]
    assert "RuntimeError" in row.error["msg"]
    with db.session_scope(engine) as session:
        assert services.champion(session) is None


def test_closing_a_runner_lets_the_running_job_finish_and_marks_the_queued_interrupted(engine):
    runner = jobs.JobRunner(engine)
    with db.session_scope(engine) as session:
        first = jobs.create_job(session, "gate", "erin", {}, runner.owner).id
        second = jobs.create_job(session, "gate", "erin", {}, runner.owner).id
    started, release = threading.Event(), threading.Event()

    def slow(session):
        started.set()
        assert release.wait(10)
        return {"done": True}

    runner.submit(first, slow)
    runner.submit(second, slow)
    assert started.wait(10)
    closing = threading.Thread(target=runner.close)
    closing.start()
    time.sleep(0.3)  # close() has dropped the queued job and waits for the running one
    release.set()
    closing.join(10)
    done = job_row(engine, first)
    assert done.status == "succeeded" and done.result == {"done": True}
    dropped = job_row(engine, second)
    assert dropped.status == "failed" and dropped.error == jobs.interrupted_error()


def test_the_cli_shows_a_job_the_api_started(client, settings, monkeypatch):
    from typer.testing import CliRunner

    from abtest.cli import app as cli_app
    from abtest.settings import get_settings

    job = finished_job(client, client.post("/v1/variants/knn/gate", json={"actor": "dana"}))
    monkeypatch.setenv("ABTEST_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    runner = CliRunner()
    shown = runner.invoke(cli_app, ["jobs", "show", str(job["id"]), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == job
    table = runner.invoke(cli_app, ["jobs", "show", str(job["id"])])
    assert f"gate run #{job['result']['id']}: FAILED" in table.output
    missing = runner.invoke(cli_app, ["jobs", "show", "99"])
    assert missing.exit_code == 1 and "no job 99" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    assert runner.invoke(cli_app, ["jobs", "show", "0"]).exit_code == 2


def test_the_start_sweep_only_logs_when_it_cannot_mark(empty_engine, caplog):
    jobs.fail_interrupted_at_start(empty_engine)  # no jobs table: logged, serving goes on
    assert "interrupted jobs not marked at start" in caplog.text


def test_the_heartbeat_keeps_this_servers_running_job_alive_and_no_other(engine):
    runner = jobs.JobRunner(engine)
    other = insert_job(engine, "running", 2 * jobs.STALE_AFTER_S)
    runner.beat()  # nothing submitted here: no write at all
    assert jobs.is_interrupted(job_row(engine, other))
    with db.session_scope(engine) as session:
        mine = jobs.create_job(session, "gate", "erin", {}, runner.owner).id
    started, release = threading.Event(), threading.Event()

    def slow(session):
        started.set()
        assert release.wait(10)
        return {}

    runner.submit(mine, slow)
    assert started.wait(10)
    with db.session_scope(engine) as session:
        session.get(Job, mine).heartbeat_at = utcnow() - timedelta(seconds=2 * jobs.STALE_AFTER_S)
    assert jobs.is_interrupted(job_row(engine, mine))
    runner.beat()
    assert not jobs.is_interrupted(job_row(engine, mine))  # a long gate run stays alive
    assert jobs.is_interrupted(job_row(engine, other))  # another process's job is not touched
    release.set()
    runner.close()
    assert job_row(engine, mine).status == "succeeded"


def test_a_start_with_no_interrupted_job_writes_nothing(engine):
    insert_job(engine, "running", 0, owner="alive:1:z")
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement.lstrip().split()[0].upper())

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        jobs.fail_interrupted_at_start(engine)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert "SELECT" in seen and "UPDATE" not in seen
    assert job_row(engine, insert_job(engine, "queued", 2 * jobs.STALE_AFTER_S)).status == "queued"
    jobs.fail_interrupted_at_start(engine)
    assert count_status(engine, "failed") == 1


def test_a_gate_asked_while_the_server_shuts_down_is_a_503_and_its_job_failed(client, engine):
    """The runner is closed (shutdown has begun): the job row was committed but no worker
    will take it; the answer says so (503, not a 500) and the job reads failed at once."""
    jobs.job_runner(client.app.state.abtest).close()
    answer = client.post("/v1/variants/knn/gate")
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"][0]["loc"] == ["server"]
    assert count_status(engine, "queued") == 0 and count_status(engine, "failed") == 1
    assert count(engine, GateRun) == 0
