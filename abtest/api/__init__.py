"""The FastAPI app. Route handlers are thin: validate, call a service, shape the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from abtest.api import admin, gates, health, jobs, results, serving, signin
from abtest.api.fastlane import answer_project, is_project_post
from abtest.api.guard import RequestGuard, safe_errors
from abtest.app_state import AppState
from abtest.errors import ServiceError
from abtest.jobs import jobs_lifespan
from abtest.runtime import serving_lifespan
from abtest.settings import Settings, get_settings


class AbtestAPI(FastAPI):
    """FastAPI, except that `POST /v1/projects` (the hot path) is answered by
    `abtest.api.fastlane` without the framework's per-request layers, and every other request
    passes `abtest.api.guard.RequestGuard` (body limit, NUL in path or query) first."""

    _guard: RequestGuard | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_project_post(scope):  # the lane enforces the same body limit while reading
            scope["app"] = self
            await answer_project(scope, receive, send, self.state.abtest)
            return
        if self._guard is None:
            self._guard = RequestGuard(self._framework, self.state.abtest.settings)
        await self._guard(scope, receive, send)

    async def _framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def lifespan(state: AppState) -> AsyncIterator[None]:
    """The router and its spool replayer (`abtest.runtime`), and the job runner."""
    async with serving_lifespan(state), jobs_lifespan(state):
        yield


def create_app(settings: Settings | None = None, *, check_migrated: bool = True) -> FastAPI:
    """Build the app; fails fast (DatabaseNotMigrated) when the database is not at head."""
    settings = settings or get_settings()
    state = AppState.build(settings, check_migrated=check_migrated)
    docs = settings.docs_public if settings.docs_public is not None else not settings.auth_enabled
    app = AbtestAPI(
        title="abtest",
        version="0.1.0",
        description="Traffic routing, events and results for LLM tool-chaining experiments.",
        lifespan=lambda _app: lifespan(state),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.abtest = state

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        detail = safe_errors(exc.as_detail())  # a name from the path is echoed, but short
        return JSONResponse(status_code=exc.status, content={"detail": detail})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": safe_errors(exc.errors())})

    # serving first: its routes are the hot path, matched before the others are tried
    for module in (serving, health, admin, results, gates, jobs):
        app.include_router(module.router)
    signin.install(app)
    return app
