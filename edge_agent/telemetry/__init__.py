"""Agent-side telemetry: windowed request groups and drift sketches for the outbox,
Prometheus metrics for the local API, and host readings for the ``system`` record."""

from edge_agent.telemetry.host import max_temperature_c
from edge_agent.telemetry.prometheus import AgentMetrics, AgentState, ModelState
from edge_agent.telemetry.windows import (
    ChatObservation,
    PerceptionObservation,
    WindowAggregator,
    utc_now,
)

__all__ = [
    "AgentMetrics",
    "AgentState",
    "ChatObservation",
    "ModelState",
    "PerceptionObservation",
    "WindowAggregator",
    "max_temperature_c",
    "utc_now",
]
