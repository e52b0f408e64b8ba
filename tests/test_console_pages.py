"""Console pages on a real controller (TestClient, SQLite, Mosquitto): login redirects,
CSRF meta, role-aware controls, the read-only API enrichments the pages use, and no
external URL anywhere the browser would load from."""

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.auth.credentials import SESSION_COOKIE, open_session
from controller.auth.csrf import token_for_session
from controller.auth.users import create_user
from controller.db import session_scope
from tests.conftest import Broker
from tests.controller_harness import LiveController, live_controller
from tests.rollout_world import NEW_TARGET, OLD_TARGET, World

CONSOLE = Path(__file__).resolve().parent.parent / "controller" / "console"
PAGES = (
    "/console",
    "/console/devices/dev-0000",
    "/console/models",
    "/console/rollouts",
    "/console/rollouts/{rollout}",
    "/console/drift",
    "/console/drift/smollm2",
    "/console/audit",
)


@pytest.fixture
def live(mosquitto: Broker, tmp_path: Path) -> Iterator[LiveController]:
    with live_controller(
        tmp_path, {"mode": "external", "url": mosquitto.url}, rollouts={"tick_interval_s": 3600}
    ) as controller:
        yield controller


@pytest.fixture
def world(live: LiveController) -> World:
    return World(str(live.services.engine.url))


def login_as(live: LiveController, role: str) -> str:
    """Give the test client a console session of a new user with ``role``; returns the
    session cookie."""
    with session_scope(live.services.engine) as session:
        user = create_user(
            session, username=f"{role}-1", password="correct-horse-battery", role=role
        )
        cookie = open_session(session, user, ttl=timedelta(hours=1), now=datetime.now(UTC))
    live.client.cookies.set(SESSION_COOKIE, cookie)
    return cookie


def start_rollout(live: LiveController, world: World) -> int:
    world.add_model()
    world.add_devices(3, at=datetime.now(UTC))
    response = live.client.post(
        "/api/rollouts",
        json={"model": "smollm2", "version": "1.1", "waves": ["canary:1", "100%"]},
        headers=live.auth,
    )
    assert response.status_code == 201, response.text
    rollout_id: int = response.json()["id"]
    return rollout_id


def test_every_page_renders_for_a_viewer_with_csrf_meta(live: LiveController, world: World) -> None:
    """Each console page answers 200 to a viewer, names the user and role, carries the
    session's CSRF token in its meta tag and its logout form, and loads only local files."""
    rollout_id = start_rollout(live, world)
    cookie = login_as(live, "viewer")
    token = token_for_session(cookie)
    for path in PAGES:
        response = live.client.get(path.format(rollout=rollout_id), follow_redirects=False)
        assert response.status_code == 200, (path, response.text[:500])
        html = response.text
        assert f'<meta name="csrf-token" content="{token}">' in html, path
        assert f'name="csrf_token" value="{token}"' in html, path
        assert "viewer-1" in html and ">viewer<" in html, path
        assert 'data-can-change="false"' in html, path
        for src in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert src.startswith(("/", "data:")), (path, src)  # this host, or inline


