"""The /dashboard page in headless Chromium (Debian's package, driven by Playwright).

The app runs in uvicorn on a free 127.0.0.1 port. Without /usr/bin/chromium the test is skipped
locally but FAILS in CI (CI=true), where `.ci/run` installs the package.
"""

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from abtest import db
from abtest.api import create_app
from tests.online_data import create_experiment, simulate

CHROMIUM = Path(os.environ.get("ABTEST_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing browser is a failure, not a skip)")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _seed(settings) -> None:
    engine = db.get_engine(settings.database_url)
    balanced = create_experiment(engine, key="student-vs-teacher", settings={"margin": "-5%"})
    simulate(engine, balanced, {"control": 0.9, "treatment": 0.88}, 60, 3)
    skewed = create_experiment(engine, key="broken-split")
    simulate(
        engine, skewed, {"control": 0.9, "treatment": 0.9}, 80, 2,
        weights={"control": 0.8, "treatment": 0.2},
    )  # fmt: skip


def _serve(settings):
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture
def server_url(settings):
    _seed(settings)
    url, server, thread = _serve(settings)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def signed_server(settings):
    """The dashboard with auth on (as `abtest serve` runs it) and an analyst and an app key."""
    from abtest import auth

    _seed(settings)
    with db.session_scope(db.get_engine(settings.database_url)) as session:
        _, analyst = auth.create_key(session, "alice", "analyst")
        _, app_key = auth.create_key(session, "ios", "app")
    url, server, thread = _serve(settings.model_copy(update={"auth_enabled": True}))
    yield url, analyst, app_key
    server.should_exit = True
    thread.join(timeout=10)


def test_dashboard_in_headless_chromium(server_url):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            response = page.goto(f"{server_url}/dashboard", wait_until="load", timeout=60_000)
            assert response is not None and response.status == 200
            assert page.title() == "abtest dashboard"
            assert page.locator("#experiments tr").count() == 3  # header + two experiments

            panel = page.locator('section[data-key="student-vs-teacher"]')
            arms = panel.locator("tr.arm")
            assert arms.count() == 2
            assert arms.nth(0).get_attribute("data-arm") == "control"
            assert panel.locator("tr.arm .rate").first.inner_text().endswith("%")
            assert panel.locator(".decision").inner_text() in {
                "inconclusive", "non-inferior", "equivalent", "treatment worse",
                "treatment better", "underpowered",
            }  # fmt: skip
            assert panel.locator("ul.power li").count() == 1
            assert panel.locator("table.guardrails tr").count() == 3
            badge = panel.locator(".badge.srm")
            assert badge.inner_text() == "SRM ok"
            assert "srm-ok" in badge.get_attribute("class")

            broken = page.locator('section[data-key="broken-split"]')
            assert broken.locator(".badge.srm").inner_text() == "SRM FLAGGED"
            assert broken.locator(".decision").inner_text() == "srm — do not trust"
            assert broken.locator(".callout").count() >= 1

            # Both plots of both experiments were decoded by the browser (non-zero size).
            images = page.locator("img.plot")
            assert images.count() == 4
            widths = images.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)")
            assert all(w and w > 100 for w in widths), widths
        finally:
            browser.close()


def test_sign_in_once_browse_and_sign_out(signed_server):
    """A browser signs in with an analyst key in the form, sees every experiment, opens one and
    finds its decision and interval, power, guardrails, segments and the champion; the session
    cookie is HttpOnly and SameSite=Lax; signing out ends it."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    url, analyst_key, app_key = signed_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{url}/dashboard", wait_until="load", timeout=60_000)
            assert page.url.startswith(f"{url}/login")  # redirected, not a JSON 401
            form = page.get_by_test_id("login-form")

            form.locator("#key").fill("abt_not-a-real-key-0000000000")
            page.get_by_test_id("sign-in").click()
            assert "invalid or revoked" in page.get_by_test_id("login-error").inner_text()
            page.locator("#key").fill(app_key)
            page.get_by_test_id("sign-in").click()
            assert "needs analyst" in page.get_by_test_id("login-error").inner_text()
            assert context.cookies() == []

            page.locator("#key").fill(analyst_key)
            page.get_by_test_id("sign-in").click()
            page.wait_for_url(f"{url}/dashboard")
            (cookie,) = context.cookies()
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
            assert analyst_key not in cookie["value"]
            assert page.evaluate("document.cookie") == ""  # scripts cannot read it

            keys = page.locator("#experiments a").all_inner_texts()
            assert sorted(keys) == ["broken-split", "student-vs-teacher"]
            assert page.get_by_test_id("champion").inner_text() == "Champion: teacher"
            page.get_by_role("link", name="student-vs-teacher").click()
            assert page.url.endswith("#exp-student-vs-teacher")
            panel = page.locator('section[data-key="student-vs-teacher"]')
            assert panel.is_visible()
            assert panel.get_by_test_id("decision").inner_text()
            interval = panel.get_by_test_id("decision-interval").inner_text()
            assert interval.startswith("[") and "%" in interval, interval
            assert "treatment:" in panel.get_by_test_id("power").inner_text()
            assert "p95" in panel.get_by_test_id("guardrails").inner_text()
            assert "platform" in panel.get_by_test_id("segments").inner_text()

            page.reload()  # the key was entered once: the cookie carries the session
            assert page.url.startswith(f"{url}/dashboard")
            page.get_by_test_id("logout").locator("button").click()
            page.wait_for_url(f"{url}/login")
            assert context.cookies() == []
            page.goto(f"{url}/dashboard")
            assert page.url.startswith(f"{url}/login")
        finally:
            browser.close()
