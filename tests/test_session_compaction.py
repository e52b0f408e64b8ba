"""``routing.context``: validated in the agent config, and honoured when a long session is
compacted on its way to a remote tier -- through the agent's HTTP API, with real llama.cpp
counting tokens and a real OpenAI-compatible server on loopback recording what it receives."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.drills.openai_server import FakeProvider, start_provider
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.routing.context import SUMMARY_PREFIX
from edge_agent.runtimes.llama_cpp import LlamaCppRuntime

HEADERS = {"X-Task-Class": "planning"}
ANSWER = "remote answer"  # what the provider says to every request


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ("{anchor_turns: -1}", "routing.context.anchor_turns"),
        ("{tail_turns: six}", "routing.context.tail_turns"),
        ("{reserve_answer_tokens: 0}", "routing.context.reserve_answer_tokens"),
        ("{summary_max_fraction: 0}", "routing.context.summary_max_fraction"),
        ("{constraint_markers: [never, '  ']}", "routing.context.constraint_markers.1"),
        ("{constraint_markers: never}", "routing.context.constraint_markers"),
        ("{extra_constraint_markers: ['']}", "routing.context.extra_constraint_markers.0"),
        ("{max_turns: 0}", "routing.context.max_turns"),
        ("{idle_ttl_s: -5}", "routing.context.idle_ttl_s"),
        ("{markers: [never]}", "routing.context.markers"),
        (
            "{anchor_turns: 100, tail_turns: 100, max_turns: 150}",
            "routing.context: Value error, anchor_turns + tail_turns (100 + 100) must be "
            "below max_turns (150)",
        ),
        (
            "{reserve_answer_tokens: 8192}",
            "routing: Value error, context.reserve_answer_tokens (8192) must be below "
            "remote_context_tokens (8192)",
        ),
    ],
)
def test_invalid_context_settings_name_the_field(
    tmp_path: Path, context: str, expected: str
) -> None:
    """Each wrong ``routing.context`` value is a ConfigError naming the key and the problem."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"device_id: d1\nrouting:\n  context: {context}\n"))
    assert expected in str(info.value)


def test_context_settings_load_with_markers_trimmed(tmp_path: Path) -> None:
    """A valid section loads as written, markers stripped of surrounding whitespace."""
    text = (
        "device_id: d1\nrouting:\n  remote_context_tokens: 1024\n  context:\n"
        "    anchor_turns: 0\n    reserve_answer_tokens: 1000\n"
        "    constraint_markers: ['  house rule ', never]\n    extra_constraint_markers: []\n"
    )
    context = load_config(write(tmp_path, text)).routing.context
    assert context.constraint_markers == ["house rule", "never"]
    assert (context.anchor_turns, context.tail_turns, context.reserve_answer_tokens) == (0, 6, 1000)


# --- through the HTTP API ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(model_path: Path) -> Iterator[LlamaCppRuntime]:
    runtime = LlamaCppRuntime("smollm2", model_path, n_ctx=1024, n_threads=2)
    yield runtime
    runtime.close()


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    started = start_provider("private")
    yield started
    assert started.server is not None
    started.server.shutdown()


@pytest.fixture
def make_client(
    tmp_path: Path, llama: LlamaCppRuntime, provider: FakeProvider, model_path: Path
) -> Iterator[Any]:
    """A device whose planning requests go to the private tier, with this ``routing.context``."""
    made: list[Agent] = []

    def make(context: dict[str, Any]) -> TestClient:
        config = AgentConfig.model_validate(
            {
                "device_id": "dev-context",
                "state_dir": str(tmp_path / f"state-{len(made)}"),
                "mqtt": None,
                "models": [{"name": "smollm2", "path": str(model_path), "n_ctx": 1024}],
                "tiers": {"private": {"base_url": provider.base_url, "model": "org-llm"}},
                "routing": {
                    "rules": [{"task_class": "planning", "tier": "private"}],
                    # The budget: 512 - reserve, counted with SmolLM2's tokenizer.
                    "remote_context_tokens": 512,
                    "context": context,
                },
            }
        )
        agent = Agent(config)
        agent.runtimes["smollm2"] = llama
        made.append(agent)
        return TestClient(create_agent_app(agent))

    yield make
    for agent in made:
        agent.runtimes.clear()  # the shared runtime is closed by its own fixture
        agent.stop()


