"""Windowed agent telemetry: the aggregator steered by an injected clock, and a real agent
whose HTTP API (uvicorn on loopback, real llama.cpp, a real classifier and a loopback
private tier) turns requests into ``inference.window`` and ``drift.window`` outbox records."""

import json
import math
import threading
from collections import namedtuple
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from controller.drills.openai_server import FakeProvider, start_provider
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig, TelemetryConfig
from edge_agent.sync.outbox import Outbox
from edge_agent.telemetry.host import hottest_c, max_temperature_c
from edge_agent.telemetry.windows import (
    MAX_GROUPS,
    OTHER,
    ChatObservation,
    PerceptionObservation,
    WindowAggregator,
)
from shared import sketches
from shared.telemetry_windows import DriftWindow, InferenceWindow
from tests.conftest import free_port, wait_for
from tests.tiny_models import build_tiny_classifier

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
PROMPT = "Plan the maintenance steps for replacing a conveyor belt."


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def chat(**fields: Any) -> ChatObservation:
    base: dict[str, Any] = {
        "tier": "local",
        "task_class": None,
        "model": "smollm2",
        "status": "ok",
        "latency_ms": 120.0,
    }
    return ChatObservation(**{**base, **fields})


def bodies(records: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return [body for n, body in records if n == name]


def groups_by_key(body: dict[str, Any]) -> dict[tuple[Any, Any, Any], dict[str, Any]]:
    return {(g["tier"], g["task_class"], g["model"]): g for g in body["groups"]}


# --- the aggregator ---------------------------------------------------------------------------
def test_windows_end_at_epoch_aligned_boundaries_and_flush_once() -> None:
    """Requests fall in epoch-aligned windows by the injected clock; flush returns only ended
    windows, each once, and ``final`` also returns the window in progress."""
    clock = FakeClock(T0 + timedelta(seconds=1))
    agg = WindowAggregator(60, clock=clock)
    agg.observe_chat(chat())
    clock.advance(58)  # 12:00:59, same window
    agg.observe_chat(chat())
    assert agg.flush() == [], "the window has not ended yet"
    clock.advance(2)  # 12:01:01
    agg.observe_chat(chat(latency_ms=900.0))
    first = agg.flush()
    assert [name for name, _ in first] == ["inference.window"]
    assert first[0][1]["start"] == "2025-03-01T12:00:00Z"
    assert first[0][1]["window_s"] == 60
    assert first[0][1]["groups"][0]["count"] == 2
    assert agg.flush() == [], "an ended window is flushed once"
    clock.advance(120)  # no request for two windows: nothing empty is sent
    second = agg.flush()
    assert [b["start"] for _, b in second] == ["2025-03-01T12:01:00Z"]
    assert agg.flush(final=True) == []
    agg.observe_chat(chat())
    final = agg.flush(final=True)
    assert [b["start"] for _, b in final] == ["2025-03-01T12:03:00Z"]


def test_groups_count_errors_escalations_cascades_fallbacks_tokens_and_latency() -> None:
    """Each (tier, task class, model) group sums its requests' outcomes; a non-ok status
    is an error; the latency sketch holds every request."""
    clock = FakeClock(T0)
    agg = WindowAggregator(60, clock=clock)
    agg.observe_chat(chat(task_class="summarize", prompt_tokens=40, completion_tokens=8))
    agg.observe_chat(
        chat(
            tier="private",
            model="org-llm",
            escalated=True,
            cascaded=True,
            prompt_tokens=11,
            completion_tokens=3,
            latency_ms=450.0,
            local_model="smollm2",
            local_confidence=0.3,
        )
    )
    agg.observe_chat(chat(tier="private", model="org-llm", fallback=True, latency_ms=800.0))
    agg.observe_chat(chat(tier="none", model=None, status="unavailable", latency_ms=2.0))
    agg.observe_chat(chat(status="cancelled", completion_tokens=5))
    clock.advance(60)
    records = agg.flush()
    (inference,) = bodies(records, "inference.window")
    InferenceWindow.model_validate(inference)
    groups = groups_by_key(inference)
    assert set(groups) == {
        ("local", "summarize", "smollm2"),
        ("local", None, "smollm2"),
        ("private", None, "org-llm"),
        ("none", None, None),
    }
    private = groups[("private", None, "org-llm")]
    assert {k: private[k] for k in private if k != "latency_ms"} == {
        "tier": "private",
        "task_class": None,
        "model": "org-llm",
        "count": 2,
        "errors": 0,
        "escalations": 1,
        "cascades": 1,
        "fallbacks": 1,
        "prompt_tokens": 11,
        "completion_tokens": 3,
    }
    assert sketches.quantile("latency_ms", private["latency_ms"], 1.0) == 1000.0
    assert groups[("local", None, "smollm2")]["errors"] == 1
    assert groups[("none", None, None)] == {
        **groups[("none", None, None)],
        "count": 1,
        "errors": 1,
    }
    assert sum(sum(g["latency_ms"]) for g in groups.values()) == 5


def test_drift_sketches_per_served_model_with_versions() -> None:
    """Chat models sketch prompt length (the model that answered) and local confidence (the
    local model, even when a higher tier answered); perception models sketch confidence and
    output classes; each carries its version as the agent knows it."""
    clock = FakeClock(T0)
    versions = {"smollm2": "1.2.0", "tiny": "7"}
    agg = WindowAggregator(60, clock=clock, version_of=versions.get)
    agg.observe_chat(chat(prompt_tokens=40, local_model="smollm2", local_confidence=0.82))
    agg.observe_chat(
        chat(
            tier="private",
            model="org-llm",
            escalated=True,
            cascaded=True,
            prompt_tokens=300,
            local_model="smollm2",
            local_confidence=0.31,
        )
    )
    agg.observe_chat(chat(tier="none", model=None, status="unavailable"))
    for index, confidence in [(2, 0.9), (2, 0.97), (0, 0.55)]:
        agg.observe_perception(
            PerceptionObservation(
                model="tiny", status="ok", latency_ms=3.0, confidence=confidence, label_index=index
            )
        )
    agg.observe_perception(
        PerceptionObservation(model="tiny", status="invalid_inputs", latency_ms=1)
    )
    clock.advance(60)
    records = agg.flush()
    drift = {b["model"]: b for b in bodies(records, "drift.window")}
    for body in drift.values():
        DriftWindow.model_validate(body)
    assert set(drift) == {"smollm2", "org-llm", "tiny"}
    local = drift["smollm2"]
    assert (local["version"], local["kind"]) == ("1.2.0", "chat")
    assert sum(local["features"]["prompt_tokens"]) == 1
    confidence = local["features"]["local_confidence"]
    assert sum(confidence) == 2
    assert confidence[sketches.bin_index("local_confidence", 0.31)] == 1
    assert drift["org-llm"]["version"] is None
    assert drift["org-llm"]["features"] == {
        "prompt_tokens": [
            int(i == sketches.bin_index("prompt_tokens", 300))
            for i in range(sketches.bins("prompt_tokens"))
        ]
    }
    tiny = drift["tiny"]
    assert (tiny["version"], tiny["kind"]) == ("7", "perception")
    assert tiny["classes"] == {"2": 2, "0": 1}
    assert sum(tiny["features"]["perception_confidence"]) == 3
    (inference,) = bodies(records, "inference.window")
    perception = groups_by_key(inference)[("local", "perception", "tiny")]
    assert (perception["count"], perception["errors"]) == (4, 1)


def test_a_version_change_mid_window_gives_one_drift_record_per_version() -> None:
    """A hot swap inside a window keeps the two versions' sketches apart."""
    clock = FakeClock(T0)
    current = {"tiny": "1"}
    agg = WindowAggregator(60, clock=clock, version_of=current.get)
    agg.observe_perception(PerceptionObservation("tiny", "ok", 2.0, 0.9, 1))
    current["tiny"] = "2"
    agg.observe_perception(PerceptionObservation("tiny", "ok", 2.0, 0.4, 3))
    records = agg.flush(final=True)
    drift = bodies(records, "drift.window")
    assert [(b["version"], b["classes"]) for b in drift] == [("1", {"1": 1}), ("2", {"3": 1})]


def test_bad_values_are_counted_and_odd_names_made_protocol_labels() -> None:
    """NaN or negative latencies and NaN confidences never crash or drop the request: the
    request is counted, the value is counted as invalid; names outside the label alphabet are
    rewritten so the body still validates."""
    clock = FakeClock(T0)
    agg = WindowAggregator(60, clock=clock)
    agg.observe_chat(chat(latency_ms=math.nan, model="my model+v2"))
    agg.observe_chat(chat(latency_ms=-5.0, local_model="smollm2", local_confidence=math.nan))
    agg.observe_perception(PerceptionObservation("tiny", "ok", 1.0, math.inf, 0))
    assert agg.invalid == 4
    records = agg.flush(final=True)
    (inference,) = bodies(records, "inference.window")
    InferenceWindow.model_validate(inference)
    groups = groups_by_key(inference)
    assert groups[("local", None, "my_model_v2")]["count"] == 1
    assert groups[("local", None, "smollm2")]["latency_ms"][0] == 1
    for body in bodies(records, "drift.window"):
        DriftWindow.model_validate(body)
    assert agg.unsent == 0


def test_too_many_task_classes_fold_into_other_without_losing_requests() -> None:
    """Past MAX_GROUPS distinct groups in a window new task classes count as ``other``: the
    record stays within the protocol's 256 groups and every request is still counted."""
    clock = FakeClock(T0)
    agg = WindowAggregator(60, clock=clock)
    n = MAX_GROUPS + 50
    for i in range(n):
        agg.observe_chat(chat(task_class=f"task-{i}"))
    records = agg.flush(final=True)
    (inference,) = bodies(records, "inference.window")
    InferenceWindow.model_validate(inference)
    assert len(inference["groups"]) == MAX_GROUPS + 1
    assert sum(g["count"] for g in inference["groups"]) == n
    assert groups_by_key(inference)[("local", OTHER, "smollm2")]["count"] == 50


def test_concurrent_observations_are_all_counted() -> None:
    """Observations from many request threads at once are each counted exactly once."""
    clock = FakeClock(T0)
    agg = WindowAggregator(60, clock=clock)

    def work() -> None:
        for _ in range(500):
            agg.observe_chat(chat(prompt_tokens=10))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (inference,) = bodies(agg.flush(final=True), "inference.window")
    assert inference["groups"][0]["count"] == 4000
    assert inference["groups"][0]["prompt_tokens"] == 40000


@pytest.mark.parametrize(
    ("name", "window_s", "ok"),
    [("default", 60, True), ("five_minutes", 300, True), ("odd", 7, False), ("tiny", 1, False)],
)
def test_window_setting_is_validated(name: str, window_s: float, ok: bool) -> None:
    """telemetry.window_s must be 5-3600 s and divide an hour (windows nest in hourly rollups)."""
    if ok:
        assert TelemetryConfig(window_s=window_s).window_s == window_s
    else:
        with pytest.raises(ValueError, match="window_s"):
            AgentConfig.model_validate({"device_id": "d1", "telemetry": {"window_s": window_s}})


# --- a real agent -------------------------------------------------------------------------------
@pytest.fixture
def private() -> Iterator[FakeProvider]:
    provider = start_provider("private")
    yield provider
    assert provider.server is not None
    provider.server.shutdown()


def serve(agent: Agent) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_agent_app(agent), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, what="the agent API to start")
    return server, thread, f"http://127.0.0.1:{port}"


