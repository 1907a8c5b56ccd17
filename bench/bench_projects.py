"""POST /v1/projects throughput and latency vs an empty FastAPI endpoint on the same server.

The real server: `abtest.api.create_app` with an instant arm (no model time), PostgreSQL and
Redis behind it, API keys on; every request is a new project (an assignment and a start event
are committed before it is answered). The baseline: a FastAPI app whose POST /v1/projects
returns a constant. Both run under the same uvicorn settings (one worker unless --workers); the
load comes from a second process on 127.0.0.1 (keep-alive HTTP/1.1 connections), bounded by
--requests and
--seconds, at each concurrency of --concurrency. Prints requests/s and p50/p99 latency per
run, the ratio at each concurrency, and the ratio of the two servers' peaks: an answer that
waits for a durable commit is latency-bound at a concurrency where the empty endpoint is
already CPU-bound, so throughput is compared at each server's saturation.

The load generator (--client) is this script on uvloop (the default), the same on asyncio's
own loop, or wrk. Each round runs every server (in alternating order); the verdict is the
median over the rounds of the ratio measured within a round, which the drift of a shared VM's
speed between minutes does not skew the way comparing each server's luckiest run does.

    python bench/bench_projects.py --requests 10000 --concurrency 64,256 --rounds 5
    python bench/bench_projects.py --workers 2 ...   (two server processes on one database)
    (ABTEST_BENCH_POSTGRES_URL, ABTEST_BENCH_REDIS_URL to point at other servers)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REDIS_URL = os.environ.get("ABTEST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# --- the two apps (uvicorn factories) ----------------------------------------------------------


class InstantArm:
    """An arm with no model time: the same answer for every intent, ready at once."""

    def __init__(self, name: str) -> None:
        from models.arms.base import Prediction
        from models.tools import Filter, ToolConfig

        self.name = name
        self._answer = Prediction(ToolConfig(filter=Filter("vivid", 50.0)), 0.0)

    async def predict(self, intent: str):  # noqa: ANN201
        return self._answer

    async def predict_batch(self, intents):  # noqa: ANN001,ANN201
        return [await self.predict(i) for i in intents]


def real_app():  # noqa: ANN201
    from abtest.api import create_app
    from abtest.settings import load_settings

    app = create_app(load_settings())
    app.state.abtest.extras["arms"] = {
        "teacher": InstantArm("teacher"),
        "student": InstantArm("student"),
    }
    return app


class _NoWorkRouter:
    """Answers every project with a fixed result: isolates FastAPI, validation and auth."""

    def __init__(self) -> None:
        from models.tools import ToolConfig
        from routing.metrics import RouterMetrics
        from routing.router import RoutedProject

        self.metrics = RouterMetrics()
        self.spool = None
        self._answer = RoutedProject(
            "p",
            "bench",
            "control",
            "teacher",
            ToolConfig(),
            0.0,
            False,
            "teacher",
            False,
            True,
            "start:x",
        )

    async def warm_up(self) -> None:
        return None

    async def replay_forever(self) -> None:
        return None

    async def replay(self) -> int:
        return 0

    async def handle_project(self, *args, **kwargs):  # noqa: ANN002,ANN003,ANN201
        return self._answer


def framework_app():  # noqa: ANN201
    """The real app and its /v1/projects handler, with a router that does no work."""
    from abtest.api import create_app
    from abtest.settings import load_settings

    app = create_app(load_settings())
    app.state.abtest.extras["router"] = _NoWorkRouter()
    return app


def empty_app():  # noqa: ANN201
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/projects")
    async def empty() -> dict[str, bool]:
        return {"ok": True}

    return app


# --- load generator (runs in its own process) ------------------------------------------------


async def _one_connection(port, bodies, key, latencies, deadline, errors):  # noqa: ANN001,ANN202
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while bodies and time.perf_counter() < deadline:
            body = bodies.pop()
            request = (
                f"POST /v1/projects HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nX-API-Key: {key}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n")[0].decode())
    finally:
        writer.close()


async def _load(port: int, count: int, concurrency: int, seconds: float, key: str, tag: str):
    def bodies(n: int, prefix: str) -> list[bytes]:
        return [
            json.dumps({"project_id": f"{prefix}-{i}", "intent": "make it warm"}).encode()
            for i in range(n)
        ]

    warm: list[float] = []
    errors: list[str] = []
    queue = bodies(min(500, count), f"warm-{tag}")
    await asyncio.gather(
        *(
            _one_connection(port, queue, key, warm, time.perf_counter() + 30, errors)
            for _ in range(concurrency)
        )
    )
    latencies: list[float] = []
    queue = bodies(count, tag)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _one_connection(port, queue, key, latencies, started + seconds, errors)
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


# --- orchestration ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def run_server(factory: str, env: dict[str, str], workers: int = 1) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        f"bench_projects:{factory}",
        "--factory",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    wait_for_port(port)
    return process, port


def run_wrk(port: int, args: argparse.Namespace, key: str, tag: str) -> dict:
    """The same load from wrk (C, one thread): a warm-up of 2 s, then --seconds."""
    result: dict = {}
    for phase, seconds in (("warm", 2), ("timed", args.seconds)):
        command = [
            "wrk",
            "-t1",
            f"-c{args.concurrency}",
            f"-d{seconds:g}s",
            "-s",
            str(HERE / "projects.lua"),
        ]
        output = subprocess.run(
            [*command, f"http://127.0.0.1:{port}"],
            check=True,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            env={**os.environ, "WRK_KEY": key, "WRK_PREFIX": f"{tag}-{phase}"},
        )
        line = next(x for x in output.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line.removeprefix("RESULT "))
    errors = result["non2xx"] + result["socket_errors"]
    return {
        "requests": result["requests"],
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": errors,
        "first_error": f"{result['non2xx']} non-2xx, {result['socket_errors']} socket errors"
        if errors
        else None,
        "timeouts": result["timeouts"],
    }


def run_load(port: int, args: argparse.Namespace, key: str, tag: str) -> dict:
    if args.client == "wrk":
        return run_wrk(port, args, key, tag)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--load-port",
        str(port),
        "--requests",
        str(args.requests),
        "--concurrency",
        str(args.concurrency),
        "--seconds",
        str(args.seconds),
        "--key",
        key,
        "--tag",
        tag,
        "--client",
        args.client,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(output.stdout.strip().splitlines()[-1])


def prepare_database() -> tuple[str, str, str]:
    """A new database with experiment "bench" running and an app key: name, URL, key."""
    from scratch_db import create_database, two_arm_experiment

    from abtest import auth, db

    name, url = create_database()
    engine = db.make_engine(url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        two_arm_experiment(session, start=True)
        _, key = auth.create_key(session, "bench", "app")
    engine.dispose()
    return name, url, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument(
        "--concurrency",
        default="64,256",
        help="open connections; a comma-separated list sweeps them and compares each server's "
        "peak (its throughput at saturation), as well as level by level",
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--framework",
        action="store_true",
        help="also run the real app with a router that does no work (FastAPI + auth cost)",
    )
    parser.add_argument(
        "--client",
        choices=("uvloop", "asyncio", "wrk"),
        default="uvloop",
        help="load generator: this script on uvloop (default) or asyncio, or wrk (apt-get "
        "install wrk; runs --seconds per level, not --requests). The load competes with the "
        "servers for the CPUs: uvloop and wrk take less of them",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes of every server (several processes share PostgreSQL "
        "and Redis, as `abtest serve --workers N` does)",
    )
    parser.add_argument("--load-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--key", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_port is not None:
        load = _load(
            args.load_port, args.requests, int(args.concurrency), args.seconds, args.key, args.tag
        )
        if args.client == "uvloop":  # the load competes with the servers for the CPUs
            import uvloop

            result = uvloop.run(load)
        else:
            result = asyncio.run(load)
        print(json.dumps(result))
        return
    levels = [int(level) for level in str(args.concurrency).split(",")]

    sys.path.insert(0, str(ROOT))
    name, url, key = prepare_database()
    spool = tempfile.mkdtemp(prefix="abtest-bench-spool-")
    prefix = f"abtest-bench:{uuid.uuid4().hex[:8]}:"
    env = {
        "ABTEST_DATABASE_URL": url,
        "ABTEST_REDIS_URL": REDIS_URL,
        "ABTEST_REDIS_PREFIX": prefix,
        "ABTEST_SPOOL_DIR": spool,
        "ABTEST_AUTH_ENABLED": "true",
        "ABTEST_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    apps = [("empty endpoint", "empty_app"), ("POST /v1/projects", "real_app")]
    if args.framework:
        apps.insert(1, ("app, no-work router", "framework_app"))
    results: dict[str, list[dict]] = {label: [] for label, _ in apps}
    try:
        for round_number in range(args.rounds):
            # alternate the order so that a drift of the machine's speed hits both servers
            order = apps if round_number % 2 == 0 else apps[::-1]
            for label, factory in order:
                process, port = run_server(factory, env, args.workers)
                try:
                    for level in levels:
                        tag = f"r{round_number}-{factory}-c{level}"
                        load = argparse.Namespace(**{**vars(args), "concurrency": level})
                        run = run_load(port, load, key, tag)
                        results[label].append({**run, "concurrency": level, "round": round_number})
                finally:
                    process.terminate()
                    process.wait(timeout=30)
        import sqlalchemy as sa

        from abtest import db

        engine = db.make_engine(url)
        with engine.connect() as conn:
            starts = conn.execute(sa.text("SELECT count(*) FROM events")).scalar()
            assignments = conn.execute(sa.text("SELECT count(*) FROM assignments")).scalar()
        engine.dispose()
    finally:
        from scratch_db import drop_database

        drop_database(name)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    for label, runs in results.items():
        for run in runs:
            notes = f"{run['requests']} requests, {run['errors']} errors"
            if run["errors"]:
                notes += f", {run['first_error']}"
            if run.get("timeouts"):
                notes += f", {run['timeouts']} answered after wrk's 2 s timeout"
            print(
                f"{label:>20} round {run['round']} c={run['concurrency']:<4}: "
                f"{run['rps']:>8,.0f} req/s  p50 {run['p50_ms']:6.2f} ms  "
                f"p99 {run['p99_ms']:6.2f} ms  ({notes})"
            )
    served = sum(r["requests"] for r in results["POST /v1/projects"])
    print(
        f"stored: {starts} start events, {assignments} assignments for {served} timed requests "
        f"(+ warm-up)"
    )
    report_ratios(results, levels, args.rounds, framework=args.framework)


def _peak(runs: list[dict], round_number: int, level: int | None = None) -> float:
    return max(
        r["rps"]
        for r in runs
        if r["round"] == round_number and (level is None or r["concurrency"] == level)
    )


def report_ratios(
    results: dict[str, list[dict]], levels: list[int], rounds: int, *, framework: bool
) -> None:
    """Ratios of the two servers measured in the same round (minutes apart at most), and
    their median over the rounds: this VM's speed drifts by tens of percent between minutes,
    so a ratio of two runs far apart (or of each server's luckiest run) says more about the
    drift than about the servers."""
    projects, empty = results["POST /v1/projects"], results["empty endpoint"]
    if framework:
        shares = [_peak(results["app, no-work router"], r) / _peak(empty, r) for r in range(rounds)]
        print(
            f"no-work-router app/empty (the framework's share), median over rounds: "
            f"{statistics.median(shares):.0%}"
        )
    for level in levels:
        paired = [_peak(projects, r, level) / _peak(empty, r, level) for r in range(rounds)]
        print(
            f"projects/empty at {level} connections, per round: "
            f"{', '.join(f'{x:.0%}' for x in paired)}; median {statistics.median(paired):.0%}"
        )
    paired = [_peak(projects, r) / _peak(empty, r) for r in range(rounds)]
    best = max(projects, key=lambda run: run["rps"])
    best_empty = max(empty, key=lambda run: run["rps"])
    print(
        f"peak vs peak of each round (each server at its best concurrency): "
        f"{', '.join(f'{x:.0%}' for x in paired)}"
    )
    print(
        f"overall best runs, for reference: {best['rps']:,.0f} req/s (c={best['concurrency']}) "
        f"vs {best_empty['rps']:,.0f} req/s (c={best_empty['concurrency']}): "
        f"{best['rps'] / best_empty['rps']:.0%}"
    )
    verdict = statistics.median(paired)
    print(
        f"ratio projects/empty, median of the rounds' peak-vs-peak ratios: {verdict:.0%} "
        f"(target >= 70%) -> {'PASS' if verdict >= 0.7 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
