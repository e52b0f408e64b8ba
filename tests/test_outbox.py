"""The agent's durable outbox: numbering across restarts, acks, quota and drop policy."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.sync.outbox import Outbox, OutboxFull, Priority


def test_epoch_changes_per_open_and_seq_is_never_reused(tmp_path: Path) -> None:
    """Each open is a new epoch with seq from 0; old unacked records stay, in order."""
    first = Outbox(tmp_path / "o.db", max_bytes=1 << 20)
    assert [first.append("metric", "m", {"i": i}, priority=Priority.NORMAL) for i in range(3)] == [
        0,
        1,
        2,
    ]
    first.close()
    second = Outbox(tmp_path / "o.db", max_bytes=1 << 20)
    assert second.epoch == first.epoch + 1
    assert second.append("event", "e", {}, priority=Priority.EVENT) == 0
    batch = second.read_batch(None, max_records=10, max_bytes=1 << 20)
    assert [(r.epoch, r.seq) for r in batch] == [
        (first.epoch, 0),
        (first.epoch, 1),
        (first.epoch, 2),
    ]
    nxt = second.read_batch((first.epoch, 2), max_records=10, max_bytes=1 << 20)
    assert [(r.epoch, r.seq, r.kind) for r in nxt] == [(second.epoch, 0, "event")]


def test_ack_trims_exactly_the_acknowledged_range(tmp_path: Path) -> None:
    """An ack deletes its range only; re-acking is harmless; bytes are accounted."""
    box = Outbox(tmp_path / "o.db", max_bytes=1 << 20)
    for i in range(5):
        box.append("metric", "m", {"i": i}, priority=Priority.NORMAL)
    assert box.ack(box.epoch, 1, 2) == 2
    assert box.ack(box.epoch, 1, 2) == 0
    assert [r.seq for r in box.read_batch(None, max_records=10, max_bytes=1 << 20)] == [0, 3, 4]
    box.ack(box.epoch, 0, 4)
    assert box.pending() == 0 and box.used_bytes == 0


def test_batches_respect_record_and_byte_limits(tmp_path: Path) -> None:
    """read_batch stops at max_records and before exceeding max_bytes."""
    box = Outbox(tmp_path / "o.db", max_bytes=1 << 20)
    for i in range(10):
        box.append("metric", "m", {"pad": "x" * 100, "i": i}, priority=Priority.NORMAL)
    assert len(box.read_batch(None, max_records=4, max_bytes=1 << 20)) == 4
    one_size = box.read_batch(None, max_records=1, max_bytes=1 << 20)[0].size
    assert len(box.read_batch(None, max_records=10, max_bytes=one_size * 3 + 1)) == 3


def test_quota_drops_low_priority_first_and_counts_every_drop(tmp_path: Path) -> None:
    """Over quota, low metrics go first, then normal, events last; the report says how many."""
    box = Outbox(tmp_path / "o.db", max_bytes=1000)
    size = 0
    for i in range(4):
        box.append("metric", "sys", {"i": i}, priority=Priority.LOW)
        box.append("event", "ev", {"i": i}, priority=Priority.EVENT)
    size = box.read_batch(None, max_records=1, max_bytes=1 << 20)[0].size
    while box.used_bytes + size <= 1000:
        box.append("metric", "inf", {"i": 0}, priority=Priority.NORMAL)
    box.append("event", "ev", {"i": 99}, priority=Priority.EVENT)
    names = [r.name for r in box.read_batch(None, max_records=1000, max_bytes=1 << 20)]
    assert names.count("ev") == 5, "no event dropped while metrics were left"
    report = box.append_drop_report()
    assert report is not None and report["dropped_low"] >= 1 and report["dropped_events"] == 0
    last = box.read_batch(None, max_records=1000, max_bytes=1 << 20)[-1]
    assert (last.name, last.kind, last.body) == ("outbox_drops", "event", report)
    assert box.append_drop_report() is None, "a report resets the counters"
    for _ in range(200):
        box.append("event", "ev", {"i": 1}, priority=Priority.EVENT)
    final = box.append_drop_report()
    assert final is not None and final["dropped_events"] > 0
    assert box.used_bytes <= 1000


def test_a_record_larger_than_the_quota_is_refused(tmp_path: Path) -> None:
    """One record that can never fit raises OutboxFull instead of emptying the outbox."""
    box = Outbox(tmp_path / "o.db", max_bytes=200)
    box.append("event", "keep", {}, priority=Priority.EVENT)
    with pytest.raises(OutboxFull):
        box.append("metric", "huge", {"x": "y" * 500}, priority=Priority.LOW)
    assert box.pending() == 1


def test_sigkill_mid_write_loses_no_committed_record_and_reuses_no_seq(tmp_path: Path) -> None:
    """A process killed while appending leaves every committed record; the next open numbers
    in a new epoch, so no (epoch, seq) is ever handed out twice."""
    db = tmp_path / "o.db"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from edge_agent.sync.outbox import Outbox, Priority
        box = Outbox(Path({str(db)!r}), max_bytes=1 << 30)
        i = 0
        while True:
            box.append("metric", "m", {{"i": i}}, priority=Priority.NORMAL)
            if i == 200:
                print("ready", flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    box = Outbox(db, max_bytes=1 << 30)
    records = box.read_batch(None, max_records=1 << 20, max_bytes=1 << 40)
    seqs = [r.seq for r in records]
    assert len(seqs) >= 201
    assert seqs == list(range(len(seqs))), "committed records are contiguous from 0"
    assert [r.body["i"] for r in records] == seqs
    assert box.epoch == records[0].epoch + 1
