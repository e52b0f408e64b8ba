"""Concurrent callers of an expensive, side-effect-free measurement share one computation.

Like Go's ``singleflight``, with one difference that matters for attestation: a caller is
only ever given the result of a computation that *started after it called*, never one
already under way (which may have read the files before they changed). So N threads asking
at once cost at most two computations (the one running when they arrived and the one they
share after it), and every answer is as fresh as computing it alone would have been.

A reconnect storm is where this pays: every simulated device in a process is challenged at
its birth within the same second, and each quote needs the agent's code tree hash (a stat of
~100 files, a GIL hand-off each); computed once per burst instead of once per device.
"""

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FreshOnce(Generic[T]):
    """Calls ``compute`` on behalf of every thread waiting for a result started after it
    asked; an exception is raised to exactly the callers that computation served."""

    def __init__(self, compute: Callable[[], T]) -> None:
        self._compute = compute
        self._cond = threading.Condition()
        self._started = 0  # computations started so far
        self._finished = 0  # the newest finished one's number
        self._running = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self.computations = 0  # how many times ``compute`` ran (for tests and stats)

    def __call__(self) -> T:
        with self._cond:
            needed = self._started + 1  # the first computation to start from now on
            while self._finished < needed:
                if self._running:
                    self._cond.wait()
                    continue
                self._started += 1
                number = self._started
                self._running = True
                self._cond.release()
                value: T | None = None
                error: BaseException | None = None
                try:
                    value = self._compute()
                except BaseException as e:  # handed to every caller it served
                    error = e
                finally:
                    self._cond.acquire()
                self.computations += 1
                self._value, self._error = value, error
                self._finished = number
                self._running = False
                self._cond.notify_all()
            if self._error is not None:
                raise self._error
            return self._value  # type: ignore[return-value]  # set with _finished


__all__ = ["FreshOnce"]
