"""The Prometheus text of one agent's metrics, rendered by prometheus_client.

Imported by the first scrape of ``GET /metrics`` (``AgentMetrics.exposition``), so that an
agent nobody scrapes never loads prometheus_client (docs/benchmarks.md, agent memory). The
request counters and the latency histogram are kept by ``edge_agent.telemetry.prometheus``
in plain numbers and turned into metric families here, sample for sample what
``prometheus_client.Counter`` and ``Histogram`` would expose (``_total``, ``_bucket``,
``_count``, ``_sum`` and, unless ``PROMETHEUS_DISABLE_CREATED_SERIES`` says otherwise,
``_created``); the gauges are read from the agent at scrape time.
"""

import os
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from edge_agent.telemetry.prometheus import AgentState, CounterTally, HistogramTally

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _use_created() -> bool:
    """prometheus_client's own switch for the ``_created`` series, read the same way."""
    value = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return value.lower() not in ("true", "1", "t")


def counter_family(tally: CounterTally, *, created: bool) -> CounterMetricFamily:
    family = CounterMetricFamily(tally.name, tally.documentation, labels=tally.labels)
    for values, (value, since) in tally.snapshot():
        family.add_metric(list(values), value, created=since if created else None)
    return family


def histogram_family(tally: HistogramTally, *, created: bool) -> HistogramMetricFamily:
    family = HistogramMetricFamily(tally.name, tally.documentation, labels=tally.labels)
    # prometheus_client's own spelling of the bounds (0.005, +Inf), as Histogram writes them.
    bounds = [floatToGoString(b) for b in tally.bounds]  # type: ignore[no-untyped-call]
    for values, child in tally.snapshot():
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(bounds, child.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric(list(values), buckets, child.sum)
        if created:
            labels = dict(zip(tally.labels, values, strict=True))
            family.samples.append(Sample(f"{tally.name}_created", labels, child.created))
    return family


class _TallyCollector(Collector):
    def __init__(
        self, counters: Iterable[CounterTally | HistogramTally], state: Callable[[], AgentState]
    ) -> None:
        self._tallies = tuple(counters)
        self._state = state

    def collect(self) -> Iterable[Metric]:
        created = _use_created()
        for tally in self._tallies:
            if isinstance(tally, HistogramTally):
                yield histogram_family(tally, created=created)
            else:
                yield counter_family(tally, created=created)
        yield from _state_families(self._state())


def render(
    tallies: Iterable[CounterTally | HistogramTally], state: Callable[[], AgentState]
) -> bytes:
    """The Prometheus text format of the tallies, then the gauges of ``state()``."""
    registry = CollectorRegistry()
    registry.register(_TallyCollector(tallies, state))
    return generate_latest(registry)


def _state_families(state: AgentState) -> Iterable[Metric]:
    """The gauges (and counters the agent keeps itself) read from the agent at scrape time."""
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
