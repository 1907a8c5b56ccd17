"""Analysts' endpoints: experiment listing and results."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from abtest import services
from abtest.api.deps import db_session, require_role

router = APIRouter(prefix="/v1", tags=["results"])


@router.get("/experiments", dependencies=[Depends(require_role("engineer", "analyst"))])
def list_experiments(
    status: str | None = None, session: Session = Depends(db_session)
) -> list[dict[str, Any]]:
    return [services.experiment_summary(e) for e in services.list_experiments(session, status)]
