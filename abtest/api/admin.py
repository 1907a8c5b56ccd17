"""Engineer endpoints: variants and experiments."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from sqlalchemy.orm import Session

from abtest import services
from abtest.api.bodies import StrictBody
from abtest.api.deps import app_state, attributed_actor, db_session, require_role

router = APIRouter(prefix="/v1", tags=["admin"])
engineer = [Depends(require_role("engineer"))]
reader = [Depends(require_role("engineer", "analyst"))]


class VariantIn(StrictBody):
    name: str = Field(min_length=1, max_length=100)
    kind: str
    config: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    reference: bool = Field(
        default=False, description="Confirm a teacher/recorded variant as the reference."
    )


class ArchiveIn(StrictBody):
    actor: str = Field(default="api", min_length=1, max_length=100)


class ArmIn(StrictBody):
    name: str = Field(min_length=1, max_length=100)
    variant: str
    weight: float = Field(ge=0, le=1)
    control: bool = False


class ExperimentIn(StrictBody):
    key: str = Field(min_length=1, max_length=100)
    arms: list[ArmIn] = Field(min_length=2)
    seed: str | None = None
    coverage: float = Field(default=1.0, ge=0, le=1)
    namespace: str | None = None
    namespace_range: tuple[float, float] = (0.0, 1.0)
    description: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)


class WeightsIn(StrictBody):
    weights: dict[str, float]


@router.post("/variants", status_code=201, dependencies=engineer)
def create_variant(
    body: VariantIn, request: Request, session: Session = Depends(db_session)
) -> dict[str, Any]:
    variant = services.register_variant(
        session,
        body.name,
        body.kind,
        body.config,
        body.description,
        actor=attributed_actor(request, "api"),
        reference=body.reference,
        settings=app_state(request).settings,
    )
    return services.variant_summary(variant)


@router.post("/variants/{name}/archive", dependencies=engineer)
def archive_variant(
    name: str,
    request: Request,
    body: ArchiveIn | None = None,
    session: Session = Depends(db_session),
) -> dict[str, Any]:
    """Take a variant out of service; 409 for the champion or a running experiment's arm."""
    actor = attributed_actor(request, (body or ArchiveIn()).actor)
    return services.variant_summary(services.archive_variant(session, name, actor))


@router.get("/variants", dependencies=reader)
def list_variants(session: Session = Depends(db_session)) -> list[dict[str, Any]]:
    return [services.variant_summary(v) for v in services.list_variants(session)]


@router.get("/variants/{name}", dependencies=reader)
def get_variant(name: str, session: Session = Depends(db_session)) -> dict[str, Any]:
    return services.variant_summary(services.get_variant(session, name))


@router.post("/experiments", status_code=201, dependencies=engineer)
def create_experiment(body: ExperimentIn, session: Session = Depends(db_session)) -> dict[str, Any]:
    spec = services.ExperimentSpec(
        key=body.key,
        arms=[services.ArmSpec(a.name, a.variant, a.weight, a.control) for a in body.arms],
        seed=body.seed,
        coverage=body.coverage,
        namespace=body.namespace,
        namespace_range=body.namespace_range,
        description=body.description,
        settings=body.settings,
    )
    return services.experiment_summary(services.create_experiment(session, spec))


@router.get("/experiments/{key}", dependencies=reader)
def get_experiment(key: str, session: Session = Depends(db_session)) -> dict[str, Any]:
    return services.experiment_summary(services.get_experiment(session, key))


@router.post("/experiments/{key}/start", dependencies=engineer)
def start_experiment(key: str, session: Session = Depends(db_session)) -> dict[str, Any]:
    return services.experiment_summary(services.start_experiment(session, key))


@router.post("/experiments/{key}/stop", dependencies=engineer)
def stop_experiment(key: str, session: Session = Depends(db_session)) -> dict[str, Any]:
    return services.experiment_summary(services.stop_experiment(session, key))


@router.patch("/experiments/{key}/weights", dependencies=engineer)
def update_weights(
    key: str, body: WeightsIn, session: Session = Depends(db_session)
) -> dict[str, Any]:
    return services.experiment_summary(services.update_arm_weights(session, key, body.weights))
