"""The users and tokens API: who may manage accounts, what changes take effect at once,
the last admin kept, plain secrets shown once, and every change audited."""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from controller.auth import users as accounts
from controller.auth.tables import User
from tests.access_world import PASSWORDS, AccessWorld, access_world
from tests.controller_harness import console_login, login_form_token


@pytest.fixture
def world(tmp_path: Path) -> Iterator[AccessWorld]:
    with access_world(tmp_path) as w:
        yield w


def user_id(world: AccessWorld, username: str) -> int:
    page = world.client().get(
        "/api/users", params={"username": username}, headers=world.bearer("admin")
    )
    return int(page.json()["data"][0]["id"])


def test_me_shows_the_caller(world: AccessWorld) -> None:
    """/api/me answers every role with its own account and never a password hash."""
    for role in PASSWORDS:
        me = world.client().get("/api/me", headers=world.bearer(role)).json()
        assert (me["username"], me["role"], me["disabled"]) == (role, role, False)
        assert "password_hash" not in me


def test_admin_creates_users_with_given_or_generated_passwords(world: AccessWorld) -> None:
    """A given password is not echoed; without one a generated password is returned once
    and works; weak passwords (short, well-known, trivial, the username) are 422 without
    echoing them, a taken name 409; both creations are audited."""
    client, admin = world.client(), world.bearer("admin")
    given = client.post(
        "/api/users",
        json={"username": "carol", "role": "operator", "password": "carol-long-pass-9"},
        headers=admin,
    )
    assert given.status_code == 201 and given.json()["password"] is None
    generated = client.post("/api/users", json={"username": "dave"}, headers=admin).json()
    assert generated["role"] == "viewer" and len(generated["password"]) >= 12
    console_login(world.client(), "dave", generated["password"])
    for weak in ("short", "passwordpassword", "aaaaaaaaaaaaaaa", "erin-long-name"):
        refused = client.post(
            "/api/users", json={"username": "erin-long-name", "password": weak}, headers=admin
        )
        assert refused.status_code == 422, weak
        assert weak not in refused.text
    assert client.post("/api/users", json={"username": "dave"}, headers=admin).status_code == 409
    listed = client.get("/api/users", headers=admin).json()
    assert listed["count"] == 5 and "dave" in [u["username"] for u in listed["data"]]
    assert world.audit_actions().count("user.create") == 2


def test_a_role_change_applies_to_the_next_request(world: AccessWorld) -> None:
    """Promoting a viewer lets their existing token change things at once."""
    client = world.client()
    viewer = world.bearer("viewer")
    assert client.post("/api/rollouts/1/pause", headers=viewer).status_code == 403
    changed = client.patch(
        f"/api/users/{user_id(world, 'viewer')}",
        json={"role": "operator"},
        headers=world.bearer("admin"),
    )
    assert changed.status_code == 200 and changed.json()["role"] == "operator"
    assert client.post("/api/rollouts/1/pause", headers=viewer).status_code == 404
    assert "user.update" in world.audit_actions()


