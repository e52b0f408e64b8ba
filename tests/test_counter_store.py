"""Persistent counters never hand out a number twice, across restarts."""

import json
from pathlib import Path

import pytest

from edge_agent.sync.counters import CounterStore


def test_counters_continue_after_reopen(tmp_path: Path) -> None:
    """A new store on the same file continues where the old one stopped."""
    path = tmp_path / "state" / "counters.json"
    first = CounterStore(path)
    assert [first.next("seq"), first.next("seq"), first.next("bd")] == [0, 1, 0]
    second = CounterStore(path)
    assert second.next("seq") == 2
    assert second.current("bd") == 0
    assert second.current("never") is None
    assert not list(path.parent.glob(".state-*")), "no temp files left behind"


def test_corrupt_state_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    """A torn or foreign file raises instead of silently restarting numbering at 0."""
    path = tmp_path / "counters.json"
    path.write_text("{broken")
    with pytest.raises(RuntimeError, match="unreadable"):
        CounterStore(path)
    path.write_text('{"seq": "x"}')
    with pytest.raises(RuntimeError, match="unexpected shape"):
        CounterStore(path)


def test_a_reservation_writes_once_per_block_and_never_repeats_after_restart(
    tmp_path: Path,
) -> None:
    """With reserve=10 the file is written on the 1st and 11th value only (it holds the block's
    end), and a restart resumes above the block: numbers skip, never repeat."""
    path = tmp_path / "counters.json"
    store = CounterStore(path)
    assert [store.next("hb", reserve=10) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert json.loads(path.read_text()) == {"hb": 9}
    assert store.current("hb") == 4
    assert [store.next("hb", reserve=10) for _ in range(6)] == [5, 6, 7, 8, 9, 10]
    assert json.loads(path.read_text()) == {"hb": 19}
    reopened = CounterStore(path)
    assert reopened.current("hb") == 19
    assert reopened.next("hb", reserve=10) == 20
    assert reopened.next("other") == 0 and json.loads(path.read_text())["other"] == 0
    with pytest.raises(ValueError, match="at least 1"):
        reopened.next("hb", reserve=0)