def stored(state_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every record left in a (closed) agent's outbox."""
    outbox = Outbox(state_dir / "outbox.db", max_bytes=10**8)
    try:
        rows = outbox.read_batch(None, max_records=500, max_bytes=10**8)
        return [(r.name, r.body) for r in rows]
    finally:
        outbox.close()


def test_agent_turns_http_requests_into_window_records_in_its_outbox(
    tmp_path: Path, model_path: Path, private: FakeProvider
) -> None:
    """Chat (cascaded to the private tier, and forced local), a refused request and
    perception requests over real HTTP become one inference.window and one drift.window per
    model when the window ends; the window in progress is flushed at shutdown; no content."""
    classifier = build_tiny_classifier(tmp_path / "tiny.onnx", seed=2)
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-windows",
            "state_dir": str(tmp_path / "state"),
            "mqtt": None,
            "models": [{"name": "smollm2", "path": str(model_path), "n_ctx": 1024}],
            "perception": [{"name": "tiny", "path": str(classifier), "threads": 1}],
            "tiers": {"private": {"base_url": private.base_url, "model": "org-llm"}},
            # Threshold 1: every cascaded local answer escalates (its confidence is kept).
            "routing": {"cascade": {"threshold": 1.0}},
            "telemetry": {"window_s": 60},
        }
    )
    clock = FakeClock(T0 + timedelta(seconds=5))
    agent = Agent(config, clock=clock)
    agent.load_models()
    server, thread, url = serve(agent)
    pixels = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).tolist()
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            msg = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
            escalated = http.post("/v1/chat/completions", json=msg)
            assert escalated.status_code == 200, escalated.text
            assert escalated.headers["x-edge-route"] == "private"
            local = http.post(
                "/v1/chat/completions",
                json=msg,
                headers={"X-Route-Local": "true", "X-Task-Class": "summarize"},
            )
            assert local.status_code == 200, local.text
            local_prompt_tokens = local.json()["usage"]["prompt_tokens"]
            refused = http.post("/v1/chat/completions", json={**msg, "model": "nope"})
            assert refused.status_code == 404
            seen = http.post("/v1/perception/tiny", json={"inputs": pixels})
            assert seen.status_code == 200, seen.text
            bad = http.post("/v1/perception/tiny", json={"inputs": [[1.0, 2.0]]})
            assert bad.status_code == 400
            assert agent.flush_windows() == 0, "the window is still open"
            clock.advance(60)
            assert agent.flush_windows() == 4  # inference + drift of smollm2, org-llm, tiny
            after = http.post("/v1/chat/completions", json=msg, headers={"X-Route-Local": "true"})
            assert after.status_code == 200
    finally:
        server.should_exit = True
        thread.join(20)
        agent.stop()

    records = [(n, b) for n, b in stored(tmp_path / "state") if n.endswith(".window")]
    windows = [b for n, b in records if n == "inference.window"]
    assert [w["start"] for w in windows] == ["2025-03-01T12:00:00Z", "2025-03-01T12:01:00Z"]
    first = InferenceWindow.model_validate(windows[0])
    assert first.window_s == 60
    groups = groups_by_key(windows[0])
    assert set(groups) == {
        ("private", None, "org-llm"),
        ("local", "summarize", "smollm2"),
        ("local", "perception", "tiny"),
    }, "the refused request never reached a tier and has no group"
    via_private = groups[("private", None, "org-llm")]
    assert (via_private["count"], via_private["escalations"], via_private["cascades"]) == (1, 1, 1)
    assert (via_private["prompt_tokens"], via_private["completion_tokens"]) == (11, 3)
    summarize = groups[("local", "summarize", "smollm2")]
    assert (summarize["count"], summarize["errors"], summarize["cascades"]) == (1, 0, 0)
    assert summarize["prompt_tokens"] == local_prompt_tokens
    perception = groups[("local", "perception", "tiny")]
    assert (perception["count"], perception["errors"]) == (2, 1)

    drift_records = [b for n, b in records if n == "drift.window"]
    for body in drift_records:
        DriftWindow.model_validate(body)
    drift = {b["model"]: b for b in drift_records if b["start"] == windows[0]["start"]}
    assert set(drift) == {"smollm2", "org-llm", "tiny"}
    assert sum(drift["smollm2"]["features"]["local_confidence"]) == 1
    assert sum(drift["smollm2"]["features"]["prompt_tokens"]) == 1
    assert sum(drift["org-llm"]["features"]["prompt_tokens"]) == 1
    assert drift["tiny"]["kind"] == "perception"
    assert drift["tiny"]["classes"] == {str(seen.json()["label_index"]): 1}
    assert sum(drift["tiny"]["features"]["perception_confidence"]) == 1
    assert groups_by_key(windows[1])[("local", None, "smollm2")]["count"] == 1

    text = json.dumps(records)
    assert "conveyor" not in text and "maintenance" not in text, "no prompt content"
    assert "remote answer" not in text, "no completion content"