def test_disabling_cuts_sessions_and_tokens_and_enabling_restores_tokens(
    world: AccessWorld,
) -> None:
    """Disabling closes the user's console sessions and stops their tokens on the next
    request; the login form refuses them as it does a wrong password; re-enabling brings
    the token back (sessions stay closed)."""
    browser, _ = world.browser("operator")
    uid, admin = user_id(world, "operator"), world.bearer("admin")
    client = world.client()
    disabled = client.patch(f"/api/users/{uid}", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert browser.get("/api/me").status_code == 401
    assert client.get("/api/me", headers=world.bearer("operator")).status_code == 401
    relogin = world.client()
    token = login_form_token(relogin)
    refused = relogin.post(
        "/login",
        data={"username": "operator", "password": PASSWORDS["operator"], "csrf_token": token},
    )
    assert refused.status_code == 401 and "Wrong username or password." in refused.text
    assert "disabled" not in refused.text
    client.patch(f"/api/users/{uid}", json={"disabled": False}, headers=admin)
    assert client.get("/api/me", headers=world.bearer("operator")).status_code == 200
    assert browser.get("/api/me").status_code == 401
    assert world.audit_actions().count("user.disable") == 1


def test_the_last_admin_is_kept(world: AccessWorld) -> None:
    """The only enabled admin cannot be demoted, disabled or deleted (409), nor delete
    themselves; with a second admin the first may be demoted."""
    client, admin = world.client(), world.bearer("admin")
    uid = user_id(world, "admin")
    for body in ({"role": "operator"}, {"disabled": True}):
        refused = client.patch(f"/api/users/{uid}", json=body, headers=admin)
        assert refused.status_code == 409 and "last enabled admin" in refused.json()["detail"]
    assert client.delete(f"/api/users/{uid}", headers=admin).status_code == 409
    client.patch(f"/api/users/{user_id(world, 'operator')}", json={"role": "admin"}, headers=admin)
    assert client.delete(f"/api/users/{uid}", headers=admin).status_code == 409  # yourself
    demoted = client.patch(f"/api/users/{uid}", json={"role": "viewer"}, headers=admin)
    assert demoted.status_code == 200 and demoted.json()["role"] == "viewer"


def test_deleting_a_user_ends_their_access(world: AccessWorld) -> None:
    """A deleted user's token and sessions stop working; the deletion is audited."""
    browser, _ = world.browser("viewer")
    client = world.client()
    deleted = client.delete(f"/api/users/{user_id(world, 'viewer')}", headers=world.bearer("admin"))
    assert deleted.status_code == 200 and deleted.json()["username"] == "viewer"
    assert client.get("/api/me", headers=world.bearer("viewer")).status_code == 401
    assert browser.get("/api/me").status_code == 401
    assert "user.delete" in world.audit_actions()


def test_users_manage_their_own_tokens(world: AccessWorld) -> None:
    """A viewer creates a token (the value shown once, working at once, expiring if asked),
    lists only their own (no values), cannot list everyone's, revokes it, and it stops."""
    client, viewer = world.client(), world.bearer("viewer")
    made = client.post(
        "/api/tokens", json={"name": "grafana", "expires_in_days": 30}, headers=viewer
    )
    assert made.status_code == 201
    created = made.json()
    assert created["token"].startswith("eft_") and created["expires_at"] is not None
    mine = {"Authorization": f"Bearer {created['token']}"}
    assert client.get("/api/me", headers=mine).json()["username"] == "viewer"
    listed = client.get("/api/tokens", headers=viewer).json()
    assert {t["name"] for t in listed["data"]} == {"tests", "grafana"}
    assert all("token" not in t and t["username"] == "viewer" for t in listed["data"])
    assert client.get("/api/tokens?all=true", headers=viewer).status_code == 403
    revoked = client.delete(f"/api/tokens/{created['id']}", headers=viewer)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert client.get("/api/me", headers=mine).status_code == 401
    active = client.get("/api/tokens", headers=viewer).json()
    assert [t["name"] for t in active["data"]] == ["tests"]
    everything = client.get("/api/tokens?include_inactive=true", headers=viewer).json()
    assert everything["count"] == 2
    assert world.audit_actions().count("token.create") == 1
    assert world.audit_actions().count("token.revoke") == 1


def test_other_users_tokens_are_admin_business(world: AccessWorld) -> None:
    """An operator can neither revoke the viewer's token (404, as for a token that does not
    exist) nor mint one for them (403); an admin sees all tokens, mints one for the viewer,
    and revokes the viewer's token."""
    client = world.client()
    viewer_tokens = client.get("/api/tokens", headers=world.bearer("viewer")).json()["data"]
    target = viewer_tokens[0]["id"]
    operator = world.bearer("operator")
    refused = client.delete(f"/api/tokens/{target}", headers=operator)
    assert refused.status_code == 404 and refused.json()["detail"] == f"no token {target} of yours"
    minted = client.post("/api/tokens", json={"name": "x", "username": "viewer"}, headers=operator)
    assert minted.status_code == 403
    admin = world.bearer("admin")
    everyone = client.get("/api/tokens?all=true", headers=admin).json()
    assert {t["username"] for t in everyone["data"]} == set(PASSWORDS)
    for_viewer = client.post(
        "/api/tokens", json={"name": "ci", "username": "viewer"}, headers=admin
    )
    assert for_viewer.status_code == 201 and for_viewer.json()["username"] == "viewer"
    assert client.delete(f"/api/tokens/{target}", headers=admin).status_code == 200
    assert client.get("/api/me", headers=world.bearer("viewer")).status_code == 401
    assert client.delete("/api/tokens/9999", headers=admin).status_code == 404


def test_bad_input_is_a_clear_422(world: AccessWorld) -> None:
    """Unknown roles, malformed usernames and non-positive expiries are refused with 422."""
    client, admin = world.client(), world.bearer("admin")
    for body in ({"username": "x", "role": "root"}, {"username": "bad name!"}, {"username": ""}):
        assert client.post("/api/users", json=body, headers=admin).status_code == 422, body
    bad = client.post("/api/tokens", json={"name": "t", "expires_in_days": 0}, headers=admin)
    assert bad.status_code == 422
    assert (
        client.patch("/api/users/9999", json={"role": "viewer"}, headers=admin).status_code == 404
    )


def test_users_change_their_own_password(world: AccessWorld) -> None:
    """A wrong current password is 403 (and counts towards the login limit); a weak new one
    422; a good change keeps the caller's session, ends the others, and the new password
    logs in while the old one does not."""
    browser, token = world.browser("viewer")
    other, _ = world.browser("viewer")
    change = {"current_password": "not-the-password", "new_password": "viewer-new-pass-77"}
    wrong = browser.post("/api/me/password", json=change, headers={"X-CSRF-Token": token})
    assert wrong.status_code == 403
    weak = {"current_password": PASSWORDS["viewer"], "new_password": "short"}
    assert (
        browser.post("/api/me/password", json=weak, headers={"X-CSRF-Token": token}).status_code
        == 422
    )
    good = {"current_password": PASSWORDS["viewer"], "new_password": "viewer-new-pass-77"}
    changed = browser.post("/api/me/password", json=good, headers={"X-CSRF-Token": token})
    assert changed.status_code == 200, changed.text
    assert browser.get("/api/me").status_code == 200
    assert other.get("/api/me").status_code == 401
    console_login(world.client(), "viewer", "viewer-new-pass-77")
    relogin = world.client()
    form = {"username": "viewer", "password": PASSWORDS["viewer"]}
    refused = relogin.post("/login", data=form | {"csrf_token": login_form_token(relogin)})
    assert refused.status_code == 401
    actions = world.audit_actions()
    assert "user.password_change" in actions
    assert not any("viewer-new-pass-77" in a for a in actions)


@pytest.mark.postgres
def test_two_admins_demoting_each_other_at_once_keep_one(tmp_path: Path, postgres_url: str) -> None:
    """On PostgreSQL, while one transaction is demoting the second admin (not yet
    committed), the second admin's request to demote the first waits for it and is then
    refused as the last admin (409), so one enabled admin always remains."""
    with access_world(tmp_path, database_url=postgres_url) as world:
        admin = world.bearer("admin")
        client = world.client()
        created = client.post(
            "/api/users", json={"username": "admin2", "role": "admin"}, headers=admin
        )
        assert created.status_code == 201
        second = client.post("/api/tokens", json={"name": "t", "username": "admin2"}, headers=admin)
        second_bearer = {"Authorization": f"Bearer {second.json()['token']}"}
        first_id, second_id = user_id(world, "admin"), created.json()["id"]
        client.get("/api/me", headers=second_bearer)  # its last_used_at write, done now

        with Session(world.engine) as tx:  # "admin" demoting "admin2", in flight
            demoted = accounts._get_user_locked(tx, second_id)
            accounts._keep_an_admin(tx, demoted, "make them operator")
            demoted.role = "operator"
            tx.add(demoted)
            tx.flush()
            with ThreadPoolExecutor(1) as pool:
                other = pool.submit(
                    world.client().patch,
                    f"/api/users/{first_id}",
                    json={"role": "operator"},
                    headers=second_bearer,
                )
                while not other.done() and not _waiting_on_a_lock(world):
                    threading.Event().wait(0.01)
                assert not other.done(), other.result().text  # it must not decide yet
                tx.commit()
                refused = other.result()
        assert refused.status_code == 409, refused.text
        assert "last enabled admin" in refused.json()["detail"]
        with Session(world.engine) as session:
            roles = dict(session.exec(select(User.username, User.role)).all())
        assert roles["admin"] == "admin" and roles["admin2"] == "operator"


def _waiting_on_a_lock(world: AccessWorld) -> bool:
    with Session(world.engine) as session:
        waiting = session.exec(
            text("SELECT count(*) FROM pg_locks WHERE NOT granted")  # type: ignore[call-overload]
        ).one()
    return bool(waiting[0])
