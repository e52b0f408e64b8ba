"""The routing headers a client may send, parsed strictly (a bad value is a 400, not a guess).

- ``X-Route-Local: true|false`` forces the local tier.
- ``X-Latency-Budget-Ms: N`` (0 < N <= 600000) excludes tiers whose p95 is over it.
- ``X-Data-Sensitivity: public|internal|restricted`` may raise the detected class, never lower it.
- ``X-Task-Class: NAME`` (``[a-z][a-z0-9_-]{0,63}``) selects configured rules.
- ``X-Redact: true|false`` asks for reversible redaction of a restricted request (or refuses
  it where ``routing.redact.task_classes`` would apply it); absent: the config decides.
"""

import math
import re
from collections.abc import Mapping

from edge_agent.routing.policy import RouteHints
from edge_agent.routing.sensitivity import Level

_TASK_CLASS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _flag(headers: Mapping[str, str], name: str) -> bool | None:
    """A true/false header; None when absent, ValueError when it is neither."""
    raw = headers.get(name.lower())
    if raw is None:
        return None
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(f"{name} must be true or false")
    return value in _TRUE


def parse_route_headers(headers: Mapping[str, str]) -> RouteHints:
    """RouteHints from request headers (case-insensitive mapping); ValueError says what is wrong."""
    force_local = bool(_flag(headers, "X-Route-Local"))
    redact = _flag(headers, "X-Redact")
    budget: float | None = None
    raw_budget = headers.get("x-latency-budget-ms")
    if raw_budget is not None:
        try:
            budget = float(raw_budget)
        except ValueError:
            budget = math.nan
        if not (0 < budget <= 600_000):
            raise ValueError(
                "X-Latency-Budget-Ms must be a number of milliseconds, 0 < N <= 600000"
            )
    declared: Level | None = None
    raw_level = headers.get("x-data-sensitivity")
    if raw_level is not None:
        try:
            declared = Level.parse(raw_level.strip().lower())
        except ValueError as e:
            raise ValueError("X-Data-Sensitivity must be public, internal or restricted") from e
    task = headers.get("x-task-class")
    if task is not None and not _TASK_CLASS.match(task):
        raise ValueError("X-Task-Class must match [a-z][a-z0-9_-]{0,63}")
    return RouteHints(
        force_local=force_local,
        latency_budget_ms=budget,
        declared=declared,
        task_class=task,
        redact=redact,
    )
