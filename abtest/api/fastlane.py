"""A pure-ASGI lane for `POST /v1/projects`, the app's hot path.

For an instant arm, FastAPI's per-request machinery (its middleware layers, matching the path
against every route, solving dependencies, encoding the response) costs more than the routing
itself (bench/bench_projects.py). `abtest.api.AbtestAPI` sends exactly that method and path
here: `serving.serve_project` gives the same checks, status codes and bodies as the FastAPI
route, and every other request goes through FastAPI unchanged. An unexpected exception is a
500 from the server (uvicorn), as from Starlette's error middleware.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

from abtest.api.deps import api_key_from
from abtest.api.guard import cross_site_refusal, cross_site_write, read_body, send_json, too_large
from abtest.api.serving import serve_project

PATH = "/v1/projects"


def is_project_post(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST"


async def answer_project(scope: Scope, receive: Receive, send: Send, state: Any) -> None:
    """Answer one `POST /v1/projects` (the app's `AppState` is `state`). The body is read,
    up to `max_body_bytes` (413 past it), before the API key is looked at."""
    if cross_site_write(scope):
        await send_json(send, 403, cross_site_refusal(), None)
        return
    limit = state.settings.max_body_bytes
    body = await read_body(receive, limit)
    if body is None:  # the client went away
        return
    if body is False:
        await send_json(send, 413, too_large(limit), None)
        return
    authorization = x_api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            x_api_key = value.decode("latin-1")
    status, payload, headers = await serve_project(
        state, api_key_from(authorization, x_api_key), body
    )
    await send_json(send, status, payload, headers)
