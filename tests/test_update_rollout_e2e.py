"""Signed updates, staged rollouts and attestation together, as real processes.

One fleet for the module (tests/fleet_e2e.py): Mosquitto, a controller whose TUF
repository was made by `keys init` with SmolLM2 published as version 1.0, and three agents
serving that GGUF as their factory model, updating from the controller's `/tuf/` mirror.
The scenarios run in file order on the same fleet; each publishes its own version and
makes its own rollout, and each asserts only about that rollout.
"""

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.fleet_e2e import MODEL_NAME, Fleet, truncated, variant

pytestmark = pytest.mark.e2e

DEVICES = ("edge-a", "edge-b", "edge-c")
WAVES = ["canary:1", "100%"]
# min_samples: each wave must have served real chats on the new model before it passes.
GATES = {"min_soak_s": 2, "min_samples": 2}
TIMEOUTS = {"device_timeout_s": 120, "install_timeout_s": 240}


@pytest.fixture(scope="module")
def fleet_once(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), model_path, DEVICES)
    try:
        fleet.start()
    except BaseException:
        print(fleet.logs())
        fleet.stop()
        raise
    yield fleet
    fleet.stop()


@pytest.fixture
def fleet(fleet_once: Fleet, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """The module's fleet; every process's log tail is printed when the test fails."""
    failed_before = request.session.testsfailed
    yield fleet_once
    if request.session.testsfailed > failed_before:
        print(fleet_once.logs())


def utc(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def by_wave(members: dict[str, dict[str, Any]], wave: int) -> list[str]:
    return sorted(d for d, m in members.items() if m["wave"] == wave)


def actions(entries: list[dict[str, Any]]) -> list[str]:
    return [e["action"] for e in entries]


def test_rollback_from_the_factory_model_goes_back_to_it(fleet: Fleet, tmp_path: Path) -> None:
    """A canary that ran its factory model installs a new version; rolled back by hand, it
    gets the factory marker as desired model, swaps its configured GGUF back in, reports it
    and is reverted well before the device timeout."""
    factory = fleet.model_version("1.0")
    fleet.publish("1.0.1", variant(fleet.model, tmp_path / "smollm2-1.0.1.gguf", "1.0.1"))
    candidate = fleet.model_version("1.0.1")
    created = fleet.create_rollout(
        "1.0.1", WAVES, gates={**GATES, "min_soak_s": 600}, **TIMEOUTS
    )  # a long soak: the rollout waits in the canary wave until it is rolled back
    rollout_id = created["id"]
    (device_id,) = by_wave(fleet.members(rollout_id), 0)
    wait_for(
        lambda: fleet.members(rollout_id)[device_id]["outcome"] == "installed",
        120,
        interval=0.3,
        what="the canary's install",
    )
    assert fleet.reported_model(device_id)["sha256"] == candidate["sha256"]

    with fleet.api() as api:
        response = api.post(
            f"/api/rollouts/{rollout_id}/rollback", json={"reason": "back to the factory model"}
        )
    assert response.status_code == 200, response.text
    fleet.wait_rollout(rollout_id, ["rolled_back"], drive=False, timeout=60)
    assert fleet.members(rollout_id)[device_id]["outcome"] == "reverted"
    assert fleet.shadow(device_id)["desired"]["model"] == {"name": MODEL_NAME, "factory": True}
    model = fleet.reported_model(device_id)
    assert (model["status"], model["slot"], model["target"]) == ("active", "factory", None)
    assert model["sha256"] == factory["sha256"]
    answer = fleet.agents[device_id].chat()
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-edge-route"] == "local"


def test_model_rolls_out_in_waves_and_still_attests(fleet: Fleet, tmp_path: Path) -> None:
    """A new signed version goes to one canary, then to everyone once the canary has
    installed and served real requests; every agent then runs it (the registry's target
    and sha256), answers chats with it, and still passes attestation measuring its hash."""
    fleet.publish("1.1", variant(fleet.model, tmp_path / "smollm2-1.1.gguf", "1.1"))
    published = fleet.model_version("1.1")
    assert published["target_path"].startswith(f"{MODEL_NAME}/1.1/")
    factory = fleet.model_version("1.0")
    assert published["sha256"] != factory["sha256"]
    assert all(fleet.reported_model(d)["sha256"] == factory["sha256"] for d in DEVICES)

    created = fleet.create_rollout("1.1", WAVES, gates=GATES, **TIMEOUTS)
    rollout_id = created["id"]
    assert created["status"] == "running" and created["wave"] == 0
    members = fleet.members(rollout_id)
    canary, rest = by_wave(members, 0), by_wave(members, 1)
    assert len(canary) == 1 and sorted(canary + rest) == sorted(DEVICES)
    assert all(members[d]["outcome"] == "pending" for d in rest)

    done = fleet.wait_rollout(rollout_id, ["completed"])
    assert done["reason"] == "every wave passed its gates"
    members = fleet.members(rollout_id)
    assert {m["outcome"] for m in members.values()} == {"installed"}
    canary_installed = utc(members[canary[0]]["installed_at"])
    for device_id in rest:  # the second wave started only after the canary installed
        assert utc(members[device_id]["assigned_at"]) >= canary_installed
    gates = {g["gate"]: g for g in done["gates"]["gates"]}
    assert gates["install_success"]["status"] == "pass"
    assert gates["error_rate"]["status"] == "pass" and gates["latency_p95"]["status"] == "pass"
    assert done["gates"]["observation"]["inferences"] >= GATES["min_samples"]

    for device_id, agent in fleet.agents.items():
        model = fleet.reported_model(device_id)
        assert model["status"] == "active", (device_id, model)
        assert model["target"] == published["target_path"]
        assert model["sha256"] == published["sha256"]
        assert model["version"] == "1.1" and model["rollout"] == rollout_id
        assert model["slot"] in ("a", "b")
        answer = agent.chat()
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-edge-route"] == "local"
        assert answer.json()["choices"][0]["message"]["content"]

        verdict = fleet.attest(device_id)
        assert verdict["ok"], (device_id, verdict["reasons"])
        assert verdict["measurements"][f"model:{MODEL_NAME}"] == published["sha256"]
        assert not fleet.attestation(device_id)["quarantined"]

    log = actions(fleet.audit_log(f"rollout:{rollout_id}"))
    assert log == ["rollout.create", "rollout.start", "rollout.advance", "rollout.complete"]


def test_unloadable_model_fails_the_canary_and_rolls_back(fleet: Fleet, tmp_path: Path) -> None:
    """A correctly signed version whose GGUF does not load fails on the canary, which
    keeps serving the model it ran; the install gate rolls the rollout back at once and
    no device outside the canary wave is ever assigned."""
    running = {d: fleet.reported_model(d) for d in DEVICES}
    desired_before = {d: fleet.shadow(d)["desired"].get("model") for d in DEVICES}
    fleet.publish("1.2", truncated(fleet.model, tmp_path / "smollm2-1.2.gguf"))
    bad = fleet.model_version("1.2")

    created = fleet.create_rollout("1.2", WAVES, gates=GATES, **TIMEOUTS)
    rollout_id = created["id"]
    members = fleet.members(rollout_id)
    canary, rest = by_wave(members, 0), by_wave(members, 1)
    assert len(canary) == 1

    done = fleet.wait_rollout(rollout_id, ["rolled_back"], drive=False)
    members = fleet.members(rollout_id)
    assert members[canary[0]]["outcome"] == "reverted"
    assert members[canary[0]]["assigned_at"] is not None
    for device_id in rest:
        assert members[device_id]["outcome"] == "skipped"
        assert members[device_id]["assigned_at"] is None
        assert fleet.shadow(device_id)["desired"].get("model") == desired_before[device_id]
    gates = {g["gate"]: g for g in done["gates"]["gates"]}
    assert gates["install_success"]["status"] == "fail"

    log = fleet.audit_log(f"rollout:{rollout_id}")
    assert actions(log) == [
        "rollout.create",
        "rollout.start",
        "rollout.rollback",
        "rollout.rolled_back",
    ]
    assert "install_success" in log[2]["reason"]

    device_id = canary[0]

    def install_events() -> list[dict[str, Any]]:  # events travel apart from the shadow
        return [
            e
            for e in fleet.install_events(device_id)
            if e["target"] == bad["target_path"] and e["rollout"] == rollout_id
        ]

    failed = wait_for(install_events, 30, interval=0.3, what="the canary's install event")
    assert [e["outcome"] for e in failed] == ["failed"]
    assert "did not load" in failed[0]["reason"]
    now = fleet.reported_model(device_id)
    assert now["status"] == "active", now
    was = running[device_id]
    assert (now["target"], now["sha256"]) == (was["target"], was["sha256"])
    answer = fleet.agents[device_id].chat()
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-edge-route"] == "local"
    for other in rest:
        assert fleet.reported_model(other)["sha256"] == running[other]["sha256"]


def test_rollout_resumes_after_controller_is_killed_mid_soak(fleet: Fleet, tmp_path: Path) -> None:
    """SIGKILL of the controller while the canary wave soaks loses nothing: restarted on
    the same database and repository, it carries on with that wave (the canary is not
    assigned again), starts the second wave once, after the canary's soak, and completes;
    the audit log shows each step exactly once, in order."""
    controller = fleet.controller
    assert controller is not None
    fleet.publish("1.3", variant(fleet.model, tmp_path / "smollm2-1.3.gguf", "1.3"))
    published = fleet.model_version("1.3")
    soak_s = 10
    created = fleet.create_rollout_cli(
        "--model", MODEL_NAME, "--version", "1.3", "--wave", WAVES[0], "--wave", WAVES[1],
        "--soak", str(soak_s), "--min-samples", str(GATES["min_samples"]),
        "--device-timeout", str(TIMEOUTS["device_timeout_s"]),
    )  # fmt: skip
    rollout_id = created["id"]
    members = fleet.members(rollout_id)
    canary, rest = by_wave(members, 0), by_wave(members, 1)

    # No requests yet: nothing slows the poll that catches the soak's start.
    deadline = time.monotonic() + 120
    while (view := fleet.rollout(rollout_id))["soaking_since"] is None:
        assert view["status"] == "running", view
        assert time.monotonic() < deadline, f"the canary never settled: {view['reason']}"
        time.sleep(0.1)
    soaking_since = utc(view["soaking_since"])
    before = fleet.members(rollout_id)
    assert before[canary[0]]["outcome"] == "installed"
    canary_desired = fleet.shadow(canary[0])["desired_version"]

    controller.kill()
    killed_at = datetime.now(UTC)
    assert killed_at < soaking_since + timedelta(seconds=soak_s), "killed after the soak"
    assert all(before[d]["assigned_at"] is None for d in rest)
    # Requests while the controller is down: their telemetry waits in the agents' outboxes.
    answer = fleet.agents[canary[0]].chat()
    assert answer.status_code == 200, answer.text
    controller.start()

    done = fleet.wait_rollout(rollout_id, ["completed"])
    assert done["reason"] == "every wave passed its gates"
    after = fleet.members(rollout_id)
    assert after[canary[0]]["assigned_at"] == before[canary[0]]["assigned_at"]
    assert fleet.shadow(canary[0])["desired_version"] == canary_desired, "canary re-assigned"
    for device_id in rest:
        assert after[device_id]["outcome"] == "installed"
        assert utc(after[device_id]["assigned_at"]) > killed_at
    for device_id in DEVICES:
        model = fleet.reported_model(device_id)
        assert (model["target"], model["sha256"], model["status"]) == (
            published["target_path"],
            published["sha256"],
            "active",
        )

    log = fleet.audit_log(f"rollout:{rollout_id}")
    assert actions(log) == [
        "rollout.create",
        "rollout.start",
        "rollout.advance",
        "rollout.complete",
    ]
    start, advance = log[1], log[2]
    assert start["detail"]["wave"] == 0
    assert advance["detail"]["gated_wave"] == 0 and advance["detail"]["wave"] == 1
    assert advance["detail"]["assigned"] == len(rest)
    assert utc(advance["at"]) >= soaking_since + timedelta(seconds=soak_s)
    assert utc(advance["at"]) > killed_at
