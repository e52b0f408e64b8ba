"""Perception models (ONNX classifiers) installed by signed updates, through the same path as
chat models.

A real agent with a tiny ORT GenAI chat model ``tiny`` and a tiny ONNX image classifier
``parts`` (tests/tiny_models.py, seeded weights) updates from a real python-tuf repository
served over loopback HTTP (tests/tuf_simulator.py); the classifier runs on real ONNX Runtime.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from edge_agent.runtimes.ort_perception import OrtPerceptionRuntime
from edge_agent.updates.decisions import ScoresSmoke, scores_problem
from tests.conftest import wait_for
from tests.tiny_models import build_tiny_classifier, build_tiny_genai_model
from tests.tuf_simulator import UpdateWorld, model_custom, sha256_hex

LABELS = ["bolt", "nut", "washer", "screw"]
IMAGE = np.random.default_rng(7).standard_normal((1, 3, 8, 8)).astype(np.float32)


def _nan_classifier(path: Path) -> Path:
    """A classifier that loads and runs but scores every input NaN (a NaN output bias)."""
    build_tiny_classifier(path, seed=3)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == "fc_b":
            init.CopyFrom(numpy_helper.from_array(np.full(4, np.nan, np.float32), "fc_b"))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The chat model, the factory classifier and candidate classifiers with other weights."""
    base = tmp_path_factory.mktemp("perception-models")
    return {
        "chat": build_tiny_genai_model(base / "chat", layers=1, seed=0),
        "factory": build_tiny_classifier(base / "factory.onnx", seed=0),
        "v2": build_tiny_classifier(base / "v2.onnx", seed=5),
        "nan": _nan_classifier(base / "nan.onnx"),
    }


class PerceptionWorld(UpdateWorld):
    """An update world whose agent serves the chat model ``tiny`` and the classifier
    ``parts``; ``want`` asks for ``model_name`` (``parts`` unless a test changes it)."""

    def __init__(self, folder: Path, files: dict[str, Path]) -> None:
        super().__init__(folder, factory=files["chat"], model_name="parts")
        self.classifier = files["factory"]

    def config(self) -> AgentConfig:
        return AgentConfig.model_validate(
            {
                "device_id": "dev-updates",
                "device_class": "cpu-x86",
                "state_dir": str(self.state_dir),
                "mqtt": None,
                "models": [{"name": "tiny", "runtime": "ort-genai", "path": str(self.factory)}],
                "perception": [
                    {"name": "parts", "path": str(self.classifier), "labels": LABELS, "threads": 1}
                ],
                "updates": {
                    "enabled": True,
                    "metadata_url": self.server.metadata_url,
                    "targets_url": self.server.targets_url,
                    "trusted_root": str(self.trusted_root),
                    **self.updates,
                },
            }
        )


@pytest.fixture
def world(tmp_path: Path, files: dict[str, Path]) -> Iterator[PerceptionWorld]:
    world = PerceptionWorld(tmp_path, files)
    yield world
    world.close()


def publish(world: UpdateWorld, data: bytes, version: str = "2", **custom: Any) -> str:
    """Sign and serve ``data`` as version ``version`` of the classifier ``parts``."""
    target = f"parts/{version}/model.onnx"
    world.repo.add_target(
        target, data, model_custom(model="parts", version=version, runtime="onnx", **custom)
    )
    world.repo.publish()
    return target


def slots_json(world: UpdateWorld) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (world.state_dir / "models" / "parts" / "slots.json").read_text()
    )
    return body


def classify(agent: Agent) -> list[float]:
    """The probabilities the agent's HTTP API answers for IMAGE with the classifier 'parts'."""
    answer = TestClient(create_agent_app(agent)).post(
        "/v1/perception/parts", json={"inputs": IMAGE.tolist()}
    )
    assert answer.status_code == 200, answer.text
    probabilities: list[float] = answer.json()["probabilities"]
    return probabilities


def reference(path: Path) -> list[float]:
    """IMAGE's probabilities from the classifier file at ``path``, loaded on its own."""
    runtime = OrtPerceptionRuntime("reference", path, labels=LABELS, threads=1)
    try:
        return list(runtime.classify(IMAGE).probabilities)
    finally:
        runtime.close()


