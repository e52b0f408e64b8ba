"""Accounts and API tokens: the one service behind ``/api/users``, ``/api/tokens`` and the
CLI's ``admin create`` and ``token create``.

Every rule lives here: usernames, roles and password strength, a taken username, the last
enabled admin (never demoted, disabled or deleted), a disabled user's sessions ending at
once, whose tokens one may mint or revoke. Every change is audited under ``actor``. A
refusal is an ``AccountError`` whose ``status`` says which HTTP status the API answers; its
text is the same sentence the CLI prints. The callers commit.
"""

import re
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import func
from sqlmodel import Session, col, delete, select, update

from controller.audit import audit
from controller.auth.credentials import (
    ROLES,
    Role,
    check_password,
    close_user_sessions,
    generate_password,
    hash_password,
    issue_api_token,
    revoke_user_tokens,
)
from controller.auth.tables import ApiToken, User

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_USERNAME = re.compile(USERNAME_PATTERN)


class AccountError(ValueError):
    """A refused account or token change; ``status`` is the API's answer (422: invalid)."""

    status: ClassVar[int] = 422


class AccountNotFound(AccountError):
    status: ClassVar[int] = 404


class AccountConflict(AccountError):
    status: ClassVar[int] = 409


class AccountForbidden(AccountError):
    status: ClassVar[int] = 403


# --- users -----------------------------------------------------------------------------------
def user_named(session: Session, username: str) -> User | None:
    return session.exec(select(User).where(col(User.username) == username)).first()


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise AccountNotFound(f"no user {user_id}")
    return user


def _check_new_user(session: Session, username: str, password: str, role: str) -> None:
    if user_named(session, username) is not None:
        raise AccountConflict(f"user {username!r} already exists")
    if not _USERNAME.match(username):
        raise AccountError(
            "username must be 1-64 letters, digits, '.', '_', '@' or '-', starting with a"
            " letter or digit"
        )
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    try:
        check_password(password, username=username)
    except ValueError as e:
        raise AccountError(str(e)) from e


