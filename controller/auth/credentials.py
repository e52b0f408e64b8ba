"""Credentials: passwords, console sessions and API tokens, and who they belong to.

Passwords are argon2id-hashed; session cookies and API tokens are random and stored only
as SHA-256 hashes, so a database leak does not hand out live credentials. Login checks a
dummy hash for unknown users, so response time does not reveal which usernames exist.
A disabled user, a revoked token and an expired token stop working on their next request:
every lookup reads the rows again, nothing is cached.
"""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, col, delete, select

from controller.auth.tables import ApiToken, User, WebSession
from controller.settings import PLACEHOLDER_SECRETS

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer")
SESSION_COOKIE = "ef_session"

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
MIN_PASSWORD_LENGTH = 12
# Writing last_used_at on every request would make each read a write; a minute is enough
# to tell a token in use from a forgotten one.
_LAST_USED_RESOLUTION = timedelta(seconds=60)
_WEAK_PASSWORDS = PLACEHOLDER_SECRETS | {
    "password1234",
    "passwordpassword",
    "123456789012",
    "qwertyuiopas",
    "administrator",
    "letmeinletmein",
}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _aware(at: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time this module stores is UTC.
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def check_password(password: str, *, username: str) -> None:
    """Raise ValueError (saying why, never echoing the password) unless it is strong enough:
    long enough, not a well-known placeholder, not the username, not one repeated character."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    lowered = password.strip().lower()
    if lowered in _WEAK_PASSWORDS or len(set(password)) < 4:
        raise ValueError("password is a well-known or trivial one; choose another")
    if username and username.lower() in (lowered, lowered[::-1]):
        raise ValueError("password must not be the username")


def hash_password(password: str) -> str:
    """The argon2id hash to store for ``password`` (check it with ``check_password`` first)."""
    return _hasher.hash(password)


def authenticate(session: Session, *, username: str, password: str) -> User | None:
    """The user if the password matches, else None (same work either way)."""
    user = session.exec(select(User).where(col(User.username) == username)).first()
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def open_session(session: Session, user: User, *, ttl: timedelta, now: datetime) -> str:
    """Start a console session; returns the cookie value."""
    token = secrets.token_urlsafe(32)
    assert user.id is not None
    session.add(WebSession(token_hash=_digest(token), user_id=user.id, expires_at=now + ttl))
    session.exec(delete(WebSession).where(col(WebSession.expires_at) < now))
    return token


def close_session(session: Session, token: str) -> WebSession | None:
    """End one console session; returns the row it removed, if any."""
    row = session.get(WebSession, _digest(token))
    if row is not None:
        session.delete(row)
    return row


def close_user_sessions(session: Session, user_id: int, *, keep: str | None = None) -> None:
    """Log a user out everywhere (disabled, deleted, or a new password), except for the
    session whose cookie is ``keep``."""
    query = delete(WebSession).where(col(WebSession.user_id) == user_id)
    if keep is not None:
        query = query.where(col(WebSession.token_hash) != _digest(keep))
    session.exec(query)


def revoke_user_tokens(
    session: Session, user_id: int, *, now: datetime, keep: str | None = None
) -> list[int]:
    """Revoke every token of a user still usable (a new password), except the token whose
    value is ``keep`` (the one making the request); the ids revoked."""
    query = select(ApiToken).where(
        col(ApiToken.user_id) == user_id, col(ApiToken.revoked_at).is_(None)
    )
    if keep is not None:
        query = query.where(col(ApiToken.token_hash) != _digest(keep))
    revoked = []
    for row in session.exec(query).all():
        if token_usable(row, now=now):
            row.revoked_at = now
            session.add(row)
            assert row.id is not None
            revoked.append(row.id)
    return revoked


def _active(user: User | None) -> User | None:
    return None if user is None or user.disabled else user


def user_for_session(session: Session, token: str, *, now: datetime) -> User | None:
    row = session.get(WebSession, _digest(token))
    if row is None or _aware(row.expires_at) < now:
        return None
    return _active(session.get(User, row.user_id))


def issue_api_token(
    session: Session, user: User, *, name: str, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Issue a bearer token for ``user``: the row, and the plain value, which is returned
    once and never stored."""
    token = "eft_" + secrets.token_urlsafe(32)
    assert user.id is not None
    row = ApiToken(user_id=user.id, name=name, token_hash=_digest(token), expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def create_api_token(
    session: Session, user: User, *, name: str, expires_at: datetime | None = None
) -> str:
    """Issue a bearer token for ``user``; the plain value is returned once, never stored."""
    return issue_api_token(session, user, name=name, expires_at=expires_at)[1]


def token_usable(row: ApiToken, *, now: datetime) -> bool:
    """Neither revoked nor expired at ``now``."""
    if row.revoked_at is not None:
        return False
    return row.expires_at is None or _aware(row.expires_at) > now


def user_for_token(session: Session, token: str, *, now: datetime) -> User | None:
    row = session.exec(select(ApiToken).where(col(ApiToken.token_hash) == _digest(token))).first()
    if row is None or not token_usable(row, now=now):
        return None
    user = _active(session.get(User, row.user_id))
    if user is not None and (
        row.last_used_at is None or now - _aware(row.last_used_at) >= _LAST_USED_RESOLUTION
    ):
        row.last_used_at = now
        session.add(row)
    return user
