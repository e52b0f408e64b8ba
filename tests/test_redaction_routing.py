"""Reversible redaction and the sensitivity floor end to end through the agent's HTTP API:
real llama.cpp locally, a real OpenAI-compatible HTTP server on loopback as the cloud tier
that records every byte it receives (bodies and headers) and answers with the placeholders
it was sent, whole or in chunks cut anywhere."""

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from edge_agent.runtimes.llama_cpp import LlamaCppRuntime

EMAIL = "jane.doe@posteo.de"
PHONE = "+49 30 2318 4467"
IBAN = "DE44 5001 0517 5407 3249 31"
PASSWORD = "Tr0ub4dor&3x"
PLAN = f"Plan a follow-up: e-mail {EMAIL}, call {PHONE}, then confirm to {EMAIL}."
ORIGINALS = (EMAIL, PHONE, IBAN, PASSWORD, "jane.doe", "posteo", "2318", "5001 0517")
_PLACEHOLDER = re.compile(r"\[[A-Z]+_[0-9]+\]")
# TestClient's responses (httpx's Response, whichever httpx distribution starlette uses).
Response = Any


def echo_placeholders(body: dict[str, Any]) -> str:
    """The model's answer: every placeholder of the last user message, in order."""
    last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return "Noted: " + " and ".join(_PLACEHOLDER.findall(last)) + "."


