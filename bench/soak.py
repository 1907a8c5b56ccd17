"""Soak `abtest serve` under load while its PostgreSQL restarts, hangs and the server is killed.

    python bench/soak.py [--seconds 60] [--clients 8] [--json out.json]

Starts a throwaway PostgreSQL (initdb/pg_ctl, as the fault tests do) and `abtest serve` with
two recorded arms and an app key, then runs `--clients` concurrent clients, each sending a new
project (`POST /v1/projects`) followed by its export, for `--seconds`, cycling through faults:
healthy -> PostgreSQL restarted (fast stop, start after 3 s) -> healthy -> PostgreSQL hung
(every process SIGSTOPped for 8 s) -> healthy -> the server killed with SIGKILL and restarted.
At the end it waits for the spool to drain and checks the database: every acknowledged event
(a 200 answer) stored exactly once. Prints answers, errors (5xx, connection refused while the
server restarts), spooled answers, latency p50/p99/max per phase, and lost/duplicated counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from abtest import auth, db, services  # noqa: E402
from models.dataset import load_split  # noqa: E402
from tests.routing.test_faults import ThrowawayPostgres, free_port  # noqa: E402

PHASES = ("healthy", "pg-restart", "healthy", "pg-hung", "healthy", "server-kill-9")


def prepare(url: str) -> str:
    engine = db.make_engine(url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        for name in ("rec-a", "rec-b"):
            services.register_variant(session, name, "recorded", config={"split": "test"})
        services.create_experiment(
            session,
            services.ExperimentSpec(
                "soak",
                [
                    services.ArmSpec("control", "rec-a", 0.5, True),
                    services.ArmSpec("treatment", "rec-b", 0.5),
                ],
            ),
        )
        services.start_experiment(session, "soak")
        _, key = auth.create_key(session, "soak", "app")
    engine.dispose()
    return key


def serve(url: str, spool: Path, port: int, log) -> subprocess.Popen:  # noqa: ANN001
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ABTEST_")},
        "ABTEST_DATABASE_URL": url,
        "ABTEST_SPOOL_DIR": str(spool),
        "ABTEST_DB_STATEMENT_TIMEOUT_S": "1",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "abtest", "serve", "--port", str(port)]
    return subprocess.Popen(
        [*command, "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_up(base: str, timeout_s: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError("abtest serve did not start")


class Soak:
    def __init__(self, base: str, key: str, intents: list[str]) -> None:
        self.base = base
        self.key = key
        self.intents = intents
        self.phase = "healthy"
        self.acknowledged: set[str] = set()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.stop = False

    async def client(self, number: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30) as http:
            i = 0
            while not self.stop:
                project = f"c{number}-{i}"
                intent = self.intents[(number * 7919 + i) % len(self.intents)]
                await self.call(http, "/v1/projects", {"project_id": project, "intent": intent})
                await self.call(
                    http, f"/v1/projects/{project}/export", {"client_event_id": f"x-{project}"}
                )
                i += 1

    async def call(self, http: httpx.AsyncClient, path: str, body: dict) -> None:
        phase = self.phase
        started = time.monotonic()
        try:
            response = await http.post(path, json=body)
        except httpx.HTTPError:
            self.counts[phase]["connection_error"] += 1
            await asyncio.sleep(0.2)  # the server is restarting
            return
        self.latency[phase].append(time.monotonic() - started)
        counts = self.counts[phase]
        if response.status_code != 200:
            counts[f"http_{response.status_code}"] += 1
            return
        answer = response.json()
        counts["ok"] += 1
        counts["spooled"] += bool(answer.get("spooled") or answer.get("outcome") == "spooled")
        self.acknowledged.add(answer.get("event_id") or answer["client_event_id"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run(args: argparse.Namespace) -> dict:
    pg = ThrowawayPostgres()
    work = Path(tempfile.mkdtemp(prefix="abtest-soak-"))
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed at the end
    url = pg.url.split("?")[0]
    server = None
    try:
        key = prepare(url)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = serve(url, work / "spool", port, log)
        wait_up(base)
        soak = Soak(base, key, [r.intent for r in load_split("test")])
        clients = [asyncio.create_task(soak.client(n)) for n in range(args.clients)]
        slot = args.seconds / len(args.phases)
        restarts: list[float] = []
        for phase in args.phases:
            soak.phase = phase
            if phase == "pg-restart":
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(3)
                await asyncio.to_thread(pg.start)
            elif phase == "pg-hung":
                with pg.hung():
                    await asyncio.sleep(8)
            elif phase == "server-kill-9":
                server.send_signal(signal.SIGKILL)
                server.wait()
                server = serve(url, work / "spool", port, log)
                restarts.append(await asyncio.to_thread(wait_up, base))
            await asyncio.sleep(slot)
        soak.stop = True
        await asyncio.gather(*clients)
        drained_in = None
        started = time.monotonic()
        while time.monotonic() - started < 60:
            ready = httpx.get(f"{base}/readyz", timeout=10).json()
            if ready.get("spool_depth") == 0:
                drained_in = time.monotonic() - started
                break
            await asyncio.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        engine = db.make_engine(url)
        with engine.connect() as conn:
            stored = list(conn.execute(sa.text("SELECT client_event_id FROM events")).scalars())
        engine.dispose()
        phases = {}
        for phase in ("healthy", "pg-restart", "pg-hung", "server-kill-9"):
            values = soak.latency[phase]
            phases[phase] = {
                **soak.counts[phase],
                "p50_ms": round(percentile(values, 0.5) * 1000, 1),
                "p99_ms": round(percentile(values, 0.99) * 1000, 1),
                "max_ms": round(max(values, default=0) * 1000, 1),
            }
        return {
            "seconds": args.seconds,
            "clients": args.clients,
            "acknowledged": len(soak.acknowledged),
            "stored": len(stored),
            "lost": len(soak.acknowledged - set(stored)),
            "duplicated": len(stored) - len(set(stored)),
            "dead_letters": ready.get("dead_letters"),
            "spool_drained_s": None if drained_in is None else round(drained_in, 1),
            "server_restart_s": [round(r, 1) for r in restarts],
            "phases": phases,
        }
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        log.close()
        pg.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--phases", nargs="+", default=list(PHASES), choices=sorted(set(PHASES)), metavar="PHASE"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if result["lost"] or result["duplicated"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
