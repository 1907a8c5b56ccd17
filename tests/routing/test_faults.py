"""Reliability with real servers that the test starts and stops itself.

- PostgreSQL stopped and restarted while events stream in: every acknowledged event is stored
  exactly once (spooled while it is down, replayed when it is back).
- Redis stopped: no client sees an error and assignments do not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from abtest import db, services
from abtest.api import create_app
from abtest.runtime import build_router
from abtest.settings import Settings
from models.arms.base import Prediction
from models.tools import ToolConfig
from tests.conftest import unavailable
from tests.serving_setup import start_two_arm_experiment

pytestmark = [pytest.mark.fault, pytest.mark.postgres, pytest.mark.redis]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


class ThrowawayPostgres:
    def __init__(self) -> None:
        bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bindirs:
            raise FileNotFoundError("no /usr/lib/postgresql/*/bin (install postgresql)")
        self.bin = bindirs[-1]
        self.dir = tempfile.mkdtemp(prefix="abtest-fault-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            _as_postgres([os.path.join(self.bin, tool), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres?connect_timeout=2"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """Every process of the server stopped (SIGSTOP; the postmaster first, so it forks no
        backend after that): connections are accepted and nothing answers. SIGCONT on exit."""
        with open(os.path.join(self.data, "postmaster.pid")) as handle:
            main = int(handle.readline())
        os.kill(main, signal.SIGSTOP)
        children = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True)
        pids = [main, *(int(pid) for pid in children.stdout.split())]
        for pid in pids[1:]:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayRedis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.port = free_port()
        self.binary = binary
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def postgres():
    try:
        server = ThrowawayPostgres()
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        unavailable("a throwaway PostgreSQL (initdb/pg_ctl)", exc)
    yield server
    server.destroy()


@pytest.fixture
def redis_server():
    try:
        server = ThrowawayRedis()
    except (FileNotFoundError, RuntimeError) as exc:
        unavailable("a throwaway redis-server", exc)
    yield server
    server.stop()


class Instant:
    def __init__(self, name):
        self.name = name

    async def predict(self, intent):
        return Prediction(ToolConfig(), 0.0)

    async def predict_batch(self, intents):
        return [await self.predict(i) for i in intents]


ARMS = {"teacher": Instant("teacher"), "student": Instant("student")}


def test_postgres_restart_loses_and_duplicates_nothing(postgres, tmp_path):
    engine = start_two_arm_experiment(postgres.url)
    settings = Settings(database_url=postgres.url, spool_dir=tmp_path / "spool")
    router = build_router(settings, engine, ARMS)
    total = 240
    acknowledged: set[str] = set()
    spooled = 0

    async def stream() -> None:
        nonlocal spooled
        loop = asyncio.get_running_loop()
        await router.warm_up()
        for start in range(0, total, 20):
            if start == 80:
                await loop.run_in_executor(None, postgres.stop)
            if start == 160:
                await loop.run_in_executor(None, postgres.start)
            results = await asyncio.gather(
                *(
                    router.record_export(f"p{i}", ["filter"], f"ev-{i}")
                    for i in range(start, start + 10)
                ),
                *(router.handle_project(f"p{i}", "warm") for i in range(start + 10, start + 20)),
            )
            for result in results:
                if isinstance(result, dict):
                    acknowledged.add(result["client_event_id"])
                    spooled += result["outcome"] == "spooled"
                else:
                    acknowledged.add(result.event_id)
                    spooled += result.spooled
        # a client retries some events after the restart: still stored once
        for i in list(range(0, 10)) + list(range(80, 90)):
            retry = await router.record_export(f"p{i}", ["filter"], f"ev-{i}")
            assert retry["outcome"] in {"duplicate", "spooled", "stored"}
        for _ in range(50):
            if router.spool.depth == 0:
                break
            await router.replay()
            await asyncio.sleep(0.1)

    asyncio.run(stream())
    assert spooled > 0, "the outage should have sent some events to the spool"
    assert router.spool.depth == 0
    assert len(acknowledged) == total
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT client_event_id FROM events")).scalars().all()
        orphans = conn.execute(
            sa.text("SELECT count(*) FROM events WHERE type = 'start' AND arm_id IS NULL")
        ).scalar()
    assert len(stored) == len(set(stored))  # exactly once
    assert set(stored) == acknowledged
    assert orphans == 0
    engine.dispose()


def test_redis_outage_changes_nothing_for_clients(redis_server, postgres_url, tmp_path):
    engine = start_two_arm_experiment(postgres_url)
    settings = Settings(
        database_url=postgres_url,
        redis_url=redis_server.url,
        redis_prefix="fault:",
        spool_dir=tmp_path / "spool",
    )
    projects = [f"p{i}" for i in range(60)]
    app = create_app(settings)
    app.state.abtest.extras["arms"] = ARMS
    with TestClient(app) as client:
        before = {}
        for pid in projects:
            response = client.post("/v1/projects", json={"project_id": pid, "intent": "x"})
            assert response.status_code == 200
            before[pid] = response.json()["arm"]
        assert set(before.values()) == {"control", "treatment"}
        with db.session_scope(engine) as session:  # weights change: stickiness must hold
            services.update_arm_weights(session, "e1", {"control": 0.05, "treatment": 0.95})
        router = app.state.abtest.extras["router"]
        router.catalog.invalidate()
        router.store.lru = type(router.store.lru)()  # forget the in-process copies
        redis_server.stop()
        after = {}
        for pid in projects:
            response = client.post("/v1/projects", json={"project_id": pid, "intent": "x"})
            assert response.status_code == 200, response.text
            after[pid] = response.json()["arm"]
        fresh = client.post("/v1/projects", json={"project_id": "new", "intent": "x"})
        assert fresh.status_code == 200
    assert after == before
    assert router.store.redis.errors >= 1
    engine.dispose()
