"""Folding raw telemetry records into hourly aggregates: pure, no I/O, no clock.

``fold`` takes the raw ``inference.window``, ``drift.window`` and ``system`` records of one
rollup chunk and returns their sums per hourly key; ``rollup.py`` merges those into the
stored rows. A record whose body does not conform is counted as malformed and left out;
it never stops the records around it.

The hour a record lands in comes from the device's clock (a window's ``start``, a system
sample's ``at``). It is checked against the controller's clock, the row's ``received_at``:
a time more than ``WindowBounds.ahead`` after it, or more than ``max_age`` before it, is
malformed (a wrong device clock would otherwise create hours in the future, which the
newest-hour views and alert judgement would then read).
"""

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import sketches
from shared.telemetry_windows import (
    DRIFT_WINDOW,
    INFERENCE_WINDOW,
    SYSTEM,
    DriftWindow,
    InferenceWindow,
)

ROLLED_UP = (INFERENCE_WINDOW, DRIFT_WINDOW, SYSTEM)
CLASSES = "classes"  # the drift "feature" holding a classifier's output class counts


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken as UTC already (SQLite hands them back so)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour ``moment`` falls in (how hours are keyed and stored)."""
    return utc(moment).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One stored ``telemetry_record`` the rollup reads (body already decoded)."""

    id: int
    device_id: str
    name: str
    at: datetime
    body: Any
    received_at: datetime | None = None  # the controller's clock; None: not checked


@dataclass(frozen=True, slots=True)
class WindowBounds:
    """How far a record's device time may be from its ``received_at``."""

    ahead: timedelta = timedelta(hours=1)
    max_age: timedelta = timedelta(days=7)

    def check(self, moment: datetime, received_at: datetime | None) -> None:
        """A ValueError if ``moment`` is outside the bounds around ``received_at``."""
        if received_at is None:
            return
        received = utc(received_at)
        if utc(moment) > received + self.ahead:
            raise ValueError("window starts too far after it was received (device clock?)")
        if utc(moment) < received - self.max_age:
            raise ValueError("window starts too long before it was received")


class SystemSample(BaseModel):
    """The fields of a ``system`` record the rollup keeps (others are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)

    cpu_percent: float | None = Field(default=None, ge=0, le=100)
    memory_percent: float | None = Field(default=None, ge=0, le=100)
    disk_percent: float | None = Field(default=None, ge=0, le=100)
    temperature_c: float | None = Field(default=None, ge=-100, le=300)
    load1: float | None = Field(default=None, ge=0, le=1e6)
    outbox_bytes: int | None = Field(default=None, ge=0, le=2**53)


@dataclass(slots=True)
class RequestAgg:
    """Requests of one hourly (tier, task class) bucket."""

    count: int = 0
    errors: int = 0
    escalations: int = 0
    cascades: int = 0
    fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: list[int] = field(default_factory=lambda: sketches.empty("latency_ms"))

    COUNTERS = (
        "count",
        "errors",
        "escalations",
        "cascades",
        "fallbacks",
        "prompt_tokens",
        "completion_tokens",
    )

    def merge(self, other: "RequestAgg") -> None:
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency = sketches.merge(self.latency, other.latency)


@dataclass(slots=True)
class HealthAgg:
    """``system`` samples of one device and hour."""

    samples: int = 0
    cpu_samples: int = 0
    cpu_sum: float = 0.0
    cpu_max: float | None = None
    memory_samples: int = 0
    memory_sum: float = 0.0
    memory_max: float | None = None
    disk_max: float | None = None
    temperature_max: float | None = None
    last_at: datetime | None = None
    last: dict[str, Any] = field(default_factory=dict)

    def add(self, sample: SystemSample, at: datetime) -> None:
        self.merge(
            HealthAgg(
                samples=1,
                cpu_samples=int(sample.cpu_percent is not None),
                cpu_sum=sample.cpu_percent or 0.0,
                cpu_max=sample.cpu_percent,
                memory_samples=int(sample.memory_percent is not None),
                memory_sum=sample.memory_percent or 0.0,
                memory_max=sample.memory_percent,
                disk_max=sample.disk_percent,
                temperature_max=sample.temperature_c,
                last_at=at,
                last=sample.model_dump(exclude_none=True),
            )
        )

    def merge(self, other: "HealthAgg") -> None:
        self.samples += other.samples
        self.cpu_samples += other.cpu_samples
        self.cpu_sum += other.cpu_sum
        self.memory_samples += other.memory_samples
        self.memory_sum += other.memory_sum
        self.cpu_max = _max(self.cpu_max, other.cpu_max)
        self.memory_max = _max(self.memory_max, other.memory_max)
        self.disk_max = _max(self.disk_max, other.disk_max)
        self.temperature_max = _max(self.temperature_max, other.temperature_max)
        if other.last_at is not None and (self.last_at is None or other.last_at >= self.last_at):
            self.last_at, self.last = other.last_at, other.last


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


Counts = list[int] | dict[str, int]


@dataclass(slots=True)
class DriftAgg:
    """One feature's sketch (a count list, or label counts for ``classes``)."""

    counts: Counts
    samples: int = 0

    def merge(self, other: "DriftAgg") -> None:
        self.counts = merge_counts(self.counts, other.counts)
        self.samples += other.samples


