"""``/api/me``, ``/api/users`` and ``/api/tokens``: accounts and API tokens.

Who may call what is decided by ``controller.auth.access`` (users: admin; tokens: any user for
their own, admin for anyone's). Every change is audited; a plain token or generated
password is returned once, in the response that made it, and stored only hashed.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field, SecretStr
from sqlalchemy import func
from sqlmodel import col, select

from controller.api.deps import (
    CurrentUser,
    DbDep,
    Offset,
    RowId,
    ServicesDep,
    client_ip,
    credential_of,
)
from controller.auth import users as accounts
from controller.auth.credentials import Role, authenticate, token_usable
from controller.auth.login_limit import LoginLimiter, Throttled
from controller.auth.tables import ApiToken, User

router = APIRouter(tags=["users"])


class UserPublic(BaseModel):
    """A user as the API shows it (never the password hash)."""

    id: int
    username: str
    role: str
    disabled: bool
    created_at: datetime


class UserCreated(UserPublic):
    """A new user; ``password`` is set only when the controller generated it (shown once)."""

    password: str | None = None


class UserCreate(BaseModel):
    """A new user; without a password the controller generates one and returns it once."""

    username: str = Field(pattern=accounts.USERNAME_PATTERN)
    role: Role = "viewer"
    password: SecretStr | None = Field(default=None, max_length=256)


class UserUpdate(BaseModel):
    """Change a user's role or (dis)able them; omitted fields stay as they are."""

    role: Role | None = None
    disabled: bool | None = None


class PasswordChange(BaseModel):
    """Your current password, and the new one."""

    current_password: SecretStr = Field(max_length=256)
    new_password: SecretStr = Field(max_length=256)
    # Revoke your API tokens too (all but the one this request is made with): whoever knew
    # the old password may have minted some. False keeps them, for a routine change.
    revoke_tokens: bool = True


class PasswordChanged(UserPublic):
    """Your account after a password change, and the ids of the tokens it revoked."""

    tokens_revoked: list[int]


class UserList(BaseModel):
    data: list[UserPublic]
    count: int


class TokenPublic(BaseModel):
    """An API token's metadata (never its value)."""

    id: int
    user_id: int
    username: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    active: bool


class TokenCreated(TokenPublic):
    """A new token: ``token`` is the bearer value, shown this once only."""

    token: str


class TokenCreate(BaseModel):
    """A token for yourself, or (admin) for ``username``; optionally expiring."""

    name: str = Field(min_length=1, max_length=64)
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)
    username: str | None = Field(default=None, max_length=64)


class TokenList(BaseModel):
    data: list[TokenPublic]
    count: int


def _user_public(user: User) -> UserPublic:
    return UserPublic.model_validate(user, from_attributes=True)


def _token_public(row: ApiToken, username: str, now: datetime) -> TokenPublic:
    return TokenPublic(
        id=row.id or 0,
        user_id=row.user_id,
        username=username,
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        active=token_usable(row, now=now),
    )


def _actor(user: User) -> str:
    return f"user:{user.username}"


@contextmanager
def _refusals() -> Iterator[None]:
    """The account service's refusals as the API's: its status and its sentence."""
    try:
        yield
    except accounts.AccountError as e:
        raise HTTPException(e.status, str(e)) from e


@router.get("/api/me")
def me(user: CurrentUser) -> UserPublic:
    """The caller's own account."""
    return _user_public(user)


@router.post("/api/me/password")
def change_password(
    body: PasswordChange, request: Request, db: DbDep, services: ServicesDep, user: CurrentUser
) -> PasswordChanged:
    """Change your own password: the current one is checked (and counts towards the login
    limits, so a stolen session cannot guess it), your other sessions end and, unless
    ``revoke_tokens`` is false, so do your API tokens but the one this request uses."""
    now = datetime.now(UTC)
    limiter = LoginLimiter(services.settings.login_limit)
    ip = client_ip(request)
    # Counted before the slow hash check, like a login (controller/auth/login_limit.py).
    attempt = limiter.begin(db, username=user.username, client_ip=ip, now=now)
    if isinstance(attempt, Throttled):
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            attempt.message,
            headers={"Retry-After": str(attempt.retry_after_s)},
        )
    current = body.current_password.get_secret_value()
    if authenticate(db, username=user.username, password=current) is None:
        db.commit()  # the attempt's row stays: a failure
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the current password is wrong")
    limiter.forgive(db, attempt=attempt, username=user.username)
    db.commit()  # the right password is no failure, even if the new one is refused below
    credential = credential_of(request)
    session_kept = credential.value if credential and credential.kind == "session" else None
    token_kept = credential.value if credential and credential.kind == "bearer" else None
    with _refusals():
        revoked = accounts.change_password(
            db,
            user,
            body.new_password.get_secret_value(),
            actor=_actor(user),
            keep_session=session_kept,
            revoke_tokens=body.revoke_tokens,
            keep_token=token_kept,
            now=now,
        )
    db.commit()
    return PasswordChanged(**_user_public(user).model_dump(), tokens_revoked=revoked)


