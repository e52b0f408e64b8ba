"""A real controller (app + ingest + scheduler) on a test broker, driven through TestClient."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from controller.app import create_app
from controller.auth.credentials import SESSION_COOKIE, create_api_token
from controller.auth.csrf import token_for_session
from controller.auth.users import create_user
from controller.db import session_scope
from controller.services import Services
from controller.settings import load_settings
from tests.conftest import wait_for

PASSWORD = "correct-horse-battery"


@dataclass
class LiveController:
    client: TestClient
    services: Services
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def device(self, device_id: str) -> dict[str, object] | None:
        response = self.client.get(f"/api/devices/{device_id}", headers=self.auth)
        return response.json() if response.status_code == 200 else None


def login_form_token(client: TestClient) -> str:
    """Open the login form as a browser does: its CSRF token (the cookie is kept)."""
    page = client.get("/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def console_login(client: TestClient, username: str, password: str) -> str:
    """Log in through the console form; returns the session's CSRF token (from the page's
    ``<meta name="csrf-token">``) for unsafe requests made with the cookie."""
    token = login_form_token(client)
    response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return token_for_session(client.cookies[SESSION_COOKIE])


@contextmanager
def live_controller(
    tmp_path: Path, broker: dict[str, object], **settings: object
) -> Iterator[LiveController]:
    # Its own key folders (message keys, CA) unless the test brings some: the default is
    # relative to the working directory, which every test shares.
    settings.setdefault("pki", {"dir": str(tmp_path / "pki")})
    config = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{tmp_path / 'controller.db'}",
        broker=broker,
        liveness_sweep_s=0.2,
        secure_cookies=False,
        **settings,
    )
    services = Services.create(config)
    with session_scope(services.engine) as session:
        admin = create_user(session, username="admin", password=PASSWORD, role="admin")
        token = create_api_token(session, admin, name="tests")
    with TestClient(create_app(config, services=services)) as client:
        assert services.ingest is not None
        wait_for(lambda: services.ingest.connected, 15, what="ingest to connect")  # type: ignore[union-attr]
        yield LiveController(client, services, token)
