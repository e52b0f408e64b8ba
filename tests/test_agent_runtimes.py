"""The agent with ONNX runtimes from its config: an ORT GenAI chat model and an int8 ONNX
classifier, loaded, reported in the birth message and served over the HTTP API."""

import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from edge_agent.runtimes.ort_perception import OrtPerceptionRuntime, quantize_int8
from tests.tiny_models import build_tiny_classifier, build_tiny_genai_model


def test_onnx_models_load_from_config_and_serve(tmp_path: Path) -> None:
    """An ort-genai model answers chat completions (local route, logprob confidence) and an
    int8 classifier answers /v1/perception; a missing classifier is a reported load error,
    bad inputs are 400 and unknown models 404."""
    genai = build_tiny_genai_model(tmp_path / "tiny-genai")
    classifier = quantize_int8(
        build_tiny_classifier(tmp_path / "cls.onnx"), tmp_path / "cls-int8.onnx"
    )
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-onnx",
            "state_dir": str(tmp_path / "state"),
            "mqtt": None,
            "models": [{"name": "tiny", "runtime": "ort-genai", "path": str(genai)}],
            "perception": [
                {"name": "parts", "path": str(classifier), "labels": ["a", "b", "c", "d"]},
                {"name": "gone", "path": str(tmp_path / "missing.onnx")},
            ],
        }
    )
    agent = Agent(config)
    agent.load_models()
    try:
        assert set(agent.runtimes) == {"tiny"} and set(agent.perception) == {"parts"}
        infos = {m.name: m for m in agent.birth(0).models}
        assert infos["tiny"].runtime == "ort-genai" and infos["tiny"].loaded
        assert infos["parts"].runtime == "onnxruntime" and infos["parts"].sha256
        assert not infos["gone"].loaded and "does not exist" in (infos["gone"].error or "")

        client = TestClient(create_agent_app(agent))
        chat = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-edge-runtime"] == "ort-genai"
        assert chat.headers["x-edge-route"] == "local"
        assert chat.json()["usage"]["completion_tokens"] >= 1

        image = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
        direct = OrtPerceptionRuntime("ref", classifier, labels=["a", "b", "c", "d"]).classify(
            image
        )
        seen = client.post("/v1/perception/parts", json={"inputs": image.tolist()})
        assert seen.status_code == 200, seen.text
        assert (seen.json()["label"], seen.json()["label_index"]) == (
            direct.label,
            direct.label_index,
        )
        assert abs(sum(seen.json()["probabilities"]) - 1.0) < 1e-4
        wrong = client.post("/v1/perception/parts", json={"inputs": [[1.0, 2.0]]})
        assert wrong.status_code == 400 and "shape" in wrong.text
        assert client.post("/v1/perception/gone", json={"inputs": []}).status_code == 503
        assert client.post("/v1/perception/nope", json={"inputs": []}).status_code == 404

        rows = agent.outbox.read_batch(None, max_records=100, max_bytes=10**7)
        perception = [r.body for r in rows if r.name == "perception"]
        assert perception[0] == {
            "model": "parts",
            "status": "ok",
            "label_index": direct.label_index,
            "confidence": round(direct.confidence, 4),
            "latency_ms": perception[0]["latency_ms"],
        }
        # The 400 and the 503 are recorded too (the 404 names no configured model).
        assert [(p["model"], p["status"]) for p in perception[1:]] == [
            ("parts", "invalid_inputs"),
            ("gone", "unavailable"),
        ]
    finally:
        agent.stop()


def test_perception_requests_are_recorded_with_status_and_latency_only(tmp_path: Path) -> None:
    """Each perception request leaves one metric record with the model, status and latency
    (and the class answered), never any of its input values."""
    classifier = build_tiny_classifier(tmp_path / "cls.onnx")
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-perception",
            "state_dir": str(tmp_path / "state"),
            "mqtt": None,
            "perception": [{"name": "parts", "path": str(classifier), "labels": list("abcd")}],
        }
    )
    agent = Agent(config)
    agent.load_models()
    try:
        client = TestClient(create_agent_app(agent))
        # Values no record would hold by chance: each one is looked for in the records.
        image = np.full((1, 3, 8, 8), 0.123456789, dtype=np.float32)
        image[0, 0, 0, :4] = [7.654321, -3.141593, 42.4242, 0.987654]
        assert client.post("/v1/perception/parts", json={"inputs": image.tolist()}).is_success
        bad = client.post("/v1/perception/parts", json={"inputs": [[5.55555, 6.66666]]})
        assert bad.status_code == 400

        rows = agent.outbox.read_batch(None, max_records=100, max_bytes=10**7)
        records = [r for r in rows if r.name == "perception"]
        assert [(r.kind, r.body["status"]) for r in records] == [
            ("metric", "ok"),
            ("metric", "invalid_inputs"),
        ]
        ok, failed = (r.body for r in records)
        assert set(ok) == {"model", "status", "latency_ms", "label_index", "confidence"}
        assert set(failed) == {"model", "status", "latency_ms"}
        for body in (ok, failed):
            assert body["model"] == "parts"
            assert isinstance(body["latency_ms"], float) and body["latency_ms"] >= 0
        text = json.dumps([r.body for r in records])
        for value in ("0.1234", "7.6543", "3.1415", "42.424", "0.9876", "5.5555", "6.6666"):
            assert value not in text
    finally:
        agent.stop()
