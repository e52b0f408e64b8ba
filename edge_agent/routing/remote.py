"""Remote tiers: OpenAI-compatible chat completion servers (private or cloud), over httpx.

Failures are classified so the router can decide what they mean: ``timeout``,
``connect``, ``server_error`` (5xx) and ``rate_limited`` (429, with its Retry-After) count
against the tier's circuit breaker; ``rejected`` (another 4xx: our request was refused)
and ``bad_response`` do not open the breaker but still fall back to the next tier.
"""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from edge_agent.config import RemoteTierConfig
from edge_agent.runtimes.base import ChatRequest, Completion, CompletionChunk

FailureKind = Literal[
    "timeout", "connect", "server_error", "rate_limited", "rejected", "bad_response"
]
BREAKER_KINDS = frozenset({"timeout", "connect", "server_error", "rate_limited"})


class TierError(RuntimeError):
    """A remote tier did not answer usefully; ``kind`` says how."""

    def __init__(
        self, tier: str, kind: FailureKind, detail: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{tier}: {kind}: {detail}")
        self.tier = tier
        self.kind = kind
        self.retry_after_s = retry_after_s

    @property
    def counts_against_breaker(self) -> bool:
        return self.kind in BREAKER_KINDS


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
            response = self._client.post(
                self._url(), json=self._payload(request, model, False), headers=self._headers()
            )
        except httpx.TimeoutException as e:
            raise TierError(self.name, "timeout", type(e).__name__) from e
        except httpx.TransportError as e:
            raise TierError(self.name, "connect", type(e).__name__) from e
        self._check(response)
        try:
            body = response.json()
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return Completion(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise TierError(self.name, "bad_response", type(e).__name__) from e

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
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        choice = json.loads(data)["choices"][0]
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        raise TierError(self.name, "bad_response", "malformed SSE chunk") from e
                    text = (choice.get("delta") or {}).get("content") or ""
                    finish = choice.get("finish_reason")
                    if text or finish:
                        yield CompletionChunk(text=text, finish_reason=finish)
        except httpx.TimeoutException as e:
            raise TierError(self.name, "timeout", type(e).__name__) from e
        except httpx.TransportError as e:
            raise TierError(self.name, "connect", type(e).__name__) from e

    def close(self) -> None:
        self._client.close()
