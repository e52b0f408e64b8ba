"""Observed latency per tier: a moving window of recent samples and its p95."""

import bisect
import threading
from collections import deque


class LatencyWindow:
    """The last ``size`` latencies (ms) of one tier; p95 once ``min_samples`` are in."""

    def __init__(self, size: int = 200, min_samples: int = 5) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []  # the same samples, kept sorted (read per request)
        self._min_samples = min_samples
        self._lock = threading.Lock()

    def add(self, latency_ms: float) -> None:
        with self._lock:
            if len(self._samples) == self._samples.maxlen:
                del self._sorted[bisect.bisect_left(self._sorted, self._samples[0])]
            self._samples.append(latency_ms)
            bisect.insort(self._sorted, latency_ms)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile ``q`` (0-100), or None with too few samples."""
        with self._lock:
            n = len(self._sorted)
            if n < self._min_samples:
                return None
            rank = max(1, -(-n * q // 100))  # ceil(n*q/100), at least 1
            return self._sorted[int(rank) - 1]

    def p95(self) -> float | None:
        return self.percentile(95)

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)
