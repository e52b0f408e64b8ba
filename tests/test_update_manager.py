"""The update manager end to end: a real agent installs signed models from a real TUF repo.

Models are real: tiny seeded ONNX Runtime GenAI decoders (tests/tiny_models.py) shipped as
tar archives, and the SmolLM2 GGUF for the llama.cpp path. The repository is python-tuf
metadata served over loopback HTTP (tests/tuf_simulator.py).
"""

import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.db import make_engine, session_scope
from controller.devices.shadows import desired_message, set_desired
from controller.migrations import init_db
from controller.rollouts.engine import parse_model_report
from controller.rollouts.service import factory_model, revert_model
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.runtimes.base import ChatMessage, ChatRequest
from edge_agent.updates.decisions import (
    DesiredModel,
    DeviceFacts,
    IncompatibleTarget,
    SmokeResult,
    check_compatibility,
    health_problem,
    parse_target_meta,
    version_key,
)
from tests.conftest import Broker, wait_for
from tests.controller_harness import live_controller
from tests.tiny_models import build_tiny_genai_model
from tests.tuf_simulator import UpdateWorld, model_custom, sha256_hex, tar_folder

ASK = ChatRequest(messages=(ChatMessage("user", "hello world"),), max_tokens=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny decoders with different weights: the factory model and two updates."""
    base = tmp_path_factory.mktemp("models")
    return {
        name: build_tiny_genai_model(base / name, layers=1, seed=seed)
        for name, seed in (("factory", 0), ("v2", 4), ("v3", 2))
    }


@pytest.fixture
def world(tmp_path: Path, models: dict[str, Path]) -> Iterator[UpdateWorld]:
    world = UpdateWorld(tmp_path, factory=models["factory"])
    yield world
    world.close()


def publish(world: UpdateWorld, models: dict[str, Path], version: str, **custom: Any) -> str:
    """Sign and serve model ``version`` (an archive of the tiny model of that name)."""
    target = f"tiny/{version}/model.tar"
    data = tar_folder(models[f"v{version}"] if f"v{version}" in models else models["v2"])
    world.repo.add_target(target, data, model_custom(version=version, **custom))
    world.repo.publish()
    return target


def slots_json(world: UpdateWorld) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (world.state_dir / "models" / "tiny" / "slots.json").read_text()
    )
    return body


def test_install_switches_slot_hot_swaps_and_reports(
    world: UpdateWorld, models: dict[str, Path]
) -> None:
    """A valid signed target is downloaded into slot a, health-checked, switched to and
    served at once; the shadow reports it active and an 'installed' event is recorded."""
    agent = world.start_agent()
    try:
        factory_runtime = agent.runtimes["tiny"]
        before = factory_runtime.complete(ASK).text
        target = publish(world, models, "2")
        world.want(agent, target, "2", rollout=7)
        assert agent.updates is not None
        agent.updates.reconcile()

        served = agent.runtimes["tiny"]
        assert served is not factory_runtime
        assert served.complete(ASK).text != before  # other weights, other greedy answer
        state = slots_json(world)
        assert state["active"] == "a" and state["previous"] == "factory" and state["trial"]
        reported = agent.shadow.report().state["model"]
        assert reported["status"] == "active"
        assert reported["target"] == target and reported["slot"] == "a"
        assert reported["sha256"] == world.repo.targets.signed.targets[target].hashes["sha256"]
        assert reported["rollout"] == 7 and reported["error"] is None
        assert reported["confirmed"] is False
        assert world.events(agent)[-1] == {
            "target": target,
            "version": "2",
            "rollout": 7,
            "outcome": "installed",
            "reason": None,
            "slot": "a",
        }
        agent.updates.reconcile()  # confirm_after_s is 0: the trial ends on the next step
        assert slots_json(world)["trial"] is False
        assert agent.shadow.report().state["model"]["confirmed"] is True
    finally:
        agent.stop()


def test_restart_loads_the_installed_slot(world: UpdateWorld, models: dict[str, Path]) -> None:
    """After an install, the next agent start loads the model from the active slot, not
    the configured path, and does not download it again."""
    agent = world.start_agent()
    target = publish(world, models, "2")
    world.want(agent, target)
    assert agent.updates is not None
    agent.updates.reconcile()
    agent.updates.reconcile()
    answer = agent.runtimes["tiny"].complete(ASK).text
    agent.stop()
    requests = len(world.artifact_requests())

    again = world.start_agent()
    try:
        assert again.runtimes["tiny"].complete(ASK).text == answer
        assert again.updates is not None
        again.updates.reconcile()
        assert len(world.artifact_requests()) == requests
        assert again.shadow.report().state["model"]["status"] == "active"
    finally:
        again.stop()


def test_reported_document_carries_status_not_the_request(
    world: UpdateWorld, models: dict[str, Path]
) -> None:
    """The reported shadow replaces the desired 'model' request by the manager's status."""
    agent = world.start_agent()
    try:
        report = agent.shadow.report()
        assert report.state["model"]["status"] == "active"
        assert report.state["model"]["slot"] == "factory"
        assert report.state["model"]["target"] is None
        assert report.state["model"]["sha256"] == agent.model_hashes["tiny"]
        world.want(agent, "tiny/2/model.tar", rollout=5)
        report = agent.shadow.report()
        assert "model" not in report.rejected
        assert set(report.state["model"]) > {"status", "slot", "sha256", "desired_target"}
        assert agent.updates is not None
        agent.updates.reconcile()
        model = agent.shadow.report().state["model"]
        assert model["desired_target"] == "tiny/2/model.tar" and model["rollout"] == 5
    finally:
        agent.stop()


def test_invalid_desired_model_is_rejected_by_the_shadow(world: UpdateWorld) -> None:
    """A malformed desired 'model' (path traversal) lands in 'rejected' and changes nothing."""
    agent = world.start_agent()
    try:
        world.want(agent, "../../etc/passwd")
        report = agent.shadow.report()
        assert "segment '..'" in report.rejected["model"]
        assert agent.updates is not None
        assert agent.updates.reconcile() is None
        assert world.artifact_requests() == []
    finally:
        agent.stop()


def _garbage_model(world: UpdateWorld, models: dict[str, Path], tmp: Path) -> bytes:
    folder = tmp / "garbage"
    shutil.copytree(models["v2"], folder)
    (folder / "model.onnx").write_bytes(b"\x00not an onnx graph" * 100)
    return tar_folder(folder)


def _silent_model(world: UpdateWorld, models: dict[str, Path], tmp: Path) -> bytes:
    """A model whose end-of-sequence token is the one it always generates first."""
    from edge_agent.runtimes.ort_genai import OrtGenaiRuntime

    folder = tmp / "silent"
    shutil.copytree(models["v2"], folder)
    probe = OrtGenaiRuntime("probe", folder)
    first = probe.generate(
        ChatRequest(
            messages=(ChatMessage("user", world.config().updates.health_prompt),),
            max_tokens=1,
        )
    ).token_ids[0]
    probe.close()
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = first
    (folder / "genai_config.json").write_text(json.dumps(config))
    return tar_folder(folder)


def _not_an_archive(world: UpdateWorld, models: dict[str, Path], tmp: Path) -> bytes:
    return b"this is not a tar file" * 1000


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(_garbage_model, "candidate did not load", id="model-does-not-load"),
        pytest.param(_silent_model, "generated no tokens", id="empty-output"),
        pytest.param(_not_an_archive, "could not be unpacked", id="not-an-archive"),
    ],
)
def test_failed_health_check_keeps_the_old_slot(
    world: UpdateWorld,
    models: dict[str, Path],
    tmp_path: Path,
    make: Callable[[UpdateWorld, dict[str, Path], Path], bytes],
    reason: str,
) -> None:
    """A verified artifact that does not load or answers badly is never switched to: the
    previous model keeps serving, status and event say 'failed' with the reason, and the
    same target is not tried again for the same rollout."""
    agent = world.start_agent()
    try:
        serving = agent.runtimes["tiny"]
        target = "tiny/2/model.tar"
        world.repo.add_target(target, make(world, models, tmp_path), model_custom())
        world.repo.publish()
        world.want(agent, target, rollout=3)
        assert agent.updates is not None
        agent.updates.reconcile()

        assert agent.runtimes["tiny"] is serving
        assert serving.complete(ASK).completion_tokens > 0
        state = slots_json(world)
        assert state["active"] == "factory" and state["trial"] is False
        assert list((world.state_dir / "models" / "tiny" / "a").iterdir()) == []
        reported = agent.shadow.report().state["model"]
        assert reported["status"] == "failed" and reason in reported["error"]
        event = world.events(agent)[-1]
        assert event["outcome"] == "failed" and reason in event["reason"]
        requests = len(world.server.faults.requests)
        agent.updates.reconcile()
        assert len(world.server.faults.requests) == requests
    finally:
        agent.stop()


