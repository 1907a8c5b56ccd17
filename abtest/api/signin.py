"""Dashboard sign-in for browsers: an analyst (or engineer) key entered once in a form, kept in
a signed, HttpOnly, SameSite=Lax session cookie; `/logout` ends it.

The cookie holds the key's SHA-256 hash (never the key), signed with `ABTEST_SESSION_SECRET`
(a random secret per process when unset: sign-ins then end when the server restarts) and
valid for `SESSION_MAX_AGE_S`. Each page load checks the hash against the stored keys, so a
revoked key signs its browsers out at once.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select

from abtest import auth, db
from abtest.api.deps import AppState, app_state, authorize, page_templates, request_api_key
from abtest.tables import ApiKey

router = APIRouter(tags=["dashboard"], include_in_schema=False)
COOKIE = "abtest_session"
SESSION_MAX_AGE_S = 12 * 3600
DASHBOARD_ROLES = ("engineer", "analyst")


class SignInRequired(Exception):
    """A browser without a valid session asked for a page: send it to the sign-in form."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def _serializer(state: AppState) -> URLSafeTimedSerializer:
    secret = state.settings.session_secret
    if secret is None:
        secret_text = state.extras.setdefault("session_secret", secrets.token_urlsafe(32))
    else:
        secret_text = secret.get_secret_value()
    return URLSafeTimedSerializer(secret_text, salt="abtest-dashboard-session")


def session_role(state: AppState, cookie: str | None) -> str | None:
    """The role behind a session cookie: None when it is missing, forged, expired, or its key
    was revoked since."""
    if not cookie:
        return None
    try:
        key_hash = _serializer(state).loads(cookie, max_age=SESSION_MAX_AGE_S)["k"]
    except (BadSignature, KeyError, TypeError):
        return None
    with db.session_scope(state.engine) as session:
        return session.scalar(
            select(ApiKey.role).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )


async def dashboard_viewer(request: Request) -> str | None:
    """Dependency of browser pages: an API key header (checked as for the API) or a session
    cookie of an engineer or analyst key; otherwise `SignInRequired` (a redirect to /login)."""
    state = app_state(request)
    if not state.settings.auth_enabled:
        return None
    key = request_api_key(request)
    if key is not None:
        return await authorize(state, key, DASHBOARD_ROLES)
    role = await run_in_threadpool(session_role, state, request.cookies.get(COOKIE))
    if role in DASHBOARD_ROLES:
        request.state.signed_in = True
        return role
    raise SignInRequired(request.url.path)


def redirect_to_sign_in(_request: Request, exc: SignInRequired) -> Response:
    return RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a local path (no `//host`, no scheme): an open redirect is refused."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/dashboard"


def _form(next_path: str, error: str | None, status: int) -> HTMLResponse:
    html = page_templates().get_template("login.html").render(next=next_path, error=error)
    return HTMLResponse(html, status_code=status)


@router.get("/login", response_class=HTMLResponse)
def login_form(next: str | None = None) -> HTMLResponse:  # noqa: A002 - the query parameter
    return _form(_safe_next(next), None, 200)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the key once; on success set the session cookie and go to the page asked for."""
    state = app_state(request)
    fields: dict[str, Any] = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (fields.get("key") or [""])[0].strip()
    next_path = _safe_next((fields.get("next") or [None])[0])
    if not key:
        return _form(next_path, "key: enter your analyst API key", 422)

    def lookup() -> str | None:
        with db.session_scope(state.engine) as session:
            return auth.role_of(session, key)

    role = await run_in_threadpool(lookup)
    if role is None:
        return _form(next_path, "key: invalid or revoked API key", 401)
    if role not in DASHBOARD_ROLES:
        return _form(
            next_path, f"key: this key has role {role!r}; the dashboard needs analyst", 403
        )
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE,
        _serializer(state).dumps({"k": auth.hash_key(key)}),
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
    return response


def install(app: Any) -> None:
    """Add the sign-in routes and the redirect for pages that need a session."""
    app.include_router(router)
    app.add_exception_handler(SignInRequired, redirect_to_sign_in)
