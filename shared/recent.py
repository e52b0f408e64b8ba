"""A value measured at most ``max_age_s`` ago, shared by every thread that asks, with no lock.

Attestation quotes need the agent's code tree hash (a stat of ~100 files, and a re-hash of
any that changed). A device answers one challenge at a time, but a simulation process holds
125 agents whose birth challenges all arrive within a second or two of each other, and every
way of making their network threads wait for one shared walk (a lock, a condition) turned
into a convoy: each hand-off needs the GIL, and with ~500 threads in the process a
1,000-device storm left 76 network threads of one process queued on that lock for tens of
seconds, long enough for the broker to drop them for silence. Here nobody waits: a caller
finding the value older than ``max_age_s`` measures it itself (a few may, at once; they
agree), everyone else takes the last one. Time comes from the caller's clock.

The freshness this gives up is bounded and small next to what a software measurement can
promise anyway: code is measured from disk, not from memory, and could change the instant
after any measurement; a quote says what the files were at most ``max_age_s`` before it.
"""

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Recent(Generic[T]):
    """``compute()`` re-run only when its last result started more than ``max_age_s`` ago
    (by ``clock``), or never ran."""

    def __init__(self, compute: Callable[[], T], *, max_age_s: float) -> None:
        if max_age_s < 0:
            raise ValueError("max_age_s must not be negative")
        self._compute = compute
        self.max_age_s = max_age_s
        # (clock reading when the computation started, its value): replaced as one object,
        # so a reader never sees a time from one run with the value of another.
        self._last: tuple[float, T] | None = None
        self.computations = 0

    def get(self, now: float) -> T:
        last = self._last
        if last is not None and 0.0 <= now - last[0] <= self.max_age_s:
            return last[1]
        value = self._compute()
        self.computations += 1
        current = self._last
        if current is None or current[0] <= now:  # a slower, older run never wins
            self._last = (now, value)
        return value


__all__ = ["Recent"]
