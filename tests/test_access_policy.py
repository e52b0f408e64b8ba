"""The authorization policy: every route covered, roles enforced in one place, 401 vs 403
with clear messages, admin-only routes, and disabled users and revoked tokens cut off."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from sqlmodel import Session, col, select

from controller.api.deps import require_access
from controller.auth.access import ADMIN_ONLY, allows, rule_for
from controller.auth.credentials import create_api_token
from controller.auth.tables import ApiToken, User
from tests.access_world import AccessWorld, access_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[AccessWorld]:
    with access_world(tmp_path) as w:
        yield w


def _route_contexts(world: AccessWorld) -> list[RouteContext]:
    return list(iter_route_contexts(world.app.routes))


def test_every_route_is_covered_and_guarded(world: AccessWorld) -> None:
    """Walking app.routes: every API route and method has a rule and carries the app-wide
    access dependency; every other route (static files, API docs) is classified public."""
    uncovered: list[str] = []
    for context in _route_contexts(world):
        path = context.path or ""
        if isinstance(context.original_route, APIRoute):
            deps = [d.call for d in context.dependant.dependencies]
            assert require_access in deps, f"{path} is not behind require_access"
            # The policy reads the declared route's template: a prefix added only at
            # include time would hide the real path from it.
            assert context.original_route.path == path, f"include {path} without a prefix"
            uncovered += [f"{m} {path}" for m in context.methods or () if rule_for(m, path) is None]
        else:
            rule = rule_for("GET", path)
            if rule is None or rule.kind != "public":
                uncovered.append(f"unguarded non-API route {path}")
    assert len(uncovered) == 0, "add these to controller/auth/access.py: " + ", ".join(uncovered)


def test_admin_rules_name_routes_that_exist(world: AccessWorld) -> None:
    """Each admin-only (methods, template) pair matches a real route, so renaming a route
    cannot silently drop its admin protection."""
    served = {(m, c.path) for c in _route_contexts(world) for m in c.methods or ()}
    for methods, template in ADMIN_ONLY:
        assert any((m, template) in served for m in methods), template


@pytest.mark.parametrize(
    ("method", "path", "kind", "role"),
    [
        ("GET", "/healthz", "public", None),
        ("POST", "/login", "public", None),
        ("GET", "/tuf/targets/{path:path}", "public", None),
        ("GET", "/static", "public", None),
        ("GET", "/api/devices", "api", "viewer"),
        ("HEAD", "/api/devices", "api", "viewer"),
        ("POST", "/api/rollouts", "api", "operator"),
        ("PATCH", "/api/devices/{device_id}/shadow/desired", "api", "operator"),
        ("GET", "/api/users", "api", "admin"),
        ("DELETE", "/api/users/{user_id}", "api", "admin"),
        ("GET", "/api/attestation/golden", "api", "viewer"),
        ("POST", "/api/attestation/golden", "api", "admin"),
        ("PUT", "/api/devices/{device_id}/identity", "api", "admin"),
        ("POST", "/api/tokens", "api", "viewer"),
        ("GET", "/metrics", "api", "viewer"),
        ("GET", "/console", "page", "viewer"),
        ("GET", "/console/rollouts/{rollout_id}", "page", "viewer"),
        ("POST", "/console/anything", "page", "operator"),
    ],
    ids=lambda v: str(v),
)
def test_rule_table(method: str, path: str, kind: str, role: str | None) -> None:
    """Public list, viewer for safe methods, operator for changes, admin for the short list."""
    rule = rule_for(method, path)
    assert rule is not None and (rule.kind, rule.role) == (kind, role)


@pytest.mark.parametrize("path", ["/internal/debug", "/consoles", "/apis/x", "/healthz/x"])
def test_paths_outside_every_area_are_not_covered(path: str) -> None:
    """A path in no known area has no rule: the dependency refuses it (fail closed)."""
    assert rule_for("GET", path) is None


def test_a_route_added_outside_the_policy_is_refused(world: AccessWorld) -> None:
    """A route nobody classified answers 403 even to an admin, naming the policy."""

    @world.app.get("/surprise")
    def surprise() -> dict[str, str]:
        return {"leaked": "yes"}

    response = world.client().get("/surprise", headers=world.bearer("admin"))
    assert response.status_code == 403
    assert "not covered by the access policy" in response.json()["detail"]


def test_viewer_may_read_but_not_create_or_pause_rollouts(world: AccessWorld) -> None:
    """Viewer: GET 200, POST /api/rollouts and pause 403 with the role, method and path in
    the message; operator gets past authorization (the route answers 404/422); anonymous
    401 problem details."""
    client = world.client()
    assert client.get("/api/rollouts", headers=world.bearer("viewer")).status_code == 200
    body = {"model": "m", "version": "1", "waves": [{"name": "all", "percent": 100}]}
    refused = client.post("/api/rollouts", json=body, headers=world.bearer("viewer"))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["detail"] == "role 'viewer' may not POST /api/rollouts; needs operator"
    paused = client.post("/api/rollouts/7/pause", headers=world.bearer("viewer"))
    assert paused.status_code == 403 and "POST /api/rollouts/7/pause" in paused.json()["detail"]
    created = client.post("/api/rollouts", json=body, headers=world.bearer("operator"))
    assert created.status_code in (404, 422), created.text
    assert client.post("/api/rollouts/7/pause", headers=world.bearer("operator")).status_code == 404
    anonymous = client.post("/api/rollouts/7/pause")
    assert anonymous.status_code == 401 and anonymous.json()["status"] == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"


def test_admin_only_routes_refuse_operators(world: AccessWorld) -> None:
    """User management and golden values are admin-only: an operator gets 403 naming
    'needs admin', an admin gets through."""
    client = world.client()
    for role, expected in (("viewer", 403), ("operator", 403), ("admin", 200)):
        assert client.get("/api/users", headers=world.bearer(role)).status_code == expected
    golden = {"kind": "image_id", "value": "img-1"}
    refused = client.post("/api/attestation/golden", json=golden, headers=world.bearer("operator"))
    assert refused.status_code == 403 and refused.json()["detail"].endswith("needs admin")
    ok = client.post("/api/attestation/golden", json=golden, headers=world.bearer("admin"))
    assert ok.status_code == 201, ok.text


def test_console_pages_redirect_anonymous_visitors_to_login(world: AccessWorld) -> None:
    """An anonymous page view is a 303 to /login (not a JSON 401); after login it renders."""
    client = world.client()
    first = client.get("/console", follow_redirects=False)
    assert (first.status_code, first.headers["location"]) == (303, "/login")
    browser, _ = world.browser("viewer")
    assert browser.get("/console").status_code == 200


def test_a_disabled_user_is_cut_off_at_once(world: AccessWorld) -> None:
    """Disabling a user (directly in the database) stops their bearer token and their
    console session on the very next request."""
    browser, _ = world.browser("operator")
    assert browser.get("/api/devices").status_code == 200
    with Session(world.engine) as session:
        user = session.exec(select(User).where(col(User.username) == "operator")).one()
        user.disabled = True
        session.add(user)
        session.commit()
    assert world.client().get("/api/devices", headers=world.bearer("operator")).status_code == 401
    assert browser.get("/api/devices").status_code == 401
    assert browser.get("/console", follow_redirects=False).status_code == 303


def test_revoked_and_expired_tokens_stop_working(world: AccessWorld) -> None:
    """A token with revoked_at set, or expires_at in the past, is refused with 401; the
    same user's other tokens keep working."""
    now = datetime.now(UTC)
    with Session(world.engine) as session:
        admin = session.exec(select(User).where(col(User.username) == "admin")).one()
        expired = create_api_token(session, admin, name="old", expires_at=now - timedelta(1))
        later = create_api_token(session, admin, name="later", expires_at=now + timedelta(1))
        session.commit()
    client = world.client()
    assert client.get("/api/me", headers={"Authorization": f"Bearer {later}"}).status_code == 200
    assert client.get("/api/me", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    with Session(world.engine) as session:
        for row in session.exec(select(ApiToken).where(col(ApiToken.name) == "later")):
            row.revoked_at = now
            session.add(row)
        session.commit()
    assert client.get("/api/me", headers={"Authorization": f"Bearer {later}"}).status_code == 401
    assert client.get("/api/me", headers=world.bearer("admin")).status_code == 200


def test_allows_answers_for_pages(world: AccessWorld) -> None:
    """allows() lets pages show only the controls a role may use."""
    with Session(world.engine) as session:
        users = {u.username: u for u in session.exec(select(User))}
    assert allows(users["operator"], "POST", "/api/rollouts")
    assert not allows(users["viewer"], "POST", "/api/rollouts")
    assert not allows(None, "GET", "/api/devices")
    assert allows(None, "GET", "/healthz")
    assert not allows(users["admin"], "GET", "/nowhere")
