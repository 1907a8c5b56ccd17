"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from abtest.api.deps import AppState, app_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _ping(state: AppState) -> None:
    with state.fast_engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@router.get("/readyz")
async def readyz(state: AppState = Depends(app_state)) -> JSONResponse:
    """The database answers (503 naming what is down); reports the local spool's depth.

    While the database is down the router still answers projects and spools events, but the
    instance is reported not ready so that a load balancer prefers healthy ones.
    """
    router = state.extras.get("router")
    spool = router.spool if router is not None else None
    spool_depth = spool.depth if spool is not None else 0
    dead_letters = spool.dead_letters if spool is not None else 0
    bound = state.settings.db_connect_timeout_s
    try:  # bounded: a hung database makes this instance not ready, not a hung probe
        await asyncio.wait_for(asyncio.to_thread(_ping, state), bound)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        reason = f"database unreachable: {type(exc).__name__}"
        if isinstance(exc, TimeoutError):
            reason = f"database unreachable: no answer within {bound}s"
        return JSONResponse(
            status_code=503,
            content={
                "status": "unavailable",
                "detail": [{"loc": ["database"], "msg": reason, "type": "Unavailable"}],
                "spool_depth": spool_depth,
                "dead_letters": dead_letters,
            },
        )
    return JSONResponse(
        {"status": "ready", "spool_depth": spool_depth, "dead_letters": dead_letters}
    )
