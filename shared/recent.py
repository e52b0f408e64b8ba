"""A value measured at most ``max_age_s`` ago, shared by every thread that asks, where
nobody waits for anybody once a first measurement exists.

Attestation quotes need the agent's code tree hash (a stat of ~100 files, and a re-hash of
any that changed). A device answers one challenge at a time, but a simulation process holds
125 agents whose birth challenges all arrive within a second or two of each other. Two
designs failed there, measured in 1,000-device storms on 2 cores:

- making callers wait for one shared walk (a lock, a condition): every hand-off needs the
  GIL, and with ~500 threads in the process, 76 network threads of one process queued on
  that lock for tens of seconds, long enough for the broker to drop them for silence;
- letting every caller that finds the value stale measure it itself: 125 walks at once,
  again whenever they took longer than ``max_age_s``, tripled the simulation's CPU and
  stretched the storm from 70 s to 175 s (``docs/benchmarks.md``).

Here one caller measures (a lock taken without blocking) and the others, meanwhile, take
the last measurement, however old; only before the first measurement do callers wait (an
agent measures once at start, so that is never in a storm). Time comes from the caller's
clock.

The freshness this gives up is bounded by how long a measurement takes, and small next to
what a software measurement can promise anyway: code is measured from disk, not from
memory, and could change the instant after any measurement.
"""

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    """``compute()`` re-run only when its last result started more than ``max_age_s`` ago
    (by ``clock``), or never ran; by one caller at a time, while the others take the last
    result."""

    def __init__(self, compute: Callable[[], T], *, max_age_s: float) -> None:
        if max_age_s < 0:
            raise ValueError("max_age_s must not be negative")
        self._compute = compute
        self.max_age_s = max_age_s
        # (clock reading when the computation started, its value): replaced as one object,
        # so a reader never sees a time from one run with the value of another.
        self._last: tuple[float, T] | None = None
        self._measuring = threading.Lock()
        self.computations = 0
        self.stale_served = 0  # calls answered with an old value while another measured

    def _fresh(self, now: float) -> tuple[float, T] | None:
        last = self._last
        if last is not None and 0.0 <= now - last[0] <= self.max_age_s:
            return last
        return None

    def get(self, now: float) -> T:
        fresh = self._fresh(now)
        if fresh is not None:
            return fresh[1]
        if not self._measuring.acquire(blocking=False):
            last = self._last
            if last is not None:
                self.stale_served += 1
                return last[1]
            self._measuring.acquire()  # nothing measured yet: wait for the first
        try:
            fresh = self._fresh(now)  # measured while this caller waited
            if fresh is not None:
                return fresh[1]
            value = self._compute()
            self.computations += 1
            current = self._last
            if current is None or current[0] <= now:  # an older reading never wins
                self._last = (now, value)
            return value
        finally:
            self._measuring.release()


__all__ = ["Recent"]
