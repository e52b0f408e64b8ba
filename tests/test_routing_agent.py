"""Routing end to end through the agent's HTTP API: real llama.cpp locally, real HTTP
servers on loopback as the private and cloud tiers, recording what reaches them."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from controller.drills.openai_server import Behaviour, FakeProvider, start_provider
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from edge_agent.runtimes.llama_cpp import LlamaCppRuntime

CARD = "4111 1111 1111 1111"
SECRET_PROMPT = f"Charge the customer card {CARD} for the repair."
PUBLIC_PROMPT = "Plan the maintenance steps for replacing a conveyor belt."


@pytest.fixture(scope="module")
def llama(model_path: Path) -> Iterator[LlamaCppRuntime]:
    runtime = LlamaCppRuntime("smollm2", model_path, n_ctx=1024, n_threads=2)
    yield runtime
    runtime.close()


@pytest.fixture
def providers() -> Iterator[dict[str, FakeProvider]]:
    started = {"private": start_provider("private"), "cloud": start_provider("cloud")}
    yield started
    for provider in started.values():
        assert provider.server is not None
        provider.server.shutdown()
        assert CARD not in provider.raw_bodies(), f"restricted data reached {provider.name}"


class Device:
    def __init__(self, agent: Agent, client: TestClient) -> None:
        self.agent = agent
        self.client = client

    def chat(
        self, prompt: str, *, headers: dict[str, str] | None = None, **body: Any
    ) -> httpx.Response:
        payload = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, **body}
        return self.client.post("/v1/chat/completions", json=payload, headers=headers or {})

    def inference_records(self) -> list[dict[str, Any]]:
        rows = self.agent.outbox.read_batch(None, max_records=500, max_bytes=10**7)
        return [r.body for r in rows if r.name == "inference"]


@pytest.fixture
def make_device(
    tmp_path: Path, llama: LlamaCppRuntime, providers: dict[str, FakeProvider], model_path: Path
) -> Iterator[Any]:
    made: list[Agent] = []

    def make(
        *, local_up: bool = True, mqtt: dict[str, Any] | None = None, **routing: Any
    ) -> Device:
        config = AgentConfig.model_validate(
            {
                "device_id": "dev-route",
                "state_dir": str(tmp_path / f"state-{len(made)}"),
                "mqtt": mqtt,
                "models": [{"name": "smollm2", "path": str(model_path), "n_ctx": 1024}],
                "tiers": {
                    "private": {
                        "base_url": providers["private"].base_url,
                        "model": "org-llm",
                        "cost_per_1k_input": 0.1,
                    },
                    "cloud": {
                        "base_url": providers["cloud"].base_url,
                        "model": "frontier",
                        "api_key_env": "EDGEFLEET_TEST_CLOUD_KEY",
                        "cost_per_1k_input": 1.0,
                    },
                },
                "routing": routing,
            }
        )
        agent = Agent(config)
        if local_up:
            agent.runtimes["smollm2"] = llama
        else:
            agent.load_errors["smollm2"] = "model file corrupt"
        made.append(agent)
        return Device(agent, TestClient(create_agent_app(agent)))

    yield make
    for agent in made:
        agent.runtimes.clear()  # the shared runtime is closed by its own fixture
        agent.stop()


def test_rule_sends_public_planning_to_cloud_and_keeps_restricted_local(
    make_device: Any, providers: dict[str, FakeProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    """planning -> cloud: a public plan goes to the cloud with its API key; the same task with
    a card number stays on the device and says why; neither is logged with its content."""
    monkeypatch.setenv("EDGEFLEET_TEST_CLOUD_KEY", "sk-test-cloud-key")
    device = make_device(rules=[{"task_class": "planning", "tier": "cloud"}])
    public = device.chat(PUBLIC_PROMPT, headers={"X-Task-Class": "planning"})
    assert public.status_code == 200, public.text
    assert (public.headers["x-edge-route"], public.headers["x-edge-route-reason"]) == (
        "cloud",
        "rule:planning",
    )
    assert public.json()["choices"][0]["message"]["content"] == "remote answer"
    assert providers["cloud"].headers[0]["authorization"] == "Bearer sk-test-cloud-key"

    secret = device.chat(SECRET_PROMPT, headers={"X-Task-Class": "planning"})
    assert secret.status_code == 200, secret.text
    assert secret.headers["x-edge-route"] == "local"
    assert secret.headers["x-edge-route-reason"] == "rule_blocked:sensitivity:restricted"
    assert secret.headers["x-edge-sensitivity"] == "restricted"
    assert providers["cloud"].count() == 1 and providers["private"].count() == 0

    records = device.inference_records()
    assert [r["route"] for r in records] == ["cloud", "local"]
    assert records[1]["categories"] == ["payment_card"]
    assert CARD not in str(records) and "conveyor" not in str(records), "no content in telemetry"


def test_remote_failures_fall_back_and_open_the_breaker(
    make_device: Any, providers: dict[str, FakeProvider]
) -> None:
    """A failing cloud falls back to local marked degraded; after three failures its breaker
    is open and the cloud is not called again while it stays open."""
    providers["cloud"].behaviour = Behaviour(status=500)
    device = make_device(
        rules=[{"task_class": "planning", "tier": "cloud"}],
        breaker={"failure_threshold": 3, "open_s": 300, "window_s": 3600},  # load-proof,
    )
    for _ in range(4):
        response = device.chat(PUBLIC_PROMPT, headers={"X-Task-Class": "planning"})
        assert response.status_code == 200, response.text
        assert response.headers["x-edge-route"] != "cloud"
        assert response.headers["x-edge-degraded"] == "true"
    assert providers["cloud"].count() == 3, "the open breaker keeps the cloud out"
    assert response.headers["x-edge-route"] == "local"
    last = device.inference_records()[-1]
    assert last["degraded"] and "cloud" not in last["plan"]


def test_local_down_uses_remote_only_when_sensitivity_allows(
    make_device: Any, providers: dict[str, FakeProvider]
) -> None:
    """With the local model down, public data goes to the cheapest remote tier, internal to
    private only, and restricted gets 503 with Retry-After instead of leaving the device."""
    device = make_device(local_up=False)
    public = device.chat(PUBLIC_PROMPT)
    assert public.headers["x-edge-route"] == "private"
    internal = device.chat("Summarise this CONFIDENTIAL roadmap for the team.")
    assert internal.headers["x-edge-route"] == "private"
    assert internal.headers["x-edge-sensitivity"] == "internal"
    providers["private"].behaviour = Behaviour(status=429, retry_after="12")
    throttled = device.chat("Summarise this CONFIDENTIAL roadmap for the team.")
    assert throttled.status_code == 503
    assert 10 <= int(throttled.headers["retry-after"]) <= 13, "the provider's Retry-After"
    assert providers["cloud"].count() == 0, "internal data never goes to the cloud"
    restricted = device.chat(SECRET_PROMPT)
    assert restricted.status_code == 503 and restricted.headers["x-edge-route"] == "none"
    assert restricted.json()["error"]["code"] == "no_tier_available"
    assert "payment" not in restricted.text and CARD not in restricted.text


def test_cascade_escalates_low_confidence_and_guard_stops_it(
    make_device: Any, providers: dict[str, FakeProvider]
) -> None:
    """With a threshold no answer of the local model meets, public requests escalate to the
    cheapest remote tier; after min_requests all escalating, cascading stops and an alert
    event is recorded; with threshold 0 the local answer is kept."""
    device = make_device(
        cascade={"threshold": 0.999, "min_requests": 2, "max_escalation_share": 0.5}
    )
    first = device.chat("Name a colour.")
    assert (first.headers["x-edge-route"], first.headers["x-edge-route-reason"]) == (
        "private",
        "cascade:low_confidence",
    )
    record = device.inference_records()[-1]
    assert record["escalated"] and 0 < record["confidence"] < 0.999
    device.chat("Name a fruit.")
    third = device.chat("Name an animal.")
    assert third.headers["x-edge-route"] == "local", "the guard stopped cascading"
    assert third.headers["x-edge-route-reason"] == "cheapest"
    rows = device.agent.outbox.read_batch(None, max_records=500, max_bytes=10**7)
    alerts = [r.body for r in rows if r.name == "alert"]
    assert alerts and alerts[0]["alert"] == "cascade_disabled"

    keeps = make_device(cascade={"threshold": 0.0})
    kept = keeps.chat("Name a colour.")
    assert kept.headers["x-edge-route"] == "local"
    assert keeps.inference_records()[-1]["confidence"] > 0


def test_streaming_fails_over_before_the_first_token(
    make_device: Any, providers: dict[str, FakeProvider]
) -> None:
    """A streamed request whose first tier fails before any token is served by the next
    tier; a healthy remote tier streams its SSE chunks through."""
    providers["cloud"].behaviour = Behaviour(status=503)
    device = make_device(rules=[{"task_class": "planning", "tier": "cloud"}])
    with device.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": PUBLIC_PROMPT}], "stream": True,
              "max_tokens": 6},
        headers={"X-Task-Class": "planning"},
    ) as response:  # fmt: skip
        body = response.read().decode()
        assert response.headers["x-edge-route"] == "local"
        assert response.headers["x-edge-route-reason"].startswith("fallback:cloud")
    assert body.rstrip().endswith("data: [DONE]") and '"content"' in body

    providers["cloud"].behaviour = Behaviour(reply="streamed from the cloud")
    fresh = make_device(rules=[{"task_class": "planning", "tier": "cloud"}])
    with fresh.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": PUBLIC_PROMPT}], "stream": True},
        headers={"X-Task-Class": "planning"},
    ) as response:  # fmt: skip
        body = response.read().decode()
        assert response.headers["x-edge-route"] == "cloud"
    assert "streamed " in body and "cloud " in body


def test_session_history_with_restricted_data_keeps_later_turns_local(
    make_device: Any, providers: dict[str, FakeProvider]
) -> None:
    """Once a session's history holds a card number, later innocuous turns of that session
    stay local too (the history would travel with them); other sessions are unaffected."""
    device = make_device(rules=[{"task_class": "planning", "tier": "cloud"}])
    headers = {"X-Session-Id": "shift-42", "X-Task-Class": "planning"}
    assert device.chat(SECRET_PROMPT, headers=headers).headers["x-edge-route"] == "local"
    later = device.chat(PUBLIC_PROMPT, headers=headers)
    assert later.headers["x-edge-route"] == "local"
    assert later.headers["x-edge-sensitivity"] == "restricted"
    other = device.chat(PUBLIC_PROMPT, headers={**headers, "X-Session-Id": "shift-43"})
    assert other.headers["x-edge-route"] == "cloud"
    sent = providers["cloud"].received[-1]["messages"]
    assert [m["content"] for m in sent] == [PUBLIC_PROMPT]
    bad = device.chat(PUBLIC_PROMPT, headers={"X-Session-Id": "no spaces allowed"})
    assert bad.status_code == 400


def test_structured_output_is_valid_json_by_construction(make_device: Any) -> None:
    """A json_schema response format makes the local model's answer parse and validate."""
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"severity": {"type": "string", "enum": ["low", "high"]}},
        "required": ["severity"],
        "additionalProperties": False,
    }
    device = make_device()
    response = device.chat(
        "Classify: the motor is on fire.",
        headers={"X-Route-Local": "true"},
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    assert response.status_code == 200, response.text
    jsonschema.validate(json.loads(response.json()["choices"][0]["message"]["content"]), schema)
    invalid = device.chat(
        "x", response_format={"type": "json_schema", "json_schema": {"schema": {"type": 5}}}
    )
    assert invalid.status_code == 400 and "invalid JSON schema" in invalid.text


def test_bad_routing_headers_are_400(make_device: Any) -> None:
    """Each malformed routing header is refused with a message naming it."""
    device = make_device()
    for header, value in (
        ("X-Route-Local", "perhaps"),
        ("X-Latency-Budget-Ms", "fast"),
        ("X-Data-Sensitivity", "top-secret"),
        ("X-Task-Class", "Bad Class"),
    ):
        response = device.chat("hi", headers={header: value})
        assert response.status_code == 400 and header in response.text


def test_respond_async_queues_until_an_allowed_tier_is_back(
    make_device: Any, llama: LlamaCppRuntime, providers: dict[str, FakeProvider]
) -> None:
    """With Prefer: respond-async, a restricted request that nothing may answer now becomes
    a queued job (202 + Location) instead of a 503; when the local model is back the job is
    answered locally; remote tiers never see it; a cancelled job stays cancelled."""
    device = make_device(local_up=False)
    headers = {"Prefer": "respond-async"}
    with device.client:  # runs the app's lifespan: the job worker
        queued = device.chat(SECRET_PROMPT, headers=headers)
        assert queued.status_code == 202, queued.text
        job_url = queued.headers["location"]
        assert device.client.get(job_url).json()["status"] == "queued"
        doomed = device.chat(SECRET_PROMPT, headers=headers).headers["location"]
        assert device.client.delete(doomed).status_code == 204
        assert device.client.delete(doomed).status_code == 409

        device.agent.load_errors.clear()
        device.agent.runtimes["smollm2"] = llama
        jobs = device.client.app.state.jobs  # type: ignore[attr-defined]
        later = time.monotonic() + 100  # every retry is due, nothing has expired
        jobs._clock = lambda: later
        jobs.run_due()
        done = device.client.get(job_url).json()
        assert done["status"] == "done" and done["route"] == "local"
        assert done["result"]["choices"][0]["message"]["content"]
        assert device.client.get(doomed).json()["status"] == "cancelled"
        assert device.client.get("/v1/jobs/job-nope").status_code == 404
    assert providers["private"].count() == 0 and providers["cloud"].count() == 0


RESTRICTED_SAMPLES = {
    "payment_card": CARD,
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "email": "jane.doe@posteo.de",
    "iban": "DE89 3704 0044 0532 0130 00",
    "health": "my father was diagnosed with HIV last week",
}


@pytest.mark.parametrize("local_up", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_restricted_data_never_leaves_under_any_path(
    make_device: Any, providers: dict[str, FakeProvider], local_up: bool, stream: bool
) -> None:
    """Every kind of restricted data, under a cloud rule, an always-escalating cascade, a
    raised latency budget, a session, streaming or not, local model up or down: the remote
    servers receive none of it (the fixture checks their logs), and it is answered locally
    or refused."""
    device = make_device(
        local_up=local_up,
        rules=[{"task_class": "planning", "tier": "cloud"}],
        cascade={"threshold": 1.0},
    )
    for category, secret in RESTRICTED_SAMPLES.items():
        for headers in (
            {"X-Task-Class": "planning"},
            {"X-Latency-Budget-Ms": "1", "X-Session-Id": f"s-{category}"},
            {"X-Data-Sensitivity": "public"},
        ):
            response = device.chat(f"Please handle this: {secret}", headers=headers, stream=stream)
            route = response.headers.get("x-edge-route")
            assert route == ("local" if local_up else "none"), (category, headers, route)
            if local_up:
                assert response.headers["x-edge-sensitivity"] == "restricted", category
    for provider in providers.values():
        leaked = [c for c, s in RESTRICTED_SAMPLES.items() if s in provider.raw_bodies()]
        assert not leaked, f"{provider.name} received {leaked}"
        assert provider.count() == 0


def test_offline_device_keeps_serving_locally_and_buffers_telemetry(
    make_device: Any, providers: dict[str, FakeProvider]
) -> None:
    """With the broker unreachable and the cloud down, a planning request (rule: cloud) is
    answered locally, marked degraded, and its telemetry waits in the outbox."""
    from tests.conftest import free_port

    dead = free_port()
    providers["cloud"].server.shutdown()  # type: ignore[union-attr]
    providers["cloud"].server.server_close()  # type: ignore[union-attr]
    device = make_device(
        mqtt={"url": f"mqtt://127.0.0.1:{dead}", "reconnect_min_s": 0.2, "reconnect_max_s": 1},
        rules=[{"task_class": "planning", "tier": "cloud"}],
    )
    device.agent.start_link()
    response = device.chat(PUBLIC_PROMPT, headers={"X-Task-Class": "planning"})
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-route"] == "local"
    assert response.headers["x-edge-degraded"] == "true"
    assert response.headers["x-edge-route-reason"] == "fallback:cloud:connect"
    assert device.agent.link is not None and not device.agent.link.connected
    assert device.agent.outbox.pending() >= 2, "agent_started and the inference record wait"