def test_classifier_installs_hot_swaps_and_reports(
    world: PerceptionWorld, files: dict[str, Path]
) -> None:
    """A signed .onnx target for a perception model goes into slot a, passes its smoke
    inference, is switched to and answers /v1/perception with the new weights at once;
    model_hashes becomes the target's sha256, the old session is closed after the grace,
    and the chat model is left alone."""
    agent = world.start_agent()
    try:
        old = agent.perception["parts"]
        chat = agent.runtimes["tiny"]
        before = classify(agent)
        assert before == pytest.approx(reference(files["factory"]))
        target = publish(world, files["v2"].read_bytes())
        world.want(agent, target, "2", rollout=7)
        assert agent.updates is not None
        agent.updates.reconcile()

        assert agent.perception["parts"] is not old
        after = classify(agent)
        assert after == pytest.approx(reference(files["v2"]))
        assert after != pytest.approx(before)
        signed = world.repo.targets.signed.targets[target].hashes["sha256"]
        assert agent.model_hashes["parts"] == signed == sha256_hex(files["v2"].read_bytes())
        installed = world.state_dir / "models" / "parts" / "a" / "model.onnx"
        assert installed.read_bytes() == files["v2"].read_bytes()
        state = slots_json(world)
        assert state["active"] == "a" and state["previous"] == "factory" and state["trial"]
        assert state["slots"]["a"]["runtime"] == "onnx"
        reported = agent.shadow.report().state["model"]
        assert (reported["name"], reported["status"], reported["slot"]) == ("parts", "active", "a")
        assert reported["target"] == target and reported["sha256"] == signed
        assert reported["rollout"] == 7 and reported["error"] is None
        assert world.events(agent)[-1] == {
            "target": target,
            "version": "2",
            "rollout": 7,
            "outcome": "installed",
            "reason": None,
            "slot": "a",
        }
        assert agent.runtimes["tiny"] is chat
        assert agent.updates.slots["tiny"].active == "factory"
        wait_for(lambda: old._session is None, timeout=30, what="the replaced classifier to close")
        agent.updates.reconcile()  # confirm_after_s is 0: the trial ends on the next step
        assert slots_json(world)["trial"] is False
    finally:
        agent.stop()


def test_restart_serves_the_installed_classifier(
    world: PerceptionWorld, files: dict[str, Path]
) -> None:
    """After an install, the next agent start loads the classifier from its active slot
    (not the configured path) and does not download it again."""
    agent = world.start_agent()
    target = publish(world, files["v2"].read_bytes())
    world.want(agent, target)
    assert agent.updates is not None
    agent.updates.reconcile()
    agent.updates.reconcile()
    agent.stop()
    requests = len(world.artifact_requests())

    again = world.start_agent()
    try:
        assert classify(again) == pytest.approx(reference(files["v2"]))
        assert again.model_hashes["parts"] == sha256_hex(files["v2"].read_bytes())
        assert again.updates is not None
        again.updates.reconcile()
        assert len(world.artifact_requests()) == requests
        assert again.shadow.report().state["model"]["status"] == "active"
    finally:
        again.stop()


def test_trial_classifier_that_does_not_load_at_start_rolls_back(
    world: PerceptionWorld, files: dict[str, Path]
) -> None:
    """A classifier on trial that no longer loads after a restart is rolled back at once:
    the configured classifier serves and the shadow says 'rolled_back'."""
    world.updates["confirm_after_s"] = 3600
    agent = world.start_agent()
    target = publish(world, files["v2"].read_bytes())
    world.want(agent, target, rollout=2)
    assert agent.updates is not None
    agent.updates.reconcile()
    agent.stop()
    (world.state_dir / "models" / "parts" / "a" / "model.onnx").write_bytes(b"broken")

    again = world.start_agent()
    try:
        assert "parts" not in again.load_errors
        assert classify(again) == pytest.approx(reference(files["factory"]))
        assert again.model_hashes["parts"] == sha256_hex(files["factory"].read_bytes())
        state = slots_json(world)
        assert state["active"] == "factory" and state["trial"] is False
        reported = again.shadow.report().state["model"]
        assert reported["status"] == "rolled_back" and "did not load" in reported["error"]
        event = world.events(again)[-1]
        assert event["outcome"] == "rolled_back" and event["target"] == target
    finally:
        again.stop()


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        pytest.param("garbage", "candidate did not load", id="garbage-bytes"),
        pytest.param("nan", "non-finite scores", id="nan-scores"),
    ],
)
def test_broken_classifier_fails_and_the_old_one_keeps_serving(
    world: PerceptionWorld, files: dict[str, Path], artifact: str, reason: str
) -> None:
    """A correctly signed .onnx that does not load (garbage bytes) or scores the neutral
    input with NaN fails its health check: never switched to, the old classifier keeps
    answering the same, 'failed' is reported and the target is not fetched again."""
    agent = world.start_agent()
    try:
        serving = agent.perception["parts"]
        before = classify(agent)
        data = b"\x08\x07garbage, not a protobuf" * 64 if artifact == "garbage" else None
        target = publish(world, data or files[artifact].read_bytes())
        world.want(agent, target, rollout=3)
        assert agent.updates is not None
        agent.updates.reconcile()

        assert agent.perception["parts"] is serving
        assert classify(agent) == pytest.approx(before)
        assert agent.model_hashes["parts"] == sha256_hex(files["factory"].read_bytes())
        state = slots_json(world)
        assert state["active"] == "factory" and state["trial"] is False
        assert list((world.state_dir / "models" / "parts" / "a").iterdir()) == []
        reported = agent.shadow.report().state["model"]
        assert reported["status"] == "failed" and reason in reported["error"]
        assert reported["slot"] == "factory"
        event = world.events(agent)[-1]
        assert event["outcome"] == "failed" and reason in event["reason"]
        requests = len(world.artifact_requests())
        agent.updates.reconcile()
        assert len(world.artifact_requests()) == requests
    finally:
        agent.stop()


