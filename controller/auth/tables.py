"""The auth tables: users, console sessions, API tokens and failed logins."""

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import utcnow


class User(SQLModel, table=True):
    """A console or API user."""

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, index=True, max_length=64)
    password_hash: str
    role: str = "viewer"  # admin | operator | viewer
    created_at: datetime = Field(default_factory=utcnow)
    # A disabled user's sessions are closed and its tokens stop working at once; the row
    # stays so the audit log's "user:<name>" keeps meaning someone.
    disabled: bool = False


class WebSession(SQLModel, table=True):
    """A console login; the cookie holds a random token, the table only its hash."""

    __tablename__ = "web_session"
    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="user.id", index=True)
    expires_at: datetime


class ApiToken(SQLModel, table=True):
    """A bearer token for the CLI and automation; stored hashed."""

    __tablename__ = "api_token"
    __table_args__ = (UniqueConstraint("token_hash"),)
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    name: str = Field(max_length=64)
    token_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    expires_at: datetime | None = None  # None: until revoked
    revoked_at: datetime | None = None


class LoginFailure(SQLModel, table=True):
    """One failed login: which username was tried, from where, when."""

    __tablename__ = "login_failure"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True)
    username: str = Field(max_length=64, index=True)
    client_ip: str = Field(max_length=64, index=True)
