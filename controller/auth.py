"""Users, console sessions and API tokens.

Passwords are argon2id-hashed; session cookies and API tokens are random and stored only
as SHA-256 hashes, so a database leak does not hand out live credentials. Login checks a
dummy hash for unknown users, so response time does not reveal which usernames exist.
"""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, col, delete, select

from controller.models import ApiToken, User, WebSession

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer")

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
MIN_PASSWORD_LENGTH = 12


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def create_user(session: Session, *, username: str, password: str, role: Role) -> User:
    """Add a user; refuses weak passwords and taken usernames with a ValueError."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if session.exec(select(User).where(col(User.username) == username)).first() is not None:
        raise ValueError(f"user {username!r} already exists")
    user = User(username=username, password_hash=_hasher.hash(password), role=role)
    session.add(user)
    session.flush()
    return user


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


def close_session(session: Session, token: str) -> None:
    row = session.get(WebSession, _digest(token))
    if row is not None:
        session.delete(row)


def user_for_session(session: Session, token: str, *, now: datetime) -> User | None:
    row = session.get(WebSession, _digest(token))
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires < now:
        return None
    return session.get(User, row.user_id)


def create_api_token(session: Session, user: User, *, name: str) -> str:
    """Issue a bearer token for ``user``; the plain value is returned once, never stored."""
    token = "eft_" + secrets.token_urlsafe(32)
    assert user.id is not None
    session.add(ApiToken(user_id=user.id, name=name, token_hash=_digest(token)))
    return token


def user_for_token(session: Session, token: str, *, now: datetime) -> User | None:
    row = session.exec(select(ApiToken).where(col(ApiToken.token_hash) == _digest(token))).first()
    if row is None:
        return None
    row.last_used_at = now
    session.add(row)
    return session.get(User, row.user_id)