def test_background_thread_flushes_each_window_after_it_ends(tmp_path: Path) -> None:
    """start_metrics() starts a thread that puts each ended window in the outbox shortly
    after its boundary, without waiting for shutdown."""
    config = AgentConfig.model_validate(
        {"device_id": "dev-thread", "state_dir": str(tmp_path / "state"), "mqtt": None}
    )
    clock = FakeClock(T0 + timedelta(seconds=59.9))
    agent = Agent(config, clock=clock)
    try:
        agent.observe(chat(prompt_tokens=12))
        # Just before the next boundary too: the thread's first wait is its shortest (0.5 s).
        clock.advance(60)
        agent.start_metrics()

        def windows() -> list[dict[str, Any]]:
            rows = agent.outbox.read_batch(None, max_records=500, max_bytes=10**7)
            return [r.body for r in rows if r.name == "inference.window"]

        (body,) = wait_for(windows, 10, what="the window record")
        assert body["start"] == "2025-03-01T12:00:00Z"
    finally:
        agent.stop()


# --- the system record ------------------------------------------------------------------------
def test_hottest_sensor_skips_broken_readings() -> None:
    """The temperature is the hottest plausible reading; broken sensors (NaN, 3276.7 °C,
    -273 °C) are skipped, and no plausible reading gives None."""
    # The shape of psutil's entries (its namedtuple type is private and has moved).
    shwtemp = namedtuple("shwtemp", "label current high critical")

    def entry(current: float) -> Any:
        return shwtemp("t", current, None, None)

    sensors = {
        "coretemp": [entry(48.0), entry(61.3)],
        "acpitz": [entry(3276.7), entry(math.nan)],
        "nvme": [entry(-273.0), entry(39.0)],
    }
    assert hottest_c(sensors) == 61.3
    assert hottest_c({"broken": [entry(3276.7)]}) is None
    assert hottest_c({}) is None


def test_system_record_carries_temperature_only_when_the_host_has_one(tmp_path: Path) -> None:
    """The system record keeps its keys and adds temperature_c exactly when this host
    reports a plausible sensor reading (omitted, not null, otherwise)."""
    config = AgentConfig.model_validate(
        {"device_id": "dev-system", "state_dir": str(tmp_path / "state"), "mqtt": None}
    )
    agent = Agent(config)
    try:
        agent.record_system_metrics()
        rows = agent.outbox.read_batch(None, max_records=50, max_bytes=10**6)
        (body,) = [r.body for r in rows if r.name == "system"]
    finally:
        agent.stop()
    keys = {"cpu_percent", "memory_percent", "disk_percent", "load1", "outbox_bytes"}
    temperature = max_temperature_c()
    if temperature is None:
        assert set(body) == keys
    else:
        assert set(body) == keys | {"temperature_c"}
        assert abs(body["temperature_c"] - temperature) < 15  # a later reading of one sensor
