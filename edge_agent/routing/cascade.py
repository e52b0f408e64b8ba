"""The confidence cascade: keep the local answer when it is confident, else escalate.

Confidence is the geometric mean of the per-token probabilities the local model assigned
to what it generated (``exp(mean(log p))``): one unsure token in a short answer pulls it
down, and it is comparable across answer lengths. For structured output the answer must
also parse and validate against the requested JSON schema, or confidence is 0.

``CascadeGuard`` watches the share of cascaded requests that escalate: when more than
``max_share`` of at least ``min_requests`` within ``window_s`` escalated, the local model is
evidently not good enough for this traffic, so cascading stops for ``cooldown_s`` (requests
are routed by task class instead) and the caller records an alert.
"""

import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from shared.json_guard import JsonShapeError, loads_bounded

# A structured answer longer than this is not checked against its schema (judged invalid).
MAX_ANSWER_BYTES = 1024 * 1024


def confidence(token_logprobs: Sequence[float]) -> float:
    """Geometric-mean token probability in [0, 1]; 0 for an empty answer."""
    if not token_logprobs:
        return 0.0
    return math.exp(sum(token_logprobs) / len(token_logprobs))


def schema_valid(text: str, schema: dict[str, Any]) -> bool:
    """Does ``text`` parse as JSON and validate against ``schema``?"""
    try:
        # The model's answer is outside input: a prompt can make it emit 3,000 "[".
        document = loads_bounded(text, max_bytes=MAX_ANSWER_BYTES)
    except JsonShapeError:
        return False
    # jsonschema loads with the first structured request (2.3 MiB the agent otherwise
    # holds from start, benchmarks/bench_agent_memory.py); later imports are a dict lookup.
    import jsonschema

    try:
        jsonschema.validate(document, schema)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        return False
    return True


def structured_confidence(
    text: str, token_logprobs: Sequence[float], schema: dict[str, Any] | None
) -> float:
    if schema is not None and not schema_valid(text, schema):
        return 0.0
    return confidence(token_logprobs)


class CascadeGuard:
    """Trips when too many cascaded requests escalate; time injected."""

    def __init__(
        self,
        *,
        max_share: float,
        window_s: float,
        min_requests: int,
        cooldown_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.max_share = max_share
        self.window_s = window_s
        self.min_requests = min_requests
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._tripped_until: float | None = None
        self.trips = 0

    @property
    def active(self) -> bool:
        """Is cascading allowed now?"""
        with self._lock:
            return self._tripped_until is None or self._clock() >= self._tripped_until

    def escalation_share(self) -> float:
        with self._lock:
            self._expire(self._clock())
            if not self._outcomes:
                return 0.0
            return sum(1 for _, e in self._outcomes if e) / len(self._outcomes)

    def _expire(self, now: float) -> None:
        while self._outcomes and self._outcomes[0][0] < now - self.window_s:
            self._outcomes.popleft()

    def record(self, escalated: bool) -> bool:
        """Add one cascaded request's outcome; True if this one tripped the guard."""
        with self._lock:
            now = self._clock()
            if self._tripped_until is not None and now >= self._tripped_until:
                self._tripped_until = None  # cooled down: start afresh
                self._outcomes.clear()
            self._outcomes.append((now, escalated))
            self._expire(now)
            if self._tripped_until is not None or len(self._outcomes) < self.min_requests:
                return False
            share = sum(1 for _, e in self._outcomes if e) / len(self._outcomes)
            if share > self.max_share:
                self._tripped_until = now + self.cooldown_s
                self.trips += 1
                return True
            return False
