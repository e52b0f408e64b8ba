"""A remote tier's answers are outside input: a hostile or broken OpenAI-compatible server
(a real HTTP server on loopback) gets ``bad_response``, never an exception of another kind,
whatever it sends."""

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import RemoteTierConfig
from edge_agent.routing.remote import MAX_RESPONSE_BYTES, RemoteTier, TierError
from edge_agent.runtimes.base import ChatMessage, ChatRequest


class _Server:
    """Answers every POST with the bytes in ``body`` (and as SSE when ``sse`` is set)."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.content_type = "application/json"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(outer.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.httpd.shutdown()


@pytest.fixture(scope="module")
def tier(server: _Server) -> Iterator[RemoteTier]:
    t = RemoteTier("cloud", RemoteTierConfig(base_url=server.base_url, model="m"))
    yield t
    t.close()


REQUEST = ChatRequest(messages=(ChatMessage(role="user", content="hi"),), max_tokens=8)


def _ok(content: object = "hello", **usage: object) -> bytes:
    return json.dumps(
        {
            "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
            "usage": usage or {"prompt_tokens": 3, "completion_tokens": 2},
        }
    ).encode()


HOSTILE = {
    "3,000 levels of nesting": b'{"choices":' + b"[" * 3000 + b"]" * 3000 + b"}",
    "not JSON": b"<html>502</html>",
    "a JSON list": b"[1, 2]",
    "no choices": b'{"usage": {}}',
    "choices is a string": b'{"choices": "x"}',
    "content is an object": _ok({"text": "x"}),
    "a token count beyond reason": _ok(prompt_tokens=10**30, completion_tokens=1),
    "a negative token count": _ok(prompt_tokens=-5, completion_tokens=1),
    "a token count that is text": _ok(prompt_tokens="5", completion_tokens=1),
    "NaN token count": b'{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":NaN}}',
    "an answer over the size limit": b'{"x":"' + b"a" * (MAX_RESPONSE_BYTES + 10) + b'"}',
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_complete_answers_are_bad_response(
    server: _Server, tier: RemoteTier, case: str
) -> None:
    """Each hostile non-streamed answer raises TierError(bad_response), which falls back to
    the next tier without opening the breaker."""
    server.content_type = "application/json"
    server.body = HOSTILE[case]
    with pytest.raises(TierError) as info:
        tier.complete(REQUEST)
    assert info.value.kind == "bad_response"
    assert not info.value.counts_against_breaker


def test_a_good_answer_still_completes(server: _Server, tier: RemoteTier) -> None:
    """The checks let a well-formed answer through unchanged."""
    server.content_type = "application/json"
    server.body = _ok("hello", prompt_tokens=3, completion_tokens=2)
    completion = tier.complete(REQUEST)
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == (
        "hello",
        3,
        2,
    )


SSE_HOSTILE = {
    "a deep chunk": b"data: " + b"[" * 3000 + b"]" * 3000 + b"\n\n",
    "a chunk that is not JSON": b"data: {nope\n\n",
    "delta content is a list": b'data: {"choices":[{"delta":{"content":[1]}}]}\n\n',
    "a stream over the size limit": b"data: " + b"a" * (MAX_RESPONSE_BYTES + 10) + b"\n\n",
    "a negative usage count": b'data: {"choices":[],"usage":{"prompt_tokens":-1}}\n\n',
    "usage that is text": b'data: {"choices":[],"usage":"many"}\n\n',
    "no choices and no usage": b'data: {"choices":[]}\n\n',
}


@pytest.mark.parametrize("case", sorted(SSE_HOSTILE))
def test_hostile_stream_chunks_are_bad_response(
    server: _Server, tier: RemoteTier, case: str
) -> None:
    """Each hostile SSE stream raises TierError(bad_response) while it is read."""
    server.content_type = "text/event-stream"
    server.body = SSE_HOSTILE[case]
    with pytest.raises(TierError) as info:
        list(tier.stream(REQUEST))
    assert info.value.kind == "bad_response"


def test_a_good_stream_still_yields_its_chunks(server: _Server, tier: RemoteTier) -> None:
    """Well-formed SSE chunks come through as text and a finish reason."""
    server.content_type = "text/event-stream"
    server.body = (
        b'data: {"choices":[{"delta":{"content":"he"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"llo"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    chunks = list(tier.stream(REQUEST))
    assert "".join(c.text for c in chunks) == "hello"
    assert chunks[-1].finish_reason == "stop"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=512)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "choices",
                        "message",
                        "content",
                        "usage",
                        "delta",
                        "finish_reason",
                        "prompt_tokens",
                    ]
                ),
                c,
                max_size=3,
            )
        ),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode())
)
def test_any_answer_completes_or_is_bad_response(
    server: _Server, tier: RemoteTier, body: bytes
) -> None:
    """Whatever bytes the server answers with, complete() returns a Completion or raises
    TierError(bad_response)."""
    server.content_type = "application/json"
    server.body = body
    try:
        completion = tier.complete(REQUEST)
    except TierError as e:
        assert e.kind == "bad_response"
    else:
        assert isinstance(completion.text, str)
        assert completion.prompt_tokens >= 0


def test_a_streams_usage_chunk_counts_its_tokens(server: _Server, tier: RemoteTier) -> None:
    """A last chunk with choices [] and usage (stream_options.include_usage) puts its token
    counts on the finishing chunk; a stream without one leaves them unknown."""
    server.content_type = "text/event-stream"
    finish = b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1}}\n\n'
    server.body = finish + usage + b"data: [DONE]\n\n"
    chunks = list(tier.stream(REQUEST))
    assert [(c.text, c.finish_reason) for c in chunks] == [("hi", "stop")]
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (9, 1)
    server.body = finish + b"data: [DONE]\n\n"
    chunks = list(tier.stream(REQUEST))
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (None, None)
