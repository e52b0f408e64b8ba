"""Token buckets and the dead-letter book: a flood of refusals is counted in full but
stored as few, bounded rows."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.ingest.limits import DeadLetterBook, Rejection, TokenBucket

T0 = datetime(2026, 12, 7, tzinfo=UTC)


def rejection(device: str | None, reason: str, at: float = 0.0) -> Rejection:
    return Rejection(
        device, reason, f"ef/v1/{device}/heartbeat", "why", 10, T0 + timedelta(seconds=at)
    )


def test_a_bucket_grants_its_burst_then_its_rate() -> None:
    """A full bucket grants ``burst`` takes at once, then one per 1/rate seconds."""
    bucket = TokenBucket.full(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.25) is False
    assert bucket.take(0.5) is True
    assert bucket.take(0.5) is False


def test_a_clock_stepping_back_refills_nothing() -> None:
    """Time going backwards neither refills nor breaks the bucket."""
    bucket = TokenBucket.full(rate=1.0, burst=1, now=100.0)
    assert bucket.take(100.0)
    assert not bucket.take(50.0)
    assert not bucket.take(100.5)
    assert bucket.take(101.0)


def test_a_bucket_refuses_nonsense_limits() -> None:
    """A negative rate or a burst below one is a ValueError, not a bucket that never grants."""
    with pytest.raises(ValueError, match="burst"):
        TokenBucket.full(rate=1.0, burst=0, now=0.0)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket.full(rate=-1.0, burst=1, now=0.0)


@given(
    rate=st.floats(0.0, 100.0),
    burst=st.integers(1, 50),
    steps=st.lists(st.floats(0.0, 5.0), max_size=200),
)
def test_a_bucket_never_grants_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, steps: list[float]
) -> None:
    """Over any schedule, takes granted <= burst + rate x elapsed time."""
    bucket = TokenBucket.full(rate=rate, burst=burst, now=0.0)
    now = 0.0
    granted = 0
    for step in steps:
        now += step
        granted += bucket.take(now)
    assert granted <= burst + rate * now + 1e-6


def test_a_flood_from_one_device_makes_one_row_per_reason_and_window() -> None:
    """10,000 rejections of two reasons from one device within a window open two rows
    whose counts add up to 10,000; nothing is dropped."""
    book = DeadLetterBook(window_s=60, device_rate=0.0, device_burst=5)
    outcomes = [
        book.record(rejection("dev-1", "bad_json" if i % 2 else "too_deep"), now=i / 1000)
        for i in range(10_000)
    ]
    assert outcomes.count("opened") == 2 and outcomes.count("dropped") == 0
    drained = book.drain()
    assert sorted((d.letter.reason, d.count) for d in drained) == [
        ("bad_json", 5000),
        ("too_deep", 5000),
    ]
    assert book.drain() == []


def test_rows_past_the_device_bucket_are_dropped_and_counted() -> None:
    """A device that keeps finding new reasons gets ``device_burst`` rows; the rest of its
    rejections are counted as dropped, and another device still gets its rows."""
    book = DeadLetterBook(window_s=60, device_rate=0.0, device_burst=3)
    for i in range(10):
        book.record(rejection("noisy", f"reason-{i}"), now=1.0)
    assert book.record(rejection("quiet", "schema"), now=1.0) == "opened"
    assert book.dropped == 7
    rows = {(d.letter.device_id, d.letter.reason) for d in book.drain()}
    assert len([r for r in rows if r[0] == "noisy"]) == 3 and ("quiet", "schema") in rows


def test_invented_device_ids_share_the_fleet_wide_bucket() -> None:
    """Every invented device id has a fresh device bucket, but the fleet-wide one caps
    the rows they can open together."""
    book = DeadLetterBook(window_s=60, total_rate=0.0, total_burst=10)
    for i in range(100):
        book.record(rejection(f"fake-{i}", "unknown_device"), now=1.0)
    assert len(book.drain()) == 10 and book.dropped == 90


def test_a_new_window_opens_a_new_row_and_keeps_the_old_counts() -> None:
    """Counts of a window that closed before a drain are still drained, as their own row."""
    book = DeadLetterBook(window_s=10)
    book.record(rejection("dev-1", "schema", 1), now=1.0)
    book.record(rejection("dev-1", "schema", 12), now=12.0)
    book.record(rejection("dev-1", "schema", 13), now=13.0)
    drained = book.drain()
    assert sorted(d.count for d in drained) == [1, 2]
    assert len({id(d.letter) for d in drained}) == 2


def test_restored_counts_come_back_in_the_next_drain() -> None:
    """Counts the writer could not store are drained again, not lost or doubled."""
    book = DeadLetterBook(window_s=10)
    book.record(rejection("dev-1", "schema"), now=1.0)
    first = book.drain()
    book.record(rejection("dev-1", "schema"), now=2.0)
    book.restore(first)
    assert [d.count for d in book.drain()] == [2]


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", None]),
            st.sampled_from(["bad_json", "too_deep", "schema"]),
            st.floats(0.0, 2.0),
            st.booleans(),  # drain after this one
            st.booleans(),  # and fail to store that drain (restore it)
        ),
        max_size=300,
    ),
    window=st.floats(0.5, 30.0),
    device_burst=st.integers(1, 5),
    total_burst=st.integers(1, 10),
)
def test_every_rejection_is_either_in_a_row_or_counted_as_dropped(
    events: list[tuple[str | None, str, float, bool, bool]],
    window: float,
    device_burst: int,
    total_burst: int,
) -> None:
    """Whatever arrives, in any order of drains and failed writes: stored counts plus
    dropped equal the rejections recorded; no row holds two devices or reasons; rows opened
    per device never exceed its bucket's allowance."""
    book = DeadLetterBook(
        window_s=window,
        device_rate=0.5,
        device_burst=device_burst,
        total_rate=1.0,
        total_burst=total_burst,
    )
    now = 0.0
    stored = 0
    letters: dict[int, tuple[str | None, str]] = {}
    alive = []  # keeps drained rows alive, so no id() is reused by a later row
    opened: dict[str | None, int] = {}
    for device, reason, step, drain, fail in events:
        now += step
        if book.record(rejection(device, reason, now), now) == "opened":
            opened[device] = opened.get(device, 0) + 1
        if drain:
            drained = book.drain()
            if fail:
                book.restore(drained)
            else:
                for d in drained:
                    alive.append(d.letter)
                    key = (d.letter.device_id, d.letter.reason)
                    assert letters.setdefault(id(d.letter), key) == key
                    stored += d.count
    stored += sum(d.count for d in book.drain())
    assert stored + book.dropped == len(events)
    for count in opened.values():
        assert count <= device_burst + 0.5 * now + 1e-6
    assert sum(opened.values()) <= total_burst + 1.0 * now + 1e-6
