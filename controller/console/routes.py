"""Console pages: login, logout and the fleet view (live via polling the JSON API)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import col, select

from controller.api.deps import SESSION_COOKIE, DbDep, OptionalUser, ServicesDep
from controller.auth import authenticate, close_session, open_session
from controller.models import Device, DevicePublic

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _same_origin(request: Request) -> None:
    """Refuse cross-site form posts: the Origin (or Referer) must be this host."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return  # non-browser clients send neither; cookies are SameSite=Strict anyway
    if urlparse(origin).netloc != request.url.netloc:
        raise HTTPException(403, "cross-site form submission refused")


@router.get("/")
def index() -> RedirectResponse:
    return RedirectResponse("/console", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, error: str | None = None) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": error})


@router.post("/login")
def login(
    request: Request,
    db: DbDep,
    services: ServicesDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
) -> Response:
    _same_origin(request)
    user = authenticate(db, username=username, password=password)
    if user is None:
        return templates.TemplateResponse(
            request, "login.html", {"error": "Wrong username or password."}, status_code=401
        )
    ttl = timedelta(hours=services.settings.session_ttl_hours)
    token = open_session(db, user, ttl=ttl, now=datetime.now(UTC))
    response = RedirectResponse("/console", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(ttl.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=services.settings.secure_cookies,
    )
    return response


@router.post("/logout")
def logout(request: Request, db: DbDep) -> Response:
    _same_origin(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        close_session(db, token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/console", response_class=HTMLResponse)
def fleet_page(request: Request, db: DbDep, user: OptionalUser) -> Response:
    if user is None:
        return RedirectResponse("/login", status_code=303)
    devices = [
        DevicePublic.model_validate(d, from_attributes=True)
        for d in db.exec(select(Device).order_by(col(Device.id)).limit(1000)).all()
    ]
    return templates.TemplateResponse(
        request,
        "fleet.html",
        {
            "user": user,
            "devices": devices,
            "online": sum(d.state == "online" for d in devices),
            "offline": sum(d.state == "offline" for d in devices),
            "quarantined": sum(d.quarantined for d in devices),
        },
    )
