"""A pure-ASGI lane for `POST /v1/projects`, the app's hot path.

For an instant arm, FastAPI's per-request machinery (its middleware layers, matching the path
against every route, solving dependencies, encoding the response) costs more than the routing
itself (bench/bench_projects.py). `abtest.api.AbtestAPI` sends exactly that method and path
here: `serving.serve_project` gives the same checks, status codes and bodies as the FastAPI
route, and every other request goes through FastAPI unchanged. An unexpected exception is a
500 from the server (uvicorn), as from Starlette's error middleware.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from abtest.api.deps import api_key_from
from abtest.api.serving import serve_project

PATH = "/v1/projects"
MAX_BODY = 1 << 20  # an intent and a few attributes: far below; bigger bodies get 413
TOO_LARGE = b"<too large>"  # _read_body's answer past MAX_BODY (compared by identity)


def is_project_post(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST"


async def answer_project(scope: Scope, receive: Receive, send: Send, state: Any) -> None:
    """Answer one `POST /v1/projects` (the app's `AppState` is `state`)."""
    body = await _read_body(receive)
    if body is None:  # the client went away
        return
    if body is TOO_LARGE:
        reason = f"the request body is larger than {MAX_BODY} bytes"
        detail = [{"loc": ["body"], "msg": reason, "type": "too_large"}]
        await _send_json(send, 413, {"detail": detail}, None)
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
    await _send_json(send, status, payload, headers)


async def _read_body(receive: Receive) -> bytes | None:
    """The body (reading stops once it is over MAX_BODY), or None if the client left."""
    chunks = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if size <= MAX_BODY else TOO_LARGE


async def _send_json(send: Send, status: int, payload: Any, headers: dict[str, str] | None) -> None:
    try:  # compact UTF-8 like starlette's JSONResponse, ~5x faster
        content = orjson.dumps(payload)
    except TypeError:  # e.g. an integer beyond 64 bits echoed from the request
        content = json.dumps(
            payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
    ]
    for name, value in (headers or {}).items():
        raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})
