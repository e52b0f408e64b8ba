"""Agent-side telemetry: windowed request groups and drift sketches for the outbox,
Prometheus metrics for the local API, and host readings for the ``system`` record."""
