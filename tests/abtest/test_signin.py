"""Dashboard sign-in attacked from outside: forged, replayed-after-revocation and expired
cookies, a key of the wrong role, an open redirect, and the JSON API untouched by cookies."""

import pytest
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer
from pydantic import SecretStr

from abtest import auth, db
from abtest.api import create_app, signin

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def keys(settings):
    with db.session_scope(db.get_engine(settings.database_url)) as session:
        return {
            role: auth.create_key(session, f"k-{role}", role)[1]
            for role in ("analyst", "engineer", "app")
        }


@pytest.fixture
def client(settings, keys):
    secured = settings.model_copy(
        update={"auth_enabled": True, "session_secret": SecretStr("s" * 32)}
    )
    with TestClient(create_app(secured), follow_redirects=False) as c:
        yield c


def _sign_in(client, key, next_path="/dashboard"):
    return client.post("/login", data={"key": key, "next": next_path})


def test_dashboard_without_session_redirects_to_the_form(client):
    response = client.get("/dashboard")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/dashboard"
    form = client.get("/login?next=/dashboard")
    assert form.status_code == 200 and 'name="key"' in form.text


@pytest.mark.parametrize("role", ["analyst", "engineer"])
def test_sign_in_sets_a_signed_httponly_lax_cookie(client, keys, role):
    response = _sign_in(client, keys[role])
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith(f"{signin.COOKIE}=")
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie
    assert (
        keys[role] not in set_cookie and auth.hash_key(keys[role]) not in set_cookie.split(";")[0]
    )
    assert client.get("/dashboard").status_code == 200


def test_wrong_keys_are_refused_in_the_form(client, keys):
    assert _sign_in(client, "abt_wrong-wrong-wrong-wrong").status_code == 401
    refused = _sign_in(client, keys["app"])
    assert refused.status_code == 403 and "needs analyst" in refused.text
    assert _sign_in(client, "").status_code == 422
    assert signin.COOKIE not in client.cookies
    assert client.get("/dashboard").status_code == 303


def test_forged_and_foreign_secret_cookies_are_refused(client, keys):
    forged = URLSafeTimedSerializer("another-secret", salt="abtest-dashboard-session")
    client.cookies.set(signin.COOKIE, forged.dumps({"k": auth.hash_key(keys["analyst"])}))
    assert client.get("/dashboard").status_code == 303
    client.cookies.set(signin.COOKIE, "garbage")
    assert client.get("/dashboard").status_code == 303


def test_revoking_the_key_ends_its_sessions(client, keys, settings):
    assert _sign_in(client, keys["analyst"]).status_code == 303
    assert client.get("/dashboard").status_code == 200
    with db.session_scope(db.get_engine(settings.database_url)) as session:
        auth.revoke_key(session, "k-analyst")
    assert client.get("/dashboard").status_code == 303


def test_expired_session_is_refused(client, keys, monkeypatch):
    assert _sign_in(client, keys["analyst"]).status_code == 303
    monkeypatch.setattr(signin, "SESSION_MAX_AGE_S", -1)
    assert client.get("/dashboard").status_code == 303


def test_logout_clears_the_cookie(client, keys):
    _sign_in(client, keys["analyst"])
    response = client.post("/logout")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert client.get("/dashboard").status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil"])
def test_next_cannot_redirect_off_site(client, keys, target):
    response = _sign_in(client, keys["analyst"], target)
    assert response.headers["location"] == "/dashboard"


def test_api_keys_in_headers_still_work_and_cookies_do_not_open_the_json_api(client, keys):
    headers = {"Authorization": f"Bearer {keys['analyst']}"}
    assert client.get("/dashboard", headers=headers).status_code == 200
    assert client.get("/dashboard", headers={"X-API-Key": keys["app"]}).status_code == 403
    _sign_in(client, keys["analyst"])
    assert client.get("/v1/experiments").status_code == 401
