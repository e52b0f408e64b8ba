"""Limits on what a flood of bad messages may cost: rate-limited, aggregated dead letters.

Every refused message is counted by reason (``IngestStats``), but not every one becomes a
row: rejections of one device and one reason within a window share one dead letter with a
``count``, and opening a new dead letter takes a token from the device's bucket and from a
fleet-wide one. A device that sends garbage at 1,000 msg/s therefore writes a handful of
rows a minute, and a swarm of invented device ids no more than the fleet-wide rate; what
no bucket admits is counted as dropped. Caps on the stored rows (per device, in total) are
the I/O shell's job (``controller/ingest/dead_letters.py``).

Pure: standard library only, an injected clock (``now``, monotonic seconds); thread-safe,
because the MQTT reader records and the dead-letter writer drains.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = ["DeadLetter", "DeadLetterBook", "Drained", "Outcome", "Rejection", "TokenBucket"]

# What ``record`` did: opened a row, counted into an open row, or dropped (rate-limited).
Outcome = Literal["opened", "counted", "dropped"]


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` spends one if there is one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> "TokenBucket":
        if rate < 0 or burst < 1:
            raise ValueError("need rate >= 0 and burst >= 1")
        return cls(rate, burst, burst, now)

    def take(self, now: float, cost: float = 1.0) -> bool:
        # A clock that steps back refills nothing (and never drains the bucket).
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


@dataclass(frozen=True, slots=True)
class Rejection:
    """One refused message as the dead letters keep it: never its payload."""

    device_id: str | None  # from the topic, when the topic names a valid device id
    reason: str
    topic: str
    detail: str
    size: int
    at: datetime


@dataclass(slots=True)
class DeadLetter:
    """One dead-letter row: a (device, reason) within a window, and how many so far.

    ``pending`` is what arrived since the last drain; ``row_id`` is set by the writer once
    the row exists, so later drains add to it instead of inserting again.
    """

    device_id: str | None
    reason: str
    topic: str
    detail: str
    size: int
    first_at: datetime
    last_at: datetime
    count: int = 0
    pending: int = 0
    row_id: int | None = None


@dataclass(frozen=True, slots=True)
class Drained:
    """What one drain hands the writer: the row, and how many to add to it."""

    letter: DeadLetter
    count: int
    last_at: datetime


class DeadLetterBook:
    """Aggregates rejections per (device, reason, window) behind two token buckets."""

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        device_rate: float = 0.1,
        device_burst: float = 20.0,
        total_rate: float = 20.0,
        total_burst: float = 200.0,
        max_devices: int = 10_000,
        now: float = 0.0,
    ) -> None:
        if window_s <= 0 or max_devices < 1:
            raise ValueError("need window_s > 0 and max_devices >= 1")
        self._window_s = window_s
        self._device_rate = device_rate
        self._device_burst = device_burst
        self._total = TokenBucket.full(total_rate, total_burst, now)
        self._max_devices = max_devices
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str | None, TokenBucket] = OrderedDict()
        self._window: int | None = None
        self._open: dict[tuple[str | None, str], DeadLetter] = {}
        self._closed: list[DeadLetter] = []  # past windows' rows with counts not yet drained
        self.dropped = 0  # rejections that no bucket admitted: counted, not stored

    def record(self, rejection: Rejection, now: float) -> Outcome:
        """Count ``rejection`` into its (device, reason) row of this window, opening the row
        if a token allows; ``dropped`` when none does (counted in ``dropped``)."""
        with self._lock:
            self._roll(now)
            key = (rejection.device_id, rejection.reason)
            letter = self._open.get(key)
            if letter is None:
                if not self._admit(rejection.device_id, now):
                    self.dropped += 1
                    return "dropped"
                outcome: Outcome = "opened"
                letter = self._open[key] = DeadLetter(
                    rejection.device_id,
                    rejection.reason,
                    rejection.topic,
                    rejection.detail,
                    rejection.size,
                    rejection.at,
                    rejection.at,
                )
            else:
                outcome = "counted"
            letter.count += 1
            letter.pending += 1
            letter.last_at = max(letter.last_at, rejection.at)
            return outcome

    def _roll(self, now: float) -> None:
        window = int(now // self._window_s)
        if window != self._window:
            self._closed += [d for d in self._open.values() if d.pending]
            self._open = {}
            self._window = window

    def _admit(self, device_id: str | None, now: float) -> bool:
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = TokenBucket.full(self._device_rate, self._device_burst, now)
            self._buckets[device_id] = bucket
            if len(self._buckets) > self._max_devices:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(device_id)
        # The device's token first: a device over its rate must not spend the fleet's.
        return bucket.take(now) and self._total.take(now)

    def drain(self) -> list[Drained]:
        """Every row with counts since the last drain, for the writer to store."""
        with self._lock:
            out = [Drained(d, d.pending, d.last_at) for d in self._closed]
            out += [Drained(d, d.pending, d.last_at) for d in self._open.values() if d.pending]
            for item in out:
                item.letter.pending = 0
            self._closed = []
            return out

    def restore(self, drained: list[Drained]) -> None:
        """Give back counts the writer could not store (the next drain has them again)."""
        with self._lock:
            held = {id(d) for d in self._open.values()} | {id(d) for d in self._closed}
            for item in drained:
                item.letter.pending += item.count
                if id(item.letter) not in held:
                    held.add(id(item.letter))
                    self._closed.append(item.letter)

    def rows(self) -> int:
        """Rows of the current window (bounded by the buckets)."""
        with self._lock:
            return len(self._open)
