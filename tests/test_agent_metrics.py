"""``GET /metrics`` on the agent's local API (uvicorn on loopback, loopback remote tiers):
Prometheus counters after real requests, gauges read at scrape time, one registry per agent."""

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from controller.drills.openai_server import Behaviour, FakeProvider, start_provider
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from shared.sketches import EDGES
from tests.conftest import free_port, wait_for

MSG = {"messages": [{"role": "user", "content": "Plan the week's inspections."}], "max_tokens": 4}


@pytest.fixture
def providers() -> Iterator[dict[str, FakeProvider]]:
    started = {"private": start_provider("private"), "cloud": start_provider("cloud")}
    yield started
    for provider in started.values():
        assert provider.server is not None
        provider.server.shutdown()


@pytest.fixture
def serve() -> Iterator[Any]:
    running: list[tuple[uvicorn.Server, threading.Thread, Agent]] = []

    def start(agent: Agent) -> httpx.Client:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_agent_app(agent), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread, agent))
        wait_for(lambda: server.started, 20, what="the agent API to start")
        return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    yield start
    for server, thread, agent in running:
        server.should_exit = True
        thread.join(20)
        agent.stop()


def make_agent(tmp_path: Path, name: str, providers: dict[str, FakeProvider]) -> Agent:
    config = AgentConfig.model_validate(
        {
            "device_id": name,
            "state_dir": str(tmp_path / name),
            "mqtt": None,
            # A classifier whose file is missing: the agent runs with the model marked failed.
            "perception": [{"name": "broken", "path": str(tmp_path / "missing.onnx")}],
            "tiers": {
                "private": {
                    "base_url": providers["private"].base_url,
                    "model": "org-llm",
                    "cost_per_1k_input": 0.1,
                },
                "cloud": {
                    "base_url": providers["cloud"].base_url,
                    "model": "frontier",
                    "cost_per_1k_input": 1.0,
                },
            },
            "routing": {"rules": [{"task_class": "planning", "tier": "cloud"}]},
        }
    )
    agent = Agent(config)
    agent.load_models()
    return agent


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_count_requests_tokens_fallbacks_and_refusals(
    tmp_path: Path, providers: dict[str, FakeProvider], serve: Any
) -> None:
    """After real requests /metrics shows them by tier and status, tokens, the fallback of
    a failing cloud, refusals by code and a latency histogram on the sketch edges."""
    providers["cloud"].behaviour = Behaviour(status=500)
    agent = make_agent(tmp_path, "dev-metrics", providers)
    http = serve(agent)
    assert http.post("/v1/chat/completions", json=MSG).headers["x-edge-route"] == "private"
    fallback = http.post("/v1/chat/completions", json=MSG, headers={"X-Task-Class": "planning"})
    assert fallback.headers["x-edge-degraded"] == "true"
    assert (
        http.post("/v1/chat/completions", json=MSG, headers={"X-Route-Local": "true"}).status_code
        == 503
    )
    assert http.post("/v1/chat/completions", json={**MSG, "model": "nope"}).status_code == 404
    assert (
        http.post("/v1/chat/completions", json=MSG, headers={"X-Route-Local": "maybe"}).status_code
        == 400
    )
    assert http.post("/v1/perception/broken", json={"inputs": [[0.0]]}).status_code == 503

    samples = scrape(http)
    requests = "edge_agent_requests_total"
    assert value(samples, requests, kind="chat", tier="private", status="ok") == 2
    assert value(samples, requests, kind="chat", tier="none", status="unavailable") == 1
    assert value(samples, requests, kind="perception", tier="none", status="unavailable") == 1
    rejected = "edge_agent_rejected_requests_total"
    assert value(samples, rejected, code="model_not_found") == 1
    assert value(samples, rejected, code="invalid_header") == 1
    assert value(samples, "edge_agent_tokens_total", tier="private", direction="prompt") == 22
    assert value(samples, "edge_agent_tokens_total", tier="private", direction="completion") == 6
    assert value(samples, "edge_agent_fallbacks_total", tier="private") == 1
    assert value(samples, "edge_agent_escalations_total", tier="private") is None

    histogram = "edge_agent_request_duration_seconds"
    assert value(samples, f"{histogram}_count", kind="chat", tier="private") == 2
    bounds = sorted(
        float(dict(labels)["le"])
        for (name, labels), _ in samples.items()
        if name == f"{histogram}_bucket" and dict(labels)["tier"] == "private"
    )
    assert bounds[:-1] == pytest.approx([edge / 1000 for edge in EDGES["latency_ms"]])
    assert bounds[-1] == float("inf")


def test_gauges_show_outbox_tier_health_and_models_at_scrape_time(
    tmp_path: Path, providers: dict[str, FakeProvider], serve: Any
) -> None:
    """Outbox backlog, tier health (local down without models, remote breakers closed) and
    each configured model's loaded state are read when scraped."""
    agent = make_agent(tmp_path, "dev-gauges", providers)
    http = serve(agent)
    http.post("/v1/chat/completions", json=MSG)
    samples = scrape(http)
    assert value(samples, "edge_agent_outbox_pending_records") == agent.outbox.pending()
    assert value(samples, "edge_agent_outbox_pending_bytes") == agent.outbox.used_bytes
    assert agent.outbox.pending() >= 2  # agent_started, model_load_failed, inference...
    assert value(samples, "edge_agent_tier_healthy", tier="local") == 0
    assert value(samples, "edge_agent_tier_healthy", tier="private") == 1
    assert value(samples, "edge_agent_tier_healthy", tier="cloud") == 1
    loaded = value(
        samples,
        "edge_agent_model_loaded",
        model="broken",
        kind="perception",
        runtime="onnxruntime",
        version="",
    )
    assert loaded == 0


def test_each_agent_has_its_own_registry(
    tmp_path: Path, providers: dict[str, FakeProvider], serve: Any
) -> None:
    """Two agents in one process register their metrics separately and count only their
    own requests."""
    first = serve(make_agent(tmp_path, "dev-one", providers))
    second = serve(make_agent(tmp_path, "dev-two", providers))
    first.post("/v1/chat/completions", json=MSG)
    first.post("/v1/chat/completions", json=MSG)
    second.post("/v1/chat/completions", json=MSG)
    ok = {"kind": "chat", "tier": "private", "status": "ok"}
    assert value(scrape(first), "edge_agent_requests_total", **ok) == 2
    assert value(scrape(second), "edge_agent_requests_total", **ok) == 1
