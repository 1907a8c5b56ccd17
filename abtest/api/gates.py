"""Gate, promotion and conclusion endpoints (engineers; analysts may read gate runs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from sqlalchemy.orm import Session

from abtest import promotion, services
from abtest.api.bodies import StrictBody
from abtest.api.deps import app_state, db_session, require_role

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


@router.post("/variants/{name}/gate", status_code=201, dependencies=engineer)
def run_gate(
    name: str,
    request: Request,
    body: GateIn | None = None,
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """Evaluate the variant on the current test set and store the gate run (passed or not)."""
    body = body or GateIn()
    policy = promotion.parse_policy(body.policy)
    settings = app_state(request).settings
    run = promotion.run_gate(session, name, body.actor, policy, progress=False, settings=settings)
    return promotion.gate_run_summary(run)


@router.get("/variants/{name}/gate-runs", dependencies=reader)
def list_gate_runs(name: str, session: Session = Depends(db_session)) -> list[dict[str, Any]]:
    """Gate runs of a variant, newest first."""
    return [promotion.gate_run_summary(run) for run in promotion.gate_runs(session, name)]


@router.post("/variants/{name}/promote", dependencies=engineer)
def promote(
    name: str, body: PromoteIn | None = None, session: Session = Depends(db_session)
) -> dict[str, Any]:
    """Approve for traffic; 409 listing the failed criteria without a passing gate run."""
    body = body or PromoteIn()
    promoted = promotion.promote(session, name, body.actor)
    return {
        "variant": services.variant_summary(services.get_variant(session, name)),
        "promotion": promotion.promotion_summary(promoted),
    }


@router.post("/experiments/{key}/conclude", dependencies=engineer)
def conclude(key: str, body: ConcludeIn, session: Session = Depends(db_session)) -> dict[str, Any]:
    """Conclude the experiment; the shipped arm's variant becomes the champion. 409 naming the
    decision when it does not support the shipped arm (unless `override` with a `reason`)."""
    experiment = promotion.conclude_experiment(
        session, key, body.ship, body.actor, override=body.override, reason=body.reason
    )
    champion = services.champion(session)
    return {
        "experiment": services.experiment_summary(experiment),
        "champion": champion.name if champion else None,
    }