def merge_counts(a: Counts, b: Counts) -> Counts:
    """Sum two sketches of one feature (lists bin by bin, label maps label by label)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return sketches.merge_classes(a, b)
    if isinstance(a, list) and isinstance(b, list):
        if not a:
            return list(b)
        if not b:
            return list(a)
        return sketches.merge(a, b)
    raise ValueError("cannot merge a categorical sketch with a binned one")


def samples_of(counts: Counts) -> int:
    return sum(counts.values()) if isinstance(counts, dict) else sum(counts)


RequestKey = tuple[str, datetime, str, str]  # device, hour, tier, task class
FleetKey = tuple[datetime, str, str]  # hour, tier, task class
HealthKey = tuple[str, datetime]  # device, hour
DriftKey = tuple[str, str, str, datetime]  # model, version, feature, hour


@dataclass(slots=True)
class Fold:
    """What one chunk of raw records adds to each hourly table."""

    requests: dict[RequestKey, RequestAgg] = field(default_factory=dict)
    fleet: dict[FleetKey, RequestAgg] = field(default_factory=dict)
    health: dict[HealthKey, HealthAgg] = field(default_factory=dict)
    drift: dict[DriftKey, DriftAgg] = field(default_factory=dict)
    folded: int = 0
    malformed: Counter[str] = field(default_factory=Counter)


def _group_agg(group: Any) -> RequestAgg:
    return RequestAgg(
        count=group.count,
        errors=group.errors,
        escalations=group.escalations,
        cascades=group.cascades,
        fallbacks=group.fallbacks,
        prompt_tokens=group.prompt_tokens,
        completion_tokens=group.completion_tokens,
        latency=list(group.latency_ms),
    )


def _add(table: dict[Any, Any], key: Any, value: Any) -> None:
    current = table.get(key)
    if current is None:
        table[key] = value
    else:
        current.merge(value)


def _fold_inference(out: Fold, device_id: str, window: InferenceWindow) -> None:
    hour = hour_of(window.start)
    for group in window.groups:
        task_class = group.task_class or ""
        _add(out.requests, (device_id, hour, group.tier, task_class), _group_agg(group))
        _add(out.fleet, (hour, group.tier, task_class), _group_agg(group))


def _fold_drift(out: Fold, window: DriftWindow) -> None:
    hour = hour_of(window.start)
    version = window.version or ""
    for feature, counts in window.features.items():
        agg = DriftAgg(list(counts), sum(counts))
        _add(out.drift, (window.model, version, feature, hour), agg)
    if window.classes:
        agg = DriftAgg(dict(window.classes), sum(window.classes.values()))
        _add(out.drift, (window.model, version, CLASSES, hour), agg)


def fold_one(out: Fold, record: RawRecord, bounds: WindowBounds = WindowBounds()) -> None:
    """Add one record to ``out``; a ValueError (or ValidationError) if its body does not
    conform or its time is out of ``bounds``, with nothing added."""
    if not isinstance(record.body, dict):
        raise ValueError("body is not an object")
    if record.name == INFERENCE_WINDOW:
        inference = InferenceWindow.model_validate(record.body)
        bounds.check(inference.start, record.received_at)
        _fold_inference(out, record.device_id, inference)
    elif record.name == DRIFT_WINDOW:
        drift = DriftWindow.model_validate(record.body)
        bounds.check(drift.start, record.received_at)
        _fold_drift(out, drift)
    elif record.name == SYSTEM:
        sample = SystemSample.model_validate(record.body)
        bounds.check(record.at, record.received_at)
        at = utc(record.at)
        health = HealthAgg()
        health.add(sample, at)
        _add(out.health, (record.device_id, hour_of(at)), health)
    else:
        raise ValueError(f"{record.name!r} is not rolled up")


def fold(records: Iterable[RawRecord], bounds: WindowBounds = WindowBounds()) -> Fold:
    """The hourly sums of ``records``; malformed ones are counted by name and skipped."""
    out = Fold()
    for record in records:
        try:
            fold_one(out, record, bounds)
        except (ValueError, ValidationError, OverflowError):
            out.malformed[record.name] += 1
            continue
        out.folded += 1
    return out


def quantiles(counts: Sequence[int]) -> tuple[float | None, float | None]:
    """p50 and p95 of a latency sketch (None when empty)."""
    if not counts or len(counts) != sketches.bins("latency_ms"):
        return None, None
    try:
        p50 = sketches.quantile("latency_ms", counts, 0.5)
        p95 = sketches.quantile("latency_ms", counts, 0.95)
    except (ValueError, ArithmeticError):  # stored counts no sketch holds (too large)
        return None, None
    return p50, p95


def as_counts(value: Any) -> Counts:
    """A stored sketch read back (JSON list or map); anything else reads as empty."""
    if isinstance(value, dict):
        return {str(k): int(v) for k, v in value.items() if isinstance(v, int)}
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    return []


def merge_all(parts: Iterable[Mapping[str, Counts]]) -> dict[str, Counts]:
    """Sum per-feature sketches feature by feature."""
    out: dict[str, Counts] = {}
    for part in parts:
        for feature, counts in part.items():
            out[feature] = merge_counts(out[feature], counts) if feature in out else counts
    return out


__all__ = [
    "CLASSES",
    "ROLLED_UP",
    "Counts",
    "DriftAgg",
    "Fold",
    "HealthAgg",
    "RawRecord",
    "RequestAgg",
    "SystemSample",
    "WindowBounds",
    "as_counts",
    "fold",
    "fold_one",
    "hour_of",
    "merge_all",
    "merge_counts",
    "quantiles",
    "samples_of",
    "utc",
]
