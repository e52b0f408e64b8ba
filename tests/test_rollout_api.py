"""The rollouts API on a real controller (app, scheduler, ingest on a real Mosquitto)."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from controller.app import create_app
from controller.audit import AuditEntry
from controller.auth.credentials import create_api_token
from controller.auth.users import create_user
from controller.cli.main import app as cli_app
from controller.cli.rollouts import parse_window
from controller.db import session_scope
from controller.services import Services
from controller.settings import load_settings
from tests.conftest import Broker, free_port, wait_for
from tests.controller_harness import LiveController, live_controller
from tests.rollout_world import NEW_TARGET, World


@pytest.fixture
def live(mosquitto: Broker, tmp_path: Path) -> Iterator[LiveController]:
    # A slow tick: these tests step rollouts through the API; one test speeds it up itself.
    with live_controller(
        tmp_path,
        {"mode": "external", "url": mosquitto.url},
        rollouts={"tick_interval_s": 3600},
    ) as controller:
        yield controller


@pytest.fixture
def world(live: LiveController) -> World:
    return World(str(live.services.engine.url))


def token_for(live: LiveController, role: str) -> dict[str, str]:
    with session_scope(live.services.engine) as session:
        user = create_user(session, username=role, password="correct-horse-battery", role=role)
        token = create_api_token(session, user, name="t")
    return {"Authorization": f"Bearer {token}"}


def create(live: LiveController, **body: Any) -> Any:
    payload: dict[str, Any] = {
        "model": "smollm2",
        "version": "1.1",
        "waves": ["canary:2", "100%"],
        "gates": {"min_soak_s": 600, "min_samples": 10},
    }
    payload.update(body)
    return live.client.post("/api/rollouts", json=payload, headers=live.auth)


def test_create_starts_the_canary_and_reports_progress(live: LiveController, world: World) -> None:
    """Creating a rollout returns it running with the canary assigned and per-wave progress;
    the canary's desired model is set; list, get and members pages agree."""
    world.add_model()
    world.add_devices(12, at=datetime.now(UTC))
    response = create(live)
    assert response.status_code == 201, response.text
    rollout = response.json()
    assert rollout["status"] == "running" and rollout["wave"] == 0
    assert [w["cumulative_size"] for w in rollout["waves"]] == [2, 12]
    assert rollout["waves"][0]["outcomes"] == {"assigned": 2}
    assert rollout["waves"][0]["phase"] == "installing"
    desired = [m for m in world.desired_models().values() if m]
    assert [m["target"] for m in desired] == [NEW_TARGET, NEW_TARGET]

    rid = rollout["id"]
    assert rollout["gates"] is None  # the first step only starts the canary
    live.services.tick_rollouts()  # what the scheduler runs every tick
    got = live.client.get(f"/api/rollouts/{rid}", headers=live.auth).json()
    assert got["waves"] == rollout["waves"]
    assert got["gates"]["verdict"] == "wait"
    assert "2 of 2 devices still installing" in got["reason"]
    page = live.client.get("/api/rollouts", headers=live.auth).json()
    assert page["count"] == 1 and page["data"][0]["id"] == rid

    members = live.client.get(
        f"/api/rollouts/{rid}/devices", params={"limit": 5, "offset": 0}, headers=live.auth
    ).json()
    assert members["count"] == 12 and len(members["data"]) == 5
    assigned = live.client.get(
        f"/api/rollouts/{rid}/devices", params={"outcome": "assigned"}, headers=live.auth
    ).json()
    assert assigned["count"] == 2
    assert all(m["wave"] == 0 and m["assigned_at"] for m in assigned["data"])


def test_list_is_paginated_and_filtered(live: LiveController, world: World) -> None:
    """Rollouts list newest first, in pages, filterable by status."""
    world.add_model()
    ids = world.add_devices(9, at=datetime.now(UTC))
    created = [
        create(live, cohort={"device_ids": ids[i * 3 : i * 3 + 3]}).json()["id"] for i in range(3)
    ]
    live.client.post(f"/api/rollouts/{created[0]}/abort", headers=live.auth)
    first = live.client.get("/api/rollouts", params={"limit": 2}, headers=live.auth).json()
    assert first["count"] == 3 and [r["id"] for r in first["data"]] == created[::-1][:2]
    second = live.client.get(
        "/api/rollouts", params={"limit": 2, "offset": 2}, headers=live.auth
    ).json()
    assert [r["id"] for r in second["data"]] == [created[0]]
    aborted = live.client.get(
        "/api/rollouts", params={"status": "aborted"}, headers=live.auth
    ).json()
    assert [r["id"] for r in aborted["data"]] == [created[0]]


