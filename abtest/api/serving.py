"""The app's endpoints: route a project, log exports and event batches, Prometheus metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError, field_validator

from abtest.api.bodies import StrictBody as _Strict
from abtest.api.deps import AppState, app_state, authorize, request_api_key, require_role
from abtest.api.guard import safe_errors
from abtest.errors import Conflict, Invalid, NotFound, ServiceError
from abtest.runtime import get_router
from routing.router import Router, RoutingError

router = APIRouter(tags=["serving"])
app_role = [Depends(require_role("app"))]

Tool = Literal["adjust", "selective_adjust", "filter"]
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _in_range(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not EARLIEST <= aware <= LATEST:
        raise ValueError("must be between 1970 and 2200")
    return aware


class ProjectIn(_Strict):
    project_id: str = Field(min_length=1, max_length=200)
    intent: str = Field(min_length=1, max_length=10_000)
    attributes: dict[str, Any] | None = None
    experiment_key: str | None = Field(default=None, min_length=1, max_length=100)
    client_event_id: str | None = Field(default=None, min_length=1, max_length=100)


class ExportIn(_Strict):
    kept_tools: list[Tool] | None = Field(default=None, max_length=3)
    client_event_id: str | None = Field(default=None, min_length=1, max_length=100)
    occurred_at: datetime | None = None
    experiment_key: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime | None) -> datetime | None:
        return _in_range(value)


class EventIn(_Strict):
    client_event_id: str = Field(min_length=1, max_length=100)
    type: Literal["start", "export"]
    project_id: str = Field(min_length=1, max_length=200)
    occurred_at: datetime | None = None
    experiment_key: str | None = Field(default=None, min_length=1, max_length=100)
    arm: str | None = Field(default=None, min_length=1, max_length=100)
    kept_tools: list[Tool] | None = Field(default=None, max_length=3)
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    served_by: str | None = Field(default=None, max_length=100)
    fallback: bool = False
    error: str | None = Field(default=None, max_length=10_000)
    cache_hit: bool = False
    intent: str | None = Field(default=None, max_length=10_000)
    attributes: dict[str, Any] | None = None

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, value: datetime | None) -> datetime | None:
        return _in_range(value)


class EventBatchIn(_Strict):
    events: list[EventIn] = Field(min_length=1, max_length=10_000)


_M = TypeVar("_M", bound=BaseModel)


def _router(request: Request) -> Router:
    return get_router(app_state(request))


def _http_error(exc: RoutingError) -> Exception:
    """Routing errors take the app's one error shape (abtest.errors)."""
    if exc.status == 404:
        return NotFound(exc.field, exc.reason)
    if exc.status == 409:
        return Conflict(exc.field, exc.reason)
    if exc.status == 422:
        return Invalid(exc.field, exc.reason)
    return HTTPException(exc.status, detail=exc.as_detail())


def _body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors in FastAPI's shape (loc starts with "body"), never echoing large or
    unencodable input (`guard.safe_errors`)."""
    errors = exc.errors(include_url=False, include_context=False)
    return safe_errors({**error, "loc": ["body", *error["loc"]]} for error in errors)


@router.post(
    "/v1/projects",
    response_class=JSONResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ProjectIn.model_json_schema()}},
        }
    },
)
async def post_project(request: Request) -> JSONResponse:
    """Assign the project, answer with its arm's three tool configurations, log the start.

    In the app this route is answered by `abtest.api.fastlane` (the same `serve_project`
    without FastAPI's per-request machinery); it stays here for the OpenAPI schema and for apps
    that include this router on its own.
    """
    status, payload, headers = await serve_project(
        app_state(request),
        request_api_key(request),
        await request.body(),
    )
    return JSONResponse(payload, status_code=status, headers=headers)


async def serve_project(
    state: AppState, api_key: str | None, raw_body: bytes
) -> tuple[int, Any, dict[str, str] | None]:
    """POST /v1/projects as (status, JSON payload, extra headers): 401/403 without a key of
    role app, 422 for a malformed body (FastAPI's error shape), the router's 4xx/503, or 200
    with the routed project."""
    try:
        await authorize(state, api_key, ("app",))
    except HTTPException as exc:
        return exc.status_code, {"detail": exc.detail}, dict(exc.headers or {}) or None
    try:
        body = ProjectIn.model_validate_json(raw_body)
    except ValidationError as exc:
        return 422, {"detail": _body_errors(exc)}, None
    try:
        routed = await get_router(state).handle_project(
            body.project_id,
            body.intent,
            body.attributes,
            body.experiment_key,
            body.client_event_id,
        )
    except RoutingError as exc:
        error = _http_error(exc)
        if isinstance(error, ServiceError):
            return error.status, {"detail": error.as_detail()}, None
        assert isinstance(error, HTTPException)
        return error.status_code, {"detail": error.detail}, None
    return 200, routed.to_json(), None


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a route that reads its JSON body itself (with or without Content-Type)."""
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


def _parse(model: type[_M], raw: bytes) -> _M:
    """The body as `model`, whatever the Content-Type (curl -d sends form encoding), like
    POST /v1/projects; a malformed body is a 422 in FastAPI's shape."""
    try:
        # the standard library reads what strict JSON parsers refuse (lone surrogates, NaN), so
        # the model's checks can name the field that holds it instead of "invalid JSON"
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = f"the body is not valid JSON ({type(exc).__name__})"
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ["body"], "msg": reason}]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(_body_errors(exc)) from None


@router.post(
    "/v1/projects/{project_id}/export", dependencies=app_role, openapi_extra=_json_body(ExportIn)
)
async def post_export(project_id: str, request: Request) -> dict[str, Any]:
    """Log that the user exported the project (optionally which tools were kept)."""
    raw = await request.body()
    body = _parse(ExportIn, raw) if raw.strip() else ExportIn()
    if "\x00" in project_id:
        raise Invalid("project_id", "contains a NUL character")
    try:
        return await _router(request).record_export(
            project_id,
            body.kept_tools,
            body.client_event_id,
            body.occurred_at,
            body.experiment_key,
        )
    except RoutingError as exc:
        raise _http_error(exc) from None


@router.post("/v1/events:batch", dependencies=app_role, openapi_extra=_json_body(EventBatchIn))
async def post_events(request: Request) -> dict[str, int]:
    """Store up to 10,000 events at once; a retried event (same client_event_id) counts once."""
    body = _parse(EventBatchIn, await request.body())
    try:
        result = await _router(request).ingest([e.model_dump() for e in body.events])
    except RoutingError as exc:
        raise _http_error(exc) from None
    return {
        "received": result.received,
        "stored": result.stored,
        "duplicates": result.duplicates,
        "spooled": result.spooled,
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: latency per arm, fallbacks, arm errors, cache hits, spool depth.
    They name experiments and variants: an engineer or analyst key is needed unless
    `metrics_public` is set."""
    state = app_state(request)
    if not state.settings.metrics_public:
        await authorize(state, request_api_key(request), ("engineer", "analyst"))
    return Response(
        generate_latest(_router(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