def create_user(session: Session, *, username: str, password: str, role: Role) -> User:
    """Add a user, unaudited (tests and the demo's own accounts); refuses a taken or
    malformed username, an unknown role and a weak password with an AccountError."""
    _check_new_user(session, username, password, role)
    user = User(username=username, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    return user


def add_user(
    session: Session, *, username: str, role: str, password: str | None, actor: str
) -> tuple[User, str | None]:
    """Add a user and audit it; without ``password`` a strong one is generated. Returns the
    user and the generated password (None when one was given), to be shown once."""
    generated = generate_password() if password is None else None
    final = generated if generated is not None else password
    assert final is not None
    user = create_user(session, username=username, password=final, role=role)  # type: ignore[arg-type]
    audit(
        session,
        actor=actor,
        action="user.create",
        target=f"user:{username}",
        detail={"role": role, "generated_password": generated is not None},
    )
    return user, generated


def set_password(session: Session, user: User, password: str) -> None:
    """Replace ``user``'s password (checked like a new one; AccountError says why)."""
    try:
        check_password(password, username=user.username)
    except ValueError as e:
        raise AccountError(str(e)) from e
    user.password_hash = hash_password(password)
    session.add(user)


def change_password(
    session: Session,
    user: User,
    password: str,
    *,
    actor: str,
    keep_session: str | None,
    revoke_tokens: bool = True,
    keep_token: str | None = None,
    now: datetime,
) -> list[int]:
    """Set ``user``'s new password and end their other console sessions (all but the one
    whose cookie is ``keep_session``); with ``revoke_tokens`` (the default: whoever learnt
    the old password may have minted tokens with it) also revoke their API tokens, all but
    the one whose value is ``keep_token`` (the request's own). Audited, with the ids of
    the revoked tokens, which it returns."""
    set_password(session, user, password)
    assert user.id is not None
    close_user_sessions(session, user.id, keep=keep_session)
    revoked = (
        revoke_user_tokens(session, user.id, now=now, keep=keep_token) if revoke_tokens else []
    )
    audit(
        session,
        actor=actor,
        action="user.password_change",
        target=f"user:{user.username}",
        detail={"tokens_revoked": revoked},
        at=now,
    )
    return revoked


def _other_enabled_admins(session: Session, user: User) -> int:
    return session.exec(
        select(func.count())
        .select_from(User)
        .where(col(User.role) == "admin", col(User.disabled).is_(False), col(User.id) != user.id)
    ).one()


def _lock_admins(session: Session) -> None:
    """Serialise changes that may remove an admin, until this transaction ends: two admins
    demoting each other at once must not both see the other still enabled.

    PostgreSQL locks the enabled admins' rows (a concurrent change waits, then re-reads who
    is still an admin); SQLite has one writer at a time, so taking the write lock first
    (a no-op UPDATE) makes the count below and the change one serialised transaction."""
    admins = (col(User.role) == "admin", col(User.disabled).is_(False))
    if session.get_bind().dialect.name == "sqlite":
        session.exec(update(User).where(*admins).values(role=col(User.role)))
    else:
        session.exec(select(User.id).where(*admins).with_for_update()).all()


def _keep_an_admin(session: Session, user: User, what: str) -> None:
    """Refuse a change that would leave no enabled admin (nobody could manage users).
    The caller holds ``_lock_admins`` and read ``user`` after taking it."""
    if user.role == "admin" and not user.disabled and _other_enabled_admins(session, user) == 0:
        raise AccountConflict(f"{user.username!r} is the last enabled admin; cannot {what}")


def _get_user_locked(session: Session, user_id: int) -> User:
    """The user as of now, read after ``_lock_admins`` (not a copy cached earlier in this
    session, e.g. the caller's own row loaded by authentication)."""
    _lock_admins(session)
    user = get_user(session, user_id)
    session.refresh(user)
    return user


def update_user(
    session: Session, user_id: int, *, role: Role | None, disabled: bool | None, actor: str
) -> User:
    """Change role and/or disabled (None: unchanged); disabling logs the user out everywhere
    and stops their tokens at once. The last enabled admin cannot be demoted or disabled."""
    user = _get_user_locked(session, user_id)
    changes: dict[str, object] = {}
    if role is not None and role != user.role:
        if role != "admin":
            _keep_an_admin(session, user, f"make them {role}")
        changes["role"] = [user.role, role]
        user.role = role
    if disabled is not None and disabled != user.disabled:
        if disabled:
            _keep_an_admin(session, user, "disable them")
        changes["disabled"] = [user.disabled, disabled]
        user.disabled = disabled
    if not changes:
        return user
    session.add(user)
    if user.disabled:
        assert user.id is not None
        close_user_sessions(session, user.id)
    audit(
        session,
        actor=actor,
        action="user.disable" if changes.get("disabled") == [False, True] else "user.update",
        target=f"user:{user.username}",
        detail=changes,
    )
    return user


def delete_user(session: Session, user_id: int, *, by: User, actor: str) -> User:
    """Delete a user with their sessions and tokens (audit entries keep the name). Not the
    last enabled admin, and not yourself (ask another admin). Returns the deleted row."""
    user = _get_user_locked(session, user_id)
    if user.id == by.id:
        raise AccountConflict("you cannot delete your own account")
    _keep_an_admin(session, user, "delete them")
    assert user.id is not None
    close_user_sessions(session, user.id)
    session.exec(delete(ApiToken).where(col(ApiToken.user_id) == user.id))
    session.delete(user)
    audit(session, actor=actor, action="user.delete", target=f"user:{user.username}")
    return user


# --- tokens ----------------------------------------------------------------------------------
def require_self_or_admin(actor: User, owner_id: int, what: str) -> None:
    """Object-level rule: users act on what is theirs; only an admin on anyone's."""
    if actor.id != owner_id and actor.role != "admin":
        raise AccountForbidden(
            f"role {actor.role!r} may not act on another user's {what}; needs admin"
        )


def token_owner(session: Session, by: User, username: str | None) -> User:
    """Whom a new token acts as: ``by`` itself, or (an admin's choice) the user named.

    A non-admin naming anyone else is refused before the name is looked up, with the same
    answer whether that user exists or not: the refusal must not tell a viewer which
    usernames exist (only admins, who can list users anyway, learn of an unknown one)."""
    if username is None or username == by.username:
        return by
    if by.role != "admin":
        raise AccountForbidden(
            f"role {by.role!r} may not create tokens for another user; needs admin"
        )
    found = user_named(session, username)
    if found is None:
        raise AccountNotFound(f"no user {username!r}")
    return found


def enabled_user(session: Session, username: str) -> User:
    """The user named, refusing an unknown or disabled one (the CLI's bootstrap tokens)."""
    user = user_named(session, username)
    if user is None:
        raise AccountNotFound(f"no user {username!r}")
    if user.disabled:
        raise AccountConflict(f"user {username!r} is disabled")
    return user


def create_token(
    session: Session,
    owner: User,
    *,
    name: str,
    expires_at: datetime | None,
    actor: str,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Issue a bearer token acting as ``owner`` and audit it: the row, and the plain value
    (returned this once, stored only hashed)."""
    row, token = issue_api_token(session, owner, name=name, expires_at=expires_at)
    detail: dict[str, Any] = {"user": owner.username, "name": name}
    detail["expires_at"] = expires_at.isoformat() if expires_at else None
    audit(
        session,
        actor=actor,
        action="token.create",
        target=f"token:{row.id}",
        detail=detail,
        at=now,
    )
    return row, token


def revoke_token(
    session: Session, token_id: int, *, by: User, actor: str, now: datetime
) -> tuple[ApiToken, User]:
    """Revoke a token (yours, or anyone's for an admin); it stops working at once. The row
    stays, so listings and the audit log can still name it. Returns it and its owner."""
    row = session.get(ApiToken, token_id)
    # Someone else's token is "no token" to a non-admin, as an unknown id: the answer must
    # not tell which token ids exist.
    if row is None or (row.user_id != by.id and by.role != "admin"):
        raise AccountNotFound(f"no token {token_id}" + ("" if by.role == "admin" else " of yours"))
    owner = get_user(session, row.user_id)
    if row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        audit(
            session,
            actor=actor,
            action="token.revoke",
            target=f"token:{token_id}",
            detail={"user": owner.username, "name": row.name},
            at=now,
        )
    return row, owner


__all__ = [
    "USERNAME_PATTERN",
    "AccountConflict",
    "AccountError",
    "AccountForbidden",
    "AccountNotFound",
    "add_user",
    "change_password",
    "create_token",
    "create_user",
    "delete_user",
    "enabled_user",
    "get_user",
    "require_self_or_admin",
    "revoke_token",
    "set_password",
    "token_owner",
    "update_user",
    "user_named",
]
