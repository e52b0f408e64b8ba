"""Bodies of the windowed telemetry records agents send and the controller rolls up.

Every ``window_s`` an agent sends (as outbox ``metric`` records, so they are delivered
exactly once like all telemetry):

- ``inference.window``: per (tier, task class, model) the request count, errors,
  escalations, cascades, fallbacks, tokens and a latency sketch;
- ``drift.window``: per served model, sketches of its inputs and outputs (prompt length,
  local confidence, perception confidence, output classes).

They carry counts only, never content. The controller validates each body with these
models and refuses (counts, never stores in its rollups) one that does not conform.
"""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from shared import sketches

INFERENCE_WINDOW = "inference.window"
DRIFT_WINDOW = "drift.window"
SYSTEM = "system"
WINDOW_RECORDS = (INFERENCE_WINDOW, DRIFT_WINDOW)

# Per window: at most sketches.MAX_COUNT, so sums over a fleet and a year fit a BIGINT.
Count = Annotated[int, Field(ge=0, le=sketches.MAX_COUNT)]
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestGroup(_Strict):
    """Requests of one (tier, task class, model) in one window."""

    tier: Label  # local | private | cloud | none (no tier could serve)
    task_class: Label | None = None
    model: Label | None = None
    count: Count
    errors: Count = 0
    # The agent's RouteOutcome flags, counted (docs/telemetry.md):
    escalations: Count = 0  # local answer judged not confident enough, re-asked higher up
    cascades: Count = 0  # went through the cascade (local first, its confidence checked)
    fallbacks: Count = 0  # served degraded (a fallback tier, or a failed escalation)
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    latency_ms: list[int]  # sketch of feature "latency_ms"

    @field_validator("latency_ms")
    @classmethod
    def _sketch(cls, value: list[int]) -> list[int]:
        return sketches.validate("latency_ms", value)


class InferenceWindow(_Strict):
    """Body of an ``inference.window`` record."""

    start: AwareDatetime
    window_s: float = Field(gt=0, le=86_400)
    groups: list[RequestGroup] = Field(min_length=1, max_length=256)


class DriftWindow(_Strict):
    """Body of a ``drift.window`` record: one model's input/output sketches."""

    start: AwareDatetime
    window_s: float = Field(gt=0, le=86_400)
    model: Label
    version: Label | None = None
    kind: Literal["chat", "perception"]
    features: dict[str, list[int]] = Field(default_factory=dict)
    classes: dict[str, int] = Field(default_factory=dict)

    @field_validator("features")
    @classmethod
    def _sketches(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        return {name: sketches.validate(name, counts) for name, counts in value.items()}

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: dict[str, int]) -> dict[str, int]:
        return sketches.validate_classes(value)


def window_start(at: datetime, window_s: float) -> datetime:
    """The start of the window of length ``window_s`` that ``at`` falls in (epoch-aligned)."""
    ts = at.timestamp()
    return datetime.fromtimestamp(ts - ts % window_s, tz=at.tzinfo)


__all__ = [
    "DRIFT_WINDOW",
    "INFERENCE_WINDOW",
    "SYSTEM",
    "WINDOW_RECORDS",
    "DriftWindow",
    "InferenceWindow",
    "RequestGroup",
    "window_start",
]