def test_errors_are_problem_details(live: LiveController, world: World) -> None:
    """Unknown model (404), overlapping cohort (409), bad wave plan (422), unknown rollout
    (404) and a refused command (409) all come back as RFC 9457 problem details."""
    world.add_model()
    ids = world.add_devices(4, at=datetime.now(UTC))
    unknown = create(live, version="9.9")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert "not published" in unknown.json()["detail"]

    rid = create(live).json()["id"]
    conflict = create(live, cohort={"device_ids": ids[:1]})
    assert conflict.status_code == 409
    assert f"{ids[0]} (rollout {rid})" in conflict.json()["detail"]

    bad = create(live, waves=["50%", "10%"])
    assert bad.status_code == 422
    assert bad.json()["title"] == "Invalid request"

    assert live.client.get("/api/rollouts/999", headers=live.auth).status_code == 404
    refused = live.client.post(f"/api/rollouts/{rid}/resume", headers=live.auth)
    assert refused.status_code == 409
    assert "only a paused or halted rollout resumes" in refused.json()["detail"]


def test_changes_need_an_operator(live: LiveController, world: World) -> None:
    """Viewers may read rollouts but not create or steer them; anonymous callers get 401."""
    world.add_model()
    world.add_devices(4, at=datetime.now(UTC))
    rid = create(live).json()["id"]
    viewer = token_for(live, "viewer")
    assert live.client.get(f"/api/rollouts/{rid}", headers=viewer).status_code == 200
    body = {"model": "smollm2", "version": "1.1", "waves": ["100%"]}
    assert live.client.post("/api/rollouts", json=body, headers=viewer).status_code == 403
    assert live.client.post(f"/api/rollouts/{rid}/pause", headers=viewer).status_code == 403
    assert live.client.post(f"/api/rollouts/{rid}/pause").status_code == 401


def test_operator_commands_are_applied_and_audited(live: LiveController, world: World) -> None:
    """Pause, resume and rollback through the API change the status, revert the assigned
    devices' desired model, and land in the audit log with the operator and reason."""
    world.add_model()
    world.add_devices(6, at=datetime.now(UTC))
    rid = create(live).json()["id"]
    paused = live.client.post(
        f"/api/rollouts/{rid}/pause", json={"reason": "change freeze"}, headers=live.auth
    )
    assert paused.json()["status"] == "paused"
    resumed = live.client.post(f"/api/rollouts/{rid}/resume", headers=live.auth)
    assert resumed.json()["status"] == "running"
    rolled = live.client.post(
        f"/api/rollouts/{rid}/rollback", json={"reason": "bad answers"}, headers=live.auth
    ).json()
    assert rolled["status"] in ("rolling_back", "rolled_back")
    assert all(m is None or m["target"] != NEW_TARGET for m in world.desired_models().values())
    with Session(live.services.engine) as session:
        entries = session.exec(
            select(AuditEntry)
            .where(AuditEntry.target == f"rollout:{rid}")
            .order_by(col(AuditEntry.id))
        ).all()
    by_action = {e.action: e for e in entries}
    assert by_action["rollout.pause"].actor == "user:admin"
    assert by_action["rollout.pause"].reason == "change freeze"
    assert by_action["rollout.rollback"].reason == "bad answers"

    # The same trail through the audit API: newest first, filtered by prefix and text.
    trail = live.client.get(
        "/api/audit", params={"target": f"rollout:{rid}", "action": "rollout."}, headers=live.auth
    ).json()
    assert trail["count"] == len(entries)
    assert [e["id"] for e in trail["data"]] == sorted((e.id for e in entries), reverse=True)
    frozen = live.client.get("/api/audit", params={"q": "freeze"}, headers=live.auth).json()
    assert [e["action"] for e in frozen["data"]] == ["rollout.pause"]
    assert live.client.get("/api/audit").status_code == 401


