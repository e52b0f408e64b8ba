"""Prometheus metrics of one agent, served at ``GET /metrics`` on its local API.

Each agent has its own ``CollectorRegistry`` (never the process-global one): tests and
``edge-agent simulate`` run several agents in one process. Counters are fed by the same
observations as the telemetry windows; gauges (outbox, tier health, models) are read from
the agent when scraped. Labels are tiers, statuses, configured model names and the app
names of api.keys_file only, so their number stays bounded (task classes, chosen by
clients, are not labels here).
Supervised workers and MQTT rejections are read from the agent at scrape time too: worker
names and rejection reasons are fixed sets, never taken from a message.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], AgentState]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        yield GaugeMetricFamily(
            "edge_agent_outbox_pending_records",
            "Telemetry records kept in the outbox and not yet acknowledged.",
            value=state.outbox_records,
        )
        yield GaugeMetricFamily(
            "edge_agent_outbox_pending_bytes",
            "Bytes of telemetry records kept in the outbox and not yet acknowledged.",
            value=state.outbox_bytes,
        )
        tiers = GaugeMetricFamily(
            "edge_agent_tier_healthy",
            "1 when the tier can take requests now (local: models loaded; remote: breaker "
            "closed or ready to probe).",
            labels=["tier"],
        )
        for tier, healthy in sorted(state.tiers_healthy.items()):
            tiers.add_metric([tier], 1.0 if healthy else 0.0)
        yield tiers
        loaded = GaugeMetricFamily(
            "edge_agent_model_loaded",
            "1 when the configured model is loaded and served.",
            labels=["model", "kind", "runtime", "version"],
        )
        for m in state.models:
            loaded.add_metric([m.name, m.kind, m.runtime, m.version or ""], float(m.loaded))
        yield loaded
        yield GaugeMetricFamily(
            "edge_agent_telemetry_invalid_observations",
            "Latencies or confidences that could not be sketched (NaN, negative) since start.",
            value=state.invalid_observations,
        )
        yield from _worker_families(state)
        yield from _certificate_families(state)


def _certificate_families(state: AgentState) -> Iterable[Metric]:
    if state.certificate_not_after is not None:
        yield GaugeMetricFamily(
            "edgefleet_agent_certificate_expiry_timestamp_seconds",
            "When the MQTT client certificate expires (Unix time); it is renewed over MQTT"
            " once mqtt.renew_before_fraction of its lifetime is left.",
            value=state.certificate_not_after,
        )
    if state.certificate_renewals:
        renewals = CounterMetricFamily(
            "edgefleet_agent_certificate_renewals",
            "Answers to certificate renewal requests since start, by outcome (renewed,"
            " refused by the controller, invalid certificate).",
            labels=["outcome"],
        )
        for outcome, count in sorted(state.certificate_renewals.items()):
            renewals.add_metric([outcome], count)
        yield renewals


def _worker_families(state: AgentState) -> Iterable[Metric]:
    restarts = CounterMetricFamily(
        "edgefleet_worker_restarts",
        "Crashes of a supervised worker since start (each is logged and restarted).",
        labels=["worker"],
    )
    up = GaugeMetricFamily(
        "edgefleet_worker_up",
        "1 while the worker runs, 0 while it is down after a crash or stopped.",
        labels=["worker"],
    )
    for worker in sorted(state.workers, key=lambda w: w.name):
        restarts.add_metric([worker.name], worker.restarts)
        up.add_metric([worker.name], 1.0 if worker.state == "running" else 0.0)
    yield restarts
    yield up
    rejected = CounterMetricFamily(
        "edgefleet_agent_mqtt_rejected",
        "Inbound MQTT messages refused (undecodable, for another device, wrong kind).",
        labels=["reason"],
    )
    for reason, count in sorted(state.mqtt_rejected.items()):
        rejected.add_metric([reason], count)
    yield rejected
    errors = CounterMetricFamily(
        "edgefleet_agent_mqtt_handler_errors",
        "Exceptions caught in the MQTT callbacks and inbound handlers (logged with traceback).",
        labels=["handler"],
    )
    for handler, count in sorted(state.mqtt_handler_errors.items()):
        errors.add_metric([handler], count)
    yield errors


class AgentMetrics:
    """The agent's Prometheus registry and the counters its requests feed."""

    def __init__(self, state: Callable[[], AgentState]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edge_agent_requests",
            "Requests by kind (chat, perception), serving tier and status.",
            ["kind", "tier", "status"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "edge_agent_rejected_requests",
            "Chat requests refused before routing (bad headers, unknown model, too long).",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edge_agent_request_duration_seconds",
            "Request latency by kind and serving tier (buckets are the sketch edges).",
            ["kind", "tier"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.tokens = Counter(
            "edge_agent_tokens",
            "Tokens by serving tier and direction (prompt, completion).",
            ["tier", "direction"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "edge_agent_escalations",
            "Local answers judged not confident enough and answered by the tier shown.",
            ["tier"],
            registry=self.registry,
        )
        self.cascades = Counter(
            "edge_agent_cascades",
            "Requests that went through the cascade (local first, confidence checked).",
            ["tier"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "edge_agent_fallbacks",
            "Requests served degraded by a fallback tier.",
            ["tier"],
            registry=self.registry,
        )
        # Local apps by the name of their API key (api.keys_file): names come from the
        # operator's file, so they are bounded; the key itself is never a label.
        self.app_requests = Counter(
            "edge_agent_app_requests",
            "Authenticated API requests by app (the name of its API key) and route.",
            ["app", "route"],
            registry=self.registry,
        )
        self.auth_refused = Counter(
            "edge_agent_auth_refused_requests",
            "API requests refused 401: no API key (missing) or an unknown one (invalid).",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(state))

    def observe_chat(self, obs: ChatObservation) -> None:
        self.requests.labels("chat", obs.tier, obs.status).inc()
        self.latency.labels("chat", obs.tier).observe(max(0.0, obs.latency_ms) / 1000)
        if obs.prompt_tokens > 0:
            self.tokens.labels(obs.tier, "prompt").inc(obs.prompt_tokens)
        if obs.completion_tokens > 0:
            self.tokens.labels(obs.tier, "completion").inc(obs.completion_tokens)
        if obs.escalated:
            self.escalations.labels(obs.tier).inc()
        if obs.cascaded:
            self.cascades.labels(obs.tier).inc()
        if obs.fallback:
            self.fallbacks.labels(obs.tier).inc()

    def observe_perception(self, obs: PerceptionObservation) -> None:
        self.requests.labels("perception", obs.tier, obs.status).inc()
        self.latency.labels("perception", obs.tier).observe(max(0.0, obs.latency_ms) / 1000)

    def observe_rejected(self, code: str) -> None:
        self.rejected.labels(code).inc()

    def observe_app_request(self, app: str, route: str) -> None:
        self.app_requests.labels(app, route).inc()

    def observe_auth_refused(self, reason: str) -> None:
        self.auth_refused.labels(reason).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


__all__ = ["LATENCY_BUCKETS_S", "AgentMetrics", "AgentState", "ModelState"]
