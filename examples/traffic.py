"""Send simulated app traffic to a running `abtest serve`: projects, then exports.

Each simulated user opens a project with an intent from the bundled test split (drawn by
popularity, as in the demo), gets the three tool configurations from `POST /v1/projects`, and
exports with the demo's documented probability (`abtest.demo.export_probability`: the closer the
served look is to the teacher's exported answer and the faster it came, the likelier). Seeded:
the same `--seed` sends the same projects and makes the same export draws.

    python examples/traffic.py --url http://127.0.0.1:8000 --key "$APP_KEY" --projects 400
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import numpy as np

from abtest.demo import agreement, draw_projects, export_probability
from models.dataset import load_split
from models.tools import ToolConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="The abtest server.")
    parser.add_argument(
        "--key", default=os.environ.get("APP_KEY"), help="An app-role API key (default $APP_KEY)."
    )
    parser.add_argument("--projects", type=int, default=400, help="Projects to open.")
    parser.add_argument("--seed", type=int, default=1, help="Random seed.")
    parser.add_argument("--prefix", default="web", help="Project id prefix (keep ids unique).")
    parser.add_argument("--concurrency", type=int, default=8, help="Users at once.")
    return parser.parse_args(argv)


def one_user(client: httpx.Client, project: Any, draw: float) -> dict[str, Any]:
    """Open the project; export it with the simulated user's probability."""
    body = {
        "project_id": project.project_id,
        "intent": project.record.intent,
        "attributes": project.attributes,
    }
    answer = client.post("/v1/projects", json=body)
    if answer.status_code != 200:
        raise SystemExit(f"POST /v1/projects answered {answer.status_code}: {answer.text}")
    routed = answer.json()
    served = ToolConfig.from_record(routed["tools"])
    quality = agreement(served, project.record.teacher)
    p_export = export_probability(quality, routed["latency_ms"] / 1000)
    exported = bool(draw < p_export)
    if exported:
        done = client.post(f"/v1/projects/{project.project_id}/export", json={})
        if done.status_code != 200:
            raise SystemExit(f"export answered {done.status_code}: {done.text}")
    return {"arm": routed.get("arm"), "exported": exported}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    projects = draw_projects(load_split("test"), args.projects, rng)
    projects = [
        replace(p, project_id=f"{args.prefix}-{args.seed}-{p.project_id}") for p in projects
    ]
    draws = rng.random(len(projects))
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    with (
        httpx.Client(base_url=args.url, headers=headers, timeout=30) as client,
        ThreadPoolExecutor(args.concurrency) as pool,
    ):
        outcomes = list(
            pool.map(lambda pair: one_user(client, *pair), zip(projects, draws, strict=True))
        )
    per_arm: dict[str, dict[str, int]] = {}
    for outcome in outcomes:
        counts = per_arm.setdefault(str(outcome["arm"]), {"projects": 0, "exports": 0})
        counts["projects"] += 1
        counts["exports"] += outcome["exported"]
    print(json.dumps({"sent": len(outcomes), "arms": per_arm}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
