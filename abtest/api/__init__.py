"""The FastAPI app. Route handlers are thin: validate, call a service, shape the answer."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from abtest.api import admin, gates, health, results, serving
from abtest.api.deps import AppState
from abtest.api.fastlane import ProjectsLane
from abtest.errors import ServiceError
from abtest.settings import Settings, get_settings


def create_app(settings: Settings | None = None, *, check_migrated: bool = True) -> FastAPI:
    """Build the app; fails fast (DatabaseNotMigrated) when the database is not at head."""
    settings = settings or get_settings()
    state = AppState.build(settings, check_migrated=check_migrated)
    app = FastAPI(
        title="abtest",
        version="0.1.0",
        description="Traffic routing, events and results for LLM tool-chaining experiments.",
        lifespan=state.lifespan,
    )
    app.state.abtest = state

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.as_detail()})

    # serving first: its routes are the hot path, matched before the others are tried
    for module in (serving, health, admin, results, gates):
        app.include_router(module.router)
    app.add_middleware(ProjectsLane)  # POST /v1/projects without FastAPI's per-request work
    return app