@pytest.mark.parametrize(
    ("name", "runtime", "reason"),
    [
        pytest.param("tiny", "onnx", "tiny is a chat model", id="onnx-for-chat-model"),
        pytest.param("parts", "llama.cpp", "parts is a perception model", id="gguf-for-classifier"),
    ],
)
def test_kind_mismatch_is_refused_before_download(
    world: PerceptionWorld, files: dict[str, Path], name: str, runtime: str, reason: str
) -> None:
    """A target whose signed runtime is of the other kind than the named model (onnx for a
    chat model, llama.cpp for a classifier) is refused with that reason before a byte of it
    is fetched, and both models keep serving."""
    agent = world.start_agent()
    try:
        chat, classifier = agent.runtimes["tiny"], agent.perception["parts"]
        target = f"{name}/2/model.bin"
        world.repo.add_target(
            target, files["v2"].read_bytes(), model_custom(model=name, runtime=runtime)
        )
        world.repo.publish()
        world.model_name = name
        world.want(agent, target, "2")
        assert agent.updates is not None
        agent.updates.reconcile()

        reported = agent.shadow.report().state["model"]
        assert reported["name"] == name and reported["status"] == "refused"
        assert reason in reported["error"] and "differs from the configured" in reported["error"]
        assert world.artifact_requests() == []
        event = world.events(agent)[-1]
        assert event["outcome"] == "refused" and reason in event["reason"]
        assert agent.runtimes["tiny"] is chat and agent.perception["parts"] is classifier
    finally:
        agent.stop()


def test_desired_null_reverts_the_classifier_to_the_configured_one(
    world: PerceptionWorld, files: dict[str, Path]
) -> None:
    """Desired model null after a classifier install loads, checks and swaps the configured
    classifier back in: slot 'factory', the factory hash and the factory's answers."""
    world.updates["confirm_after_s"] = 3600
    agent = world.start_agent()
    try:
        world.want(agent, publish(world, files["v2"].read_bytes()), rollout=6)
        assert agent.updates is not None
        agent.updates.reconcile()
        assert classify(agent) == pytest.approx(reference(files["v2"]))

        world.want(agent, None)
        agent.updates.reconcile()
        assert classify(agent) == pytest.approx(reference(files["factory"]))
        assert agent.model_hashes["parts"] == sha256_hex(files["factory"].read_bytes())
        assert slots_json(world)["active"] == "factory"
        reported = agent.shadow.report().state["model"]
        assert (reported["name"], reported["status"], reported["slot"]) == (
            "parts",
            "active",
            "factory",
        )
    finally:
        agent.stop()


@pytest.mark.parametrize(
    ("result", "budget", "problem"),
    [
        pytest.param(ScoresSmoke(((0.1, -2.0, 3.0),), 3, 2.0), 100.0, None, id="healthy"),
        pytest.param(ScoresSmoke(((1.0, 2.0),), None, 2.0), None, None, id="classes-unknown"),
        pytest.param(ScoresSmoke((), 3, 2.0), None, "no scores", id="no-rows"),
        pytest.param(ScoresSmoke(((),), 3, 2.0), None, "no scores", id="empty-row"),
        pytest.param(
            ScoresSmoke(((1.0, 2.0),), 3, 2.0), None, "2 scores per input, 3", id="wrong-length"
        ),
        pytest.param(
            ScoresSmoke(((1.0, float("nan"), 0.0),), 3, 2.0), None, "1 non-finite", id="nan"
        ),
        pytest.param(
            ScoresSmoke(((float("inf"), 0.0, 0.0),), 3, 2.0), None, "non-finite", id="infinity"
        ),
        pytest.param(
            ScoresSmoke(((1.0, 2.0, 3.0),), 3, 250.0), 100.0, "over the 100 ms", id="slow"
        ),
    ],
)
def test_classifier_health_verdicts(
    result: ScoresSmoke, budget: float | None, problem: str | None
) -> None:
    """A classifier's smoke output is sane when it has finite scores, one per expected class,
    and came inside the latency budget."""
    verdict = scores_problem(result, budget)
    assert verdict is None if problem is None else problem in (verdict or "")
