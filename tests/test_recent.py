"""Recent: a measurement is reused for max_age_s after it started, and re-taken after by
one caller while the others take the last one."""

import threading

import pytest

from shared.recent import Recent


def counter() -> Recent[int]:
    values = iter(range(100))
    return Recent(lambda: next(values), max_age_s=1.0)


def test_reused_within_max_age_and_measured_again_after() -> None:
    """Calls within max_age_s of the last measurement's start share it; later ones measure."""
    recent = counter()
    assert [recent.get(10.0), recent.get(10.5), recent.get(11.0)] == [0, 0, 0]
    assert recent.get(11.01) == 1 and recent.computations == 2
    assert recent.get(11.5) == 1


def test_a_clock_that_went_backwards_measures_again() -> None:
    """A reading before the last measurement's start is not trusted as fresh."""
    recent = counter()
    assert recent.get(10.0) == 0
    assert recent.get(9.0) == 1


def test_zero_max_age_measures_every_time_and_negative_is_refused() -> None:
    """max_age_s 0 is a measurement per call at distinct times; a negative age is an error."""
    values = iter(range(100))
    recent = Recent(lambda: next(values), max_age_s=0.0)
    assert [recent.get(1.0), recent.get(2.0), recent.get(3.0)] == [0, 1, 2]
    with pytest.raises(ValueError, match="max_age_s"):
        Recent(lambda: 0, max_age_s=-1)


def test_while_one_caller_measures_the_others_take_the_last_value_without_waiting() -> None:
    """A stale value with a measurement underway is served at once (and counted), not
    measured again: one walk per staleness, however many callers."""
    started, release = threading.Event(), threading.Event()
    values = iter(range(100))

    def compute() -> int:
        value = next(values)
        if value == 1:  # the second measurement blocks until released
            started.set()
            release.wait(10)
        return value

    recent = Recent(compute, max_age_s=1.0)
    assert recent.get(10.0) == 0
    got: list[int] = []
    measuring = threading.Thread(target=lambda: got.append(recent.get(20.0)))
    measuring.start()
    assert started.wait(10)
    assert [recent.get(20.0) for _ in range(5)] == [0] * 5
    assert recent.stale_served == 5 and recent.computations == 1
    release.set()
    measuring.join(10)
    assert got == [1] and recent.get(20.5) == 1 and recent.computations == 2


def test_before_the_first_measurement_callers_wait_for_it() -> None:
    """With nothing measured yet, a second caller waits for the first's value instead of
    measuring again or getting nothing."""
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        started.set()
        release.wait(10)
        return 7

    recent = Recent(compute, max_age_s=1.0)
    got: list[int] = []
    first = threading.Thread(target=lambda: got.append(recent.get(5.0)))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: got.append(recent.get(5.2)))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert got == [7, 7] and len(calls) == 1
