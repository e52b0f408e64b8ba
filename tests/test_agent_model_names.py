"""Model names OpenAI clients send (aliases, ``auto``) through the agent's HTTP API, answered
by real llama.cpp on the demo model and by real HTTP servers on loopback as remote tiers."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.drills.openai_server import FakeProvider, start_provider
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig

PROMPT = [{"role": "user", "content": "Name three colours."}]
CARD = "4111 1111 1111 1111"


def inference_records(agent: Agent) -> list[dict[str, Any]]:
    rows = agent.outbox.read_batch(None, max_records=500, max_bytes=10**7)
    return [r.body for r in rows if r.name == "inference"]


@pytest.fixture(scope="module")
def agent(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """A device whose first (default) model does not load and whose second does."""
    state = tmp_path_factory.mktemp("names")
    broken = state / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-names",
            "state_dir": str(state),
            "mqtt": None,
            "models": [
                {"name": "broken", "path": str(broken), "aliases": ["old-default"]},
                {
                    "name": "smollm2",
                    "path": str(model_path),
                    "n_ctx": 512,
                    "n_threads": 2,
                    "aliases": ["gpt-4o-mini"],
                },
            ],
            "routing": {"model_aliases": {"gpt-3.5-turbo": "auto", "small": "smollm2"}},
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


def chat(client: TestClient, model: str | None) -> Any:
    body: dict[str, Any] = {"messages": PROMPT, "max_tokens": 4}
    if model is not None:
        body["model"] = model
    return client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("name", ["gpt-4o-mini", "small", "smollm2"])
def test_aliases_are_answered_by_the_model_they_name(
    client: TestClient, agent: Agent, name: str
) -> None:
    """A model's alias and a routing alias are served by that model; the answer and the
    X-Edge-Model header name the model that served it, the inference record both names."""
    response = chat(client, name)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "smollm2"
    assert response.headers["x-edge-model"] == "smollm2"
    record = inference_records(agent)[-1]
    assert (record["requested_model"], record["model"], record["route"]) == (
        name,
        "smollm2",
        "local",
    )


@pytest.mark.parametrize("name", ["auto", "gpt-3.5-turbo"])
def test_auto_is_served_by_a_loaded_model_where_the_default_is_down(
    client: TestClient, agent: Agent, name: str
) -> None:
    """auto (and an alias of auto) is answered on the cheapest allowed tier by a model that
    loaded, while a request naming no model, or an alias of the broken default, gets 503."""
    assert chat(client, None).status_code == 503
    assert chat(client, "old-default").status_code == 503
    response = chat(client, name)
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-route"] == "local"
    assert response.headers["x-edge-route-reason"] == "cheapest"
    assert response.json()["model"] == "smollm2"
    record = inference_records(agent)[-1]
    assert (record["requested_model"], record["model"]) == (name, "smollm2")


@pytest.mark.parametrize("name", ["gpt-9", "AUTO", "gpt-4o-mini "])
def test_names_that_match_nothing_stay_404(client: TestClient, name: str) -> None:
    """A name that is no model, alias or tier model is a 404 in OpenAI's error shape."""
    response = chat(client, name)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert repr(name) in error["message"]


def test_models_list_marks_aliases(client: TestClient) -> None:
    """GET /v1/models lists the loaded model, the aliases of loaded models and of auto (each
    with alias_for), and auto; an alias of a model that did not load is left out."""
    data = client.get("/v1/models").json()["data"]
    assert [(m["id"], m.get("alias_for")) for m in data] == [
        ("smollm2", None),
        ("gpt-4o-mini", "smollm2"),
        ("gpt-3.5-turbo", "auto"),
        ("small", "smollm2"),
        ("auto", "auto"),
    ]
    assert all(m["object"] == "model" and m["owned_by"] == "edgefleet:dev-names" for m in data)


@pytest.fixture
def providers() -> Iterator[dict[str, FakeProvider]]:
    started = {"private": start_provider("private"), "cloud": start_provider("cloud")}
    yield started
    for provider in started.values():
        assert provider.server is not None
        provider.server.shutdown()


def test_auto_routes_by_policy_to_the_cheapest_allowed_remote_tier(
    tmp_path: Path, providers: dict[str, FakeProvider]
) -> None:
    """With no local model loaded, auto goes to the cheapest tier sensitivity allows (the
    private one, asked for its own model, not 'auto'); restricted data still gets 503."""
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-auto",
            "state_dir": str(tmp_path),
            "mqtt": None,
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
            "routing": {"model_aliases": {"gpt-4o-mini": "auto"}},
        }
    )
    agent = Agent(config, root=tmp_path)
    try:
        with TestClient(create_agent_app(agent)) as client:
            response = chat(client, "gpt-4o-mini")
            assert response.status_code == 200, response.text
            assert response.headers["x-edge-route"] == "private"
            assert response.json()["model"] == "org-llm"
            assert providers["private"].received[-1]["model"] == "org-llm"
            assert providers["cloud"].count() == 0
            secret = client.post(
                "/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": f"Card {CARD}"}]},
            )
            assert secret.status_code == 503
            assert providers["private"].count() == 1 and CARD not in providers["cloud"].raw_bodies()
        record = inference_records(agent)[0]
        assert (record["requested_model"], record["model"], record["route"]) == (
            "gpt-4o-mini",
            "org-llm",
            "private",
        )
        assert inference_records(agent)[1]["requested_model"] == "auto"
    finally:
        agent.stop()