def test_pages_send_a_visitor_without_a_session_to_login(live: LiveController) -> None:
    """Without a session, every console page redirects to /login instead of rendering."""
    for path in PAGES:
        response = live.client.get(path.format(rollout=1), follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/login", path


def test_unknown_device_or_rollout_is_a_readable_404(live: LiveController) -> None:
    """A device or rollout that does not exist renders a 404 page, not an error document."""
    login_as(live, "viewer")
    for path, what in (
        ("/console/devices/nope", "Device 'nope' is not registered."),
        ("/console/rollouts/999", "There is no rollout 999."),
    ):
        response = live.client.get(path)
        assert response.status_code == 404
        assert what.replace("'", "&#39;") in response.text


def test_operators_get_enabled_controls(live: LiveController, world: World) -> None:
    """An operator's pages mark the user as able to change things (the start form is not
    disabled); a viewer's start form is disabled."""
    rollout_id = start_rollout(live, world)
    login_as(live, "operator")
    page = live.client.get("/console/rollouts").text
    assert 'data-can-change="true"' in page and "<fieldset disabled>" not in page
    assert 'data-can-change="true"' in live.client.get(f"/console/rollouts/{rollout_id}").text
    login_as(live, "viewer")
    assert "<fieldset disabled>" in live.client.get("/console/rollouts").text


def test_model_deployments_count_devices_per_target(live: LiveController, world: World) -> None:
    """/api/models/deployments counts devices by the target they report (active or not)
    and by the target they are asked to run."""
    rollout_id = start_rollout(live, world)
    page = live.client.get("/api/models/deployments", headers=live.auth).json()
    by_target = {d["target_path"]: d for d in page["data"]}
    assert by_target[OLD_TARGET] == {
        "target_path": OLD_TARGET,
        "active": 3,
        "other": 0,
        "desired": 0,
    }
    assert by_target[NEW_TARGET]["desired"] == 1  # the canary
    assert rollout_id > 0


def test_signatures_without_a_repository_is_a_problem(live: LiveController) -> None:
    """/api/models/signatures answers 503 problem details when no TUF repository exists."""
    response = live.client.get("/api/models/signatures", headers=live.auth)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


def test_rollout_history_lists_steps_and_gates(live: LiveController, world: World) -> None:
    """/api/rollouts/{id}/history lists the audited steps oldest first, with a pause by the
    operator, and the latest gate evaluation once the rollout was evaluated."""
    rollout_id = start_rollout(live, world)
    live.services.tick_rollouts()
    paused = live.client.post(
        f"/api/rollouts/{rollout_id}/pause", json={"reason": "look first"}, headers=live.auth
    )
    assert paused.status_code == 200, paused.text
    history = live.client.get(f"/api/rollouts/{rollout_id}/history", headers=live.auth).json()
    actions = [e["action"] for e in history["data"]]
    assert actions[0] == "rollout.create" and actions[-1] == "rollout.pause"
    assert history["data"][-1]["to_status"] == "paused"
    assert history["data"][-1]["reason"] == "look first"
    gates = {g["gate"]: g for g in history["last_gate"]["gates"]}
    assert gates["install_success"]["threshold"] == pytest.approx(0.95)
    assert live.client.get("/api/rollouts/999/history", headers=live.auth).status_code == 404


def test_no_external_urls_in_templates_or_static_files() -> None:
    """Templates and scripts load nothing from another host (the console works
    air-gapped): no absolute URL in a template or in our own scripts and styles, and the
    vendored files import nothing from elsewhere."""
    absolute = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
    for template in (CONSOLE / "templates").glob("*.html"):
        for ref in re.findall(r'(?:src|href|action)="([^"]*)"', template.read_text()):
            assert not absolute.match(ref), (template.name, ref)
    own = [p for p in (CONSOLE / "static").rglob("*") if p.is_file() and "vendor" not in p.parts]
    assert {p.name for p in own} >= {"console.js", "fleet.js", "console.css"}
    for path in own:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path
    vendored = list((CONSOLE / "static" / "vendor").rglob("*.js")) + list(
        (CONSOLE / "static" / "vendor").rglob("*.css")
    )
    assert vendored, "run scripts/vendor_js"
    for path in vendored:
        text = path.read_text()
        assert not re.search(r"(?:@import|url\()\s*['\"]?(?:https?:)?//", text), path
        assert not re.search(r"\bimport\s*\(?\s*['\"](?:https?:)?//", text), path
        assert not re.search(r"\bfetch\(\s*['\"](?:https?:)?//", text), path


def test_api_docs_load_only_vendored_files(live: LiveController) -> None:
    """/docs (Swagger UI) needs no login and loads its script, styles and icon from this
    controller's /static, never a CDN, and /redoc (which would) is not served."""
    live.client.cookies.clear()
    response = live.client.get("/docs")
    assert response.status_code == 200, response.text[:500]
    html = response.text
    refs = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]*)"', html)
    assert len(refs) >= 3, html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    for ref in refs:
        assert ref.startswith("/static/vendor/swagger-ui/"), ref
        assert live.client.get(ref).status_code == 200, ref
    assert '"validatorUrl": null' in html  # no schema sent to validator.swagger.io
    assert live.client.get("/openapi.json").status_code == 200
    assert live.client.get("/redoc").status_code == 404
