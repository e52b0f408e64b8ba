"""Login throttling: failures per username and per address in a sliding window, shared by
replicas through the database, answered with 429 and Retry-After, and never holding the
password."""

import logging
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from controller.app import create_app
from controller.audit import AuditEntry
from controller.auth.login_limit import LoginFailure, retry_after
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


def test_a_disabled_account_answers_like_a_wrong_password_and_counts(world: AccessWorld) -> None:
    """The right password of a disabled account gets the same 401 page as a wrong one (the
    form reveals neither the password nor the account state), each such try counts towards
    the username's limit, and the audit log notes the disabled-account attempt."""
    admin = world.client()
    users = admin.get("/api/users", params={"username": "operator"}, headers=world.bearer("admin"))
    uid = users.json()["data"][0]["id"]
    disabled = admin.patch(
        f"/api/users/{uid}", json={"disabled": True}, headers=world.bearer("admin")
    )
    assert disabled.status_code == 200
    client = world.client()
    wrong_status, _, wrong_page = attempt(client, "operator", "wrong-password-123")
    right_status, _, right_page = attempt(client, "operator", PASSWORDS["operator"])
    assert wrong_status == right_status == 401
    assert "Wrong username or password." in right_page and "disabled" not in right_page
    tokenless = re.compile(r'(?:value|content)="[^"]*"')
    assert tokenless.sub("", wrong_page) == tokenless.sub("", right_page)
    assert attempt(client, "operator", PASSWORDS["operator"])[0] == 401
    assert attempt(client, "operator", PASSWORDS["operator"])[0] == 429  # three failures
    assert world.audit_actions().count("auth.login_disabled") == 2
    with Session(world.engine) as session:
        assert len(session.exec(select(LoginFailure)).all()) == 3


def test_parallel_guesses_get_at_most_the_limit_of_verdicts(
    tmp_path: Path, database_url: str
) -> None:
    """Twenty wrong passwords for one username sent at once (each its own client and thread,
    the slow password hash running in parallel) get exactly three password verdicts (401)
    on SQLite and PostgreSQL; the rest are throttled (429), and only the answered ones are
    stored as failures."""
    with access_world(tmp_path, database_url=database_url, login_limit=LIMITS) as world:
        _guess_in_parallel(world)


def _guess_in_parallel(world: AccessWorld) -> None:
    clients = [world.client() for _ in range(20)]
    tokens = [login_form_token(c) for c in clients]
    start = threading.Barrier(len(clients))

    def guess(i: int) -> int:
        start.wait()
        response = clients[i].post(
            "/login",
            data={"username": "admin", "password": f"guess-{i}-xyz", "csrf_token": tokens[i]},
            follow_redirects=False,
        )
        return response.status_code

    with ThreadPoolExecutor(len(clients)) as pool:
        statuses = list(pool.map(guess, range(len(clients))))
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) == LIMITS["max_failures_per_user"], statuses
    with Session(world.engine) as session:
        rows = session.exec(select(LoginFailure)).all()
    assert len(rows) == statuses.count(401)
    assert attempt(world.client(), "admin", PASSWORDS["admin"])[0] == 429


def test_only_admins_see_client_addresses_in_the_audit_log(world: AccessWorld) -> None:
    """Login and lockout entries keep the client address for admins; viewers and operators
    read the same entries with the address hidden and may not search by it (403)."""
    sprayer = TestClient(world.app, client=("10.0.0.7", 4000))
    world.clients.append(sprayer)
    for _ in range(3):
        attempt(sprayer, "viewer", "wrong-password-123")
    assert attempt(world.client(), "operator", PASSWORDS["operator"])[0] == 303
    reader = world.client()

    def entries(role: str) -> list[dict[str, Any]]:
        page = reader.get("/api/audit", params={"action": "auth."}, headers=world.bearer(role))
        assert page.status_code == 200, page.text
        return list(page.json()["data"])

    shown = {e["action"]: e for e in entries("admin")}
    assert shown["auth.login_throttled"]["actor"] == "ip:10.0.0.7"
    assert shown["auth.login_throttled"]["detail"]["client_ip"] == "10.0.0.7"
    assert shown["auth.login"]["detail"]["client_ip"] == "testclient"
    for role in ("viewer", "operator"):
        hidden = {e["action"]: e for e in entries(role)}
        assert hidden.keys() == shown.keys()
        assert "10.0.0.7" not in str(hidden) and "testclient" not in str(hidden)
        assert hidden["auth.login_throttled"]["actor"] == "ip:(hidden)"
        assert hidden["auth.login"]["detail"]["client_ip"] == "(hidden)"
        assert hidden["auth.login_throttled"]["detail"]["failures"] == 3
        probe = reader.get(
            "/api/audit", params={"actor": "ip:10.0.0.7"}, headers=world.bearer(role)
        )
        assert probe.status_code == 403
    assert (
        reader.get(
            "/api/audit", params={"actor": "ip:10.0.0.7"}, headers=world.bearer("admin")
        ).json()["count"]
        == 1
    )
