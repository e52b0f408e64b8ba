"""Request dependencies as ``Annotated`` aliases: services, DB session, current user, and
``require_access``, the app-wide guard.

Who a request comes from (authentication) is decided here; what it may do (authorization)
is decided once for every route by ``require_access``, applying the policy of
``controller.auth.access``. Routes declare ``CurrentUser`` only when they need the actor
(for the audit log), never a role. The API depends on ``controller.auth``, never the reverse.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Path, Query, Request, status
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from controller.auth.access import LoginRequired, permits, rule_for
from controller.auth.credentials import SESSION_COOKIE, user_for_session, user_for_token
from controller.auth.csrf import SAFE_METHODS, CsrfError, verify_session_request
from controller.auth.tables import User
from controller.services import Services

# Row ids as the tables store them (INTEGER primary keys: 32-bit on PostgreSQL) and offsets
# as SQL takes them (64-bit): a larger number in a path or query is a 422, not an overflow
# error from the driver (found by tests/test_api_fuzz.py).
MAX_ROW_ID = 2**31 - 1
MAX_OFFSET = 2**63 - 1
RowId = Annotated[int, Path(ge=0, le=MAX_ROW_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_db(services: ServicesDep) -> Iterator[Session]:
    with Session(services.engine) as session:
        yield session
        session.commit()


# scope="function": commit before the response is sent, not after it (FastAPI's default),
# so a client that follows a redirect or reads right after a write sees the write (a
# login's session row, a rollout command).
DbDep = Annotated[Session, Depends(get_db, scope="function")]


@dataclass(frozen=True, slots=True)
class Credential:
    """What the request presents: a bearer token or a console session cookie."""

    kind: Literal["bearer", "session"]
    value: str


def credential_of(request: Request) -> Credential | None:
    """A bearer token wins over a cookie; a wrong token never falls back to the cookie."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return Credential("bearer", header[7:].strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    return Credential("session", cookie) if cookie else None


def client_ip(request: Request) -> str:
    """The peer address; behind a reverse proxy listed in ``forwarded_allow_ips``, the
    client's address it forwards (docs/tls.md), never a header a client sent itself."""
    return request.client.host if request.client else "unknown"


_RESOLVED = "edgefleet_user"  # request.state key: the user is looked up once per request


def optional_user(request: Request, db: DbDep) -> User | None:
    """The (enabled) user behind a usable bearer token or a live session cookie, or None."""
    if hasattr(request.state, _RESOLVED):
        cached: User | None = getattr(request.state, _RESOLVED)
        return cached
    credential = credential_of(request)
    user: User | None = None
    if credential is not None:
        now = datetime.now(UTC)
        lookup = user_for_token if credential.kind == "bearer" else user_for_session
        user = lookup(db, credential.value, now=now)
    setattr(request.state, _RESOLVED, user)
    return user


def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "log in, or send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


OptionalUser = Annotated[User | None, Depends(optional_user)]
CurrentUser = Annotated[User, Depends(current_user)]


def _template(request: Request) -> str:
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else request.url.path


async def require_access(request: Request, db: DbDep) -> None:
    """The app-wide dependency: classify the route, authenticate, check CSRF for cookie
    sessions, then the role. 401 without (usable) credentials, 403 with the wrong role
    or a forged request, and a redirect to /login for anonymous page views."""
    method = request.method.upper()
    rule = rule_for(method, _template(request))
    if rule is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{method} {request.url.path} is not covered by the access policy; refused",
        )
    if rule.kind == "public":
        return
    user = await run_in_threadpool(optional_user, request, db)  # a DB read: off the loop
    if user is None:
        if rule.kind == "page" and method in SAFE_METHODS:
            raise LoginRequired
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "log in, or send 'Authorization: Bearer <token>' (the token may be wrong,"
            " expired or revoked, or its user disabled)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    credential = credential_of(request)
    if credential is not None and credential.kind == "session":
        try:
            await verify_session_request(request)
        except CsrfError as e:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(e)) from e
    if not permits(user.role, rule.role):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"role {user.role!r} may not {method} {request.url.path}; needs {rule.role}",
        )


__all__ = [
    "SESSION_COOKIE",
    "Credential",
    "CurrentUser",
    "DbDep",
    "OptionalUser",
    "ServicesDep",
    "client_ip",
    "credential_of",
    "current_user",
    "get_db",
    "get_services",
    "optional_user",
    "require_access",
]
