"""A circuit breaker per remote tier: stop calling a tier that keeps failing.

Closed: calls pass; ``failure_threshold`` failures within ``window_s`` open it. Open: calls
are refused until ``open_s`` has passed (or the server's ``Retry-After`` on a 429, capped).
Half-open: one probe call passes; its success closes the breaker, its failure opens it
again. Time is injected, so every transition is tested without sleeping.
"""

import threading
from collections import deque
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        window_s: float,
        open_s: float,
        max_open_s: float = 600.0,
        clock: Callable[[], float],
    ) -> None:
        self.failure_threshold = failure_threshold
        self.window_s = window_s
        self.open_s = open_s
        self.max_open_s = max_open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: deque[float] = deque()
        self._open_until: float | None = None
        self._probing = False
        self.last_error: str | None = None
        self.opened_total = 0

    @property
    def state(self) -> State:
        with self._lock:
            return self._state(self._clock())

    def _state(self, now: float) -> State:
        if self._open_until is None:
            return "closed"
        return "open" if now < self._open_until else "half_open"

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a call through again (0 when it does now)."""
        with self._lock:
            if self._open_until is None:
                return 0.0
            return max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """May a call go to this tier now? (In half-open, only one probe at a time.)"""
        with self._lock:
            state = self._state(self._clock())
            if state == "closed":
                return True
            if state == "open" or self._probing:
                return False
            self._probing = True
            return True

    def available(self) -> bool:
        """Like ``allow`` but without claiming the half-open probe (for routing decisions)."""
        with self._lock:
            state = self._state(self._clock())
            return state == "closed" or (state == "half_open" and not self._probing)

    def record_success(self) -> None:
        with self._lock:
            self._failures.clear()
            self._open_until = None
            self._probing = False
            self.last_error = None

    def record_failure(self, reason: str, *, retry_after_s: float | None = None) -> None:
        with self._lock:
            now = self._clock()
            self.last_error = reason
            if retry_after_s is not None:
                # The server told us when to come back: respect it (within reason).
                self._trip(now, min(max(retry_after_s, 0.0), self.max_open_s))
                return
            if self._state(now) == "half_open":
                self._trip(now, self.open_s)
                return
            self._failures.append(now)
            while self._failures and self._failures[0] < now - self.window_s:
                self._failures.popleft()
            if len(self._failures) >= self.failure_threshold:
                self._trip(now, self.open_s)

    def _trip(self, now: float, duration: float) -> None:
        self._open_until = now + duration
        self._failures.clear()
        self._probing = False
        self.opened_total += 1
