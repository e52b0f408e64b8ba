"""The kinds of model an update installs, and what differs between them.

- chat models (config ``models``, runtimes ``llama.cpp`` and ``ort-genai``) are checked by
  answering the health prompt;
- perception classifiers (config ``perception``, runtime ``onnx``: one ``.onnx`` file) are
  checked by scoring one neutral input of the model's input shape.

Loading and serving are the agent's (``load`` and ``swap`` of ``UpdateManager``); TUF,
compatibility, slots, the switch, trials, rollbacks and reporting are the same code for
both kinds (``manager``). See docs/model-install.md.
"""

import functools
import time
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

from edge_agent.config import ModelConfig, PerceptionModelConfig, UpdatesConfig
from edge_agent.runtimes.base import ChatMessage, ChatRequest, ChatRuntime
from edge_agent.updates.decisions import (
    InstallFailed,
    Runtime,
    ScoresSmoke,
    SmokeResult,
    TargetMeta,
    health_problem,
    latency_budget_ms,
    scores_problem,
)

T = TypeVar("T")

# A model of the agent config that updates may replace: a chat model or a classifier.
ModelSpec = ModelConfig | PerceptionModelConfig


@runtime_checkable
class Classifier(Protocol):
    """A loaded perception model, as the health check sees it (OrtPerceptionRuntime)."""

    @property
    def num_classes(self) -> int | None: ...

    def smoke_scores(self) -> list[tuple[float, ...]]: ...

    def close(self) -> None: ...


# What the agent serves a model with.
Served = ChatRuntime | Classifier
# (runtime, sha256 as measured by the runtime) for a model config; raises on failure.
LoadFn = Callable[[ModelSpec], tuple[Served, str]]
# Serve a runtime under a model name from now on (the agent's hot swap).
SwapFn = Callable[[str, Served, str], None]


def configured_runtime(spec: ModelSpec) -> Runtime:
    """The update runtime a configured model takes targets for."""
    if isinstance(spec, PerceptionModelConfig):
        return "onnx"
    return spec.runtime


def _timed(smoke: Callable[[], T]) -> tuple[T, float]:
    """Run one smoke inference: (its result, milliseconds it took)."""
    started = time.perf_counter()
    try:
        result = smoke()
    except Exception as e:  # a crashing candidate fails its check, not the agent
        raise InstallFailed(f"health check: smoke inference raised {e!r}") from e
    return result, (time.perf_counter() - started) * 1000


def health_check(
    spec: ModelSpec, runtime: Served, meta: TargetMeta | None, config: UpdatesConfig
) -> None:
    """One smoke inference on a loaded (and warmed-up) candidate: sane output inside the
    latency budget, or ``InstallFailed`` saying why not."""
    budget = latency_budget_ms(meta, config.health_latency_budget_ms)
    if isinstance(runtime, Classifier):
        labels = spec.labels if isinstance(spec, PerceptionModelConfig) else None
        expected = len(labels) if labels is not None else runtime.num_classes
        rows, latency_ms = _timed(runtime.smoke_scores)
        problem = scores_problem(ScoresSmoke(tuple(rows), expected, latency_ms), budget)
    else:
        request = ChatRequest(
            messages=(ChatMessage("user", config.health_prompt),),
            max_tokens=config.health_max_tokens,
            temperature=0.0,
        )
        completion, latency_ms = _timed(functools.partial(runtime.complete, request))
        problem = health_problem(
            SmokeResult(completion.text, completion.completion_tokens, latency_ms), budget
        )
    if problem is not None:
        raise InstallFailed(f"health check: {problem}")
