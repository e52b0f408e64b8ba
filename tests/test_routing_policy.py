"""The pure routing pieces: policy decisions, circuit breakers, cascade guard, headers."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.routing.breaker import CircuitBreaker
from edge_agent.routing.cascade import CascadeGuard, confidence, schema_valid
from edge_agent.routing.headers import parse_route_headers
from edge_agent.routing.latency import LatencyWindow
from edge_agent.routing.policy import ALLOWED, RouteHints, Rule, TierView, decide, effective_level
from edge_agent.routing.remote import parse_retry_after
from edge_agent.routing.sensitivity import Level

UP = {
    "local": TierView("local", True, p95_ms=400.0),
    "private": TierView("private", True, p95_ms=300.0, cost_per_1k=0.2),
    "cloud": TierView("cloud", True, p95_ms=900.0, cost_per_1k=1.5),
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sensitivity_bounds_the_plan() -> None:
    """Restricted plans contain only local, internal local and private, public everything."""
    assert decide(Level.RESTRICTED, RouteHints(), UP).plan == ("local",)
    assert decide(Level.INTERNAL, RouteHints(), UP).plan == ("local", "private")
    assert decide(Level.PUBLIC, RouteHints(), UP).plan == ("local", "private", "cloud")
    excluded = dict(decide(Level.RESTRICTED, RouteHints(), UP).excluded)
    assert excluded == {"private": "sensitivity:restricted", "cloud": "sensitivity:restricted"}


@given(
    st.sampled_from(list(Level)),
    st.booleans(),
    st.one_of(st.none(), st.floats(1, 5000)),
    st.one_of(st.none(), st.sampled_from(["planning", "classification", "other"])),
    st.fixed_dictionaries({t: st.booleans() for t in ("local", "private", "cloud")}),
)
def test_no_decision_ever_leaves_the_allowed_tiers(
    level: Level,
    force_local: bool,
    budget: float | None,
    task: str | None,
    up: dict[str, bool],
) -> None:
    """Whatever the hints, rules, budgets and health, every planned tier is allowed for the
    data's class, and forced-local plans are local only."""
    tiers = {name: TierView(name, up[name], p95_ms=view.p95_ms) for name, view in UP.items()}
    rules = [Rule("planning", "cloud"), Rule("classification", "private")]
    hints = RouteHints(force_local=force_local, latency_budget_ms=budget, task_class=task)
    decision = decide(level, hints, tiers, rules)
    assert set(decision.plan) <= ALLOWED[level]
    assert all(up[t] for t in decision.plan)
    if force_local:
        assert set(decision.plan) <= {"local"} and not decision.cascade


def test_rules_go_first_but_never_past_sensitivity() -> None:
    """planning -> cloud puts cloud first for public data; for internal data the rule is
    blocked and the reason says so."""
    rules = [Rule("planning", "cloud", "big-model")]
    public = decide(Level.PUBLIC, RouteHints(task_class="planning"), UP, rules)
    assert public.plan[0] == "cloud" and public.reason == "rule:planning"
    assert public.model_for("cloud") == "big-model" and not public.cascade
    internal = decide(Level.INTERNAL, RouteHints(task_class="planning"), UP, rules)
    assert internal.plan == ("local", "private")
    assert internal.reason == "rule_blocked:sensitivity:internal"


def test_latency_budget_prefers_a_tier_that_meets_it() -> None:
    """With a 350 ms budget the local p95 of 400 ms is over it: private goes first and local
    stays last as a slow last resort."""
    decision = decide(Level.INTERNAL, RouteHints(latency_budget_ms=350), UP)
    assert decision.plan == ("private", "local") and decision.reason == "latency_budget"
    restricted = decide(Level.RESTRICTED, RouteHints(latency_budget_ms=350), UP)
    assert restricted.plan == ("local",), "a budget never moves restricted data"


def test_unavailable_tiers_and_empty_plans() -> None:
    """A tier whose breaker is open is skipped with its reason; with nothing usable the plan
    is empty."""
    tiers = {**UP, "local": TierView("local", False, "local_unhealthy:load failed")}
    decision = decide(Level.PUBLIC, RouteHints(), tiers)
    assert decision.plan == ("private", "cloud")
    assert dict(decision.excluded)["local"] == "local_unhealthy:load failed"
    nothing = decide(Level.RESTRICTED, RouteHints(), tiers)
    assert nothing.plan == () and nothing.reason == "no_tier_available"


