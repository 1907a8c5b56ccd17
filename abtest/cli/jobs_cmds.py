"""`abtest jobs show ID`: a job started over the API (a gate run), as every server sees it."""

from __future__ import annotations

from typing import Any

import typer

from abtest import jobs
from abtest.cli.common import JSON_OPTION, print_json, print_table, session

app = typer.Typer(help="Jobs started over the API (gate runs): their status and outcome.")

COLUMNS = ["id", "kind", "status", "actor", "created_at", "finished_at", "outcome"]


@app.command("show")
def show(
    job_id: int = typer.Argument(..., min=1, max=2**31 - 1, help="The job's id."),
    as_json: bool = JSON_OPTION,
) -> None:
    """A job's status, times, actor and outcome (a gate job: its gate run's verdict)."""
    with session() as s:
        summary = jobs.job_summary(jobs.get_job(s, job_id))
    if as_json:
        print_json(summary)
        return
    print_table("job", [{**summary, "outcome": outcome(summary)}], COLUMNS)


def outcome(summary: dict[str, Any]) -> str:
    if summary["error"]:
        return f"error: {summary['error']['msg']}"
    result = summary["result"]
    if result is None:
        return ""
    verdict = "PASSED" if result.get("passed") else "FAILED"
    return f"gate run #{result.get('id')}: {verdict}"
