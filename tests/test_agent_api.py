"""The agent's OpenAI-compatible API answered by real llama.cpp on the demo model."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig

PROMPT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def agent(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    state = tmp_path_factory.mktemp("agent")
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-api",
            "state_dir": str(state),
            "mqtt": None,
            "models": [
                {"name": "smollm2-135m", "path": str(model_path), "n_ctx": 512, "n_threads": 2}
            ],
        }
    )
    agent = Agent(config, root=state)
    agent.load_models()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def client(agent: Agent) -> Iterator[TestClient]:
    with TestClient(create_agent_app(agent)) as client:
        yield client


def sse_events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]


def test_completion_matches_llama_cpp_greedy_output(client: TestClient, model_path: Path) -> None:
    """A greedy completion through the API equals llama.cpp's own output for the same request,
    and carries the route headers and token usage."""
    from llama_cpp import Llama

    response = client.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 12})
    assert response.status_code == 200
    assert response.headers["x-edge-route"] == "local"
    assert response.headers["x-edge-runtime"] == "llama.cpp"
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "smollm2-135m"
    assert 1 <= body["usage"]["completion_tokens"] <= 12
    assert body["usage"]["prompt_tokens"] > 5

    direct = Llama(model_path=str(model_path), n_ctx=512, n_threads=2, verbose=False)
    expected = direct.create_chat_completion(messages=PROMPT, max_tokens=12, temperature=0.0)
    direct.close()
    assert body["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == expected["usage"]["completion_tokens"]


def test_streaming_yields_the_same_text_as_sse(client: TestClient) -> None:
    """stream=true sends SSE chunks whose concatenation equals the non-streamed answer."""
    plain = client.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 12}).json()
    with client.stream(
        "POST", "/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 12, "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"messages": []}, 400, "invalid_request"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request"),
        ({"messages": PROMPT, "n": 2}, 400, "invalid_request"),
        ({"messages": PROMPT, "max_tokens": 0}, 400, "invalid_request"),
        ({"messages": PROMPT, "model": "gpt-9"}, 404, "model_not_found"),
    ],
)
def test_bad_requests_get_openai_style_errors(
    client: TestClient, body: dict[str, object], status: int, code: str
) -> None:
    """Invalid bodies and unknown models get a 4xx with an OpenAI-shaped error object."""
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_health_and_models_report_the_loaded_model(client: TestClient, agent: Agent) -> None:
    """/healthz is ok with the model's hash; /v1/models lists it (and auto); requests are
    counted."""
    before = agent.requests_total
    client.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 1})
    assert agent.requests_total == before + 1
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["models"][0]["loaded"] is True and len(health["models"][0]["sha256"]) == 64
    listed = client.get("/v1/models").json()["data"]
    assert [(m["id"], m.get("alias_for")) for m in listed] == [
        ("smollm2-135m", None),
        ("auto", "auto"),
    ]


def test_unloadable_model_marks_local_tier_unhealthy_without_crashing(tmp_path: Path) -> None:
    """A corrupt GGUF leaves the agent up: health 503 with the reason; with no remote tier,
    chat is 503 with Retry-After and the local tier's reason."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-broken",
            "state_dir": str(tmp_path),
            "mqtt": None,
            "models": [{"name": "broken", "path": str(broken)}],
        }
    )
    agent = Agent(config, root=tmp_path)
    agent.load_models()
    assert not agent.local_tier_healthy
    with TestClient(create_agent_app(agent)) as client:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert "could not load" in health.json()["models"][0]["error"]
        chat = client.post("/v1/chat/completions", json={"messages": PROMPT})
        assert chat.status_code == 503
        assert chat.headers["retry-after"] == "30"
        assert chat.json()["error"]["code"] == "no_tier_available"
        assert "local_unhealthy" in chat.json()["error"]["message"]
        assert chat.headers["x-edge-route"] == "none"
