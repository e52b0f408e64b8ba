"""Counters that must survive restarts and power loss: the MQTT session number and seq.

Written atomically (temp file in the same folder, fsync, ``os.replace``) so a crash leaves
either the old or the new value, never a torn file, and a number is never handed out twice.
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
        self._values: dict[str, int] = self._load()

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

    def next(self, name: str) -> int:
        """Return the next value of counter ``name`` (0 first) after persisting it."""
        with self._lock:
            value = self._values.get(name, -1) + 1
            self._values[name] = value
            self._save()
            return value

    def current(self, name: str) -> int | None:
        """The last value handed out, or None if never."""
        with self._lock:
            return self._values.get(name)
