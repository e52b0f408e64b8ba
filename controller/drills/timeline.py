"""The drill's clock and its event log (seconds since traffic and faults began)."""

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller.drills.scenarios import Step


@dataclass
class Timeline:
    """When the drill began; the events it logged and the fault steps it performed."""

    t0: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    events: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, name: str, **detail: Any) -> None:
        with self.lock:
            self.events.append({"t": round(self.now(), 3), "event": name, **detail})


__all__ = ["Timeline"]
