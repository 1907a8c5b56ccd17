"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from abtest.api.deps import AppState, app_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: AppState = Depends(app_state)) -> JSONResponse:
    """The database answers (503 naming what is down); reports the local spool's depth.

    While the database is down the router still answers projects and spools events, but the
    instance is reported not ready so that a load balancer prefers healthy ones.
    """
    router = state.extras.get("router")
    spool_depth = router.spool.depth if router is not None and router.spool is not None else 0
    try:
        with state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        reason = f"database unreachable: {type(exc).__name__}"
        return JSONResponse(
            status_code=503,
            content={
                "status": "unavailable",
                "detail": [{"loc": ["database"], "msg": reason, "type": "Unavailable"}],
                "spool_depth": spool_depth,
            },
        )
    return JSONResponse({"status": "ready", "spool_depth": spool_depth})