def filler(i: int) -> str:
    """A turn without any constraint marker (built-in or custom)."""
    return (
        f"Step {i}: check conveyor belt section {i} for wear and write the roller heat in the log."
    )


def converse(
    client: TestClient, provider: FakeProvider, session: str, prompts: list[str]
) -> list[dict[str, str]]:
    """Send each prompt as the next turn of ``session``; the messages the provider received
    for the last one."""
    for prompt in prompts:
        response = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 8},
            headers={**HEADERS, "X-Session-Id": session},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-edge-route"] == "private"
    assert provider.count() == len(prompts)
    messages: list[dict[str, str]] = provider.received[-1]["messages"]
    return messages


def turns(prompts: list[str]) -> list[dict[str, str]]:
    """The history a session keeps for these prompts, each answered by the provider."""
    out: list[dict[str, str]] = []
    for prompt in prompts:
        out += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ANSWER}]
    return out


def test_constraint_sentence_survives_compaction_into_the_remote_prompt(
    make_client: Any, provider: FakeProvider
) -> None:
    """A long session sent to the private tier arrives compacted as configured: the first
    anchor_turns and last tail_turns messages verbatim, between them one summary keeping the
    "Never ..." sentence of an early turn and nothing else of the middle."""
    client = make_client({"anchor_turns": 2, "tail_turns": 4, "reserve_answer_tokens": 64})
    constraint = "Never ship an order before its invoice is paid."
    history = [filler(0), f"{constraint} The warehouse opens at eight.", *map(filler, range(2, 20))]
    last = "Which step comes next?"
    sent = converse(client, provider, "shift-7", [*history, last])

    kept = turns(history)
    assert sent[:2] == kept[:2], "the anchor is verbatim"
    summary = sent[2]
    assert summary["role"] == "system" and summary["content"].startswith(SUMMARY_PREFIX)
    assert f"user: {constraint}" in summary["content"]
    assert sent[3:-1] == kept[-4:], "the tail is verbatim"
    assert sent[-1] == {"role": "user", "content": last}
    rest = json.dumps(sent)
    assert "warehouse" not in rest, "a sentence without a marker is not summarised"
    assert all(filler(i) not in rest for i in range(2, 18)), "the middle is gone"


@pytest.mark.parametrize(
    ("markers", "kept", "dropped"),
    [
        pytest.param(
            {"constraint_markers": ["house rule"]},
            ["House rule: every pallet is wrapped twice."],
            ["Never stack more than four crates.", "The forklift is blue."],
            id="replace",
        ),
        pytest.param(
            {"extra_constraint_markers": ["house rule"]},
            ["House rule: every pallet is wrapped twice.", "Never stack more than four crates."],
            ["The forklift is blue."],
            id="extend",
        ),
    ],
)
def test_configured_markers_replace_or_extend_the_built_in_ones(
    make_client: Any,
    provider: FakeProvider,
    markers: dict[str, list[str]],
    kept: list[str],
    dropped: list[str],
) -> None:
    """``constraint_markers`` replaces the built-in markers (a "Never ..." sentence is then
    summarised away), ``extra_constraint_markers`` adds to them (both sentences survive)."""
    client = make_client(
        {"anchor_turns": 0, "tail_turns": 2, "reserve_answer_tokens": 64, **markers}
    )
    first = "House rule: every pallet is wrapped twice. Never stack more than four crates."
    sent = converse(
        client, provider, "shift-8", [f"{first} The forklift is blue.", *map(filler, range(1, 20))]
    )
    summaries = [m["content"] for m in sent if m["content"].startswith(SUMMARY_PREFIX)]
    assert len(summaries) == 1 and sent[0]["content"] == summaries[0], "no anchor: summary first"
    for sentence in kept:
        assert f"user: {sentence}" in summaries[0]
    for sentence in dropped:
        assert sentence not in json.dumps(sent)
