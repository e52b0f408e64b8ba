"""The one small interface every local runtime sits behind."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A runtime-neutral chat request (already validated by the HTTP layer)."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Ask for the log-probability of each generated token (the confidence cascade uses it).
    logprobs: bool = False
    # Constrain the output to this JSON schema (llama.cpp: a grammar built from it).
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # Natural-log probability of each generated token, when the request asked for them.
    token_logprobs: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class CompletionChunk:
    """One streamed piece; the last one has ``finish_reason`` set and, where the tier
    counts them, the request's tokens (as ``Completion`` would have them)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class RuntimeLoadError(RuntimeError):
    """A model could not be loaded; the local tier is unhealthy for the stated reason."""


class ChatRuntime(Protocol):
    """A loaded chat model. Implementations serialize calls themselves if they must."""

    runtime_name: str
    model_name: str

    def complete(self, request: ChatRequest) -> Completion: ...

    def stream(self, request: ChatRequest) -> Iterator[CompletionChunk]: ...

    def close(self) -> None: ...
