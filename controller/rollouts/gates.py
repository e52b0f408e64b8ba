"""Health gates for one wave: pure decisions from aggregated observations.

Each gate looks at one number (install success rate, inference error rate, latency p95,
cascade rate, drift score) and says pass, fail, wait (not enough data yet) or skip (not
configured, or no data where data is optional). The verdict combines them:

- any gate fails (with enough samples to trust it) -> ``rollback`` if that gate is in the
  policy's ``rollback_on``, else ``halt``. A failure counts as soon as it is certain, before
  the soak ends: waiting out a soak on a canary that already breaks the budget only keeps
  devices on a bad model for longer.
- otherwise, every gate passes, the wave's devices have settled, and the minimum soak time
  has passed -> ``advance``.
- otherwise ``wait``, with every reason listed (soak left, samples missing, devices still
  installing), so an operator can see why a rollout is not moving.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GateName = Literal["install_success", "error_rate", "latency_p95", "cascade_rate", "drift"]


class Verdict(StrEnum):
    ADVANCE = "advance"
    WAIT = "wait"
    HALT = "halt"
    ROLLBACK = "rollback"


class GatePolicy(BaseModel):
    """Thresholds for every wave of a rollout (``None`` switches a gate off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_soak_s: float = Field(default=600.0, ge=0)
    # Inference samples the wave must produce before error, latency and cascade gates count.
    min_samples: int = Field(default=50, ge=0)
    # After the soak, how long to wait for min_samples before halting; None waits forever.
    sample_timeout_s: float | None = Field(default=3600.0, gt=0)
    min_install_success: float = Field(default=0.95, ge=0, le=1)
    max_error_rate: float | None = Field(default=0.02, ge=0, le=1)
    max_latency_p95_ms: float | None = Field(default=None, gt=0)
    max_cascade_rate: float | None = Field(default=None, ge=0, le=1)
    max_drift: float | None = Field(default=None, ge=0)
    # The drift score is the PSI of the wave's drift.window sketches against the model's
    # reference (observe.py, docs/drift.md); with no data or no reference yet the gate is
    # skipped unless this is set. It is judged only once the feature it comes from has
    # min_samples samples of its own (the gate waits until then, like the others).
    drift_required: bool = False
    # Failures of these gates roll the rollout back by themselves; others halt it for a human.
    rollback_on: tuple[GateName, ...] = ("install_success", "error_rate")


@dataclass(frozen=True, slots=True)
class WaveObservation:
    """What one wave's devices did, aggregated (install counts and telemetry since install)."""

    assigned: int = 0
    installed: int = 0
    failed: int = 0  # install failed, rolled back, refused; timeouts too under a "fail" policy
    pending: int = 0  # assigned, not yet installed or failed
    inferences: int = 0
    errors: int = 0
    cascaded: int = 0
    latency_p95_ms: float | None = None
    drift_score: float | None = None
    drift_samples: int = 0


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's finding: its value, its threshold and what it means."""

    gate: GateName
    status: Literal["pass", "fail", "wait", "skip"]
    value: float | None
    threshold: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The verdict for a wave and everything that led to it."""

    verdict: Verdict
    reasons: tuple[str, ...]
    gates: tuple[GateResult, ...] = field(default=())


def _install_gate(policy: GatePolicy, obs: WaveObservation) -> GateResult:
    threshold = policy.min_install_success
    settled = obs.installed + obs.failed
    if obs.assigned == 0:
        return GateResult("install_success", "skip", None, threshold, "no devices in this wave")
    # Certain failure: even if every pending device installs, the rate stays below threshold.
    best_case = (obs.installed + obs.pending) / obs.assigned
    if best_case < threshold - 1e-12:
        rate = obs.installed / settled if settled else 0.0
        return GateResult(
            "install_success",
            "fail",
            rate,
            threshold,
            f"{obs.failed} of {obs.assigned} installs failed "
            f"(success can be at most {best_case:.1%}, need {threshold:.1%})",
        )
    if obs.pending:
        return GateResult(
            "install_success",
            "wait",
            obs.installed / settled if settled else None,
            threshold,
            f"{obs.pending} of {obs.assigned} devices still installing",
        )
    rate = obs.installed / settled if settled else 1.0
    return GateResult(
        "install_success", "pass", rate, threshold, f"{obs.installed}/{settled} installed"
    )


def _rate_gate(
    gate: GateName, limit: float | None, count: int, obs: WaveObservation, policy: GatePolicy
) -> GateResult:
    if limit is None:
        return GateResult(gate, "skip", None, None, "not configured")
    if obs.inferences < policy.min_samples:
        return GateResult(
            gate, "wait", None, limit, f"{obs.inferences} of {policy.min_samples} inference samples"
        )
    if obs.inferences == 0:
        return GateResult(gate, "skip", None, limit, "no inferences (none required)")
    rate = count / obs.inferences
    ok = rate <= limit
    return GateResult(
        gate,
        "pass" if ok else "fail",
        rate,
        limit,
        f"{rate:.2%} {'within' if ok else 'above'} {limit:.2%} over {obs.inferences} inferences",
    )


def _latency_gate(policy: GatePolicy, obs: WaveObservation) -> GateResult:
    budget = policy.max_latency_p95_ms
    if budget is None:
        return GateResult("latency_p95", "skip", None, None, "no latency budget")
    if obs.inferences < policy.min_samples:
        return GateResult(
            "latency_p95",
            "wait",
            obs.latency_p95_ms,
            budget,
            f"{obs.inferences} of {policy.min_samples} inference samples",
        )
    if obs.latency_p95_ms is None:
        return GateResult("latency_p95", "skip", None, budget, "no latencies (none required)")
    p95 = obs.latency_p95_ms
    ok = p95 <= budget
    return GateResult(
        "latency_p95",
        "pass" if ok else "fail",
        p95,
        budget,
        f"p95 {p95:.1f} ms {'within' if ok else 'over'} the {budget:.1f} ms budget",
    )


def _drift_gate(policy: GatePolicy, obs: WaveObservation) -> GateResult:
    limit = policy.max_drift
    if limit is None:
        return GateResult("drift", "skip", None, None, "not configured")
    if obs.drift_score is None or obs.drift_samples == 0:
        if policy.drift_required:
            return GateResult("drift", "wait", None, limit, "no data (drift is required)")
        return GateResult("drift", "skip", None, limit, "no data")
    if obs.drift_samples < policy.min_samples:
        return GateResult(
            "drift",
            "wait",
            obs.drift_score,
            limit,
            f"{obs.drift_samples} of {policy.min_samples} drift samples",
        )
    ok = obs.drift_score <= limit
    return GateResult(
        "drift",
        "pass" if ok else "fail",
        obs.drift_score,
        limit,
        f"drift {obs.drift_score:.3f} {'within' if ok else 'above'} {limit:.3f}",
    )


def evaluate_gates(policy: GatePolicy, obs: WaveObservation) -> tuple[GateResult, ...]:
    """Every gate's finding for ``obs`` (no timing: see ``decide``)."""
    return (
        _install_gate(policy, obs),
        _rate_gate("error_rate", policy.max_error_rate, obs.errors, obs, policy),
        _latency_gate(policy, obs),
        _rate_gate("cascade_rate", policy.max_cascade_rate, obs.cascaded, obs, policy),
        _drift_gate(policy, obs),
    )


def decide(
    policy: GatePolicy,
    obs: WaveObservation,
    *,
    soaking_since: datetime | None,
    now: datetime,
) -> GateDecision:
    """The verdict for a wave at ``now``.

    ``soaking_since`` is when the wave's last device settled (installed, failed or timed
    out), or None while some are still installing; the soak runs from there.
    """
    gates = evaluate_gates(policy, obs)
    failed = [g for g in gates if g.status == "fail"]
    if failed:
        reasons = tuple(f"{g.gate}: {g.reason}" for g in failed)
        if any(g.gate in policy.rollback_on for g in failed):
            return GateDecision(Verdict.ROLLBACK, reasons, gates)
        return GateDecision(Verdict.HALT, reasons, gates)

    waiting: list[str] = []
    if soaking_since is None:
        waiting.append("devices still installing")
    else:
        soak_end = soaking_since + timedelta(seconds=policy.min_soak_s)
        if now < soak_end:
            left = (soak_end - now).total_seconds()
            waiting.append(f"soaking: {left:.0f} s of {policy.min_soak_s:.0f} s left")
    sample_waits = [g for g in gates if g.status == "wait" and g.gate != "install_success"]
    waiting.extend(f"{g.gate}: {g.reason}" for g in gates if g.status == "wait")
    if not waiting:
        return GateDecision(Verdict.ADVANCE, ("all gates pass",), gates)
    if (
        sample_waits
        and soaking_since is not None
        and policy.sample_timeout_s is not None
        and not any(g.status == "wait" and g.gate == "install_success" for g in gates)
    ):
        give_up = soaking_since + timedelta(seconds=policy.min_soak_s + policy.sample_timeout_s)
        if now >= give_up:
            reasons = tuple(
                f"{g.gate}: still {g.reason} {policy.sample_timeout_s:.0f} s after the soak"
                for g in sample_waits
            )
            return GateDecision(Verdict.HALT, reasons, gates)
    return GateDecision(Verdict.WAIT, tuple(waiting), gates)


def summarize(gates: Sequence[GateResult]) -> list[dict[str, object]]:
    """Gate results as plain JSON for the state document and the API."""
    return [
        {
            "gate": g.gate,
            "status": g.status,
            "value": g.value,
            "threshold": g.threshold,
            "reason": g.reason,
        }
        for g in gates
    ]


__all__ = [
    "GateDecision",
    "GateName",
    "GatePolicy",
    "GateResult",
    "Verdict",
    "WaveObservation",
    "decide",
    "evaluate_gates",
    "summarize",
]
