"""What every request passes before any route, dependency or API-key check runs.

- The body is read here, counting while it arrives, and refused with 413 once it passes the
  route's limit (`max_batch_body_bytes` for `POST /v1/events:batch`, else `max_body_bytes`);
  a declared `Content-Length` over the limit is refused before anything is read. So a huge
  body costs at most the limit in memory, whoever sends it.
- A NUL character in the path or the query string (which PostgreSQL cannot store or compare)
  is a 422 naming where it is.
- A body sent to a `/v1/` route is JSON whatever its `Content-Type` says (`curl -d` sends
  `application/x-www-form-urlencoded`; some clients send none): the header is set to
  `application/json` before FastAPI reads a body model, as `POST /v1/projects` reads it.
- A browser's cross-site write to a `/v1/` route (`Sec-Fetch-Site: cross-site`, or an `Origin`
  that is not the request's own host) is a 403: since any body reads as JSON, a web page
  visited by an operator could otherwise post to a server running without keys. Clients that
  are not browsers send neither header and are not affected.
- Validation errors never echo large or unencodable input (`safe_errors`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from routing.eventlog import text_problem

BATCH_PATH = "/v1/events:batch"
API_PREFIX = "/v1/"  # every route below reads a JSON body (the sign-in form is at /login)
MAX_ECHO_CHARS = 200  # longer input is never echoed in an error body
MAX_LOC_CHARS = 100


def _limit(scope: Scope, settings: Any) -> int:
    if scope["path"] == BATCH_PATH:
        return settings.max_batch_body_bytes
    return settings.max_body_bytes


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _where_nul(scope: Scope) -> str | None:
    if "\x00" in scope["path"]:
        return "path"
    query = scope.get("query_string", b"")
    if query and (b"\x00" in query or b"\x00" in unquote_to_bytes(query)):
        return "query"
    return None


async def send_json(
    send: Send, status: int, payload: Any, headers: dict[str, str] | None = None
) -> None:
    """A JSON response in two messages (compact UTF-8, like starlette's JSONResponse)."""
    try:
        content = orjson.dumps(payload)
    except TypeError:  # e.g. an integer beyond 64 bits
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


def too_large(limit: int) -> dict[str, Any]:
    reason = f"the request body is larger than {limit} bytes"
    return {"detail": [{"loc": ["body"], "msg": reason, "type": "too_large"}]}


async def read_body(receive: Receive, limit: int) -> bytes | None | Literal[False]:
    """The whole body; False once it passes `limit` (reading stops); None if the client left."""
    chunks = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class RequestGuard:
    """ASGI middleware: body limits, NUL in paths and queries (see the module doc)."""

    def __init__(self, app: ASGIApp, settings: Any) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = _where_nul(scope)
        if where is not None:
            detail = [{"loc": [where], "msg": "contains a NUL character", "type": "value_error"}]
            await send_json(send, 422, {"detail": detail})
            return
        if cross_site_write(scope):
            await send_json(send, 403, cross_site_refusal())
            return
        limit = _limit(scope, self.settings)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await send_json(send, 413, too_large(limit))
            return
        body = await read_body(receive, limit)
        if body is None:
            return
        if body is False:
            await send_json(send, 413, too_large(limit))
            return
        if body and scope["path"].startswith(API_PREFIX):
            scope = as_json(scope)
        await self.app(scope, _replay(body, receive), send)


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def cross_site_refusal() -> dict[str, Any]:
    detail = [{"loc": ["header", "origin"], "msg": "cross-site requests may not write",
               "type": "cross_site"}]  # fmt: skip
    return {"detail": detail}


def cross_site_write(scope: Scope) -> bool:
    """A browser's write to a `/v1/` route from another site (see the module doc)."""
    if scope["method"] in SAFE_METHODS or not scope["path"].startswith(API_PREFIX):
        return False
    headers = dict(scope["headers"])
    if headers.get(b"sec-fetch-site") == b"cross-site":
        return True
    origin = headers.get(b"origin")
    if origin is None or origin == b"null":
        return origin == b"null"  # a sandboxed page or a file: never the server's own page
    host = origin.split(b"://", 1)[-1]
    return host.lower() != headers.get(b"host", b"").lower()


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def as_json(scope: Scope) -> Scope:
    """`scope` with its body declared JSON (`Content-Type: application/json`) unless it is."""
    headers = scope["headers"]
    if any(name == b"content-type" and _is_json(value) for name, value in headers):
        return scope
    kept = [(name, value) for name, value in headers if name != b"content-type"]
    return {**scope, "headers": [*kept, (b"content-type", b"application/json")]}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out `body` once, then the client's own messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _safe_loc(item: Any) -> Any:
    if isinstance(item, int) and not isinstance(item, bool):
        return item
    text = str(item)[:MAX_LOC_CHARS]
    return text.encode("utf-8", "replace").decode("utf-8")


def _echoable(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 2**53
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, str):
        return len(value) <= MAX_ECHO_CHARS and text_problem(value) is None
    return False


def safe_errors(errors: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors as type, loc, msg (and the input only when it is a short, storable
    scalar): never megabytes of echoed input, never a value JSON cannot carry."""
    safe = []
    for error in errors:
        item: dict[str, Any] = {
            "type": str(error.get("type", "value_error")),
            "loc": [_safe_loc(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", ""))[:500].encode("utf-8", "replace").decode("utf-8"),
        }
        given = error.get("input")
        if isinstance(given, bytes):
            given = given.decode("utf-8", "replace")
        if _echoable(given):
            item["input"] = given
        safe.append(item)
    return safe
