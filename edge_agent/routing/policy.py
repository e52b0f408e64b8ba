"""The routing decision, pure: which tiers may answer a request, and in which order.

Sensitivity comes first and is never traded away: ``restricted`` may only run locally,
``internal`` locally or on the private tier, ``public`` anywhere. A client may raise the
class (``X-Data-Sensitivity``), never lower it, and may force local (``X-Route-Local``).
A deployment may set a floor (``routing.sensitivity.minimum``): every request is at least
that class, and reasons say ``floor:<class>`` where the floor, not the content, decided.

Among the allowed tiers that are up: a configured rule for the task class goes first (for
example planning -> cloud); otherwise the cheapest tier. A latency budget removes tiers
whose observed p95 is over it (they stay at the end of the plan as a last resort, so a
slow answer beats none). The rest of the plan is the fallback order on failure. The local
tier cascades (escalates a low-confidence answer to the next tier) when it goes first,
another tier is allowed, and no rule sends the task elsewhere.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from edge_agent.routing.sensitivity import Level

TIERS = ("local", "private", "cloud")
ALLOWED: dict[Level, frozenset[str]] = {
    Level.PUBLIC: frozenset(TIERS),
    Level.INTERNAL: frozenset({"local", "private"}),
    Level.RESTRICTED: frozenset({"local"}),
}


@dataclass(frozen=True, slots=True)
class RouteHints:
    """What the client asked for in headers (already validated)."""

    force_local: bool = False
    latency_budget_ms: float | None = None
    declared: Level | None = None
    task_class: str | None = None
    # X-Redact: True/False asks for/refuses reversible redaction; None: the config decides.
    redact: bool | None = None


@dataclass(frozen=True, slots=True)
class TierView:
    """A tier as the router sees it right now."""

    name: str
    available: bool
    unavailable_reason: str | None = None
    p95_ms: float | None = None
    cost_per_1k: float = 0.0


@dataclass(frozen=True, slots=True)
class Rule:
    task_class: str
    tier: str
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    level: Level
    plan: tuple[str, ...]  # tiers to try, in order; empty: nothing may answer
    reason: str  # why plan[0] (or why nothing)
    cascade: bool  # plan[0] is local and a low-confidence answer may escalate
    rule: Rule | None = None
    excluded: tuple[tuple[str, str], ...] = ()  # (tier, why it may not answer)

    @property
    def degraded(self) -> bool:
        """The tier a rule asks for is down, so whatever answers is a stand-in."""
        return self.reason.startswith("rule_tier_unavailable")

    def model_for(self, tier: str) -> str | None:
        """The model a rule asks for on ``tier`` (None: the tier's default)."""
        if self.rule is not None and self.rule.tier == tier:
            return self.rule.model
        return None


def effective_level(detected: Level, declared: Level | None) -> Level:
    """The client may raise the class, never lower it."""
    return detected if declared is None else max(detected, declared)


def decide(
    level: Level,
    hints: RouteHints,
    tiers: Mapping[str, TierView],
    rules: Sequence[Rule] = (),
    *,
    cascade_enabled: bool = True,
    cascade_tasks: Collection[str] | None = None,
    floor: Level = Level.PUBLIC,
) -> Decision:
    by_floor = floor > level
    level = max(level, floor)
    why_level = f"{'floor' if by_floor else 'sensitivity'}:{level.label}"
    allowed = {"local"} if hints.force_local else set(ALLOWED[level])
    excluded: list[tuple[str, str]] = []
    usable: list[str] = []
    for name in TIERS:
        view = tiers.get(name)
        if name not in allowed:
            why = "forced_local" if hints.force_local else why_level
            excluded.append((name, why))
        elif view is None:
            excluded.append((name, "not_configured"))
        elif not view.available:
            excluded.append((name, view.unavailable_reason or "unavailable"))
        else:
            usable.append(name)

    rule = next((r for r in rules if r.task_class == hints.task_class), None)
    if not usable:
        return Decision(level, (), "no_tier_available", False, rule, tuple(excluded))

    budget = hints.latency_budget_ms
    within = [t for t in usable if budget is None or (p := tiers[t].p95_ms) is None or p <= budget]
    over = [t for t in usable if t not in within]

    def fastest(names: list[str]) -> list[str]:
        return sorted(names, key=lambda t: tiers[t].p95_ms or 0.0)

    if within:  # the cheapest tier inside the budget; slower ones stay as a last resort
        plan = sorted(within, key=lambda t: tiers[t].cost_per_1k) + fastest(over)
    else:  # nothing is inside the budget: the fastest first
        plan = fastest(usable)

    if hints.force_local:
        reason = "forced_local"
    elif rule is not None and rule.tier in plan:
        plan.remove(rule.tier)
        plan.insert(0, rule.tier)
        reason = f"rule:{rule.task_class}"
    elif rule is not None and rule.tier not in allowed:
        reason = f"rule_blocked:{why_level}"
    elif rule is not None:
        reason = f"rule_tier_unavailable:{rule.tier}"
    elif level is Level.RESTRICTED:
        reason = why_level
    elif over and within and plan[0] != "local" and "local" in over:
        reason = "latency_budget"
    elif not within:
        reason = "latency_budget_unmet"
    else:
        reason = "cheapest"

    may_stay_local = rule is None or rule.tier == "local" or rule.tier not in plan
    cascade = (
        cascade_enabled
        and not hints.force_local
        and plan[0] == "local"
        and len(plan) > 1
        and may_stay_local
        and (cascade_tasks is None or (hints.task_class or "") in cascade_tasks)
    )
    return Decision(level, tuple(plan), reason, cascade, rule, tuple(excluded))
