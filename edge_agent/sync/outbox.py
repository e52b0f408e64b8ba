"""The device's durable outbox: every metric and event, numbered and kept until acked.

SQLite in WAL mode. Each record gets ``(epoch, seq)``: the epoch is bumped (and fsynced)
once per agent start, ``seq`` counts up within it and is stored in the same transaction as
the record. A SIGKILL or power cut therefore never reuses a number: a record lost in the
unsynced WAL tail was never acknowledged, and the next boot numbers from a new epoch.

Disk quota and drop policy, in order, when an append would exceed ``max_bytes``:
low-priority metrics (oldest first), then normal metrics, then events. Every drop is
counted by class; ``append_drop_report`` turns the counts into an event when the link is back.
"""

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

from shared.canonical import canonical_json


class Priority(IntEnum):
    LOW = 0  # periodic system metrics: the first to go when the disk quota is hit
    NORMAL = 1  # per-request inference metrics
    EVENT = 2  # events: dropped last, and never without a report


@dataclass(frozen=True, slots=True)
class StoredRecord:
    epoch: int
    seq: int
    kind: Literal["metric", "event"]
    name: str
    at: datetime
    body: dict[str, Any]
    size: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS record (
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    at REAL NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (epoch, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS record_drop_order ON record (priority, epoch, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_DROP_KEYS = {
    Priority.LOW: "dropped_low",
    Priority.NORMAL: "dropped_normal",
    Priority.EVENT: "dropped_events",
}


_REPORT_ROOM = 256  # bytes an outbox_drops record takes at most


class OutboxFull(RuntimeError):
    """A single record is larger than the whole quota."""


class Outbox:
    """Thread-safe durable queue of records for one device."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA synchronous=FULL")
        with self._tx():
            self.epoch = self._meta("epoch", -1) + 1
            self._set_meta("epoch", self.epoch)
            self._set_meta("next_seq", 0)
        # After the epoch is durable, per-record commits need not fsync (see module doc).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._bytes = int(
            self._db.execute("SELECT COALESCE(SUM(size), 0) FROM record").fetchone()[0]
        )

    # --- plumbing -------------------------------------------------------------------------
    def _tx(self) -> "_Tx":
        return _Tx(self._db)

    def _meta(self, key: str, default: int) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- writing --------------------------------------------------------------------------
    def append(
        self,
        kind: Literal["metric", "event"],
        name: str,
        body: dict[str, Any],
        *,
        priority: Priority,
        at: datetime | None = None,
    ) -> int:
        """Store one record durably and return its seq (in this outbox's epoch)."""
        with self._lock, self._tx():
            return self._insert(kind, name, body, priority, at)

    def _insert(
        self,
        kind: Literal["metric", "event"],
        name: str,
        body: dict[str, Any],
        priority: Priority,
        at: datetime | None,
    ) -> int:
        encoded = canonical_json(body).decode("utf-8")
        size = len(encoded) + len(name) + 48
        if size > self.max_bytes:
            raise OutboxFull(f"record of {size} bytes exceeds the outbox quota of {self.max_bytes}")
        moment = (at or datetime.now(UTC)).timestamp()
        self._make_room(size, priority)
        seq = self._meta("next_seq", 0)
        self._db.execute(
            "INSERT INTO record (epoch, seq, priority, kind, name, at, body, size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.epoch, seq, int(priority), kind, name, moment, encoded, size),
        )
        self._set_meta("next_seq", seq + 1)
        self._bytes += size
        return seq

    def _make_room(self, size: int, priority: Priority) -> None:
        while self._bytes + size > self.max_bytes:
            row = self._db.execute(
                "SELECT epoch, seq, priority, size FROM record "
                "WHERE priority <= ? ORDER BY priority, epoch, seq LIMIT 1",
                (int(priority),),
            ).fetchone()
            if row is None:
                # Nothing of this priority or lower left to drop: drop the oldest record of
                # any class (events included), counted like every other drop.
                row = self._db.execute(
                    "SELECT epoch, seq, priority, size FROM record "
                    "ORDER BY priority, epoch, seq LIMIT 1"
                ).fetchone()
            epoch, seq, prio, dropped = row
            self._db.execute("DELETE FROM record WHERE epoch = ? AND seq = ?", (epoch, seq))
            key = _DROP_KEYS[Priority(prio)]
            self._set_meta(key, self._meta(key, 0) + 1)
            self._bytes -= int(dropped)

    def append_drop_report(self) -> dict[str, int] | None:
        """Turn the drop counts into an ``outbox_drops`` event and reset them, atomically.

        Returns the counts, or None when nothing was dropped since the last report.
        """
        with self._lock, self._tx():
            if not any(self._meta(key, 0) for key in _DROP_KEYS.values()):
                return None
            # Room for the report first, so drops it causes are in it, not in the next one.
            self._make_room(_REPORT_ROOM, Priority.EVENT)
            counts = {key: self._meta(key, 0) for key in _DROP_KEYS.values()}
            for key in counts:
                self._set_meta(key, 0)
            self._insert("event", "outbox_drops", dict(counts), Priority.EVENT, None)
            return counts

    # --- reading and trimming ---------------------------------------------------------------
    def read_batch(
        self, after: tuple[int, int] | None, *, max_records: int, max_bytes: int
    ) -> list[StoredRecord]:
        """Consecutive records after position ``after`` (exclusive), of one epoch only."""
        with self._lock:
            if after is None:
                rows = self._db.execute(
                    "SELECT epoch, seq, kind, name, at, body, size FROM record "
                    "ORDER BY epoch, seq LIMIT ?",
                    (max_records,),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT epoch, seq, kind, name, at, body, size FROM record "
                    "WHERE (epoch = ? AND seq > ?) OR epoch > ? ORDER BY epoch, seq LIMIT ?",
                    (after[0], after[1], after[0], max_records),
                ).fetchall()
        batch: list[StoredRecord] = []
        total = 0
        for epoch, seq, kind, name, at, body, size in rows:
            if batch and (epoch != batch[0].epoch or total + size > max_bytes):
                break
            batch.append(
                StoredRecord(
                    epoch, seq, kind, name, datetime.fromtimestamp(at, UTC), json.loads(body), size
                )
            )
            total += size
        return batch

    def read_range(self, epoch: int, first_seq: int, last_seq: int) -> list[StoredRecord]:
        """The records still held in ``first_seq..last_seq`` of ``epoch``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT epoch, seq, kind, name, at, body, size FROM record "
                "WHERE epoch = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (epoch, first_seq, last_seq),
            ).fetchall()
        return [
            StoredRecord(e, q, k, n, datetime.fromtimestamp(a, UTC), json.loads(b), z)
            for e, q, k, n, a, b, z in rows
        ]

    def ack(self, epoch: int, first_seq: int, last_seq: int) -> int:
        """Delete acknowledged records; returns how many were still here."""
        with self._lock, self._tx():
            rows = self._db.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM record "
                "WHERE epoch = ? AND seq BETWEEN ? AND ?",
                (epoch, first_seq, last_seq),
            ).fetchone()
            self._db.execute(
                "DELETE FROM record WHERE epoch = ? AND seq BETWEEN ? AND ?",
                (epoch, first_seq, last_seq),
            )
            self._bytes -= int(rows[0])
            return int(rows[1])

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM record").fetchone()[0])

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the connection is in autocommit)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
