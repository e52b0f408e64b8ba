"""Who a rollout reaches and in which wave: pure, deterministic, order-independent.

A device's place in a rollout is its SHA-256 position, ``sha256(rollout_key + "/" + id)``
read as a number: devices are ranked by it and wave ``i`` takes the lowest ranks up to its
cumulative size. So the canary is the same handful of devices on every controller, after
every restart, whatever order devices registered in; and two rollouts with different keys
pick different canaries, so the same unlucky devices do not always go first.

Sizes are exact (a 1 % wave of 1,000 devices is 10 devices, not "about 10"), which keeps
gate sample sizes predictable. The service stores each member's wave when the rollout is
created, so devices that join the fleet later never move anyone between waves.
"""

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Positions are the first 8 bytes of the digest: 2**64 buckets, collisions only in theory
# (ties are broken by device id, so even those are deterministic).
_POSITION_BYTES = 8
BUCKETS = 2 ** (8 * _POSITION_BYTES)


class Wave(BaseModel):
    """One wave: a canary of ``count`` devices, or a cumulative ``percent`` of the cohort."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int | None = Field(default=None, ge=1)
    percent: float | None = Field(default=None, gt=0, le=100)

    @model_validator(mode="after")
    def _one_of(self) -> "Wave":
        if (self.count is None) == (self.percent is None):
            raise ValueError("a wave is either a device count or a percentage, not both")
        return self

    @classmethod
    def parse(cls, text: str) -> "Wave":
        """``"5"`` or ``"canary:5"`` is a count; ``"10%"`` is a cumulative percentage."""
        raw = text.strip().removeprefix("canary:")
        try:
            if raw.endswith("%"):
                return cls(percent=float(raw[:-1]))
            return cls(count=int(raw))
        except ValueError as e:
            raise ValueError(f"wave {text!r}: expected N, canary:N or P% ({e})") from e

    def __str__(self) -> str:
        return f"canary:{self.count}" if self.count is not None else f"{self.percent:g}%"


class CohortSelector(BaseModel):
    """Which devices a rollout targets; each given criterion narrows the set (AND)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_classes: tuple[str, ...] = ()
    # Shadow labels: "key=value" must match exactly, a bare "key" only has to be present.
    tags: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What cohort selection needs to know about one device."""

    device_id: str
    device_class: str | None
    labels: Mapping[str, str]


def position(rollout_key: str, device_id: str) -> int:
    """The device's bucket in ``[0, BUCKETS)`` for this rollout: stable and uniform."""
    digest = hashlib.sha256(f"{rollout_key}/{device_id}".encode()).digest()
    return int.from_bytes(digest[:_POSITION_BYTES], "big")


def _tag_matches(tag: str, labels: Mapping[str, str]) -> bool:
    key, sep, value = tag.partition("=")
    if not sep:
        return key in labels
    return labels.get(key) == value


def selects(selector: CohortSelector, device: DeviceFacts) -> bool:
    """True if ``device`` is in the cohort ``selector`` describes."""
    if selector.device_classes and device.device_class not in selector.device_classes:
        return False
    if selector.device_ids and device.device_id not in selector.device_ids:
        return False
    return all(_tag_matches(tag, device.labels) for tag in selector.tags)


def compatible(device_class: str | None, model_classes: Sequence[str]) -> bool:
    """A model lists the device classes it runs on; an empty list means any class."""
    return not model_classes or device_class in model_classes


def wave_sizes(waves: Sequence[Wave], total: int) -> list[int]:
    """Cumulative device counts after each wave, never shrinking, the last one ``total``.

    A percentage rounds up, so a 1 % canary of 50 devices is still one device.
    """
    sizes: list[int] = []
    reached = 0
    for wave in waves:
        if wave.count is not None:
            want = wave.count
        else:
            want = math.ceil((wave.percent or 0.0) * total / 100 - 1e-9)
        reached = min(total, max(reached, want))
        sizes.append(reached)
    if sizes:
        sizes[-1] = total
    return sizes


def validate_waves(waves: Sequence[Wave]) -> None:
    """Refuse wave plans that cannot mean what the operator wrote (ValueError says why)."""
    if not waves:
        raise ValueError("a rollout needs at least one wave")
    last = waves[-1]
    if last.percent != 100:
        raise ValueError(f"the last wave must be 100%, not {last}")
    percents = [w.percent for w in waves if w.percent is not None]
    if any(b < a for a, b in itertools.pairwise(percents)):
        raise ValueError("wave percentages are cumulative and must not decrease")


def assign_waves(
    rollout_key: str, device_ids: Iterable[str], waves: Sequence[Wave]
) -> dict[str, int]:
    """Each device's wave index (0-based): ranks by hash position, cut at cumulative sizes.

    Depends only on the key, the set of ids and the wave plan: never on their order.
    """
    ranked = sorted(set(device_ids), key=lambda d: (position(rollout_key, d), d))
    sizes = wave_sizes(waves, len(ranked))
    result: dict[str, int] = {}
    wave = 0
    for rank, device_id in enumerate(ranked):
        while rank >= sizes[wave]:
            wave += 1
        result[device_id] = wave
    return result


__all__ = [
    "BUCKETS",
    "CohortSelector",
    "DeviceFacts",
    "Wave",
    "assign_waves",
    "compatible",
    "position",
    "selects",
    "validate_waves",
    "wave_sizes",
]
