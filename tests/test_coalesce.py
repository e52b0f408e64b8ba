"""FreshOnce: concurrent callers share computations, and only ones that began after they asked."""

import threading

import pytest

from shared.coalesce import FreshOnce


class Gate:
    """A computation that returns its own run number and can be held mid-run by the test."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> int:
        self.runs += 1
        run = self.runs
        self.started.set()
        assert self.release.wait(10)
        return run


def test_sequential_calls_compute_each_time() -> None:
    """With no overlap every call runs the computation itself (nothing is cached)."""
    counter = iter(range(100))
    fresh = FreshOnce(lambda: next(counter))
    assert [fresh(), fresh(), fresh()] == [0, 1, 2]
    assert fresh.computations == 3


def test_callers_during_a_run_share_the_next_run_not_the_current_one() -> None:
    """Threads that ask while a computation is under way get the one started after them,
    and all of them together cost one more computation, not one each."""
    gate = Gate()
    fresh = FreshOnce(gate)
    results: dict[str, int] = {}

    def ask(name: str) -> None:
        results[name] = fresh()

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert gate.started.wait(10)
    gate.started.clear()
    late = [threading.Thread(target=ask, args=(f"late{i}",)) for i in range(20)]
    for t in late:
        t.start()
    waiting = fresh._cond._waiters  # type: ignore[attr-defined]  # CPython's Condition
    for _ in range(1000):  # every late caller is parked behind the running computation
        if len(waiting) == 20:
            break
        threading.Event().wait(0.01)
    assert len(waiting) == 20
    gate.release.set()
    for t in [first, *late]:
        t.join(10)
    assert results["first"] == 1
    assert {results[f"late{i}"] for i in range(20)} == {2}
    assert gate.runs == 2 == fresh.computations


def test_an_exception_reaches_the_callers_it_served_and_the_next_call_retries() -> None:
    """A failed computation raises to its callers; the next call computes again."""
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk gone")
        return "ok"

    fresh = FreshOnce(flaky)
    with pytest.raises(OSError, match="disk gone"):
        fresh()
    assert fresh() == "ok"