@dataclass
class Recorder:
    """What the cloud tier received, raw, and how it answers."""

    reply: Callable[[dict[str, Any]], str] = echo_placeholders
    chunk_chars: int = 3  # streamed answers are cut every this many characters
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) for b in self.bodies]

    def everything(self) -> str:
        """Every byte of every body and every header name and value, as one string."""
        with self.lock:
            raw = b"".join(self.bodies).decode()
            return raw + json.dumps(self.headers)


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with recorder.lock:
                recorder.bodies.append(raw)
                recorder.headers.append(dict(self.headers.items()))
            body = json.loads(raw)
            text = recorder.reply(body)
            if body.get("stream"):
                self._stream(text)
                return
            data = json.dumps(
                {
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 20, "completion_tokens": 5},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, text: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            n = recorder.chunk_chars
            for i in range(0, len(text), n):
                delta = {"choices": [{"index": 0, "delta": {"content": text[i : i + n]}}]}
                self.wfile.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\ndata: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


@pytest.fixture
def cloud() -> Iterator[Recorder]:
    recorder = Recorder()
    recorder.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    recorder.server.daemon_threads = True
    threading.Thread(target=recorder.server.serve_forever, daemon=True).start()
    yield recorder
    recorder.server.shutdown()
    leaked = [value for value in ORIGINALS if value in recorder.everything()]
    assert not leaked, f"original values reached the cloud tier: {leaked}"


@pytest.fixture(scope="module")
def llama(model_path: Path) -> Iterator[LlamaCppRuntime]:
    runtime = LlamaCppRuntime("smollm2", model_path, n_ctx=1024, n_threads=2)
    yield runtime
    runtime.close()


class Device:
    def __init__(self, agent: Agent, client: TestClient) -> None:
        self.agent = agent
        self.client = client

    def chat(self, prompt: str, headers: dict[str, str] | None = None) -> Response:
        payload = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
        return self.client.post("/v1/chat/completions", json=payload, headers=headers or {})

    def stream(self, prompt: str, headers: dict[str, str]) -> tuple[Response, str]:
        """A streamed answer's response and its text (the SSE deltas joined)."""
        payload = {"messages": [{"role": "user", "content": prompt}], "stream": True}
        with self.client.stream(
            "POST", "/v1/chat/completions", json=payload, headers=headers
        ) as response:
            body = response.read().decode()
        pieces = []
        for line in body.splitlines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices", []):
                    pieces.append(choice.get("delta", {}).get("content", ""))
        assert body.rstrip().endswith("data: [DONE]")
        return response, "".join(pieces)

    def records(self) -> list[dict[str, Any]]:
        rows = self.agent.outbox.read_batch(None, max_records=500, max_bytes=10**7)
        return [r.body for r in rows if r.name == "inference"]


@pytest.fixture
def make_device(tmp_path: Path, llama: LlamaCppRuntime, cloud: Recorder, model_path: Path) -> Any:
    made: list[Agent] = []

    def make(**routing: Any) -> Device:
        routing.setdefault("rules", [{"task_class": "planning", "tier": "cloud"}])
        config = AgentConfig.model_validate(
            {
                "device_id": "dev-redact",
                "state_dir": str(tmp_path / f"state-{len(made)}"),
                "models": [{"name": "smollm2", "path": str(model_path), "n_ctx": 1024}],
                "tiers": {"cloud": {"base_url": cloud.base_url, "model": "frontier"}},
                "routing": routing,
            }
        )
        agent = Agent(config)
        agent.runtimes["smollm2"] = llama
        made.append(agent)
        return Device(agent, TestClient(create_agent_app(agent)))

    yield make
    for agent in made:
        agent.runtimes.clear()  # the shared runtime is closed by its own fixture
        agent.stop()


PLANNING = {"X-Task-Class": "planning"}


def test_a_redacted_request_goes_to_the_cloud_and_its_answer_comes_back_restored(
    make_device: Any, cloud: Recorder
) -> None:
    """A configured task class sends a restricted plan to the cloud with placeholders (the
    repeated e-mail once numbered), restores the echoed placeholders in the answer, says how
    many values were replaced, and records and exports counts by category, never values."""
    device = make_device(redact={"task_classes": ["planning"]})
    response = device.chat(PLAN, PLANNING)
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-route"] == "cloud"
    assert response.headers["x-edge-route-reason"] == "rule:planning"
    assert response.headers["x-edge-sensitivity"] == "public"
    assert response.headers["x-edge-redacted"] == "3"
    sent = cloud.received()[0]["messages"][-1]["content"]
    assert sent == "Plan a follow-up: e-mail [EMAIL_1], call [PHONE_1], then confirm to [EMAIL_1]."
    answer = response.json()["choices"][0]["message"]["content"]
    assert answer == f"Noted: {EMAIL} and {PHONE} and {EMAIL}."
    (record,) = device.records()
    assert record["route"] == "cloud" and record["redaction"] == "applied"
    assert record["redacted"] == {"email": 2, "phone": 1}
    assert EMAIL not in json.dumps(record) and PHONE not in json.dumps(record)
    metrics = device.client.get("/metrics").text
    assert 'edge_agent_redactions_total{category="email"} 2.0' in metrics
    assert 'edge_agent_redactions_total{category="phone"} 1.0' in metrics
    assert EMAIL not in metrics and PHONE not in metrics


@pytest.mark.parametrize("chunk_chars", [1, 3, 7])
def test_a_streamed_answer_is_restored_across_chunk_boundaries(
    make_device: Any, cloud: Recorder, chunk_chars: int
) -> None:
    """Streamed answers cut every 1, 3 or 7 characters (placeholders split across chunks)
    come back with every placeholder restored and nothing lost or doubled."""
    cloud.chunk_chars = chunk_chars
    device = make_device()
    prompt = f"Plan the refund to IBAN {IBAN}; mail the receipt to {EMAIL}."
    response, text = device.stream(prompt, {**PLANNING, "X-Redact": "true"})
    assert response.headers["x-edge-route"] == "cloud"
    assert response.headers["x-edge-redacted"] == "2"
    assert text == f"Noted: {IBAN} and {EMAIL}."
    assert "[IBAN_1]" in cloud.received()[0]["messages"][-1]["content"]


def test_mangled_or_unknown_placeholders_are_left_as_they_are(
    make_device: Any, cloud: Recorder
) -> None:
    """A model that mangles placeholders gets no guesses: only the exact issued one restores,
    in the plain and the streamed answer alike."""
    cloud.reply = lambda body: "[EMAIL_7] [email_1] [EMAIL 1] [EMAIL_1] [PHONE_1"
    device = make_device(redact={"task_classes": ["planning"]})
    expected = f"[EMAIL_7] [email_1] [EMAIL 1] {EMAIL} [PHONE_1"
    plain = device.chat(PLAN, PLANNING)
    assert plain.json()["choices"][0]["message"]["content"] == expected
    _, streamed = device.stream(PLAN, PLANNING)
    assert streamed == expected


def test_a_credential_keeps_the_request_local_even_with_x_redact(
    make_device: Any, cloud: Recorder
) -> None:
    """A password next to personal data cannot be redacted: the request stays local, the
    header says nothing was replaced, and the record says why."""
    device = make_device()
    prompt = f"Plan the rollout; the admin password is {PASSWORD} and mail {EMAIL}."
    response = device.chat(prompt, {**PLANNING, "X-Redact": "true"})
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-route"] == "local"
    assert response.headers["x-edge-sensitivity"] == "restricted"
    assert response.headers["x-edge-redacted"] == "0"
    assert cloud.received() == []
    (record,) = device.records()
    assert record["redaction"] == "not_redactable:password" and record["redacted"] == {}


def test_x_redact_false_opts_out_and_no_opt_in_keeps_it_local(
    make_device: Any, cloud: Recorder
) -> None:
    """X-Redact: false keeps a configured class local; without the class or the header a
    restricted request stays local and carries no X-Edge-Redacted."""
    device = make_device(redact={"task_classes": ["planning"]})
    opted_out = device.chat(PLAN, {**PLANNING, "X-Redact": "false"})
    assert opted_out.headers["x-edge-route"] == "local"
    assert "x-edge-redacted" not in opted_out.headers
    other = device.chat(PLAN, {"X-Task-Class": "drafting"})
    assert other.headers["x-edge-route"] == "local"
    assert cloud.received() == []
    assert device.chat(PLAN, {"X-Redact": "maybe"}).status_code == 400


def test_a_session_keeps_its_placeholders_and_its_history_travels_redacted(
    make_device: Any, cloud: Recorder
) -> None:
    """Within a session the same value keeps its placeholder in a later request, and the
    history sent with it (the restored answer included) is redacted the same way."""
    device = make_device(redact={"task_classes": ["planning"]})
    session = {**PLANNING, "X-Session-Id": "s-1"}
    first = device.chat(f"Plan a call to {PHONE}.", session)
    assert first.json()["choices"][0]["message"]["content"] == f"Noted: {PHONE}."
    second = device.chat(f"Also e-mail {EMAIL}, then call {PHONE} again.", session)
    assert second.headers["x-edge-redacted"] == "4"
    messages = cloud.received()[1]["messages"]
    assert [m["content"] for m in messages] == [
        "Plan a call to [PHONE_1].",
        "Noted: [PHONE_1].",
        "Also e-mail [EMAIL_1], then call [PHONE_1] again.",
    ]
    assert second.json()["choices"][0]["message"]["content"] == f"Noted: {EMAIL} and {PHONE}."


def test_a_known_value_stays_personal_where_the_detector_no_longer_sees_it(
    make_device: Any, cloud: Recorder
) -> None:
    """After compaction drops the turn that named Maria Garcia next to her phone number, a
    later message names her alone (the detector finds nothing there): the session's map
    still replaces her name when redaction is asked for, and keeps the request local when
    it is refused."""
    device = make_device(
        redact={"task_classes": ["planning"]},
        remote_context_tokens=256,
        context={"anchor_turns": 0, "tail_turns": 0, "reserve_answer_tokens": 200},
    )
    session = {**PLANNING, "X-Session-Id": "s-2"}
    first = device.chat(f"Call Maria Garcia at {PHONE}.", session)
    assert first.headers["x-edge-redacted"] == "2"
    second = device.chat("What should I bring for Maria Garcia tomorrow?", session)
    assert second.headers["x-edge-route"] == "cloud", second.headers
    sent = cloud.received()[1]["messages"]
    assert sent[-1]["content"] == "What should I bring for [PERSON_1] tomorrow?"
    assert all("Call [PERSON_1]" not in m["content"] for m in sent), "the turn was compacted"
    refused = device.chat("Any news from Maria Garcia?", {**session, "X-Redact": "false"})
    assert refused.headers["x-edge-route"] == "local"
    assert refused.headers["x-edge-sensitivity"] == "restricted"
    assert len(cloud.received()) == 2
    assert "Maria" not in cloud.everything() and "Garcia" not in cloud.everything()


def test_what_is_left_decides_internal_data_stays_off_the_cloud(
    make_device: Any, cloud: Recorder
) -> None:
    """Internal markers are not replaced: a redacted request whose other message is marked
    internal is internal, so the cloud rule is blocked and nothing reaches the cloud."""
    device = make_device(redact={"task_classes": ["planning"]})
    messages = [
        {"role": "system", "content": "Internal only: the Q3 roadmap for line 3."},
        {"role": "user", "content": PLAN},
    ]
    response = device.client.post(
        "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 8},
        headers=PLANNING,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-route"] == "local"
    assert response.headers["x-edge-sensitivity"] == "internal"
    assert response.headers["x-edge-route-reason"] == "rule_blocked:sensitivity:internal"
    assert response.headers["x-edge-redacted"] == "0"
    assert cloud.received() == []
    (record,) = device.records()
    assert record["redaction"] == "applied" and record["redacted"] == {}


def test_the_floor_keeps_public_requests_off_the_cloud(make_device: Any, cloud: Recorder) -> None:
    """routing.sensitivity.minimum internal: a public planning request stays off the cloud,
    and the headers say the floor decided; without the floor it goes to the cloud."""
    floored = make_device(sensitivity={"minimum": "internal"})
    prompt = "Plan the maintenance steps for replacing a conveyor belt."
    response = floored.chat(prompt, PLANNING)
    assert response.status_code == 200, response.text
    assert response.headers["x-edge-route"] == "local"
    assert response.headers["x-edge-sensitivity"] == "internal"
    assert response.headers["x-edge-route-reason"] == "rule_blocked:floor:internal"
    assert cloud.received() == []
    assert make_device().chat(prompt, PLANNING).headers["x-edge-route"] == "cloud"


def test_a_restricted_floor_disables_redaction(make_device: Any, cloud: Recorder) -> None:
    """With minimum restricted nothing leaves, redaction asked for or not."""
    device = make_device(
        sensitivity={"minimum": "restricted"}, redact={"task_classes": ["planning"]}
    )
    response = device.chat(PLAN, PLANNING)
    assert response.headers["x-edge-route"] == "local"
    assert response.headers["x-edge-route-reason"] == "rule_blocked:sensitivity:restricted"
    assert cloud.received() == []