@pytest.mark.parametrize(
    ("custom", "reason"),
    [
        pytest.param(
            {"device_classes": ["jetson-orin"]}, "device class cpu-x86", id="device-class"
        ),
        pytest.param({"min_agent_version": "99.0"}, "needs agent 99.0", id="agent-too-old"),
        pytest.param({"runtime": "llama.cpp"}, "differs from the configured", id="runtime"),
        pytest.param({"version": "9"}, "asks for '2'", id="version-mismatch"),
    ],
)
def test_incompatible_target_is_refused_before_download(
    world: UpdateWorld, models: dict[str, Path], custom: dict[str, Any], reason: str
) -> None:
    """A target whose signed custom metadata rules this device out is refused without
    fetching a byte of it."""
    agent = world.start_agent()
    try:
        target = "tiny/2/model.tar"
        world.repo.add_target(target, tar_folder(models["v2"]), model_custom(**custom))
        world.repo.publish()
        world.want(agent, target, "2")
        assert agent.updates is not None
        agent.updates.reconcile()
        reported = agent.shadow.report().state["model"]
        assert reported["status"] == "refused" and reason in reported["error"]
        assert world.artifact_requests() == []
        assert world.events(agent)[-1]["outcome"] == "refused"
    finally:
        agent.stop()


def test_unsigned_target_and_unknown_model_are_refused(world: UpdateWorld) -> None:
    """A target missing from the signed metadata, or a model name this agent does not
    have, is refused with a reason."""
    agent = world.start_agent()
    try:
        assert agent.updates is not None
        world.want(agent, "tiny/5/model.tar", "5")
        agent.updates.reconcile()
        reported = agent.shadow.report().state["model"]
        assert reported["status"] == "refused"
        assert "not in the signed targets metadata" in reported["error"]

        world.model_name = "other"
        world.want(agent, "other/1/model.tar", "1")
        agent.updates.reconcile()
        reported = agent.shadow.report().state["model"]
        assert reported["status"] == "refused" and "no model named 'other'" in reported["error"]
        assert agent.runtimes["tiny"].complete(ASK).completion_tokens > 0
    finally:
        agent.stop()


