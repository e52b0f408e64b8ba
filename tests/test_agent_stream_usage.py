"""Token counts of streamed answers through the agent's HTTP API: real llama.cpp on the demo
model and onnxruntime-genai on a tiny seeded model, greedy, compared with the same request
not streamed; ``stream_options.include_usage`` adds OpenAI's final usage chunk."""

import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.drills.openai_server import Behaviour, start_provider
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from edge_agent.runtimes.base import ChatMessage, ChatRequest
from edge_agent.runtimes.llama_cpp import LlamaCppRuntime
from tests.tiny_models import build_tiny_genai_model


def inference_records(agent: Agent) -> list[dict[str, Any]]:
    rows = agent.outbox.read_batch(None, max_records=500, max_bytes=10**7)
    return [r.body for r in rows if r.name == "inference"]


def sse_events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]


def streamed(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON chunks of one streamed request (checked to end with [DONE])."""
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def make_agent(state: Path, model: dict[str, Any]) -> Agent:
    config = AgentConfig.model_validate(
        {"device_id": "dev-usage", "state_dir": str(state), "mqtt": None, "models": [model]}
    )
    agent = Agent(config, root=state)
    agent.load_models()
    return agent


@pytest.fixture(scope="module")
def llama_device(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Agent, TestClient]]:
    agent = make_agent(
        tmp_path_factory.mktemp("usage-llama"),
        {"name": "smollm2", "path": str(model_path), "n_ctx": 512, "n_threads": 2},
    )
    with TestClient(create_agent_app(agent)) as client:
        yield agent, client
    agent.stop()


@pytest.fixture(scope="module")
def genai_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, TestClient]]:
    state = tmp_path_factory.mktemp("usage-genai")
    folder = build_tiny_genai_model(state / "tiny-llama", layers=2)
    agent = make_agent(state, {"name": "tiny", "runtime": "ort-genai", "path": str(folder)})
    with TestClient(create_agent_app(agent)) as client:
        yield agent, client
    agent.stop()


def assert_stream_counts_like_plain(
    agent: Agent, client: TestClient, body: dict[str, Any], finish: str
) -> None:
    # llama.cpp reuses the cached prompt of the previous request, and a greedy answer from a
    # cold prompt may differ from a cached one's at a near tie: the same request goes first.
    client.post("/v1/chat/completions", json=body)
    plain = client.post("/v1/chat/completions", json=body)
    assert plain.status_code == 200, plain.text
    assert plain.json()["choices"][0]["finish_reason"] == finish, "the case covers its ending"
    plain_record = inference_records(agent)[-1]
    chunks = streamed(client, body)
    stream_record = inference_records(agent)[-1]
    assert (stream_record["stream"], plain_record["stream"]) == (True, False)
    assert stream_record["status"] == "ok"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain.json()["choices"][0]["message"]["content"]
    counts = [(r["prompt_tokens"], r["completion_tokens"]) for r in (plain_record, stream_record)]
    assert counts[0] == counts[1]
    usage = plain.json()["usage"]
    assert counts[0] == (usage["prompt_tokens"], usage["completion_tokens"])
    assert usage["prompt_tokens"] > 5 and usage["completion_tokens"] >= 1


COLOURS = [{"role": "user", "content": "Name three colours."}]


@pytest.mark.parametrize(
    ("body", "finish"),
    [
        ({"messages": COLOURS, "max_tokens": 5}, "length"),
        ({"messages": COLOURS, "max_tokens": 40, "stop": [","]}, "stop"),
        ({"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 64}, "stop"),
    ],
    ids=["length", "stop-string", "end-of-turn"],
)
def test_llama_stream_records_the_tokens_of_the_plain_request(
    llama_device: tuple[Agent, TestClient], body: dict[str, Any], finish: str
) -> None:
    """A greedy streamed request on llama.cpp records the prompt and completion tokens the
    same request records (and reports as usage) when not streamed, however the answer ends."""
    assert_stream_counts_like_plain(*llama_device, {**body, "temperature": 0}, finish)


@pytest.mark.parametrize("ending", ["length", "stop-string"])
def test_genai_stream_records_the_tokens_of_the_plain_request(
    genai_device: tuple[Agent, TestClient], ending: str
) -> None:
    """A greedy streamed request on onnxruntime-genai records the prompt and generated token
    counts of the same request not streamed, cut by max_tokens or by a stop string."""
    _, client = genai_device
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hello world"}]}
    if ending == "length":
        assert_stream_counts_like_plain(*genai_device, {**body, "max_tokens": 3}, "length")
        return
    # The tiny model never ends its turn: a stop string from its own answer ends it.
    probe = client.post("/v1/chat/completions", json={**body, "max_tokens": 12}).json()
    text = probe["choices"][0]["message"]["content"]
    assert len(text) >= 4
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert_stream_counts_like_plain(
        *genai_device, {**body, "max_tokens": 12, "stop": [stop]}, "stop"
    )


def test_include_usage_adds_a_final_usage_chunk_only_when_asked(
    llama_device: tuple[Agent, TestClient],
) -> None:
    """With stream_options.include_usage the last chunk before [DONE] has choices [] and the
    usage of the non-streamed answer, and every other chunk says usage null; without it (or
    with include_usage false) no chunk carries usage."""
    agent, client = llama_device
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 7,
    }
    client.post("/v1/chat/completions", json=body)  # the prompt cached, as for the streams
    usage = client.post("/v1/chat/completions", json=body).json()["usage"]

    asked = streamed(client, {**body, "stream_options": {"include_usage": True}})
    last = asked[-1]
    assert last["choices"] == [] and last["object"] == "chat.completion.chunk"
    assert last["usage"] == usage and usage["total_tokens"] > usage["completion_tokens"] > 0
    assert all(c["choices"] and c["usage"] is None for c in asked[:-1])
    assert asked[-2]["choices"][0]["finish_reason"] == "length"

    for options in (None, {"include_usage": False}):
        plain = streamed(client, {**body, "stream_options": options})
        assert all(c["choices"] and "usage" not in c for c in plain)
        assert len(plain) == len(asked) - 1
    record = inference_records(agent)[-1]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


def test_stream_options_without_stream_is_ignored(llama_device: tuple[Agent, TestClient]) -> None:
    """stream_options on a request that does not stream changes nothing (a plain answer with
    its usage); a malformed stream_options is a 400 naming the field."""
    _, client = llama_device
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 3,
    }
    plain = client.post(
        "/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}}
    )
    assert plain.status_code == 200 and plain.json()["object"] == "chat.completion"
    bad = client.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": "sometimes"}},
    )
    assert bad.status_code == 400
    assert "stream_options" in bad.json()["error"]["message"]


@pytest.mark.parametrize("server_counts", [True, False])
def test_remote_stream_records_the_tiers_usage(tmp_path: Path, server_counts: bool) -> None:
    """A stream served by a remote tier asks it for usage (stream_options.include_usage) and
    records the counts it reports, also in the client's usage chunk; from a server that
    sends none, the record falls back to 0 prompt tokens and the pieces received."""
    provider = start_provider("private")
    provider.behaviour = Behaviour(reply="three words here", stream_usage=server_counts)
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-remote-usage",
            "state_dir": str(tmp_path),
            "mqtt": None,
            "tiers": {"private": {"base_url": provider.base_url, "model": "org-llm"}},
        }
    )
    agent = Agent(config, root=tmp_path)
    try:
        with TestClient(create_agent_app(agent)) as client:
            body = {
                "messages": [{"role": "user", "content": "Plan the week."}],
                "stream_options": {"include_usage": True},
            }
            chunks = streamed(client, body)
        assert provider.received[-1]["stream_options"] == {"include_usage": True}
        expected = (11, 3) if server_counts else (0, 3)
        usage = chunks[-1]["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == expected
        record = inference_records(agent)[-1]
        assert (record["route"], record["stream"]) == ("private", True)
        assert (record["prompt_tokens"], record["completion_tokens"]) == expected
    finally:
        agent.stop()
        assert provider.server is not None
        provider.server.shutdown()


def test_stream_usage_false_does_not_send_stream_options(tmp_path: Path) -> None:
    """tiers.<name>.stream_usage: false keeps stream_options out of the tier's requests (for
    servers that refuse it); the stream is still served."""
    provider = start_provider("private")
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-remote-usage",
            "state_dir": str(tmp_path),
            "mqtt": None,
            "tiers": {
                "private": {
                    "base_url": provider.base_url,
                    "model": "org-llm",
                    "stream_usage": False,
                }
            },
        }
    )
    agent = Agent(config, root=tmp_path)
    try:
        with TestClient(create_agent_app(agent)) as client:
            chunks = streamed(client, {"messages": [{"role": "user", "content": "Plan."}]})
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip()
        assert "stream_options" not in provider.received[-1]
    finally:
        agent.stop()
        assert provider.server is not None
        provider.server.shutdown()


def test_llama_stream_closed_early_leaves_the_runtime_as_it_was(model_path: Path) -> None:
    """A stream the consumer closes after its first chunk stops, puts llama.cpp's own token
    generator back, and the next stream counts its tokens like a plain completion."""
    runtime = LlamaCppRuntime("smollm2", model_path, n_ctx=512, n_threads=2)
    try:
        request = ChatRequest(messages=(ChatMessage("user", "Name three colours."),), max_tokens=6)
        stream = runtime.stream(request)
        assert isinstance(stream, Generator)
        assert next(stream).text
        stream.close()
        runtime.complete(request)  # waits for the stopped stream (one model thread)
        assert "generate" not in vars(runtime._llama)
        plain = runtime.complete(request)
        last = list(runtime.stream(request))[-1]
        assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (
            plain.finish_reason,
            plain.prompt_tokens,
            plain.completion_tokens,
        )
    finally:
        runtime.close()
