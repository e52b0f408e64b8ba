"""Windowed request and drift telemetry: counts and fixed-bin sketches per window.

Every chat and perception request is observed here (thread-safe, no I/O). Observations
fall into epoch-aligned windows of ``window_s`` seconds by the injected clock; ``flush``
turns the windows that have ended into ``inference.window`` and ``drift.window`` bodies
(shared/telemetry_windows.py) for the agent to put in its outbox. Only names, counts and
sketches are kept: never prompt, completion or input content.
"""

import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from shared import sketches
from shared.telemetry_windows import (
    DRIFT_WINDOW,
    INFERENCE_WINDOW,
    DriftWindow,
    InferenceWindow,
    window_start,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Kind = Literal["chat", "perception"]
# Distinct (tier, task class, model) groups one window keeps before new task classes are
# folded into ``other``: a client inventing task classes must not grow memory or records
# without bound. The fold keeps every request counted.
MAX_GROUPS = 240
OTHER = "other"
PERCEPTION_TASK = "perception"
_BAD_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.:/-]")
# InferenceWindow holds at most 256 groups; more are sent as several records.
_GROUPS_PER_RECORD = 256


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_label(value: str | None) -> str | None:
    """``value`` in the protocol's label alphabet (other characters become ``_``, at most
    64 characters), or None for nothing."""
    if not value:
        return None
    return _BAD_LABEL_CHARS.sub("_", value)[:64]


@dataclass(frozen=True, slots=True)
class ChatObservation:
    """What one chat request contributes (names and counts only)."""

    tier: str  # the tier that answered, or "none"
    task_class: str | None
    model: str | None  # the model that answered
    status: str  # "ok" or why not (unavailable, queued, error, cancelled)
    escalated: bool = False
    cascaded: bool = False
    fallback: bool = False  # served degraded
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    local_model: str | None = None  # the local model whose confidence was measured
    local_confidence: float | None = None
    # Reversible redaction: (category, spans replaced) in what a remote tier received.
    redactions: tuple[tuple[str, int], ...] = ()

    @property
    def error(self) -> bool:
        return self.status != "ok"


@dataclass(frozen=True, slots=True)
class PerceptionObservation:
    """What one perception request contributes (never the inputs)."""

    model: str
    status: str  # ok, invalid_inputs, error, unavailable
    latency_ms: float
    confidence: float | None = None
    label_index: int | None = None

    @property
    def tier(self) -> str:
        # A model that failed to load serves nothing: like a chat request no tier took.
        return "none" if self.status == "unavailable" else "local"

    @property
    def error(self) -> bool:
        return self.status != "ok"


@dataclass(slots=True)
class _Group:
    count: int = 0
    errors: int = 0
    escalations: int = 0
    cascades: int = 0
    fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: list[int] = field(default_factory=lambda: sketches.empty("latency_ms"))


@dataclass(slots=True)
class _Drift:
    features: dict[sketches.Feature, list[int]] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)

    def add(self, feature: sketches.Feature, value: float) -> None:
        counts = self.features.setdefault(feature, sketches.empty(feature))
        sketches.add(counts, feature, value)


_GroupKey = tuple[str, str | None, str | None]
_DriftKey = tuple[str, str | None, Kind]  # model, version, kind