def test_going_back_to_the_previous_version_reuses_its_slot(
    world: UpdateWorld, models: dict[str, Path]
) -> None:
    """v2 then v3 fill both slots; asking for v2 again switches back after re-checking the
    signed metadata, without downloading v2 again."""
    agent = world.start_agent()
    try:
        assert agent.updates is not None
        v2 = publish(world, models, "2")
        world.want(agent, v2, "2")
        agent.updates.reconcile()
        agent.updates.reconcile()  # confirm
        v3 = publish(world, models, "3")
        world.want(agent, v3, "3")
        agent.updates.reconcile()
        agent.updates.reconcile()
        assert slots_json(world)["active"] == "b"
        fetched = len(world.artifact_requests())

        world.want(agent, v2, "2", rollout=9)
        agent.updates.reconcile()
        assert slots_json(world)["active"] == "a"
        assert len(world.artifact_requests()) == fetched
        assert agent.shadow.report().state["model"]["target"] == v2
    finally:
        agent.stop()


def test_desired_null_reverts_to_the_configured_model(
    world: UpdateWorld, models: dict[str, Path]
) -> None:
    """A rollout rolling back a device whose previous model was the factory one sets the
    desired model to null: the configured model is loaded, checked and swapped back in."""
    world.updates["confirm_after_s"] = 3600
    agent = world.start_agent()
    try:
        factory_answer = agent.runtimes["tiny"].complete(ASK).text
        world.want(agent, publish(world, models, "2"), rollout=6)
        assert agent.updates is not None
        agent.updates.reconcile()
        assert agent.runtimes["tiny"].complete(ASK).text != factory_answer

        world.want(agent, None)  # still on trial: a rollback does not wait for it
        agent.updates.reconcile()
        assert agent.runtimes["tiny"].complete(ASK).text == factory_answer
        assert slots_json(world)["active"] == "factory"
        reported = agent.shadow.report().state["model"]
        assert (reported["status"], reported["slot"], reported["target"]) == (
            "active",
            "factory",
            None,
        )
        event = world.events(agent)[-1]
        assert (event["outcome"], event["slot"], event["target"]) == ("installed", "factory", None)
    finally:
        agent.stop()


