"""Prometheus metrics of one agent, served at ``GET /metrics`` on its local API.

Each agent has its own ``CollectorRegistry`` (never the process-global one): tests and
``edge-agent simulate`` run several agents in one process. Counters are fed by the same
observations as the telemetry windows; gauges (outbox, tier health, models) are read from
the agent when scraped. Labels are tiers, statuses, configured model names and the app
names of api.keys_file only, so their number stays bounded (task classes, chosen by
clients, are not labels here).
Supervised workers and MQTT rejections are read from the agent at scrape time too: worker
names and rejection reasons are fixed sets, never taken from a message.

The counters and the histogram are kept here in plain numbers (``CounterTally``,
``HistogramTally``); prometheus_client loads with the first scrape, which renders them
(``edge_agent/telemetry/exposition.py``). An agent nobody scrapes never imports it.
"""

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_agent.telemetry.windows import ChatObservation, PerceptionObservation
from shared.sketches import EDGES
from shared.supervision import WorkerStatus

# The sketches' latency edges, in seconds: Prometheus and the windows bin alike.
LATENCY_BUCKETS_S: tuple[float, ...] = tuple(edge / 1000 for edge in EDGES["latency_ms"])


@dataclass(frozen=True, slots=True)
class ModelState:
    name: str
    kind: str  # chat | perception
    runtime: str
    loaded: bool
    version: str | None = None


@dataclass(frozen=True, slots=True)
class AgentState:
    """What the gauges show, read from the agent at scrape time."""

    outbox_records: int
    outbox_bytes: int
    tiers_healthy: dict[str, bool] = field(default_factory=dict)
    models: tuple[ModelState, ...] = ()
    invalid_observations: int = 0
    workers: tuple[WorkerStatus, ...] = ()
    mqtt_rejected: dict[str, int] = field(default_factory=dict)  # by reason
    mqtt_handler_errors: dict[str, int] = field(default_factory=dict)  # by where
    # The MQTT client certificate's expiry (Unix time) and renewal answers by outcome, when
    # the agent renews its certificate (docs/tls.md); None / empty otherwise.
    certificate_not_after: float | None = None
    certificate_renewals: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class HistogramChild:
    """One label set of a histogram: counts per bucket (not cumulative), sum, created."""

    counts: list[float]
    sum: float
    created: float


class CounterTally:
    """A labelled counter, as ``prometheus_client.Counter`` keeps one: a float per label
    set, and when that label set was first seen (its ``_created``). Thread-safe."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], list[float]] = {}  # labels -> [value, created]

    def inc(self, *values: str, amount: float = 1.0) -> None:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes {len(self.labels)} label values")
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        with self._lock:
            entry = self._values.get(values)
            if entry is None:
                self._values[values] = [float(amount), time.time()]
            else:
                entry[0] += amount

    def snapshot(self) -> list[tuple[tuple[str, ...], tuple[float, float]]]:
        """(label values, (value, created)) per label set, in the order first seen."""
        with self._lock:
            return [(k, (v[0], v[1])) for k, v in self._values.items()]


class HistogramTally:
    """A labelled histogram, as ``prometheus_client.Histogram`` keeps one (``+Inf`` added
    as the last bound). Thread-safe."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("buckets not in sorted order")
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], HistogramChild] = {}

    def observe(self, *values: str, amount: float) -> None:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes {len(self.labels)} label values")
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = HistogramChild([0.0] * len(self.bounds), 0.0, time.time())
                self._children[values] = child
            child.sum += amount
            for i, bound in enumerate(self.bounds):
                if amount <= bound:
                    child.counts[i] += 1
                    break

    def snapshot(self) -> list[tuple[tuple[str, ...], HistogramChild]]:
        """(label values, a copy of the child) per label set, in the order first seen."""
        with self._lock:
            return [
                (k, HistogramChild(list(c.counts), c.sum, c.created))
                for k, c in self._children.items()
            ]


