"""The FastAPI app factory. Nothing is created at import time: settings come in, the
lifespan starts the database, broker, ingest and scheduler, and stops them on exit."""

import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller import __version__
from controller.api.deps import ServicesDep, require_access
from controller.api.problems import document_problems
from controller.api.routes import alerts as alert_routes
from controller.api.routes import attestation as attestation_routes
from controller.api.routes import audit as audit_routes
from controller.api.routes import certificates as certificate_routes
from controller.api.routes import device_metrics as device_metrics_routes
from controller.api.routes import devices, ingest, shadow, telemetry
from controller.api.routes import drift as drift_routes
from controller.api.routes import drills as drill_routes
from controller.api.routes import fleet as fleet_routes
from controller.api.routes import images as image_routes
from controller.api.routes import metrics as metrics_routes
from controller.api.routes import models as model_routes
from controller.api.routes import provisioning as provisioning_routes
from controller.api.routes import revocation as revocation_routes
from controller.api.routes import rollouts as rollout_routes
from controller.api.routes import tuf as tuf_routes
from controller.api.routes import users as user_routes
from controller.auth.access import LoginRequired
from controller.console import auth_routes as console_auth
from controller.console import routes as console
from controller.services import Services
from controller.settings import Settings
from shared.http_guard import BodyGuard, BodyLimits, HostGuard, HostPolicy, SecurityHeaders

_SWAGGER = "/static/vendor/swagger-ui"  # vendored swagger-ui-dist (scripts/vendor_js)
# /healthz says degraded (503) this long after ingest's broker session was taken over.
TAKEOVER_DEGRADED_S = 600.0


def _problem(
    status: int, title: str, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """RFC 9457 problem details: one error shape for every API failure."""
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=dict(headers) if headers else None,
    )


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    """Build the controller app; ``services`` may be passed in already created (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = services or Services.create(settings)
        app.state.services = svc
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    # One authorization policy for every route (controller/auth/access.py, enforced by
    # controller/api/deps.py): routes carry no role checks of their own, and a route the
    # policy does not cover is refused.
    app = FastAPI(
        title="edgefleet controller",
        version=__version__,
        lifespan=lifespan,
        dependencies=[Depends(require_access)],
        # FastAPI's own /docs and /redoc pages load their scripts and fonts from a CDN, which
        # an air-gapped controller cannot reach: /docs is served below from vendored files
        # (scripts/vendor_js), and there is no /redoc.
        docs_url=None,
        redoc_url=None,
    )
    _guard_http(app, settings)
    document_problems(app)  # /openapi.json: errors are problem details, as sent
    _add_error_handlers(app)
    _add_health_and_docs(app)
    _include_routers(app)
    return app


# What a page of this controller may load and who may frame it: its own scripts, styles,
# images (and the data: icons of Swagger UI's CSS), and fetch() to itself only; no inline
# script or style, no plugin, no <base>, forms posting here only, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),  # frame-ancestors for browsers without CSP 2
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
# Responses a cache may keep (they say how long themselves); every other answer is no-store:
# tokens, passwords, pages with a CSRF token, anything a user's role let them read.
CACHEABLE_PREFIXES = ("/static/", "/tuf/")


def _guard_http(app: FastAPI, settings: Settings) -> None:
    """Every request passes shared/http_guard.py before any route or dependency (so before
    authentication): the Host header (``allowed_hosts``), then the body's size and JSON
    depth and element count; model uploads stream to disk under their own limit. Every
    response gets the security headers. Starlette runs the last added middleware first."""
    http_limits = settings.http_limits
    app.add_middleware(
        BodyGuard,
        limits=BodyLimits(
            max_bytes=http_limits.max_body_bytes,
            max_depth=http_limits.max_json_depth,
            max_elements=http_limits.max_json_elements,
            streamed={("POST", "/api/models"): settings.updates.max_upload_bytes},
            larger={("POST", "/api/drills"): http_limits.max_drill_report_bytes},
            shape_status=422,
        ),
    )
    app.add_middleware(HostGuard, policy=HostPolicy(tuple(settings.allowed_hosts)))
    app.add_middleware(
        SecurityHeaders, headers=SECURITY_HEADERS, cacheable_prefixes=CACHEABLE_PREFIXES
    )


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure as RFC 9457 problem details; an anonymous page view goes to /login."""

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(exc.status_code, _title(exc.status_code), exc.detail, exc.headers)

    @app.exception_handler(StaleDataError)
    async def _concurrent_change(request: Request, exc: StaleDataError) -> JSONResponse:
        # Optimistic locking (e.g. a device shadow changed by a rollout meanwhile).
        return _problem(409, "Conflict", "changed by someone else meanwhile; read and retry")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        return _problem(422, "Invalid request", errors)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers an unhandled exception from its outermost middleware, outside
        # SecurityHeaders: this answer carries the headers itself (the exception is still
        # logged with its traceback by the server). No detail: it may hold anything.
        headers = {**dict(SECURITY_HEADERS), "Cache-Control": "no-store"}
        return _problem(500, "Internal Server Error", "an internal error; see the log", headers)