class ControllerShadow:
    """The controller's stored desired document for the agent ``dev-updates`` (real shadow
    rows in SQLite): each patch is merged as the controller merges it, then sent."""

    def __init__(self, folder: Path) -> None:
        self.engine = make_engine(f"sqlite:///{folder / 'controller.db'}")
        init_db(self.engine)

    def send(self, agent: Agent, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge ``patch`` into desired, hand the stored document to the agent, return it."""
        with session_scope(self.engine) as session:
            message = desired_message(
                set_desired(
                    session,
                    "dev-updates",
                    patch,
                    now=datetime.now(UTC),
                    actor="system:rollouts",
                )
            )
        agent.on_desired(message)
        return dict(message.state)


def assign(name: str, target: str, version: str, rollout: int) -> dict[str, Any]:
    """The desired ``model`` patch the rollout service assigns a member device."""
    return {
        "name": name,
        "target": target,
        "version": version,
        "rollout": rollout,
        "factory": None,
    }


def test_factory_marker_merged_by_the_controller_reverts_to_the_configured_model(
    world: UpdateWorld, models: dict[str, Path], tmp_path: Path
) -> None:
    """A rollout rolling back a device whose previous model was the configured one stores
    the factory marker (a null would delete the key): merged over the rollout's model and
    sent, it makes the agent swap its configured model back in and report it."""
    world.updates["confirm_after_s"] = 3600
    controller = ControllerShadow(tmp_path / "controller")
    agent = world.start_agent()
    try:
        assert agent.updates is not None
        factory_answer = agent.runtimes["tiny"].complete(ASK).text
        v2 = publish(world, models, "2")
        controller.send(agent, {"model": assign("tiny", v2, "2", 6)})
        agent.updates.reconcile()
        assert agent.runtimes["tiny"].complete(ASK).text != factory_answer
        installed = parse_model_report(agent.shadow.report().state["model"])
        assert installed is not None and installed.target == v2

        sent = controller.send(agent, {"model": revert_model("tiny", factory_model("tiny"))})
        assert sent["model"] == {"name": "tiny", "factory": True}
        assert "model" not in agent.shadow.report().rejected
        agent.updates.reconcile()  # still on trial: a rollback does not wait for it
        assert agent.runtimes["tiny"].complete(ASK).text == factory_answer
        assert slots_json(world)["active"] == "factory"
        reported = agent.shadow.report().state["model"]
        assert (reported["name"], reported["status"], reported["slot"], reported["target"]) == (
            "tiny",
            "active",
            "factory",
            None,
        )
        assert reported["sha256"] == agent.model_hashes["tiny"]
        report = parse_model_report(reported)
        assert report is not None and report.target is None and report.desired_target is None
        event = world.events(agent)[-1]
        assert (event["outcome"], event["slot"], event["target"]) == ("installed", "factory", None)
        agent.updates.reconcile()  # nothing more to do: no second swap, no second event
        assert len([e for e in world.events(agent) if e["slot"] == "factory"]) == 1

        v3 = publish(world, models, "3")
        sent = controller.send(agent, {"model": assign("tiny", v3, "3", 7)})
        assert "factory" not in sent["model"]
        agent.updates.reconcile()
        assert agent.shadow.report().state["model"]["target"] == v3
    finally:
        agent.stop()


class TwoModelWorld(UpdateWorld):
    """An update world whose agent manages two chat models, ``tiny`` and ``tiny-b``."""

    def config(self) -> AgentConfig:
        body = super().config().model_dump(mode="json")
        body["models"].append({**body["models"][0], "name": "tiny-b"})
        return AgentConfig.model_validate(body)


def test_factory_marker_reverts_only_the_named_model(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """With two managed models updated, the factory marker of one puts only that one back
    on its configured path; the other keeps serving its installed target."""
    world = TwoModelWorld(tmp_path / "world", factory=models["factory"])
    controller = ControllerShadow(tmp_path / "controller")
    agent = world.start_agent()
    try:
        assert agent.updates is not None
        factory_answer = agent.runtimes["tiny-b"].complete(ASK).text
        v2, v3 = publish(world, models, "2"), publish(world, models, "3")
        controller.send(agent, {"model": assign("tiny", v2, "2", 6)})
        agent.updates.reconcile()
        controller.send(agent, {"model": assign("tiny-b", v3, "3", 7)})
        agent.updates.reconcile()
        assert agent.runtimes["tiny-b"].complete(ASK).text != factory_answer
        tiny = agent.runtimes["tiny"]

        controller.send(agent, {"model": revert_model("tiny-b", None)})
        agent.updates.reconcile()
        assert agent.runtimes["tiny-b"].complete(ASK).text == factory_answer
        assert agent.updates.slots["tiny-b"].active == "factory"
        assert agent.runtimes["tiny"] is tiny
        assert agent.updates.model_path("tiny") != models["factory"]
        reported = agent.shadow.report().state["model"]
        assert (reported["name"], reported["status"], reported["slot"]) == (
            "tiny-b",
            "active",
            "factory",
        )
    finally:
        agent.stop()
        world.close()


def test_rollback_to_the_previous_target_does_not_wait_for_the_trial(
    world: UpdateWorld, models: dict[str, Path]
) -> None:
    """v3 is on trial; asking for v2 (what it replaced) switches back at once, from the
    kept slot, without a download."""
    world.updates["confirm_after_s"] = 3600
    agent = world.start_agent()
    try:
        assert agent.updates is not None
        v2 = publish(world, models, "2")
        world.want(agent, v2, "2")
        agent.updates.reconcile()
        agent.updates.clock = lambda: 1e12  # past confirm_after_s: v2 is confirmed
        agent.updates.reconcile()
        v3 = publish(world, models, "3")
        world.want(agent, v3, "3", rollout=8)
        agent.updates.reconcile()
        assert slots_json(world)["trial"] is True
        fetched = len(world.artifact_requests())

        world.want(agent, v2, "2")
        agent.updates.reconcile()
        assert slots_json(world)["active"] == "a"
        assert agent.shadow.report().state["model"]["target"] == v2
        assert len(world.artifact_requests()) == fetched
    finally:
        agent.stop()


def test_crash_loop_rolls_back_at_start(world: UpdateWorld, models: dict[str, Path]) -> None:
    """A switched slot never confirmed: each agent start counts a boot, and the start that
    reaches crash_loop_boots rolls back to the previous model by itself, reports
    'rolled_back' and does not reinstall the same target."""
    world.updates["confirm_after_s"] = 3600
    world.updates["crash_loop_boots"] = 3
    agent = world.start_agent()
    factory_answer = agent.runtimes["tiny"].complete(ASK).text
    target = publish(world, models, "2")
    world.want(agent, target, rollout=4)
    assert agent.updates is not None
    agent.updates.reconcile()
    agent.stop()  # "crashes" before confirm_after_s

    for boot in (1, 2):
        restarted = world.start_agent()
        assert slots_json(world)["active"] == "a" and slots_json(world)["boots"] == boot
        restarted.stop()

    final = world.start_agent()
    try:
        state = slots_json(world)
        assert state["active"] == "factory" and state["trial"] is False
        assert final.runtimes["tiny"].complete(ASK).text == factory_answer
        reported = final.shadow.report().state["model"]
        assert reported["status"] == "rolled_back" and "crash loop" in reported["error"]
        event = world.events(final)[-1]
        assert event["outcome"] == "rolled_back" and event["target"] == target
        assert event["version"] == "2" and event["slot"] == "a"
        assert final.updates is not None
        requests = len(world.artifact_requests())
        final.updates.reconcile()
        assert len(world.artifact_requests()) == requests
        assert final.shadow.report().state["model"]["status"] == "rolled_back"
    finally:
        final.stop()


def test_trial_slot_that_does_not_load_at_start_rolls_back(
    world: UpdateWorld, models: dict[str, Path]
) -> None:
    """If the trial model cannot even be loaded after a restart, the agent rolls back at
    once and serves the previous model (the local tier stays healthy)."""
    world.updates["confirm_after_s"] = 3600
    agent = world.start_agent()
    target = publish(world, models, "2")
    world.want(agent, target)
    assert agent.updates is not None
    agent.updates.reconcile()
    agent.stop()
    (world.state_dir / "models" / "tiny" / "a" / "model" / "model.onnx").write_bytes(b"broken")

    again = world.start_agent()
    try:
        assert again.local_tier_healthy
        assert slots_json(world)["active"] == "factory"
        reported = again.shadow.report().state["model"]
        assert reported["status"] == "rolled_back" and "did not load" in reported["error"]
    finally:
        again.stop()


def test_background_thread_installs_after_wake(world: UpdateWorld, models: dict[str, Path]) -> None:
    """With the manager's thread running, a desired change is picked up without help."""
    agent = world.start_agent()
    try:
        agent.start_link()  # no mqtt section: only the update thread starts
        target = publish(world, models, "2")
        world.want(agent, target)
        wait_for(
            lambda: (
                agent.shadow.report().state["model"]["status"] == "active"
                and agent.shadow.report().state["model"]["target"] == target
            ),
            timeout=60,
            what="the install",
        )
    finally:
        agent.stop()


def test_desired_model_through_the_controller_and_mqtt(
    world: UpdateWorld, models: dict[str, Path], mosquitto: Broker
) -> None:
    """A desired 'model' set by the rollouts service travels controller -> MQTT -> agent;
    the install is reported back over MQTT and lands in the controller's shadow as active."""
    broker = {"mode": "external", "url": mosquitto.url, "protocol": "5"}
    world.mqtt = {"url": mosquitto.url, "keepalive_s": 2, "reconnect_min_s": 0.2}
    target = publish(world, models, "2")
    with live_controller(world.folder / "controller", broker, desired_republish_s=1.0) as live:
        agent = world.start_agent()
        try:
            agent.start_link()
            wait_for(lambda: live.device("dev-updates"), 15, what="the device to register")
            desired = {"name": "tiny", "target": target, "version": "2", "rollout": None}
            # 'model' is the rollouts service's key (an operator's PATCH of it is 403):
            # set as that service does; the republish job sends it.
            with session_scope(live.services.engine) as session:
                set_desired(
                    session,
                    "dev-updates",
                    {"model": desired},
                    now=datetime.now(UTC),
                    actor="system:rollouts",
                )

            def reported_model() -> dict[str, Any]:
                shadow = live.client.get("/api/devices/dev-updates/shadow", headers=live.auth)
                model: dict[str, Any] = (shadow.json().get("reported") or {}).get("model") or {}
                return model

            wait_for(
                lambda: (
                    reported_model().get("status") == "active"
                    and reported_model().get("target") == target
                ),
                60,
                what="the controller to see the model installed",
            )
            assert reported_model()["slot"] == "a"
        finally:
            agent.stop()


def test_updates_disabled_reports_refusal(tmp_path: Path, models: dict[str, Path]) -> None:
    """An agent with updates off tells the controller it will not install a desired model."""
    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig
    from shared.messages import Desired

    config = AgentConfig.model_validate(
        {
            "device_id": "dev-off",
            "state_dir": str(tmp_path),
            "mqtt": None,
            "models": [{"name": "tiny", "runtime": "ort-genai", "path": str(models["factory"])}],
        }
    )
    agent = Agent(config, root=tmp_path)
    try:
        desired = {"name": "tiny", "target": "tiny/2/model.tar", "version": "2", "rollout": 1}
        report = agent.on_desired(Desired(device_id="dev-off", version=1, state={"model": desired}))
        assert report.state["model"]["status"] == "refused"
        assert "disabled" in report.state["model"]["error"]
    finally:
        agent.stop()


# --- llama.cpp with the real SmolLM2 GGUF ----------------------------------------------


@pytest.fixture(scope="module")
def smol_world(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[UpdateWorld]:
    """A llama.cpp agent whose factory model is SmolLM2; the repo re-serves the same GGUF."""
    folder = tmp_path_factory.mktemp("smol")
    world = UpdateWorld(folder, factory=model_path, runtime="llama.cpp", model_name="smol")
    data = model_path.read_bytes()
    world.repo.add_target(
        "smol/2/model.gguf", data, model_custom(model="smol", runtime="llama.cpp")
    )
    world.repo.add_target(
        "smol/3/model.gguf",
        data,
        model_custom(model="smol", version="3", runtime="llama.cpp", expected_latency_ms=1),
    )
    world.repo.publish()
    yield world
    world.close()


def test_llama_cpp_gguf_installs_and_serves(smol_world: UpdateWorld, model_path: Path) -> None:
    """The SmolLM2 GGUF goes through the same verified path into a slot and serves; the
    model hash the agent reports (for attestation) equals the TUF target hash."""
    agent = smol_world.start_agent()
    try:
        smol_world.want(agent, "smol/2/model.gguf", "2")
        assert agent.updates is not None
        agent.updates.reconcile()
        reported = agent.shadow.report().state["model"]
        assert reported["status"] == "active", reported["error"]
        installed = smol_world.state_dir / "models" / "smol" / "a" / "model.gguf"
        assert sha256_hex(installed.read_bytes()) == sha256_hex(model_path.read_bytes())
        assert agent.model_hashes["smol"] == reported["sha256"]
        assert agent.runtimes["smol"].complete(ASK).completion_tokens > 0
    finally:
        agent.stop()


def test_smoke_inference_over_the_latency_budget_fails(smol_world: UpdateWorld) -> None:
    """A target whose expected latency (1 ms) no real inference meets fails its health
    check; the running model stays."""
    agent = smol_world.start_agent()
    try:
        serving = agent.runtimes["smol"]
        smol_world.want(agent, "smol/3/model.gguf", "3")
        assert agent.updates is not None
        agent.updates.reconcile()
        reported = agent.shadow.report().state["model"]
        assert reported["status"] == "failed" and "over the 1 ms budget" in reported["error"]
        assert agent.runtimes["smol"] is serving
    finally:
        agent.stop()


# --- the pure rules the manager applies -------------------------------------------------

DEVICE = DeviceFacts(device_class="cpu-x86", agent_version="0.4.2", runtimes=("llama.cpp",))


@pytest.mark.parametrize(
    ("custom", "problem"),
    [
        pytest.param({}, None, id="compatible"),
        pytest.param({"device_classes": ["cpu-x86", "jetson"]}, None, id="class-listed"),
        pytest.param({"min_agent_version": "0.4.2"}, None, id="same-agent-version"),
        pytest.param({"min_agent_version": "0.10"}, "needs agent 0.10", id="numeric-not-text"),
        pytest.param({"runtime": "onnx"}, "not available", id="runtime-missing"),
        pytest.param({"device_classes": ["jetson"]}, "not in jetson", id="class-missing"),
    ],
)
def test_compatibility_rules(custom: dict[str, object], problem: str | None) -> None:
    """Runtime, device class and minimum agent version (numerically compared) decide."""
    block = model_custom(runtime="llama.cpp", min_agent_version="0.1")["edgefleet"]
    block.update(custom)
    meta = parse_target_meta({"edgefleet": block})
    desired = DesiredModel("m", "m/2/m.gguf", "2")
    if problem is None:
        check_compatibility(meta, desired=desired, configured_runtime=meta.runtime, device=DEVICE)
    else:
        with pytest.raises(IncompatibleTarget, match=problem):
            check_compatibility(
                meta, desired=desired, configured_runtime=meta.runtime, device=DEVICE
            )


def test_version_key_orders_releases_numerically() -> None:
    """1.10 is newer than 1.9, 1.2 equals 1.2.0, and pre-release tags are ignored."""
    assert version_key("1.10") > version_key("1.9")
    assert version_key("1.2") == version_key("1.2.0") == version_key("v1.2.0rc1")


@pytest.mark.parametrize(
    ("result", "budget", "problem"),
    [
        pytest.param(SmokeResult("Hello there.", 3, 40.0), 100.0, None, id="healthy"),
        pytest.param(SmokeResult("", 0, 5.0), None, "no tokens", id="no-tokens"),
        pytest.param(SmokeResult(" \n ", 2, 5.0), None, "blank", id="blank"),
        pytest.param(SmokeResult("ab\ufffd", 2, 5.0), None, "undecodable", id="replacement"),
        pytest.param(SmokeResult("a\x00b", 2, 5.0), None, "control", id="control-chars"),
        pytest.param(SmokeResult("fine", 2, 250.0), 100.0, "over the 100 ms", id="too-slow"),
    ],
)
def test_health_verdicts(result: SmokeResult, budget: float | None, problem: str | None) -> None:
    """Sane output (tokens, visible text, decodable, no control bytes) inside the budget."""
    verdict = health_problem(result, budget)
    assert verdict is None if problem is None else problem in (verdict or "")
