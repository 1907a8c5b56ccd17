"""Gate, promotion and conclusion endpoints (engineers; analysts may read gate runs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import Field
from sqlalchemy.orm import Session

from abtest import db, jobs, promotion, services
from abtest.api.bodies import StrictBody
from abtest.api.deps import app_state, attributed_actor, db_session, require_role

router = APIRouter(prefix="/v1", tags=["gates"])
engineer = [Depends(require_role("engineer"))]
reader = [Depends(require_role("engineer", "analyst"))]


class GateIn(StrictBody):
    policy: dict[str, Any] | None = Field(
        default=None, description="Gate policy settings (with `version`); default gate-v2."
    )
    actor: str = Field(default="api", min_length=1, max_length=100)


class PromoteIn(StrictBody):
    actor: str = Field(default="api", min_length=1, max_length=100)


class ConcludeIn(StrictBody):
    ship: str = Field(min_length=1, max_length=100, description="The arm that won.")
    actor: str = Field(default="api", min_length=1, max_length=100)
    override: bool = Field(
        default=False, description="Ship although the decision does not support it."
    )
    reason: str | None = Field(default=None, max_length=2000, description="Needed to override.")


@router.post("/variants/{name}/gate", status_code=202, dependencies=engineer)
def run_gate(
    name: str, request: Request, response: Response, body: GateIn | None = None
) -> dict[str, Any]:
    """Queue a gate job: the variant is evaluated on the current test set in the background
    and the gate run stored (passed or not). 202 with the job; `GET /v1/jobs/{id}` (the
    `Location`) gives its status and, once it succeeded, the gate run. A policy below the
    minimum or an unknown, teacher or inactive variant is refused at once (no job)."""
    body = body or GateIn()
    policy = promotion.parse_policy(body.policy)
    state = app_state(request)
    runner = jobs.job_runner(state)
    with db.session_scope(state.engine) as session:
        job, work = promotion.start_gate_job(
            session,
            name,
            attributed_actor(request, body.actor),
            policy,
            state.settings,
            runner.owner,
        )
        summary = jobs.job_summary(job)
    try:
        runner.submit(job.id, work)  # after the commit: the worker reads the job's row
    except RuntimeError:  # this server is shutting down: no worker will take the job
        jobs.fail_unstarted(state.engine, job.id)
        detail = [{"loc": ["server"], "msg": "the server is shutting down; start the gate "
                   "again (the job was marked failed)", "type": "unavailable"}]  # fmt: skip
        raise HTTPException(503, detail=detail) from None
    response.headers["Location"] = summary["url"]
    return summary


@router.get("/variants/{name}/gate-runs", dependencies=reader)
def list_gate_runs(name: str, session: Session = Depends(db_session)) -> list[dict[str, Any]]:
    """Gate runs of a variant, newest first."""
    return [promotion.gate_run_summary(run) for run in promotion.gate_runs(session, name)]


@router.post("/variants/{name}/promote", dependencies=engineer)
def promote(
    name: str,
    request: Request,
    body: PromoteIn | None = None,
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """Approve for traffic; 409 listing the failed criteria without a passing gate run."""
    body = body or PromoteIn()
    promoted = promotion.promote(session, name, attributed_actor(request, body.actor))
    return {
        "variant": services.variant_summary(services.get_variant(session, name)),
        "promotion": promotion.promotion_summary(promoted),
    }


@router.post("/experiments/{key}/conclude", dependencies=engineer)
def conclude(
    key: str, body: ConcludeIn, request: Request, session: Session = Depends(db_session)
) -> dict[str, Any]:
    """Conclude the experiment; the shipped arm's variant becomes the champion. 409 naming the
    decision when it does not support the shipped arm (unless `override` with a `reason`)."""
    experiment = promotion.conclude_experiment(
        session,
        key,
        body.ship,
        attributed_actor(request, body.actor),
        override=body.override,
        reason=body.reason,
    )
    champion = services.champion(session)
    return {
        "experiment": services.experiment_summary(experiment),
        "champion": champion.name if champion else None,
    }
