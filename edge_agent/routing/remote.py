"""Remote tiers: OpenAI-compatible chat completion servers (private or cloud), over httpx.

Failures are classified so the router can decide what they mean: ``timeout``,
``connect``, ``server_error`` (5xx) and ``rate_limited`` (429, with its Retry-After) count
against the tier's circuit breaker; ``rejected`` (another 4xx: our request was refused)
and ``bad_response`` do not open the breaker but still fall back to the next tier.

A remote answer is outside input like any other: its size is bounded while it is read
(a hostile or broken endpoint could stream gigabytes), it is parsed by the bounded JSON
parser (deep nesting cannot raise ``RecursionError``), and every field we use is checked
for its type and range before it becomes a ``Completion``; any defect is ``bad_response``.
"""

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from edge_agent.config import RemoteTierConfig
from edge_agent.routing.tier_errors import FailureKind, TierError
from edge_agent.runtimes.base import ChatRequest, Completion, CompletionChunk
from shared.json_guard import JsonShapeError, loads_bounded

# A whole non-streamed answer, and everything one streamed answer may send: far above any
# completion a device asks for (max_tokens is bounded), far below what would hurt a device.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Our requests' max_tokens are far below this; a larger count is a broken endpoint.
_MAX_TOKENS = 10_000_000


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RemoteTier:
    """One OpenAI-compatible endpoint (``base_url`` includes ``/v1``)."""

    runtime_name = "openai-compatible"

    def __init__(
        self, name: str, config: RemoteTierConfig, *, client: httpx.Client | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.model_name = config.model
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _payload(self, request: ChatRequest, model: str | None, stream: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model or self.config.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": stream,
        }
        if stream and self.config.stream_usage:
            # OpenAI's way to have a stream's token counts: a last chunk with usage.
            payload["stream_options"] = {"include_usage": True}
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.json_schema is not None:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema, "strict": True},
            }
        return payload

    def _url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        if response.status_code == 429:
            raise TierError(
                self.name,
                "rate_limited",
                "429 Too Many Requests",
                parse_retry_after(response.headers.get("retry-after")),
            )
        kind: FailureKind = "server_error" if response.status_code >= 500 else "rejected"
        raise TierError(self.name, kind, f"HTTP {response.status_code}")

    def complete(self, request: ChatRequest, *, model: str | None = None) -> Completion:
        try:
            with self._client.stream(
                "POST",
                self._url(),
                json=self._payload(request, model, False),
                headers=self._headers(),
            ) as response:
                raw = self._read_bounded(response)
        except httpx.TimeoutException as e:
            raise TierError(self.name, "timeout", type(e).__name__) from e
        except httpx.TransportError as e:
            raise TierError(self.name, "connect", type(e).__name__) from e
        self._check(response)
        body = self._parse(raw)
        choice = _first_choice(body)
        message = choice.get("message") if choice is not None else None
        usage = body.get("usage") or {}
        if choice is None or not isinstance(message, dict) or not isinstance(usage, dict):
            raise TierError(self.name, "bad_response", "no choices[0].message in the answer")
        text = message.get("content") or ""
        finish = choice.get("finish_reason") or "stop"
        prompt_tokens = _token_count(usage.get("prompt_tokens", 0))
        completion_tokens = _token_count(usage.get("completion_tokens", 0))
        if not isinstance(text, str) or not isinstance(finish, str):
            raise TierError(self.name, "bad_response", "content or finish_reason is not text")
        if prompt_tokens is None or completion_tokens is None:
            raise TierError(self.name, "bad_response", "usage token counts out of range")
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def _read_bounded(self, response: httpx.Response) -> bytes:
        """The body, refused once it passes ``MAX_RESPONSE_BYTES`` (checked while reading)."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise TierError(
                    self.name, "bad_response", f"answer over {MAX_RESPONSE_BYTES} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, raw: bytes | str) -> dict[str, Any]:
        try:
            body = loads_bounded(raw, max_bytes=MAX_RESPONSE_BYTES)
        except JsonShapeError as e:
            raise TierError(self.name, "bad_response", f"answer is not usable JSON ({e})") from e
        if not isinstance(body, dict):
            raise TierError(self.name, "bad_response", "answer is not a JSON object")
        return body

    def stream(
        self, request: ChatRequest, *, model: str | None = None
    ) -> Iterator[CompletionChunk]:
        """SSE chunks; errors before the first chunk raise TierError (the router may fail over)."""
        try:
            with self._client.stream(
                "POST",
                self._url(),
                json=self._payload(request, model, True),
                headers=self._headers(),
            ) as response:
                if response.status_code >= 400:
                    self._read_bounded(response)
                    self._check(response)
                received = 0
                last: CompletionChunk | None = None
                usage: tuple[int, int] | None = None
                for line in response.iter_lines():
                    received += len(line) + 1
                    if received > MAX_RESPONSE_BYTES:
                        raise TierError(
                            self.name, "bad_response", f"stream over {MAX_RESPONSE_BYTES} bytes"
                        )
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk, counted = self._chunk(data)
                    usage = counted or usage
                    if chunk is not None and chunk.finish_reason is not None:
                        last = chunk  # held back for the usage chunk that may follow
                    elif chunk is not None:
                        yield chunk
                if last is not None or usage is not None:
                    final = last or CompletionChunk(text="")
                    if usage is not None:
                        final = replace(final, prompt_tokens=usage[0], completion_tokens=usage[1])
                    yield final
        except httpx.TimeoutException as e:
            raise TierError(self.name, "timeout", type(e).__name__) from e
        except httpx.TransportError as e:
            raise TierError(self.name, "connect", type(e).__name__) from e

    def _chunk(self, data: str) -> tuple[CompletionChunk | None, tuple[int, int] | None]:
        """One SSE event: its text piece (None if it has none) and the usage it reports
        (``stream_options.include_usage``: a last event with ``choices: []``)."""
        body = self._parse(data)
        usage = self._usage(body.get("usage"))
        if usage is not None and body.get("choices") == []:
            return None, usage
        choice = _first_choice(body)
        delta = choice.get("delta") if choice is not None else None
        if choice is None or not isinstance(delta or {}, dict):
            raise TierError(self.name, "bad_response", "malformed SSE chunk")
        text = (delta or {}).get("content") or ""
        finish = choice.get("finish_reason")
        if not isinstance(text, str) or not isinstance(finish, str | None):
            raise TierError(self.name, "bad_response", "malformed SSE chunk")
        if text or finish:
            return CompletionChunk(text=text, finish_reason=finish), usage
        return None, usage

    def _usage(self, value: object) -> tuple[int, int] | None:
        """A streamed ``usage`` object as (prompt, completion) tokens; None when absent."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise TierError(self.name, "bad_response", "usage is not an object")
        prompt_tokens = _token_count(value.get("prompt_tokens", 0))
        completion_tokens = _token_count(value.get("completion_tokens", 0))
        if prompt_tokens is None or completion_tokens is None:
            raise TierError(self.name, "bad_response", "usage token counts out of range")
        return prompt_tokens, completion_tokens

    def close(self) -> None:
        self._client.close()


def _first_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _token_count(value: object) -> int | None:
    """A usage count as an int, or None when it is not a plausible count."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= _MAX_TOKENS:
        return None
    return int(value)