@router.get("/api/users")
def list_users(
    db: DbDep,
    username: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> UserList:
    """Users by id, optionally the one with ``username``."""
    query = select(User)
    if username is not None:
        query = query.where(col(User.username) == username)
    count = db.exec(select(func.count()).select_from(query.subquery())).one()
    rows = db.exec(query.order_by(col(User.id)).offset(offset).limit(limit)).all()
    return UserList(data=[_user_public(u) for u in rows], count=count)


@router.post("/api/users", status_code=status.HTTP_201_CREATED)
def add_user(body: UserCreate, db: DbDep, actor: CurrentUser) -> UserCreated:
    """Create a user; a weak password or a taken username is refused (422 / 409)."""
    password = None if body.password is None else body.password.get_secret_value()
    with _refusals():
        user, generated = accounts.add_user(
            db, username=body.username, role=body.role, password=password, actor=_actor(actor)
        )
    db.commit()
    db.refresh(user)
    return UserCreated(**_user_public(user).model_dump(), password=generated)


@router.patch("/api/users/{user_id}")
def update_user(user_id: RowId, body: UserUpdate, db: DbDep, actor: CurrentUser) -> UserPublic:
    """Change role and/or disabled; disabling logs the user out everywhere and stops their
    tokens at once. The last enabled admin cannot be demoted or disabled."""
    with _refusals():
        user = accounts.update_user(
            db, user_id, role=body.role, disabled=body.disabled, actor=_actor(actor)
        )
    db.commit()
    db.refresh(user)
    return _user_public(user)


@router.delete("/api/users/{user_id}")
def delete_user(user_id: RowId, db: DbDep, actor: CurrentUser) -> UserPublic:
    """Delete a user with their sessions and tokens (audit entries keep the name). Not the
    last enabled admin, and not yourself (ask another admin)."""
    with _refusals():
        user = accounts.delete_user(db, user_id, by=actor, actor=_actor(actor))
        shown = _user_public(user)
    db.commit()
    return shown


@router.get("/api/tokens")
def list_tokens(
    db: DbDep,
    actor: CurrentUser,
    all_users: Annotated[
        bool, Query(alias="all", description="Every user's tokens (admin only).")
    ] = False,
    include_inactive: Annotated[bool, Query(description="Also revoked and expired.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> TokenList:
    """The caller's tokens, newest first; an admin may ask for everyone's (``all=true``)."""
    if all_users and actor.role != "admin":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"role {actor.role!r} may not list all tokens; needs admin"
        )
    now = datetime.now(UTC)
    query = select(ApiToken, User.username).join(User, col(User.id) == col(ApiToken.user_id))
    if not all_users:
        query = query.where(col(ApiToken.user_id) == actor.id)
    if not include_inactive:
        query = query.where(
            col(ApiToken.revoked_at).is_(None),
            (col(ApiToken.expires_at).is_(None)) | (col(ApiToken.expires_at) > now),
        )
    count = db.exec(select(func.count()).select_from(query.subquery())).one()
    rows = db.exec(query.order_by(col(ApiToken.id).desc()).offset(offset).limit(limit)).all()
    return TokenList(data=[_token_public(t, name, now) for t, name in rows], count=count)


@router.post("/api/tokens", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, db: DbDep, actor: CurrentUser) -> TokenCreated:
    """Issue a bearer token acting as you (or, for an admin, as ``username``); the value is
    in this response only. A token has its user's role, whatever that becomes."""
    now = datetime.now(UTC)
    expires = now + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    with _refusals():
        owner = accounts.token_owner(db, actor, body.username)
        row, token = accounts.create_token(
            db, owner, name=body.name, expires_at=expires, actor=_actor(actor), now=now
        )
    db.commit()
    db.refresh(row)
    return TokenCreated(**_token_public(row, owner.username, now).model_dump(), token=token)


@router.delete("/api/tokens/{token_id}")
def revoke_token(token_id: RowId, db: DbDep, actor: CurrentUser) -> TokenPublic:
    """Revoke a token (yours, or anyone's for an admin); it stops working at once. The row
    stays, so the listing and the audit log can still name it."""
    now = datetime.now(UTC)
    with _refusals():
        row, owner = accounts.revoke_token(db, token_id, by=actor, actor=_actor(actor), now=now)
    db.commit()
    db.refresh(row)
    return _token_public(row, owner.username, now)
