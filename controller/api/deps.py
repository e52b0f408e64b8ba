"""Request dependencies as ``Annotated`` aliases: services, DB session, current user."""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlmodel import Session

from controller.auth import user_for_session, user_for_token
from controller.models import User
from controller.services import Services

SESSION_COOKIE = "ef_session"


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_db(services: ServicesDep) -> Iterator[Session]:
    with Session(services.engine) as session:
        yield session
        session.commit()


DbDep = Annotated[Session, Depends(get_db)]


def optional_user(request: Request, db: DbDep) -> User | None:
    """The user behind a bearer token or a session cookie, or None."""
    now = datetime.now(UTC)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return user_for_token(db, header[7:].strip(), now=now)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return user_for_session(db, cookie, now=now)
    return None


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


def operator_user(user: CurrentUser) -> User:
    """Changing the fleet takes the operator or admin role; viewers only look."""
    if user.role not in ("admin", "operator"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"role {user.role!r} may not change devices")
    return user


OperatorUser = Annotated[User, Depends(operator_user)]
