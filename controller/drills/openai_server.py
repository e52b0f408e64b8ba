"""A real OpenAI-compatible HTTP server on loopback that records every request it receives.

Stands in for a private or cloud LLM provider, which cannot be reached from here (tests,
and the offline drills' cloud tier). It speaks the same protocol
(``POST /v1/chat/completions``, JSON or SSE) and can be told to fail: ``status`` (e.g. 500,
or 429 with ``retry_after``) or ``delay_s`` (a hang).
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    reply: str = "remote answer"
    status: int = 200
    retry_after: str | None = None
    delay_s: float = 0.0
    fail_stream_midway: bool = False
    # Answer stream_options.include_usage with a last chunk holding usage (as OpenAI does).
    stream_usage: bool = True


@dataclass
class FakeProvider:
    name: str
    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def raw_bodies(self) -> str:
        """Everything this provider was ever sent, as one string (for leak checks)."""
        with self.lock:
            return json.dumps(self.received)

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def _handler(provider: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send_json(self, status: int, body: dict[str, Any], extra: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with provider.lock:
                provider.received.append(body)
                provider.headers.append({k.lower(): v for k, v in self.headers.items()})
            b = provider.behaviour
            if b.delay_s:
                time.sleep(b.delay_s)
            if self.path != "/v1/chat/completions":
                self._send_json(404, {"error": {"message": "not found"}}, {})
                return
            if b.status != 200:
                extra = {"Retry-After": b.retry_after} if b.retry_after else {}
                self._send_json(b.status, {"error": {"message": f"status {b.status}"}}, extra)
                return
            if body.get("stream"):
                self._stream(body, b)
                return
            self._send_json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": b.reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                },
                {},
            )

        def _stream(self, body: dict[str, Any], b: Behaviour) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for i, word in enumerate(b.reply.split(" ")):
                if b.fail_stream_midway and i == 1:
                    self.wfile.write(b"data: {not json\n\n")
                    self.wfile.flush()
                    return
                chunk = {
                    "choices": [
                        {"index": 0, "delta": {"content": word + " "}, "finish_reason": None}
                    ]
                }
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(b"data: " + json.dumps(end).encode() + b"\n\n")
            options = body.get("stream_options") or {}
            if b.stream_usage and options.get("include_usage"):
                words = len(b.reply.split(" "))
                usage = {
                    "prompt_tokens": 11,
                    "completion_tokens": words,
                    "total_tokens": 11 + words,
                }
                last = {"choices": [], "usage": usage}
                self.wfile.write(b"data: " + json.dumps(last).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


def start_provider(name: str) -> FakeProvider:
    """Serve on a free loopback port in a daemon thread; ``provider.server.shutdown()`` stops it."""
    provider = FakeProvider(name)
    provider.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    provider.server.daemon_threads = True
    threading.Thread(target=provider.server.serve_forever, daemon=True).start()
    return provider


__all__ = ["Behaviour", "FakeProvider", "start_provider"]