@dataclass(slots=True)
class _Window:
    start: datetime
    groups: dict[_GroupKey, _Group] = field(default_factory=dict)
    drift: dict[_DriftKey, _Drift] = field(default_factory=dict)

    def group(self, tier: str, task_class: str | None, model: str | None) -> _Group:
        key = (as_label(tier) or "none", as_label(task_class), as_label(model))
        if key not in self.groups and len(self.groups) >= MAX_GROUPS:
            key = (key[0], OTHER, key[2])
        return self.groups.setdefault(key, _Group())

    def drift_of(self, model: str, version: str | None, kind: Kind) -> _Drift | None:
        name = as_label(model)
        if name is None:
            return None
        return self.drift.setdefault((name, as_label(version), kind), _Drift())


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class WindowAggregator:
    """Per-window request groups and per-model drift sketches; see the module doc."""

    def __init__(
        self,
        window_s: float,
        *,
        clock: Clock = utc_now,
        version_of: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        if not 0 < window_s <= 86_400:
            raise ValueError("window_s must be in (0, 86400]")
        self.window_s = window_s
        self._clock = clock
        self._version_of = version_of
        self._lock = threading.Lock()
        self._current: _Window | None = None
        self._ended: list[_Window] = []
        self.invalid = 0  # observation values that could not be sketched (NaN, negative)
        self.unsent = 0  # windows whose body did not validate (a bug: logged)

    # --- observing ------------------------------------------------------------------------
    def _window(self) -> _Window:
        """The window now falls in (caller holds the lock); a change of window ends the
        previous one."""
        start = window_start(self._clock(), self.window_s)
        current = self._current
        if current is None or current.start != start:
            if current is not None and (current.groups or current.drift):
                self._ended.append(current)
            current = self._current = _Window(start)
        return current

    def _latency(self, value: float) -> float:
        if _finite(value) and value >= 0:
            return value
        self.invalid += 1
        return 0.0

    def observe_chat(self, obs: ChatObservation) -> None:
        # Versions are looked up before taking the lock: the lookup may take others.
        version = self._version_of(obs.model) if obs.model else None
        local_version = self._version_of(obs.local_model) if obs.local_model else None
        with self._lock:
            window = self._window()
            group = window.group(obs.tier, obs.task_class, obs.model)
            group.count += 1
            group.errors += obs.error
            group.escalations += obs.escalated
            group.cascades += obs.cascaded
            group.fallbacks += obs.fallback
            group.prompt_tokens += max(0, obs.prompt_tokens)
            group.completion_tokens += max(0, obs.completion_tokens)
            sketches.add(group.latency_ms, "latency_ms", self._latency(obs.latency_ms))
            if obs.model and obs.tier != "none" and obs.prompt_tokens > 0:
                drift = window.drift_of(obs.model, version, "chat")
                if drift is not None:
                    drift.add("prompt_tokens", obs.prompt_tokens)
            if obs.local_model and obs.local_confidence is not None:
                if not _finite(obs.local_confidence):
                    self.invalid += 1
                    return
                drift = window.drift_of(obs.local_model, local_version, "chat")
                if drift is not None:
                    drift.add("local_confidence", obs.local_confidence)

    def observe_perception(self, obs: PerceptionObservation) -> None:
        version = self._version_of(obs.model)
        with self._lock:
            window = self._window()
            group = window.group(obs.tier, PERCEPTION_TASK, obs.model)
            group.count += 1
            group.errors += obs.error
            sketches.add(group.latency_ms, "latency_ms", self._latency(obs.latency_ms))
            if obs.status != "ok":
                return
            drift = window.drift_of(obs.model, version, "perception")
            if drift is None:
                return
            if obs.confidence is not None:
                if _finite(obs.confidence):
                    drift.add("perception_confidence", obs.confidence)
                else:
                    self.invalid += 1
            if obs.label_index is not None:
                sketches.add_class(drift.classes, str(obs.label_index))

    # --- flushing -------------------------------------------------------------------------
    def seconds_to_boundary(self) -> float:
        """Seconds from now until the current window ends."""
        now = self._clock()
        end = window_start(now, self.window_s) + timedelta(seconds=self.window_s)
        return max(0.0, (end - now).total_seconds())

    def flush(self, *, final: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """``(record name, body)`` for every window that has ended, and with ``final`` (at
        shutdown) for the current one too; each window is returned once."""
        with self._lock:
            current = self._current
            if current is not None and (
                final or current.start != window_start(self._clock(), self.window_s)
            ):
                if current.groups or current.drift:
                    self._ended.append(current)
                self._current = None
            ended, self._ended = self._ended, []
        records: list[tuple[str, dict[str, Any]]] = []
        for window in ended:
            records.extend(self._bodies(window))
        return records

    def _bodies(self, window: _Window) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        groups = [
            {
                "tier": tier,
                "task_class": task_class,
                "model": model,
                "count": g.count,
                "errors": g.errors,
                "escalations": g.escalations,
                "cascades": g.cascades,
                "fallbacks": g.fallbacks,
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens,
                "latency_ms": g.latency_ms,
            }
            for (tier, task_class, model), g in sorted(
                window.groups.items(), key=lambda kv: tuple(k or "" for k in kv[0])
            )
        ]
        for i in range(0, len(groups), _GROUPS_PER_RECORD):
            chunk = groups[i : i + _GROUPS_PER_RECORD]
            self._add(
                out,
                INFERENCE_WINDOW,
                InferenceWindow,
                {"start": window.start, "window_s": self.window_s, "groups": chunk},
            )
        for (model, version, kind), drift in sorted(
            window.drift.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])
        ):
            fields = {
                "start": window.start,
                "window_s": self.window_s,
                "model": model,
                "version": version,
                "kind": kind,
                "features": dict(drift.features),
                "classes": dict(drift.classes),
            }
            self._add(out, DRIFT_WINDOW, DriftWindow, fields)
        return out

    def _add(
        self,
        out: list[tuple[str, dict[str, Any]]],
        name: str,
        schema: type[InferenceWindow] | type[DriftWindow],
        fields: dict[str, Any],
    ) -> None:
        try:
            body = schema.model_validate(fields)
        except ValidationError as e:  # labels are sanitized, so this is a bug: say so
            self.unsent += 1
            log.error("%s body refused by its own schema: %s", name, e.errors(include_url=False))
            return
        out.append((name, body.model_dump(mode="json")))


__all__ = [
    "MAX_GROUPS",
    "OTHER",
    "PERCEPTION_TASK",
    "ChatObservation",
    "Clock",
    "PerceptionObservation",
    "WindowAggregator",
    "as_label",
    "utc_now",
]
