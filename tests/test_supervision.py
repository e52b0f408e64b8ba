"""The worker supervisor and the poison strike book, with real threads and an injected clock."""

import threading
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.supervision import StrikeBook, Supervisor


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not done.is_set():
            if check():
                return True
            done.wait(0.01)
        return check()
    finally:
        deadline.cancel()


def test_a_crashing_thread_is_restarted_counted_and_shown_down_meanwhile() -> None:
    """A worker that raises is restarted; while it waits for its restart it is down, and each
    crash counts once."""
    sup = Supervisor(backoff_min_s=0.05, backoff_max_s=0.05)
    runs: list[int] = []
    release = threading.Event()

    def worker() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise RuntimeError(f"boom {len(runs)}")
        release.wait()

    sup.spawn("w", worker)
    try:
        assert wait_until(lambda: len(runs) == 3)
        assert sup.restarts() == {"w": 2}
        assert sup.down() == []
        (status,) = sup.statuses()
        assert status.state == "running"
        assert status.last_error == "RuntimeError: boom 2"
    finally:
        release.set()
        sup.stop()


def test_a_worker_is_down_during_its_backoff() -> None:
    """Between a crash and its restart the worker is listed by down()."""
    sup = Supervisor(backoff_min_s=30, backoff_max_s=30)
    crashed = threading.Event()

    def worker() -> None:
        crashed.set()
        raise ValueError("bad input")

    sup.spawn("ingest-writer", worker)
    try:
        assert crashed.wait(5)
        assert wait_until(lambda: sup.down() == ["ingest-writer"])
    finally:
        sup.stop(timeout=1)
    assert wait_until(lambda: sup.statuses()[0].state == "stopped")


def test_a_loop_returning_before_stop_counts_as_a_crash_and_a_stopped_owner_does_not() -> None:
    """A loop that returns while nothing asked it to stop is restarted; one whose owner's stop
    event is set exits cleanly."""
    sup = Supervisor(backoff_min_s=0.01, backoff_max_s=0.01)
    owner = threading.Event()
    calls: list[int] = []

    def worker() -> None:
        calls.append(1)
        if len(calls) >= 3:
            owner.set()

    sup.spawn("early", worker, stopping=owner)
    assert wait_until(lambda: sup.statuses()[0].state == "stopped")
    assert len(calls) == 3
    assert sup.restarts() == {"early": 2}
    sup.stop()


def test_backoff_doubles_per_consecutive_failure_up_to_the_cap() -> None:
    """A periodic job that keeps failing is skipped for 1, 2, 4, 4 clock seconds after each
    failure and is down until a run succeeds."""
    now = [0.0]
    sup = Supervisor(backoff_min_s=1, backoff_max_s=4, clock=lambda: now[0])
    outcomes = iter([ValueError("a"), ValueError("b"), ValueError("c"), ValueError("d"), "ok"])
    attempts: list[float] = []

    def job() -> str:
        attempts.append(now[0])
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    run = sup.job("rollout-tick", job)
    results = []
    for t in [0, 0.5, 1, 2.5, 3, 6.9, 7, 10.9, 11]:
        now[0] = t
        results.append(run())
        if t == 0.5:
            assert sup.down() == ["rollout-tick"]
    assert attempts == [0, 1, 3, 7, 11]
    assert results[-1] == "ok"
    assert sup.down() == []
    assert sup.restarts() == {"rollout-tick": 4}


def test_worker_names_are_unique() -> None:
    """Two workers with one name would share a health line: refused."""
    sup = Supervisor()
    sup.job("x", lambda: None)
    with pytest.raises(ValueError, match="exists already"):
        sup.job("x", lambda: None)


def test_an_input_that_kills_twice_is_poison_and_innocents_are_cleared() -> None:
    """Inputs held at two crashes are poison; an input released after its first crash (it
    was written alone) loses its strike."""
    book = StrikeBook()
    book.hold(["good", "bad"])
    assert book.crashed() == 2
    assert book.suspects()
    book.hold(["good"])
    book.release(["good"])
    book.hold(["bad"])
    book.crashed()
    assert book.is_poison("bad")
    assert not book.is_poison("good")
    assert book.strikes("good") == 0


@given(st.lists(st.tuples(st.sets(st.integers(0, 20), max_size=5), st.booleans()), max_size=40))
def test_strike_book_stays_bounded(rounds: list[tuple[set[int], bool]]) -> None:
    """Whatever the sequence of holds and crashes, the book never remembers more than its
    capacity, and an input is poison only after at least two crashes while held."""
    book = StrikeBook(capacity=8)
    held_at_crash: dict[int, int] = {}
    for keys, crash in rounds:
        book.hold(list(keys))
        if crash:
            book.crashed()
            for k in keys:
                held_at_crash[k] = held_at_crash.get(k, 0) + 1
        else:
            book.release(list(keys))
            for k in keys:
                held_at_crash.pop(k, None)
    poisoned = [k for k in range(21) if book.is_poison(k)]
    assert len([k for k in range(21) if book.strikes(k)]) <= 8
    assert all(held_at_crash.get(k, 0) >= 2 for k in poisoned)
