"""Login throttling: failures per username and per address in a sliding window, shared by
replicas through the database, answered with 429 and Retry-After, and never holding the
password."""

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from controller.app import create_app
from controller.audit import AuditEntry
from controller.login_limit import LoginFailure, retry_after
from tests.access_world import PASSWORDS, AccessWorld, access_world
from tests.controller_harness import login_form_token

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = timedelta(seconds=600)
LIMITS = {"window_s": 600, "max_failures_per_user": 3, "max_failures_per_ip": 5}


@pytest.mark.parametrize(
    ("offsets", "limit", "expected"),
    [
        ([], 3, None),
        ([0, 10], 3, None),
        ([0, 10, 20], 3, 600 - 30),  # now = T0+30: the oldest ages out at T0+600
        ([0, 10, 20, 25], 3, 610 - 30),  # four in: the second oldest must go too
        ([-700, 10, 20], 3, None),  # one already outside the window
        ([-560, 10, 20], 3, 10),  # 590 s old: 10 s left in the window
    ],
    ids=["none", "under", "at-limit", "over-limit", "aged-out", "almost-aged-out"],
)
def test_retry_after(offsets: list[int], limit: int, expected: float | None) -> None:
    """The wait is until fewer than the limit remain in the window; None when already so."""
    failures = [T0 + timedelta(seconds=s) for s in offsets]
    now = T0 + timedelta(seconds=30)
    assert retry_after(failures, limit=limit, window=WINDOW, now=now) == expected


@pytest.fixture
def world(tmp_path: Path) -> Iterator[AccessWorld]:
    with access_world(tmp_path, login_limit=LIMITS) as w:
        yield w


def attempt(client: TestClient, username: str, password: str) -> tuple[int, dict[str, str], str]:
    token = login_form_token(client)
    response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token},
        follow_redirects=False,
    )
    return response.status_code, dict(response.headers), response.text


def test_a_username_is_throttled_after_n_failures(world: AccessWorld) -> None:
    """Three wrong passwords for 'viewer' (from two addresses) and the fourth attempt, even
    with the right password, is 429 with Retry-After and a clear message; the lockout is
    audited once; another user from the same address is unaffected."""
    here, there = world.client(), TestClient(world.app, client=("10.0.0.2", 4000))
    world.clients.append(there)
    for client in (here, there, here):
        assert attempt(client, "viewer", "wrong-password-123")[0] == 401
    status, headers, text = attempt(here, "viewer", PASSWORDS["viewer"])
    assert status == 429
    assert 0 < int(headers["retry-after"]) <= 600
    assert "Too many failed logins for this username" in text
    assert attempt(here, "Viewer", PASSWORDS["viewer"])[0] == 429  # names are case-folded
    assert attempt(here, "operator", PASSWORDS["operator"])[0] == 303
    assert world.audit_actions().count("auth.login_throttled") == 1


def test_an_address_is_throttled_across_usernames(world: AccessWorld) -> None:
    """Five failures for different usernames from one address block that address (429, even
    for a right password), while another address logs in fine."""
    sprayer = TestClient(world.app, client=("10.0.0.9", 4000))
    world.clients.append(sprayer)
    for name in ("a1", "a2", "a3", "a4", "a5"):
        assert attempt(sprayer, name, "wrong-password-123")[0] == 401
    status, headers, text = attempt(sprayer, "admin", PASSWORDS["admin"])
    assert status == 429 and "your address" in text and int(headers["retry-after"]) > 0
    assert attempt(world.client(), "admin", PASSWORDS["admin"])[0] == 303


def test_a_successful_login_clears_the_usernames_failures(world: AccessWorld) -> None:
    """Two failures, a success, then three more failures are needed to throttle again."""
    client = world.client()
    for _ in range(2):
        assert attempt(client, "operator", "wrong-password-123")[0] == 401
    assert attempt(client, "operator", PASSWORDS["operator"])[0] == 303
    other = world.client()
    for _ in range(2):
        assert attempt(other, "operator", "wrong-password-123")[0] == 401
    assert attempt(other, "operator", PASSWORDS["operator"])[0] == 303


def test_replicas_share_the_count(world: AccessWorld, tmp_path: Path) -> None:
    """Failures counted by one app instance throttle the username on a second instance over
    the same database (as replicas behind a load balancer would)."""
    services = world.app.state.services
    replica_app = create_app(services.settings, services=services)
    replica_app.state.services = services
    replica = TestClient(replica_app)
    world.clients.append(replica)
    for _ in range(3):
        assert attempt(world.client(), "admin", "wrong-password-123")[0] == 401
    assert attempt(replica, "admin", PASSWORDS["admin"])[0] == 429


def test_the_password_is_never_stored_or_logged(
    world: AccessWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """Failure rows, audit entries and log records hold the username and address only."""
    secret = "wrong-but-secret-password-77"
    caplog.set_level(logging.DEBUG)
    client = world.client()
    for _ in range(3):
        attempt(client, "viewer", secret)
    with Session(world.engine) as session:
        rows = [r.model_dump_json() for r in session.exec(select(LoginFailure))]
        audits = [a.model_dump_json() for a in session.exec(select(AuditEntry))]
    assert len(rows) == 3 and all('"viewer"' in r for r in rows)
    assert not any(secret in text for text in [*rows, *audits, caplog.text])
