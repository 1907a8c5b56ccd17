"""A pure-ASGI lane for `POST /v1/projects`, the app's hot path.

For an instant arm, FastAPI's per-request machinery (matching the path against every route,
solving dependencies, encoding the response) costs more than the routing itself
(bench/bench_projects.py). This lane answers exactly that method and path with
`serving.serve_project` — the same checks, status codes and bodies as the FastAPI route — and
hands every other request to the app unchanged. It sits inside Starlette's error middleware,
so an unexpected exception is still a 500.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from abtest.api.serving import serve_project

PATH = "/v1/projects"


class ProjectsLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        authorization = x_api_key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                x_api_key = value.decode("latin-1")
        from abtest.api.deps import api_key_from

        status, payload, headers = await serve_project(
            scope["app"].state.abtest, api_key_from(authorization, x_api_key), body
        )
        await _send_json(send, status, payload, headers)


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


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