def test_cascade_only_when_local_goes_first_and_may_stay() -> None:
    """Cascade needs local first, another allowed tier, cascading enabled and a task that
    may stay local."""
    assert decide(Level.PUBLIC, RouteHints(), UP).cascade
    assert not decide(Level.RESTRICTED, RouteHints(), UP).cascade
    assert not decide(Level.PUBLIC, RouteHints(), UP, cascade_enabled=False).cascade
    only = decide(Level.PUBLIC, RouteHints(task_class="chat"), UP, cascade_tasks={"extraction"})
    assert not only.cascade


def test_client_may_raise_never_lower_the_class() -> None:
    """X-Data-Sensitivity raises the detected class; a lower declaration is ignored."""
    assert effective_level(Level.PUBLIC, Level.RESTRICTED) is Level.RESTRICTED
    assert effective_level(Level.RESTRICTED, Level.PUBLIC) is Level.RESTRICTED


def test_breaker_opens_half_opens_and_closes() -> None:
    """Three failures in the window open the breaker; after open_s one probe passes; its
    success closes it, its failure re-opens it; a 429's Retry-After sets the open time."""
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, window_s=10, open_s=30, clock=clock)
    for _ in range(2):
        breaker.record_failure("timeout")
    assert breaker.state == "closed"
    clock.now = 20  # the first two fell out of the window
    breaker.record_failure("timeout")
    assert breaker.state == "closed"
    breaker.record_failure("timeout")
    breaker.record_failure("timeout")
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(30)
    clock.now = 51
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow(), "one probe at a time"
    breaker.record_failure("server_error")
    assert breaker.state == "open"
    clock.now = 82
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.record_failure("rate_limited", retry_after_s=120)
    assert breaker.state == "open" and breaker.retry_after_s() == pytest.approx(120)


def test_cascade_guard_trips_and_cools_down() -> None:
    """Above the escalation share (after min_requests) the guard trips once, stays off for
    the cooldown, then allows cascading again."""
    clock = Clock()
    guard = CascadeGuard(max_share=0.5, window_s=60, min_requests=4, cooldown_s=100, clock=clock)
    trips = [guard.record(e) for e in (True, False, True, True)]
    assert trips == [False, False, False, True] and not guard.active
    assert guard.record(True) is False, "trips once"
    clock.now = 101
    assert guard.active and not guard.record(False)


def test_confidence_and_schema_validity() -> None:
    """Confidence is the geometric-mean token probability; schema validity is checked."""
    assert confidence([math.log(0.5), math.log(0.5)]) == pytest.approx(0.5)
    assert confidence([]) == 0.0
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert schema_valid('{"n": 3}', schema)
    assert not schema_valid('{"n": "3"}', schema) and not schema_valid("{n: 3", schema)


def test_route_headers_are_parsed_strictly() -> None:
    """Valid headers become hints; every malformed one is a ValueError naming the header."""
    hints = parse_route_headers(
        {
            "x-route-local": "true",
            "x-latency-budget-ms": "250",
            "x-data-sensitivity": "internal",
            "x-task-class": "planning",
        }
    )
    assert hints == RouteHints(True, 250.0, Level.INTERNAL, "planning")
    for header, value in (
        ("x-route-local", "maybe"),
        ("x-latency-budget-ms", "-1"),
        ("x-latency-budget-ms", "nan"),
        ("x-data-sensitivity", "secret"),
        ("x-task-class", "Planning!"),
    ):
        with pytest.raises(ValueError, match=f"(?i)^{header}"):
            parse_route_headers({header: value})


def test_latency_window_p95_and_retry_after() -> None:
    """p95 is nearest-rank over the window; Retry-After parses seconds and HTTP dates."""
    window = LatencyWindow(size=100, min_samples=5)
    assert window.p95() is None
    for ms in range(1, 101):
        window.add(float(ms))
    assert window.p95() == 95.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300), st.integers(5, 50))
def test_latency_window_matches_a_sorted_recount(samples: list[float], size: int) -> None:
    """The incrementally sorted window always equals sorting the last ``size`` samples."""
    window = LatencyWindow(size=size, min_samples=1)
    for value in samples:
        window.add(value)
    recent = sorted(samples[-size:])
    rank = max(1, -(-len(recent) * 95 // 100))
    assert window.p95() == recent[int(rank) - 1]
