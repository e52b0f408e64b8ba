"""Counters that must survive restarts and power loss: the MQTT session number and seq.

Written atomically (temp file in the same folder, fsync, ``os.replace``) so a crash leaves
either the old or the new value, never a torn file, and a number is never handed out twice.

A counter that only has to grow (the heartbeat seq) reserves a block of numbers per write
(``next(name, reserve=N)``): the file holds the highest number that may have been handed
out, so after a restart numbering resumes above it, skipping what the block had left. A
device that heartbeats every few seconds then fsyncs once per N heartbeats instead of every
time (in a 1,000-device simulation, 200 fsyncs a second).
"""

import json
import threading
from pathlib import Path

from shared.files import write_atomic


class CounterStore:
    """Persistent named counters in one small JSON file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Persisted: per counter, the highest number that may have been handed out.
        self._values: dict[str, int] = self._load()
        # Handed out by this process, where a reservation runs ahead of it.
        self._handed: dict[str, int] = {}

    def _load(self) -> dict[str, int]:
        try:
            raw = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as e:
            raise RuntimeError(f"agent state file {self._path} is unreadable: {e}") from e
        if not isinstance(raw, dict) or not all(isinstance(v, int) for v in raw.values()):
            raise RuntimeError(f"agent state file {self._path} has an unexpected shape")
        return {str(k): int(v) for k, v in raw.items()}

    def _save(self) -> None:
        write_atomic(self._path, json.dumps(self._values, sort_keys=True).encode())

    def next(self, name: str, *, reserve: int = 1) -> int:
        """Return the next value of counter ``name`` (0 first), persisted before it is
        returned; with ``reserve`` > 1 one write covers that many values."""
        if reserve < 1:
            raise ValueError("reserve must be at least 1")
        with self._lock:
            value = self._handed.get(name, self._values.get(name, -1)) + 1
            self._handed[name] = value
            if value > self._values.get(name, -1):
                self._values[name] = value + reserve - 1
                self._save()
            return value

    def current(self, name: str) -> int | None:
        """The last value handed out (after a restart, possibly a higher one that a
        reservation covered), or None if never."""
        with self._lock:
            return self._handed.get(name, self._values.get(name))
