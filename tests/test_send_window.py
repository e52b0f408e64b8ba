"""The outbox send window's rules, without a broker: cursor, acks, overdue re-sends, resets."""

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.sync.window import SendWindow


def test_batches_advance_the_cursor_and_fill_the_window() -> None:
    """Each batch sent moves the cursor to its last record; at ``limit`` batches the window
    is full until an ack retires one."""
    w = SendWindow(limit=2)
    assert w.cursor is None and not w.full()
    assert w.sent((1, 1, 10), after=None, now=0.0)
    assert w.cursor == (1, 10)
    assert w.sent((1, 11, 20), after=(1, 10), now=0.0)
    assert w.full() and len(w) == 2
    assert w.acked(1, 1, 10) == 1
    assert not w.full() and w.in_flight() == [(1, 11, 20)]


def test_a_batch_read_before_a_reset_is_not_sent() -> None:
    """A reconnect resets the position while the publisher reads: the batch it read from the
    old cursor is refused, so nothing is skipped or sent twice in the new session."""
    w = SendWindow(limit=4)
    w.sent((1, 1, 10), after=None, now=0.0)
    stale = w.cursor
    w.reset()
    assert not w.sent((1, 11, 20), after=stale, now=1.0)
    assert w.cursor is None and len(w) == 0
    assert w.sent((1, 1, 20), after=None, now=1.0)


def test_an_ack_retires_only_batches_it_covers_entirely() -> None:
    """A re-delivered ack for an older, shorter batch starting at the same record must not
    retire a longer batch sent since; another epoch's ack retires nothing."""
    w = SendWindow(limit=4)
    w.sent((1, 1, 50), after=None, now=0.0)
    assert w.acked(1, 1, 10) == 0
    assert w.acked(2, 1, 100) == 0
    assert w.acked(1, 1, 50) == 1
    assert len(w) == 0


def test_overdue_batches_back_off_doubling_up_to_8x() -> None:
    """A batch is overdue after the ack timeout, then after 2x, 4x, 8x, 8x of it per
    re-send; a batch nothing is held of any more leaves the window instead."""
    w = SendWindow(limit=4)
    w.sent((1, 1, 10), after=None, now=0.0)
    assert w.overdue(10.0, ack_timeout_s=10.0) == []
    now, waits = 0.0, []
    for _ in range(5):
        wait = 0.0
        while not w.overdue(now + wait, ack_timeout_s=10.0):
            wait += 1.0
        waits.append(wait)
        now += wait
        assert w.resent((1, 1, 10), still_held=True, now=now)
    assert waits == [11.0, 21.0, 41.0, 81.0, 81.0]
    assert not w.resent((1, 1, 10), still_held=False, now=now)
    assert len(w) == 0
    assert not w.resent((1, 1, 10), still_held=True, now=now), "gone stays gone"


def test_the_window_needs_room() -> None:
    """A window of zero batches could never send: refused when built."""
    with pytest.raises(ValueError, match="at least one"):
        SendWindow(limit=0)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 5)),
        st.tuples(st.just("ack"), st.integers(0, 40), st.integers(0, 40)),
        st.tuples(st.just("reset")),
        st.tuples(st.just("tick"), st.floats(0, 100)),
    ),
    max_size=60,
)


@given(ops, st.integers(1, 4))
def test_any_interleaving_keeps_the_window_bounded_and_consistent(
    steps: list[tuple[Any, ...]], limit: int
) -> None:
    """Under any mix of sends (by a publisher that respects ``full``), acks, resets and
    time: never more than ``limit`` batches out, batches never overlap, the cursor is the
    last record sent, and an ack leaves no batch it covers."""
    w = SendWindow(limit=limit)
    now, next_seq = 0.0, 1
    for step in steps:
        if step[0] == "send" and not w.full():
            first = (w.cursor[1] + 1) if w.cursor else next_seq
            key = (1, first, first + step[1] - 1)
            assert w.sent(key, after=w.cursor, now=now)
            next_seq = max(next_seq, key[2] + 1)
        elif step[0] == "ack":
            lo, hi = sorted(step[1:])
            w.acked(1, lo, hi)
            assert not [k for k in w.in_flight() if k[1] >= lo and k[2] <= hi]
        elif step[0] == "reset":
            w.reset()
            assert w.cursor is None and len(w) == 0
        elif step[0] == "tick":
            now += step[1]
            for key in w.overdue(now, ack_timeout_s=5.0):
                assert w.resent(key, still_held=True, now=now)
        keys = w.in_flight()
        assert len(keys) <= limit
        assert all(a[2] < b[1] for a, b in itertools.pairwise(keys))
        if keys:
            assert w.cursor is not None and w.cursor[1] >= keys[-1][2]


def test_the_ack_timeout_runs_from_when_the_broker_has_the_batch() -> None:
    """A batch still in the device's own send queue is never overdue, however long it
    waits; once the broker has it (its PUBACK), the timeout runs from the moment that was
    seen, and a re-sent copy waits for its own PUBACK again."""
    w = SendWindow(limit=4)
    at_broker = {"first": False, "copy": False}
    w.sent((1, 1, 10), after=None, now=0.0)
    w.delivered_by((1, 1, 10), lambda: at_broker["first"])
    assert w.overdue(100.0, 15.0) == []  # queued behind a busy socket for 100 s
    at_broker["first"] = True
    assert w.overdue(101.0, 15.0) == []  # the clock starts now
    assert w.overdue(115.0, 15.0) == []
    assert w.overdue(116.5, 15.0) == [(1, 1, 10)]
    assert w.resent((1, 1, 10), still_held=True, now=116.5)
    w.delivered_by((1, 1, 10), lambda: at_broker["copy"])
    assert w.overdue(200.0, 15.0) == []
    at_broker["copy"] = True
    assert w.overdue(201.0, 15.0) == []
    assert w.overdue(231.5, 15.0) == [(1, 1, 10)]  # doubled after one re-send


def test_a_probe_for_a_batch_that_left_the_window_is_ignored() -> None:
    """An ack that beat the publisher's ``delivered_by`` leaves nothing behind."""
    w = SendWindow(limit=4)
    w.sent((1, 1, 10), after=None, now=0.0)
    assert w.acked(1, 1, 10) == 1
    w.delivered_by((1, 1, 10), lambda: False)
    assert len(w) == 0 and w.overdue(1000.0, 15.0) == []
