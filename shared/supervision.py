"""Supervised workers: a crash is logged, counted, restarted with backoff and visible.

The shape is Erlang/OTP's one-for-one supervisor (and systemd's ``Restart=on-failure``):
each long-lived loop of the controller or the agent runs under ``Supervisor.spawn`` (a
thread) or ``Supervisor.job`` (a periodic job, e.g. for APScheduler). When the loop raises,
the traceback is logged, ``restarts[name]`` grows (``edgefleet_worker_restarts_total``),
the worker shows as down (``/healthz`` answers 503 naming it) and it is started again
after an exponential backoff. A loop that returns while the supervisor is not stopping
counts as a crash too: these loops are meant to run until stop.

Poison inputs are the worker's own business (only it knows what an input is): see
``StrikeBook``, which remembers which inputs were in hand when a worker died, so the
second death with the same input in hand parks it instead of crash-looping.

Pure standard library: threads, a lock and an injected clock.
"""

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["StrikeBook", "Supervisor", "WorkerStatus"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker as ``/healthz`` and ``/metrics`` show it."""

    name: str
    state: str  # "running", "down" (crashed, restart pending) or "stopped"
    restarts: int
    last_error: str | None


@dataclass(slots=True)
class _Worker:
    name: str
    state: str = "running"
    restarts: int = 0
    consecutive: int = 0
    last_error: str | None = None
    thread: threading.Thread | None = None
    # For periodic jobs: no run before this monotonic time (the backoff after a failure).
    not_before: float = 0.0


class Supervisor:
    """Runs named workers, restarts the ones that die, and says which are down.

    ``backoff_min_s`` doubles per consecutive failure up to ``backoff_max_s``; a worker that
    stays up for ``reset_after_s`` starts again from the minimum. ``stopping`` is the event
    workers may wait on; ``stop()`` sets it.
    """

    def __init__(
        self,
        *,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        reset_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        stopping: threading.Event | None = None,
    ) -> None:
        if backoff_min_s <= 0 or backoff_max_s < backoff_min_s:
            raise ValueError("need 0 < backoff_min_s <= backoff_max_s")
        self._min = backoff_min_s
        self._max = backoff_max_s
        self._reset_after = reset_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self.stopping = stopping if stopping is not None else threading.Event()

    # --- what others read ------------------------------------------------------------------
    def statuses(self) -> list[WorkerStatus]:
        with self._lock:
            return [
                WorkerStatus(w.name, w.state, w.restarts, w.last_error)
                for w in self._workers.values()
            ]

    def down(self) -> list[str]:
        """Names of the workers that are down right now (crashed, restart pending)."""
        with self._lock:
            return sorted(w.name for w in self._workers.values() if w.state == "down")

    def restarts(self) -> dict[str, int]:
        """Crashes per worker since start (restarts, or failed runs of a periodic job)."""
        with self._lock:
            return {w.name: w.restarts for w in self._workers.values()}

    # --- threads ---------------------------------------------------------------------------
    def spawn(
        self,
        name: str,
        target: Callable[[], None],
        *,
        stopping: threading.Event | None = None,
        daemon: bool = True,
    ) -> None:
        """Run ``target`` in a thread called ``name``, restarting it whenever it raises or
        returns before a stop: ``stop()``, or ``stopping`` (the owner's own event) set."""
        with self._lock:
            if name in self._workers:
                raise ValueError(f"a worker named {name!r} exists already")
            worker = self._workers[name] = _Worker(name)
        thread = threading.Thread(
            target=self._supervise,
            args=(worker, target, stopping or self.stopping),
            name=name,
            daemon=daemon,
        )
        worker.thread = thread
        thread.start()

    def _supervise(
        self, worker: _Worker, target: Callable[[], None], owner_stop: threading.Event
    ) -> None:
        def stopped() -> bool:
            return self.stopping.is_set() or owner_stop.is_set()

        while not stopped():
            started = self._clock()
            try:
                target()
            except BaseException as e:  # a worker's death of any kind is ours to handle
                if isinstance(e, KeyboardInterrupt | SystemExit):
                    raise
                error = f"{type(e).__name__}: {e}"
                log.exception("worker %s crashed", worker.name)
            else:
                if stopped():
                    break
                error = "returned before stop"
                log.error("worker %s exited unexpectedly; restarting", worker.name)
            delay = self._failed(worker, error, ran_for=self._clock() - started)
            if owner_stop.wait(delay) or self.stopping.is_set():
                break
            with self._lock:
                worker.state = "running"
        with self._lock:
            worker.state = "stopped"

    def _failed(self, worker: _Worker, error: str, *, ran_for: float) -> float:
        with self._lock:
            if ran_for >= self._reset_after:
                worker.consecutive = 0
            worker.consecutive += 1
            worker.restarts += 1
            worker.state = "down"
            worker.last_error = error[:500]
            return min(self._max, self._min * 2.0 ** (worker.consecutive - 1))

    # --- periodic jobs ---------------------------------------------------------------------
    def job(self, name: str, fn: Callable[[], T]) -> Callable[[], T | None]:
        """Wrap a periodic job: a run that raises is logged with its traceback, counted,
        and marks the job down until a later run succeeds; runs during the backoff after a
        failure are skipped (return None). The scheduler keeps calling the wrapper."""
        with self._lock:
            if name in self._workers:
                raise ValueError(f"a worker named {name!r} exists already")
            worker = self._workers[name] = _Worker(name)

        def run() -> T | None:
            if self._clock() < worker.not_before:
                return None
            try:
                result = fn()
            except Exception as e:
                log.exception("job %s failed", name)
                delay = self._failed(worker, f"{type(e).__name__}: {e}", ran_for=0.0)
                with self._lock:
                    worker.not_before = self._clock() + delay
                return None
            with self._lock:
                worker.state = "running"
                worker.consecutive = 0
                worker.not_before = 0.0
            return result

        run.__name__ = f"supervised_{name.replace('-', '_')}"
        return run

    def join(self, name: str, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` for worker ``name``'s thread to end: for an owner that set
        its own stop event and must know its worker is done (a link's clean DISCONNECT)."""
        with self._lock:
            worker = self._workers.get(name)
        thread = worker.thread if worker is not None else None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Tell every worker to stop and wait up to ``timeout`` for their threads."""
        self.stopping.set()
        deadline = self._clock() + timeout
        with self._lock:
            threads = [w.thread for w in self._workers.values() if w.thread is not None]
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - self._clock()))


class StrikeBook:
    """Which inputs were in hand when a worker died, to park the ones that kill twice.

    A worker calls ``hold(keys)`` before working on inputs and ``release(keys)`` after it
    is done with them; the supervisor's restart is the worker's cue to call ``crashed()``,
    which gives every held input a strike. ``is_poison(key)`` is true from the second
    strike on. Bounded: the oldest entries go first past ``capacity``.
    """

    def __init__(self, *, strikes: int = 2, capacity: int = 10_000) -> None:
        self._strikes = strikes
        self._capacity = capacity
        self._lock = threading.Lock()
        self._held: set[Hashable] = set()
        self._counts: OrderedDict[Hashable, int] = OrderedDict()

    def hold(self, keys: list[Hashable]) -> None:
        with self._lock:
            self._held.update(keys)

    def release(self, keys: list[Hashable]) -> None:
        """Done with ``keys`` (written or parked): forget them and their strikes."""
        with self._lock:
            for key in keys:
                self._held.discard(key)
                self._counts.pop(key, None)

    def crashed(self) -> int:
        """Give a strike to every input in hand; returns how many had one."""
        with self._lock:
            for key in self._held:
                self._counts[key] = self._counts.get(key, 0) + 1
                self._counts.move_to_end(key)
            while len(self._counts) > self._capacity:
                self._counts.popitem(last=False)
            count = len(self._held)
            self._held.clear()
            return count

    def strikes(self, key: Hashable) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def is_poison(self, key: Hashable) -> bool:
        return self.strikes(key) >= self._strikes

    def suspects(self) -> bool:
        """True while any input has a strike (work on inputs one at a time then)."""
        with self._lock:
            return bool(self._counts)
