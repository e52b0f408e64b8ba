"""``/api/me``, ``/api/users`` and ``/api/tokens``: accounts and API tokens.

Who may call what is decided by ``controller.access`` (users: admin; tokens: any user for
their own, admin for anyone's). Every change is audited; a plain token or generated
password is returned once, in the response that made it, and stored only hashed.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field, SecretStr
from sqlalchemy import func
from sqlmodel import Session, col, delete, select, update

from controller.access import require_self_or_admin
from controller.api.deps import (
    CurrentUser,
    DbDep,
    Offset,
    RowId,
    ServicesDep,
    client_ip,
    credential_of,
)
from controller.audit import audit
from controller.auth import (
    Role,
    authenticate,
    close_user_sessions,
    create_user,
    generate_password,
    issue_api_token,
    set_password,
    token_usable,
)
from controller.login_limit import LoginLimiter, Throttled
from controller.models import ApiToken, User

router = APIRouter(tags=["users"])
_USERNAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


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

    username: str = Field(pattern=_USERNAME)
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


def _get_user(db: Session, user_id: int) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {user_id}")
    return user


def _other_enabled_admins(db: Session, user: User) -> int:
    return db.exec(
        select(func.count())
        .select_from(User)
        .where(col(User.role) == "admin", col(User.disabled).is_(False), col(User.id) != user.id)
    ).one()


def _lock_admins(db: Session) -> None:
    """Serialise changes that may remove an admin, until this transaction ends: two admins
    demoting each other at once must not both see the other still enabled.

    PostgreSQL locks the enabled admins' rows (a concurrent change waits, then re-reads who
    is still an admin); SQLite has one writer at a time, so taking the write lock first
    (a no-op UPDATE) makes the count below and the change one serialised transaction."""
    admins = (col(User.role) == "admin", col(User.disabled).is_(False))
    if db.get_bind().dialect.name == "sqlite":
        db.exec(update(User).where(*admins).values(role=col(User.role)))
    else:
        db.exec(select(User.id).where(*admins).with_for_update()).all()


def _keep_an_admin(db: Session, user: User, what: str) -> None:
    """Refuse a change that would leave no enabled admin (nobody could manage users).
    The caller holds ``_lock_admins`` and read ``user`` after taking it."""
    if user.role == "admin" and not user.disabled and _other_enabled_admins(db, user) == 0:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{user.username!r} is the last enabled admin; cannot {what}"
        )


def _get_user_locked(db: Session, user_id: int) -> User:
    """The user as of now, read after ``_lock_admins`` (not a copy cached earlier in this
    session, e.g. the caller's own row loaded by authentication)."""
    _lock_admins(db)
    user = _get_user(db, user_id)
    db.refresh(user)
    return user


@router.get("/api/me")
def me(user: CurrentUser) -> UserPublic:
    """The caller's own account."""
    return _user_public(user)


@router.post("/api/me/password")
def change_password(
    body: PasswordChange, request: Request, db: DbDep, services: ServicesDep, user: CurrentUser
) -> UserPublic:
    """Change your own password: the current one is checked (and counts towards the login
    limits, so a stolen session cannot guess it), and your other sessions end."""
    now = datetime.now(UTC)
    limiter = LoginLimiter(services.settings.login_limit)
    ip = client_ip(request)
    # Counted before the slow hash check, like a login (controller/login_limit.py).
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
    try:
        set_password(db, user, body.new_password.get_secret_value())
    except ValueError as e:
        raise HTTPException(422, str(e)) from e
    credential = credential_of(request)
    keep = credential.value if credential and credential.kind == "session" else None
    assert user.id is not None
    close_user_sessions(db, user.id, keep=keep)
    audit(db, actor=_actor(user), action="user.password_change", target=f"user:{user.username}")
    db.commit()
    return _user_public(user)


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
    generated = body.password is None
    password = generate_password() if body.password is None else body.password.get_secret_value()
    if db.exec(select(User).where(col(User.username) == body.username)).first() is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"user {body.username!r} already exists")
    try:
        user = create_user(db, username=body.username, password=password, role=body.role)
    except ValueError as e:
        raise HTTPException(422, str(e)) from e
    audit(
        db,
        actor=_actor(actor),
        action="user.create",
        target=f"user:{user.username}",
        detail={"role": user.role, "generated_password": generated},
    )
    db.commit()
    db.refresh(user)
    return UserCreated(**_user_public(user).model_dump(), password=password if generated else None)


