"""Wave health gates: each verdict (advance, wait, halt, rollback) from named cases."""

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.rollouts.gates import GatePolicy, Verdict, WaveObservation, decide

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
POLICY = GatePolicy(
    min_soak_s=600,
    min_samples=100,
    sample_timeout_s=1800,
    min_install_success=0.9,
    max_error_rate=0.02,
    max_latency_p95_ms=250,
    max_cascade_rate=0.2,
    max_drift=0.3,
)
HEALTHY = WaveObservation(
    assigned=10,
    installed=10,
    inferences=500,
    errors=2,
    cascaded=10,
    latency_p95_ms=120.0,
)


@dataclass(frozen=True)
class Case:
    name: str
    obs: WaveObservation
    verdict: Verdict
    soaked_s: float | None = 900  # seconds since the wave settled; None: still installing
    policy: GatePolicy = POLICY
    failing: set[str] = field(default_factory=set)
    reason_has: str = ""


def changed(**kw: Any) -> WaveObservation:
    return replace(HEALTHY, **kw)


CASES = [
    Case("healthy-after-soak", HEALTHY, Verdict.ADVANCE),
    Case("healthy-mid-soak", HEALTHY, Verdict.WAIT, soaked_s=300, reason_has="soaking: 300 s"),
    Case(
        "still-installing",
        changed(installed=7, pending=3),
        Verdict.WAIT,
        soaked_s=None,
        reason_has="3 of 10 devices still installing",
    ),
    Case(
        "latency-over-budget",
        changed(latency_p95_ms=400.0),
        Verdict.HALT,
        failing={"latency_p95"},
        reason_has="over the 250.0 ms budget",
    ),
    Case(
        "latency-breach-halts-before-the-soak-ends",
        changed(latency_p95_ms=400.0),
        Verdict.HALT,
        soaked_s=10,
        failing={"latency_p95"},
    ),
    Case(
        "error-rate-rolls-back",
        changed(errors=50),
        Verdict.ROLLBACK,
        failing={"error_rate"},
        reason_has="10.00% above 2.00%",
    ),
    Case(
        "error-rate-halts-when-not-in-rollback-on",
        changed(errors=50),
        Verdict.HALT,
        policy=POLICY.model_copy(update={"rollback_on": ()}),
        failing={"error_rate"},
    ),
    Case(
        "install-failures-certain-before-all-settle",
        changed(installed=5, failed=2, pending=3),
        Verdict.ROLLBACK,
        soaked_s=None,
        failing={"install_success"},
    ),
    Case(
        "one-failure-within-tolerance",
        changed(installed=9, failed=1),
        Verdict.ADVANCE,
    ),
    Case("cascade-rate-too-high", changed(cascaded=150), Verdict.HALT, failing={"cascade_rate"}),
    Case(
        "drift-too-high",
        changed(drift_score=0.5, drift_samples=200),
        Verdict.HALT,
        failing={"drift"},
    ),
    Case(
        "drift-on-a-handful-of-samples-waits",
        changed(drift_score=0.9, drift_samples=20),
        Verdict.WAIT,
        reason_has="drift: 20 of 100 drift samples",
    ),
    Case("drift-absent-is-skipped", changed(drift_score=None), Verdict.ADVANCE),
    Case(
        "drift-absent-but-required",
        changed(drift_score=None),
        Verdict.WAIT,
        policy=POLICY.model_copy(update={"drift_required": True}),
        reason_has="drift: no data",
    ),
    Case(
        "too-few-samples-waits",
        changed(inferences=40, errors=20, latency_p95_ms=900.0),
        Verdict.WAIT,
        reason_has="40 of 100 inference samples",
    ),
    Case(
        "too-few-samples-for-too-long-halts",
        changed(inferences=40, errors=0),
        Verdict.HALT,
        soaked_s=600 + 1800,
        reason_has="after the soak",
    ),
    Case(
        "no-samples-needed",
        changed(inferences=0, errors=0, cascaded=0, latency_p95_ms=None),
        Verdict.ADVANCE,
        policy=POLICY.model_copy(update={"min_samples": 0}),
    ),
    Case(
        "no-budget-skips-latency",
        changed(latency_p95_ms=10_000.0),
        Verdict.ADVANCE,
        policy=POLICY.model_copy(update={"max_latency_p95_ms": None}),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gate_verdicts(case: Case) -> None:
    """Each named situation gets its verdict, names the failing gates and says why."""
    now = T0 + timedelta(hours=1)
    since = None if case.soaked_s is None else now - timedelta(seconds=case.soaked_s)
    decision = decide(case.policy, case.obs, soaking_since=since, now=now)
    assert decision.verdict == case.verdict, decision.reasons
    assert {g.gate for g in decision.gates if g.status == "fail"} == case.failing
    if case.reason_has:
        assert any(case.reason_has in r for r in decision.reasons), decision.reasons


def test_decision_comes_exactly_at_the_soak_end() -> None:
    """A healthy wave waits until the instant its soak ends and advances from then on."""
    since = T0
    end = since + timedelta(seconds=POLICY.min_soak_s)
    before = decide(POLICY, HEALTHY, soaking_since=since, now=end - timedelta(microseconds=1))
    at = decide(POLICY, HEALTHY, soaking_since=since, now=end)
    assert before.verdict == Verdict.WAIT
    assert at.verdict == Verdict.ADVANCE


@given(
    installed=st.integers(0, 50),
    failed=st.integers(0, 50),
    pending=st.integers(0, 50),
    inferences=st.integers(0, 1000),
    error_share=st.floats(0, 1),
    p95=st.one_of(st.none(), st.floats(1, 1000)),
    soaked=st.one_of(st.none(), st.floats(0, 5000)),
)
def test_advance_only_when_every_gate_holds(
    installed: int,
    failed: int,
    pending: int,
    inferences: int,
    error_share: float,
    p95: float | None,
    soaked: float | None,
) -> None:
    """Whatever the observation, advance implies: soak over, nobody installing, enough
    samples, and every configured threshold met."""
    obs = WaveObservation(
        assigned=installed + failed + pending,
        installed=installed,
        failed=failed,
        pending=pending,
        inferences=inferences,
        errors=int(inferences * error_share),
        latency_p95_ms=p95 if inferences else None,
    )
    now = T0 + timedelta(hours=2)
    since = None if soaked is None else now - timedelta(seconds=soaked)
    decision = decide(POLICY, obs, soaking_since=since, now=now)
    if decision.verdict == Verdict.ADVANCE:
        assert since is not None and soaked is not None and soaked >= POLICY.min_soak_s
        assert pending == 0
        assert inferences >= POLICY.min_samples
        assert obs.errors / inferences <= POLICY.max_error_rate  # type: ignore[operator]
        assert p95 is not None and p95 <= POLICY.max_latency_p95_ms  # type: ignore[operator]
        if installed + failed:
            assert installed / (installed + failed) >= POLICY.min_install_success
    if decision.verdict in (Verdict.HALT, Verdict.ROLLBACK):
        assert decision.reasons