class AgentMetrics:
    """The counters the agent's requests feed, and its Prometheus text at scrape time."""

    def __init__(self, state: Callable[[], AgentState]) -> None:
        self._state = state
        self.requests = CounterTally(
            "edge_agent_requests",
            "Requests by kind (chat, perception), serving tier and status.",
            ["kind", "tier", "status"],
        )
        self.rejected = CounterTally(
            "edge_agent_rejected_requests",
            "Chat requests refused before routing (bad headers, unknown model, too long).",
            ["code"],
        )
        self.latency = HistogramTally(
            "edge_agent_request_duration_seconds",
            "Request latency by kind and serving tier (buckets are the sketch edges).",
            ["kind", "tier"],
            buckets=LATENCY_BUCKETS_S,
        )
        self.tokens = CounterTally(
            "edge_agent_tokens",
            "Tokens by serving tier and direction (prompt, completion).",
            ["tier", "direction"],
        )
        self.escalations = CounterTally(
            "edge_agent_escalations",
            "Local answers judged not confident enough and answered by the tier shown.",
            ["tier"],
        )
        self.cascades = CounterTally(
            "edge_agent_cascades",
            "Requests that went through the cascade (local first, confidence checked).",
            ["tier"],
        )
        self.fallbacks = CounterTally(
            "edge_agent_fallbacks",
            "Requests served degraded by a fallback tier.",
            ["tier"],
        )
        # Local apps by the name of their API key (api.keys_file): names come from the
        # operator's file, so they are bounded; the key itself is never a label.
        self.app_requests = CounterTally(
            "edge_agent_app_requests",
            "Authenticated API requests by app (the name of its API key) and route.",
            ["app", "route"],
        )
        # Categories are the detector's fixed names (redaction.PLACEHOLDER_TYPES): bounded.
        self.redactions = CounterTally(
            "edge_agent_redactions",
            "Values replaced by placeholders before a request left the device, by category.",
            ["category"],
        )
        self.auth_refused = CounterTally(
            "edge_agent_auth_refused_requests",
            "API requests refused 401: no API key (missing) or an unknown one (invalid).",
            ["reason"],
        )
        self._tallies: tuple[CounterTally | HistogramTally, ...] = (
            self.requests,
            self.rejected,
            self.latency,
            self.tokens,
            self.escalations,
            self.cascades,
            self.fallbacks,
            self.app_requests,
            self.auth_refused,
            self.redactions,
        )

    def observe_chat(self, obs: ChatObservation) -> None:
        self.requests.inc("chat", obs.tier, obs.status)
        self.latency.observe("chat", obs.tier, amount=max(0.0, obs.latency_ms) / 1000)
        if obs.prompt_tokens > 0:
            self.tokens.inc(obs.tier, "prompt", amount=obs.prompt_tokens)
        if obs.completion_tokens > 0:
            self.tokens.inc(obs.tier, "completion", amount=obs.completion_tokens)
        if obs.escalated:
            self.escalations.inc(obs.tier)
        if obs.cascaded:
            self.cascades.inc(obs.tier)
        if obs.fallback:
            self.fallbacks.inc(obs.tier)
        for category, count in obs.redactions:
            self.redactions.inc(category, amount=count)

    def observe_perception(self, obs: PerceptionObservation) -> None:
        self.requests.inc("perception", obs.tier, obs.status)
        self.latency.observe("perception", obs.tier, amount=max(0.0, obs.latency_ms) / 1000)

    def observe_rejected(self, code: str) -> None:
        self.rejected.inc(code)

    def observe_app_request(self, app: str, route: str) -> None:
        self.app_requests.inc(app, route)

    def observe_auth_refused(self, reason: str) -> None:
        self.auth_refused.inc(reason)

    def exposition(self) -> bytes:
        """The counters, then the gauges read from the agent now, in Prometheus' text format
        (prometheus_client is imported by the first call)."""
        from edge_agent.telemetry import exposition

        return exposition.render(self._tallies, self._state)

    @property
    def content_type(self) -> str:
        """The media type of :meth:`exposition`'s text (prometheus_client's latest)."""
        from edge_agent.telemetry import exposition

        return exposition.CONTENT_TYPE


__all__ = [
    "LATENCY_BUCKETS_S",
    "AgentMetrics",
    "AgentState",
    "CounterTally",
    "HistogramTally",
    "ModelState",
]