@router.patch("/api/users/{user_id}")
def update_user(user_id: RowId, body: UserUpdate, db: DbDep, actor: CurrentUser) -> UserPublic:
    """Change role and/or disabled; disabling logs the user out everywhere and stops their
    tokens at once. The last enabled admin cannot be demoted or disabled."""
    user = _get_user_locked(db, user_id)
    changes: dict[str, object] = {}
    if body.role is not None and body.role != user.role:
        if body.role != "admin":
            _keep_an_admin(db, user, f"make them {body.role}")
        changes["role"] = [user.role, body.role]
        user.role = body.role
    if body.disabled is not None and body.disabled != user.disabled:
        if body.disabled:
            _keep_an_admin(db, user, "disable them")
        changes["disabled"] = [user.disabled, body.disabled]
        user.disabled = body.disabled
    if not changes:
        return _user_public(user)
    db.add(user)
    if user.disabled:
        assert user.id is not None
        close_user_sessions(db, user.id)
    audit(
        db,
        actor=_actor(actor),
        action="user.disable" if changes.get("disabled") == [False, True] else "user.update",
        target=f"user:{user.username}",
        detail=changes,
    )
    db.commit()
    db.refresh(user)
    return _user_public(user)


@router.delete("/api/users/{user_id}")
def delete_user(user_id: RowId, db: DbDep, actor: CurrentUser) -> UserPublic:
    """Delete a user with their sessions and tokens (audit entries keep the name). Not the
    last enabled admin, and not yourself (ask another admin)."""
    user = _get_user_locked(db, user_id)
    if user.id == actor.id:
        raise HTTPException(status.HTTP_409_CONFLICT, "you cannot delete your own account")
    _keep_an_admin(db, user, "delete them")
    shown = _user_public(user)
    assert user.id is not None
    close_user_sessions(db, user.id)
    db.exec(delete(ApiToken).where(col(ApiToken.user_id) == user.id))
    db.delete(user)
    audit(db, actor=_actor(actor), action="user.delete", target=f"user:{user.username}")
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
    owner = actor
    if body.username is not None and body.username != actor.username:
        found = db.exec(select(User).where(col(User.username) == body.username)).first()
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {body.username!r}")
        assert found.id is not None
        require_self_or_admin(actor, found.id, "tokens")
        owner = found
    now = datetime.now(UTC)
    expires = now + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    row, token = issue_api_token(db, owner, name=body.name, expires_at=expires)
    audit(
        db,
        actor=_actor(actor),
        action="token.create",
        target=f"token:{row.id}",
        detail={"user": owner.username, "name": body.name, "expires_at": _iso(expires)},
        at=now,
    )
    db.commit()
    db.refresh(row)
    return TokenCreated(**_token_public(row, owner.username, now).model_dump(), token=token)


@router.delete("/api/tokens/{token_id}")
def revoke_token(token_id: RowId, db: DbDep, actor: CurrentUser) -> TokenPublic:
    """Revoke a token (yours, or anyone's for an admin); it stops working at once. The row
    stays, so the listing and the audit log can still name it."""
    row = db.get(ApiToken, token_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token {token_id}")
    require_self_or_admin(actor, row.user_id, "tokens")
    owner = _get_user(db, row.user_id)
    now = datetime.now(UTC)
    if row.revoked_at is None:
        row.revoked_at = now
        db.add(row)
        audit(
            db,
            actor=_actor(actor),
            action="token.revoke",
            target=f"token:{token_id}",
            detail={"user": owner.username, "name": row.name},
            at=now,
        )
        db.commit()
        db.refresh(row)
    return _token_public(row, owner.username, now)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None
