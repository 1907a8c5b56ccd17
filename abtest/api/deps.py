"""Shared request dependencies: the app state (`abtest.app_state.AppState`), database sessions,
API-key roles."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from abtest import db
from abtest.app_state import AppState, redis_client
from routing.eventlog import is_unavailable

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger(__name__)
ROLE_REDIS_TTL_S = 7 * 24 * 3600


def app_state(request: Request) -> AppState:
    return request.app.state.abtest


def db_session(request: Request) -> Iterator[Session]:
    """A session per request: committed when the handler returns, rolled back on error. A GET
    reads through `AppState.read_engine` (the rollup is not refreshed; see analysis.rollup).

    A committed change to variants, experiments or API keys (`abtest.generation`) makes this
    server's next project request reload the catalog and forget cached roles at once (other
    servers notice the generation within a quarter second)."""
    state = app_state(request)
    reads = request.method in ("GET", "HEAD")
    with db.session_scope(state.read_engine if reads else state.engine) as session:
        yield session
    if session.info.pop("catalog_changed", False):
        catalog_changed(state)


def catalog_changed(state: AppState) -> None:
    router = state.extras.get("router")
    if router is not None:
        router.catalog.mark_stale()
    cache = state.extras.get("role_cache")
    if cache is not None:
        cache.clear()


def api_key_from(authorization: str | None, x_api_key: str | None) -> str | None:
    """The API key of a request: `Authorization: Bearer <key>`, else `X-API-Key`."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key or None


def request_api_key(request: Request) -> str | None:
    return api_key_from(request.headers.get("authorization"), request.headers.get("x-api-key"))


def _denied(status: int, header: str, message: str) -> HTTPException:
    detail = [{"loc": ["header", header], "msg": message, "type": "Unauthorized"}]
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return HTTPException(status_code=status, detail=detail, headers=headers)


async def authorize(state: AppState, key: str | None, roles: tuple[str, ...]) -> str | None:
    """The role of `key` when it is one of `roles` (None when auth is off); else HTTPException:
    401 when the key is missing, unknown or revoked, 403 when its role is not allowed. Both
    bodies say what is needed."""
    if not state.settings.auth_enabled:
        return None
    needed = " or ".join(roles)
    if key is None:
        raise _denied(
            401,
            "Authorization",
            f"missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
            f"for a key with role {needed}",
        )
    cache = role_cache(state)
    status, role = cache.peek(key)
    if status != "fresh":
        lookup = _role_lookup(state, cache, key)
        if status == "missing":
            role = await asyncio.shield(lookup)
    if role is None:
        raise _denied(401, "Authorization", "invalid or revoked API key")
    if role not in roles:
        raise _denied(
            403,
            "Authorization",
            f"this API key has role {role!r}; this endpoint needs role {needed}",
        )
    return role


def role_cache(state: AppState) -> Any:
    """The app's `auth.RoleCache` (its snapshot of valid keys lives next to the spool)."""
    cache = state.extras.get("role_cache")
    if cache is None:
        from abtest import auth

        snapshot = Path(state.settings.spool_dir) / "roles.json"
        cache = state.extras["role_cache"] = auth.RoleCache(snapshot=snapshot)
    return cache


def _roles_redis(state: AppState) -> Any:
    """A Redis client for the shared role cache, or None without Redis."""
    if not state.settings.redis_url:
        return None
    client = state.extras.get("roles_redis")
    if client is None:
        client = state.extras["roles_redis"] = redis_client(state.settings.redis_url)
    return client


def _redis_role_key(state: AppState, digest: str) -> str:
    return f"{state.settings.redis_prefix}role:{digest}"


async def _share_role(state: AppState, digest: str, role: str | None) -> None:
    """Tell the other servers (and a restarted one) what the database said about a key."""
    client = _roles_redis(state)
    if client is None:
        return
    with contextlib.suppress(Exception):  # Redis down: the database stays the authority
        if role is None:
            await client.delete(_redis_role_key(state, digest))
        else:
            await client.set(_redis_role_key(state, digest), role, ex=ROLE_REDIS_TTL_S)


async def _role_without_database(state: AppState, cache: Any, key: str, digest: str) -> str:
    """While the database cannot be asked: Redis, then the last known role; else 503."""
    client = _roles_redis(state)
    if client is not None:
        with contextlib.suppress(Exception):
            shared = await client.get(_redis_role_key(state, digest))
            if shared:
                return shared.decode() if isinstance(shared, bytes) else str(shared)
    known = cache.last_known(key)
    if known is not None:
        return known
    raise HTTPException(
        status_code=503,
        detail=[
            {
                "loc": ["header", "Authorization"],
                "msg": "this API key cannot be checked now: the database is unreachable; retry",
                "type": "Unavailable",
            }
        ],
        headers={"Retry-After": "1"},
    )


def _role_lookup(state: AppState, cache: Any, key: str) -> asyncio.Task[str | None]:
    """The one database lookup of `key`'s role in flight (started if there is none); it
    refreshes the cache when done. When the database is unreachable (or hung past its
    timeouts) the role comes from Redis or the last known roles (`_role_without_database`)."""
    from abtest import auth

    digest = auth.hash_key(key)
    task = cache.pending.get(digest)
    if task is not None:
        return task

    def lookup() -> str | None:
        with db.session_scope(state.fast_engine) as session:
            return auth.role_of(session, key)

    async def refresh() -> str | None:
        try:
            try:
                role = await run_in_threadpool(lookup)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                role = await _role_without_database(state, cache, key, digest)
                cache.put_stale(key, role)  # the next requests do not wait for the database
                return role
            cache.put(key, role)
            await _share_role(state, digest, role)
            return role
        finally:
            cache.pending.pop(digest, None)

    task = asyncio.get_running_loop().create_task(refresh())
    # a failed background refresh (database down) keeps the stale role; its error is not news
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    cache.pending[digest] = task
    return task


def require_role(*roles: str) -> Callable[[Request], Awaitable[str | None]]:
    """Dependency: the request's API key must have one of `roles` (when auth is enabled)."""

    async def _check(request: Request) -> str | None:
        return await authorize(app_state(request), request_api_key(request), roles)

    return _check


MAX_CLAIMED_ACTOR = 80  # + " (key <12 hex>)" fits the 100-character actor columns


def attributed_actor(request: Request, claimed: str) -> str:
    """The actor the audit trail records: the name the body gives, followed, when keys are
    required, by the fingerprint of the key that made the request. A body's `actor` is a
    claim; the key is what authenticated, so the record says both."""
    key = request_api_key(request)
    if not app_state(request).settings.auth_enabled or key is None:
        return claimed
    from abtest import auth

    return f"{claimed[:MAX_CLAIMED_ACTOR]} (key {auth.key_fingerprint(key)})"


@lru_cache(maxsize=1)
def page_templates() -> jinja2.Environment:
    """The HTML pages (dashboard, sign-in), escaped."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("abtest", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
