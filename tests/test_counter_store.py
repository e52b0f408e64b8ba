"""Persistent counters never hand out a number twice, across restarts."""

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
