"""Recent: a measurement is reused for max_age_s after it started, and re-taken after."""

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
