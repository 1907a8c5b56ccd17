"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import text

from abtest.api.deps import AppState, app_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: AppState = Depends(app_state)) -> dict[str, str]:
    """The database answers."""
    with state.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return {"status": "ready"}