def test_the_scheduler_tick_drives_a_rollout_to_completion(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """With the controller's own tick job running, a rollout advances through its waves as
    devices report installs, and completes without any API call after creation."""
    with live_controller(
        tmp_path,
        {"mode": "external", "url": mosquitto.url},
        rollouts={"tick_interval_s": 0.2},
    ) as live:
        world = World(str(live.services.engine.url))
        world.add_model()
        world.add_devices(8, at=datetime.now(UTC))
        rid = create(
            live, waves=["canary:2", "50%", "100%"], gates={"min_soak_s": 0, "min_samples": 0}
        ).json()["id"]

        def done() -> bool:
            world.respond(datetime.now(UTC))
            state = live.client.get(f"/api/rollouts/{rid}", headers=live.auth).json()
            return state["status"] == "completed"

        wait_for(done, 30, interval=0.2, what="the rollout to complete by itself")
        assert len(world.on_target()) == 8


# --- the CLI, against the same app served over real HTTP -------------------------------------
@contextmanager
def served(tmp_path: Path, broker_url: str) -> Iterator[tuple[str, str, Services]]:
    """The controller app on a real loopback HTTP port (uvicorn in a thread)."""
    config = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{tmp_path / 'served.db'}",
        broker={"mode": "external", "url": broker_url},
        secure_cookies=False,
        rollouts={"tick_interval_s": 3600},
    )
    services = Services.create(config)
    with session_scope(services.engine) as session:
        admin = create_user(session, username="ops", password="correct-horse-battery", role="admin")
        token = create_api_token(session, admin, name="cli")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, services=services),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, what="uvicorn to start")
        yield f"http://127.0.0.1:{port}", token, services
    finally:
        server.should_exit = True
        thread.join(20)


def test_cli_creates_shows_steers_and_watches(mosquitto: Broker, tmp_path: Path) -> None:
    """``edgefleet rollouts`` creates a rollout with windows and gates, lists and shows it
    (JSON and tables), pauses and aborts it, and ``watch`` ends with the final status."""
    runner = CliRunner()
    with served(tmp_path, mosquitto.url) as (url, token, services):
        world = World(str(services.engine.url))
        world.add_model()
        world.add_devices(10, at=datetime.now(UTC))
        auth = ["--url", url, "--token", token]
        created = runner.invoke(
            cli_app,
            [
                "rollouts", "create", "--model", "smollm2", "--version", "1.1",
                "--wave", "canary:2", "--wave", "50%", "--wave", "100%",
                "--soak", "300", "--max-error-rate", "0.05",
                "--window", "mon-sun 00:00-23:59", "--json", *auth,
            ],
        )  # fmt: skip
        assert created.exit_code == 0, created.output
        rollout = json.loads(created.output)
        rid = rollout["id"]
        assert rollout["status"] == "running"
        assert rollout["spec"]["gates"]["min_soak_s"] == 300
        assert rollout["spec"]["windows"][0]["days"] == [0, 1, 2, 3, 4, 5, 6]

        listed = runner.invoke(cli_app, ["rollouts", "list", "--json", *auth])
        assert [r["id"] for r in json.loads(listed.output)["data"]] == [rid]
        shown = runner.invoke(cli_app, ["rollouts", "show", str(rid), *auth])
        assert shown.exit_code == 0 and "canary:2" in shown.output and "50%" in shown.output

        paused = runner.invoke(cli_app, ["rollouts", "pause", str(rid), "--reason", "x", *auth])
        assert paused.output.strip() == f"rollout {rid}: paused"
        again = runner.invoke(cli_app, ["rollouts", "pause", str(rid), *auth])
        assert again.exit_code == 1 and "409" in again.output
        runner.invoke(cli_app, ["rollouts", "abort", str(rid), *auth])
        watched = runner.invoke(cli_app, ["rollouts", "watch", str(rid), *auth])
        assert watched.exit_code == 1  # finished, but not completed
        assert f"rollout {rid}: aborted" in watched.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("01:00-04:00", {"start": "01:00", "end": "04:00"}),
        (
            "fri-mon 22:00-02:00",
            {"start": "22:00", "end": "02:00", "days": ["fri", "sat", "sun", "mon"]},
        ),
        ("sat,sun 00:00-23:59", {"start": "00:00", "end": "23:59", "days": ["sat", "sun"]}),
    ],
)
def test_cli_window_syntax(text: str, expected: dict[str, Any]) -> None:
    """Maintenance windows on the command line: optional days (ranges wrap), then times."""
    assert parse_window(text) == expected
    with pytest.raises(ValueError):
        parse_window("someday 25:00")