def _broker_session(services: Services, now: float) -> dict[str, Any]:
    """Ingest's broker session for ``/healthz``: ``taken_over`` while another client took
    it over (connected with our client id) less than ``TAKEOVER_DEGRADED_S`` ago."""
    health = services.ingest.transport.session_health() if services.ingest else None
    if health is None:
        return {"taken_over": False, "takeovers": 0}
    doc: dict[str, Any] = {
        "client_id": health.client_id,
        "taken_over": False,
        "takeovers": health.takeovers,
    }
    if health.last_at is None:
        return doc
    doc["last_takeover_at"] = datetime.fromtimestamp(health.last_at, UTC).isoformat()
    ago = now - health.last_at
    if ago < TAKEOVER_DEGRADED_S:
        doc["taken_over"] = True
        doc["reason"] = (
            f"another client connected with this controller's client id "
            f"{health.client_id!r} {ago:.0f}s ago ({health.last_how}): it "
            "received the controller's messages meanwhile; check the broker's logins "
            "(docs/troubleshooting.md)"
        )
    return doc


def _add_health_and_docs(app: FastAPI) -> None:
    """``/healthz`` for probes and ``/docs``, the API explorer."""

    @app.get("/healthz", tags=["health"])
    def healthz(services: ServicesDep) -> JSONResponse:
        """Liveness and readiness: the database answers, ingest holds the broker, no worker
        is down (``workers_down`` names the crashed ones waiting for a restart), ingest's
        broker session was not taken over in the last ``TAKEOVER_DEGRADED_S``
        (``broker_session.reason`` says by what) and the TUF timestamp is valid;
        ``warning`` (still 200) while it is due for re-signing and this controller cannot
        sign (``tuf_signing`` says why and when it expires)."""
        try:
            with services.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            db_ok = True
        except Exception:
            db_ok = False
        broker_ok = bool(services.ingest and services.ingest.connected)
        down = services.workers_down()
        tuf = services.tuf_signing(datetime.now(UTC))
        session = _broker_session(services, time.time())
        # Signing that is about to fail is a warning (200): the controller serves, and taking
        # it out of a load balancer would not help; metadata devices refuse is not.
        ok = (
            db_ok
            and broker_ok
            and not down
            and tuf.status not in ("expired", "unreadable")
            and not session["taken_over"]
        )
        return JSONResponse(
            {
                "status": ("warning" if tuf.status == "degraded" else "ok") if ok else "degraded",
                "database": db_ok,
                "broker": broker_ok,
                "broker_session": session,
                "workers_down": down,
                "tuf_signing": tuf.as_json(),
            },
            status_code=200 if ok else 503,
        )

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        """The Swagger UI explorer of /openapi.json, every asset from /static."""
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{_SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{_SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{_SWAGGER}/favicon-32x32.png",
            # No spec validator badge: it would send the schema to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        # Swagger UI starts from an inline script: this page's policy allows that one
        # script by its hash, nothing else inline.
        page.headers["Content-Security-Policy"] = _with_script_hashes(bytes(page.body))
        return page


def _with_script_hashes(html: bytes) -> str:
    """CONTENT_SECURITY_POLICY allowing the inline scripts of ``html`` by their SHA-256."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode("ascii") + "'"
        for script in re.findall(rb"<script>(.*?)</script>", html, flags=re.DOTALL)
    ]
    return f"{CONTENT_SECURITY_POLICY}; script-src 'self' {' '.join(hashes)}"


def _include_routers(app: FastAPI) -> None:
    """The API's routers, the console's pages and its static files."""
    for router in (
        devices.router,
        audit_routes.router,
        attestation_routes.router,
        provisioning_routes.router,
        revocation_routes.router,
        certificate_routes.router,
        ingest.router,
        shadow.router,
        telemetry.router,
        model_routes.router,
        tuf_routes.router,
        rollout_routes.router,
        fleet_routes.router,
        device_metrics_routes.router,
        drift_routes.router,
        alert_routes.router,
        image_routes.router,
        drill_routes.router,
        metrics_routes.router,
        user_routes.router,
        console_auth.router,
        console.router,
    ):
        app.include_router(router)
    app.mount(
        "/static",
        StaticFiles(directory=Path(__file__).parent / "console" / "static"),
        name="static",
    )


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
