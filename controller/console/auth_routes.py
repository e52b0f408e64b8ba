"""Console login and logout.

The login form is protected against login CSRF by a double-submit token (a random
pre-session cookie the form repeats), against cross-site posts by the Origin check, and
against password guessing by ``controller.auth.login_limit`` (per username and per address,
shared by replicas through the database). Passwords are never logged or audited.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from controller.api.deps import DbDep, ServicesDep, client_ip
from controller.audit import audit
from controller.auth.credentials import SESSION_COOKIE, authenticate, close_session, open_session
from controller.auth.csrf import (
    LOGIN_CSRF_COOKIE,
    CsrfError,
    check_same_origin,
    new_login_token,
    tokens_match,
    verify_session_request,
)
from controller.auth.login_limit import LoginLimiter, Throttled, normalise_username
from controller.auth.tables import User
from controller.db import session_scope
from controller.settings import Settings

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
_LOGIN_TOKEN_TTL_S = 3600  # a login form left open longer than this asks to reload


def _login_page(
    request: Request,
    settings: Settings,
    *,
    error: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """The form with a fresh double-submit token, set as a cookie alongside."""
    token = new_login_token()
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"error": error, "csrf_token": token},
        status_code=status_code,
        headers=headers,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=_LOGIN_TOKEN_TTL_S,
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
        path="/login",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, services: ServicesDep) -> Response:
    return _login_page(request, services.settings)


@router.post("/login")
def login(
    request: Request,
    db: DbDep,
    services: ServicesDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    settings = services.settings
    try:
        check_same_origin(request)
    except CsrfError:
        return _login_page(request, settings, error="Cross-site login refused.", status_code=403)
    if not tokens_match(request.cookies.get(LOGIN_CSRF_COOKIE), csrf_token):
        return _login_page(
            request,
            settings,
            error="The login form expired or was not sent from this site; try again.",
            status_code=403,
        )
    now = datetime.now(UTC)
    ip = client_ip(request)
    limiter = LoginLimiter(settings.login_limit)
    # Counted (and committed) before the slow password check, so parallel guesses see
    # each other: at most the limit of them get an answer about the password.
    attempt = limiter.begin(db, username=username, client_ip=ip, now=now)
    if isinstance(attempt, Throttled):
        return _login_page(
            request,
            settings,
            error=attempt.message,
            status_code=429,
            headers={"Retry-After": str(attempt.retry_after_s)},
        )
    user = authenticate(db, username=username, password=password)
    if user is None or user.disabled:
        if user is not None:
            # A disabled account answers like a wrong password (and counts as a failure),
            # so the form tells nobody which passwords are right; the audit log says it.
            audit(
                db,
                actor=f"ip:{ip}",
                action="auth.login_disabled",
                target=f"user:{user.username}",
                detail={"client_ip": ip},
                at=now,
            )
        newly = limiter.failed(db, username=username, client_ip=ip, now=now)
        if newly is not None and newly.failures == _limit(settings, newly.scope):
            # Once per lockout, not once per refused attempt: a spray must not flood the log.
            audit(
                db,
                actor=f"ip:{ip}",
                action="auth.login_throttled",
                target=f"user:{normalise_username(username)}",
                reason=f"{newly.failures} failed logins per {newly.scope}"
                f" within {settings.login_limit.window_s:g} s",
                detail={"scope": newly.scope, "client_ip": ip, "failures": newly.failures},
                at=now,
            )
        return _login_page(request, settings, error="Wrong username or password.", status_code=401)
    limiter.forgive(db, attempt=attempt, username=username)
    ttl = timedelta(hours=settings.session_ttl_hours)
    token = open_session(db, user, ttl=ttl, now=now)
    audit(
        db,
        actor=f"user:{user.username}",
        action="auth.login",
        target=f"user:{user.username}",
        detail={"client_ip": ip},
        at=now,
    )
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(ttl.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


def _limit(settings: Settings, scope: str) -> int:
    limits = settings.login_limit
    return limits.max_failures_per_user if scope == "username" else limits.max_failures_per_ip


@router.post("/logout")
async def logout(request: Request, services: ServicesDep) -> Response:
    """End the caller's session. It must be same-origin and carry the session's CSRF token
    (a forged logout is a nuisance, and logging out is a change like any other)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        try:
            await verify_session_request(request)
        except CsrfError as e:
            raise HTTPException(403, str(e)) from e
        await run_in_threadpool(_close, services.engine, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def _close(engine: Engine, token: str) -> None:
    with session_scope(engine) as db:
        row = close_session(db, token)
        user = db.get(User, row.user_id) if row is not None else None
        if user is not None:
            audit(
                db,
                actor=f"user:{user.username}",
                action="auth.logout",
                target=f"user:{user.username}",
            )


__all__ = ["router"]
