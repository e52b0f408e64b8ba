"""CSRF: cookie-authenticated changes need this origin and the session's token; bearer
requests are exempt; the login form has its own double-submit token."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request

from controller.auth.credentials import SESSION_COOKIE
from controller.auth.csrf import LOGIN_CSRF_COOKIE, csrf_token_for, token_for_session
from tests.access_world import PASSWORDS, AccessWorld, access_world, session_csrf
from tests.controller_harness import login_form_token

PAUSE = "/api/rollouts/7/pause"  # no such rollout: the route's 404/422 means access let it by


def passed(status: int) -> bool:
    return status not in (401, 403)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[AccessWorld]:
    with access_world(tmp_path) as w:
        yield w


def test_cookie_post_needs_the_session_token(world: AccessWorld) -> None:
    """An operator's cookie POST without a token, or with a wrong one (another session's),
    is 403; the right token in the header or the form field gets through."""
    browser, token = world.browser("operator")
    _, other = world.browser("admin")
    missing = browser.post(PAUSE)
    assert missing.status_code == 403 and "CSRF token" in missing.json()["detail"]
    assert browser.post(PAUSE, headers={"X-CSRF-Token": other}).status_code == 403
    assert browser.post(PAUSE, headers={"X-CSRF-Token": token}).status_code == 404
    assert passed(browser.post(PAUSE, data={"csrf_token": token}).status_code)
    assert browser.post(PAUSE, data={"csrf_token": other}).status_code == 403


def test_a_forged_cross_site_form_is_refused(world: AccessWorld) -> None:
    """A form another site makes the browser submit, even one carrying the right token, is
    refused by Origin, by Referer, or by Sec-Fetch-Site."""
    browser, token = world.browser("operator")
    for headers in (
        {"Origin": "https://evil.example"},
        {"Referer": "https://evil.example/page"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ):
        forged = browser.post(PAUSE, data={"csrf_token": token}, headers=headers)
        assert forged.status_code == 403, headers
        assert "cross-site" in forged.json()["detail"]
    same = browser.post(PAUSE, data={"csrf_token": token}, headers={"Origin": "http://testserver"})
    assert passed(same.status_code)


def test_safe_methods_need_no_token(world: AccessWorld) -> None:
    """Reads with the cookie need no CSRF token (they change nothing)."""
    browser, _ = world.browser("viewer")
    assert browser.get("/api/devices").status_code == 200


def test_bearer_requests_are_exempt(world: AccessWorld) -> None:
    """A bearer-token request needs no CSRF token, even with a stray cookie in the jar."""
    browser, _ = world.browser("viewer")
    response = browser.post(PAUSE, headers=world.bearer("operator"))
    assert response.status_code == 404


def test_the_token_is_derived_from_the_session(world: AccessWorld) -> None:
    """csrf_token_for is None without a session, stable within one, and differs between
    sessions (nothing is stored for it)."""
    browser, token = world.browser("viewer")
    assert session_csrf(browser) == token
    scope = {"type": "http", "headers": [], "method": "GET", "path": "/"}
    assert csrf_token_for(Request(scope)) is None
    cookie = browser.cookies[SESSION_COOKIE]
    scope["headers"] = [(b"cookie", f"{SESSION_COOKIE}={cookie}".encode())]
    assert csrf_token_for(Request(scope)) == token == token_for_session(cookie)
    _, second = world.browser("viewer")
    assert second != token


def test_login_needs_the_forms_own_token(world: AccessWorld) -> None:
    """Login CSRF: a POST without the form's token, with a token not matching this
    browser's pre-session cookie (an attacker's own), or cross-site, is 403 and opens no
    session; the form's token logs in and the pre-session cookie is dropped."""
    victim = world.client()
    attacker_token = login_form_token(world.client())
    form = {"username": "viewer", "password": PASSWORDS["viewer"]}
    assert victim.post("/login", data=form).status_code == 403
    login_form_token(victim)  # the victim's browser holds its own pre-session cookie
    forged = victim.post("/login", data=form | {"csrf_token": attacker_token})
    assert forged.status_code == 403 and "expired or was not sent from this site" in forged.text
    assert SESSION_COOKIE not in victim.cookies
    token = login_form_token(victim)
    cross = victim.post(
        "/login", data=form | {"csrf_token": token}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403 and SESSION_COOKIE not in victim.cookies
    token = login_form_token(victim)
    ok = victim.post("/login", data=form | {"csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/console"
    assert f"{LOGIN_CSRF_COOKIE}=" in ok.headers["set-cookie"]  # deleted
    assert victim.get("/api/me").json()["username"] == "viewer"


def test_the_login_form_carries_its_token_and_strict_cookies(world: AccessWorld) -> None:
    """GET /login renders the token in a hidden field and sets the pre-session cookie
    HttpOnly, SameSite=Strict, scoped to /login."""
    page = world.client().get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token and page.cookies[LOGIN_CSRF_COOKIE] == token.group(1)
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/login" in cookie


def test_logout_needs_the_token_too(world: AccessWorld) -> None:
    """A logout without the session's token is refused and the session lives on; with it,
    the session ends on the server (its old cookie no longer works) and is audited."""
    browser, token = world.browser("viewer")
    assert browser.post("/logout").status_code == 403
    assert browser.get("/api/me").status_code == 200
    cookie = browser.cookies[SESSION_COOKIE]
    out = browser.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    replay = world.client()  # the old cookie, replayed: closed on the server, not just deleted
    replay.cookies.set(SESSION_COOKIE, cookie)
    assert replay.get("/api/me").status_code == 401
    assert "auth.logout" in world.audit_actions()
