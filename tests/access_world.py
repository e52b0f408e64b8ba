"""A controller app on SQLite without broker or scheduler, with one user per role, for the
access-control tests (authorization, CSRF, login limits, users and tokens)."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from controller.app import create_app
from controller.audit import AuditEntry
from controller.auth.credentials import SESSION_COOKIE, create_api_token
from controller.auth.csrf import token_for_session
from controller.auth.users import create_user
from controller.db import make_engine, session_scope
from controller.migrations import init_db
from controller.services import Services
from controller.settings import load_settings
from tests.controller_harness import console_login

PASSWORDS = {
    "admin": "admin-pass-1234",
    "operator": "operator-pass-1234",
    "viewer": "viewer-pass-1234",
}


@dataclass
class AccessWorld:
    app: FastAPI
    engine: Engine
    tokens: dict[str, str] = field(default_factory=dict)
    clients: list[TestClient] = field(default_factory=list)

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def client(self) -> TestClient:
        """A fresh client (its own cookie jar, like a separate browser)."""
        client = TestClient(self.app)
        self.clients.append(client)
        return client

    def browser(self, role: str) -> tuple[TestClient, str]:
        """A client logged in through the console form as the user named ``role``, and the
        session's CSRF token."""
        client = self.client()
        return client, console_login(client, role, PASSWORDS[role])

    def audit_actions(self) -> list[str]:
        from sqlmodel import Session, col, select

        with Session(self.engine) as session:
            return list(session.exec(select(AuditEntry.action).order_by(col(AuditEntry.id))))


def session_csrf(client: TestClient) -> str:
    return token_for_session(client.cookies[SESSION_COOKIE])


@contextmanager
def access_world(
    tmp_path: Path, *, database_url: str | None = None, **settings: Any
) -> Iterator[AccessWorld]:
    """The world on ``database_url`` (default: a SQLite file under ``tmp_path``)."""
    config = load_settings(
        None,
        environment="development",
        database_url=database_url or f"sqlite:///{tmp_path / 'controller.db'}",
        secure_cookies=False,
        **settings,
    )
    engine = make_engine(config.database_url)
    init_db(engine)
    services = Services(settings=config, engine=engine)
    world = AccessWorld(app=create_app(config, services=services), engine=engine)
    world.app.state.services = services  # routes only; no broker, ingest or scheduler
    with session_scope(engine) as session:
        for role, password in PASSWORDS.items():
            user = create_user(session, username=role, password=password, role=role)  # type: ignore[arg-type]
            world.tokens[role] = create_api_token(session, user, name="tests")
    try:
        yield world
    finally:
        for client in world.clients:
            client.close()
        engine.dispose()
