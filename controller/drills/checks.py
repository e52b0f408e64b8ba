"""The drill's checks: pure functions from collected observations to a verdict with numbers.

The runner (``runner.py``) does the I/O — requests, the cloud server's log, the agents'
outboxes, the controller's API — and hands plain values in; nothing here touches a
socket, a file or the clock, so each rule is tested with hand-made observations.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from controller.drills.scenarios import Window

RequestKind = Literal["local", "cloud", "restricted"]
# Markers that restricted prompts carry; none may reach the cloud server.
RESTRICTED_PROMPTS: tuple[tuple[str, str], ...] = (
    ("4111 1111 1111 1111", "Charge card 4111 1111 1111 1111 for the spare parts, please."),
    ("jane.doe@posteo.de", "Draft a reply to jane.doe@posteo.de about the late delivery."),
    ("5500 0000 0000 0004", "Is card 5500 0000 0000 0004 still valid for this order?"),
    ("ops-lead@mailbox.org", "Summarise the last message from ops-lead@mailbox.org."),
)
RESTRICTED_MARKERS: tuple[str, ...] = tuple(marker for marker, _ in RESTRICTED_PROMPTS)


@dataclass(frozen=True, slots=True)
class RequestSample:
    """One chat request the drill sent: when (s from start), to whom, what, and how it went."""

    at: float
    device_id: str
    kind: RequestKind
    status: int  # HTTP status; 0 when no answer came (connection error, timeout)
    latency_ms: float
    route: str = ""  # X-Edge-Route
    degraded: bool = False  # X-Edge-Degraded
    reason: str = ""  # X-Edge-Route-Reason, or the error when no answer came


@dataclass(frozen=True, slots=True)
class DeviceLedger:
    """What one agent's outbox produced in its epoch and what the controller stored."""

    device_id: str
    epoch: int
    produced: int  # next_seq: records 0..produced-1 were written in this epoch
    pending: frozenset[int]  # seqs still in the outbox (never acknowledged)
    dropped: int  # records the agent dropped itself (quota), by its own count
    stored: tuple[tuple[int, int], ...]  # (epoch, seq) of every row the controller holds
    # Records numbered while a broker/controller fault was in force (seq from the cut's
    # next_seq up to the heal's), and those of them still in the outbox at the heal: they
    # cannot have been stored before it, so each one stored now was delivered after the heal.
    produced_during_fault: int = 0
    buffered_at_heal: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Convergence:
    """A desired key set during the fault and what the device reported after recovery."""

    device_id: str
    desired_version: int
    applied_version: int
    desired: Any
    reported: Any


@dataclass(frozen=True, slots=True)
class RolloutSample:
    """The rollout's current wave and status, polled ``at`` seconds after the start."""

    at: float
    wave: int
    status: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A check's verdict: ``passed`` (None when it does not apply), numbers and why."""

    name: str
    passed: bool | None
    measured: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _inside(at: float, windows: Iterable[Window]) -> bool:
    return any(w.contains(at) for w in windows)


def check_local_serving(
    samples: Sequence[RequestSample], windows: Sequence[Window], budget_ms: float
) -> CheckResult:
    """Requests that may only or should run locally (plain and restricted prompts) kept being
    answered during the fault, and their p95 stayed inside the agent's latency budget.
    Cloud-routed requests are counted too (answered, degraded) but do not decide."""
    name = "local_serving"
    during = [s for s in samples if _inside(s.at, windows)]
    local = [s for s in during if s.kind != "cloud"]
    ok = [s for s in local if s.status == 200]
    failed = len(local) - len(ok)
    p95 = percentile([s.latency_ms for s in ok], 95)
    cloud = [s for s in during if s.kind == "cloud"]
    measured: dict[str, Any] = {
        "requests_during_fault": len(local),
        "ok": len(ok),
        "failed": failed,
        "p95_ms": None if p95 is None else round(p95, 1),
        "max_ms": round(max(s.latency_ms for s in ok), 1) if ok else None,
        "budget_ms": budget_ms,
        "cloud_routed_during_fault": len(cloud),
        "cloud_routed_ok": sum(1 for s in cloud if s.status == 200),
        "cloud_routed_degraded": sum(1 for s in cloud if s.degraded),
    }
    if not local:
        return CheckResult(name, False, measured, "no local requests were made during the fault")
    if failed:
        return CheckResult(name, False, measured, f"{failed} of {len(local)} local requests failed")
    assert p95 is not None
    if p95 > budget_ms:
        return CheckResult(
            name, False, measured, f"p95 {p95:.0f} ms is over the {budget_ms:.0f} ms budget"
        )
    return CheckResult(
        name, True, measured, f"{len(ok)} local answers, p95 {p95:.0f} ms <= {budget_ms:.0f} ms"
    )


def check_restricted_stayed(
    cloud_bodies: Sequence[str],
    samples: Sequence[RequestSample],
    markers: Sequence[str],
    windows: Sequence[Window] = (),
) -> CheckResult:
    """No request the cloud server received carries a restricted marker, every restricted
    prompt that was answered was answered on the device, and at least one was (else nothing
    was tested). Failed restricted requests are counted for information (those during the
    fault decide in ``local_serving``)."""
    name = "restricted_data_stayed_local"
    leaks = sorted({m for m in markers for body in cloud_bodies if m in body})
    restricted = [s for s in samples if s.kind == "restricted"]
    off_device = [s for s in restricted if s.status == 200 and s.route != "local"]
    local = [s for s in restricted if s.status == 200 and s.route == "local"]
    failed = [s for s in restricted if s.status != 200]
    failed_during = sum(1 for s in failed if _inside(s.at, windows))
    measured = {
        "restricted_requests": len(restricted),
        "answered_locally": len(local),
        "answered_elsewhere": len(off_device),
        "failed_during_fault": failed_during,
        "failed_outside_fault": len(failed) - failed_during,
        "cloud_requests_received": len(cloud_bodies),
        "leaked_markers": len(leaks),
    }
    if not restricted:
        return CheckResult(name, False, measured, "no restricted prompts were sent")
    if leaks:
        return CheckResult(name, False, measured, f"the cloud received {len(leaks)} marker(s)")
    if off_device:
        return CheckResult(
            name, False, measured, f"{len(off_device)} restricted answer(s) came from off-device"
        )
    if not local:
        return CheckResult(
            name,
            False,
            measured,
            f"none of {len(restricted)} restricted prompts was answered locally: nothing tested",
        )
    return CheckResult(
        name,
        True,
        measured,
        f"{len(local)} of {len(restricted)} restricted prompts answered locally, "
        "none reached the cloud",
    )


def check_telemetry_delivered(
    ledgers: Sequence[DeviceLedger], *, fault_buffering: bool, redelivered: int | None = None
) -> CheckResult:
    """Every record an agent produced (and did not drop itself) is stored, once, nothing is
    left buffered, and, where the fault cut the devices off (``fault_buffering``), at least
    one record buffered during the fault was delivered after the heal. Redeliveries the
    controller discarded (``redelivered``) are reported, not judged: storage keeps one row per
    (device, epoch, seq) whatever arrives."""
    name = "telemetry_delivered_after_fault"
    produced = duplicates = missing = pending = dropped = 0
    during = buffered = delivered = 0
    problems: list[str] = []
    for ledger in ledgers:
        keys = [k for k in ledger.stored if k[0] == ledger.epoch]
        seen = {seq for _, seq in keys}
        dups = len(keys) - len(seen)  # a guard on the API's answer; storage forbids it
        expected = set(range(ledger.produced)) - ledger.pending
        unexplained = max(0, len(expected - seen) - ledger.dropped)
        produced += ledger.produced
        duplicates += dups
        missing += unexplained
        pending += len(ledger.pending)
        dropped += ledger.dropped
        during += ledger.produced_during_fault
        buffered += len(ledger.buffered_at_heal)
        delivered += len(ledger.buffered_at_heal & seen)
        if dups:
            problems.append(f"{ledger.device_id}: {dups} stored twice")
        if unexplained:
            problems.append(f"{ledger.device_id}: {unexplained} never stored")
    measured: dict[str, Any] = {
        "devices": len(ledgers),
        "produced": produced,
        "stored_once": produced - missing - pending - dropped,
        "duplicates": duplicates,
        "missing": missing,
        "still_buffered": pending,
        "dropped_by_agent": dropped,
        "produced_during_fault": during if fault_buffering else None,
        "buffered_at_heal": buffered if fault_buffering else None,
        "delivered_after_heal": delivered if fault_buffering else None,
        "redelivered": redelivered,
    }
    if not ledgers or not produced:
        return CheckResult(name, False, measured, "no telemetry was produced")
    if problems:
        return CheckResult(name, False, measured, "; ".join(problems))
    if pending:
        return CheckResult(
            name, False, measured, f"{pending} record(s) still buffered after recovery"
        )
    if fault_buffering and not delivered:
        return CheckResult(
            name,
            False,
            measured,
            "no record was buffered during the fault and delivered after the heal: nothing tested",
        )
    if fault_buffering:
        return CheckResult(
            name,
            True,
            measured,
            f"{produced} records stored once each; {delivered} buffered during the fault "
            "were delivered after the heal",
        )
    return CheckResult(name, True, measured, f"{produced} records stored once each")


def check_desired_converged(results: Sequence[Convergence]) -> CheckResult:
    """Each device applied the desired change made during the fault and reports it."""
    name = "desired_state_converged"
    behind = [r for r in results if r.applied_version < r.desired_version]
    differ = [r for r in results if r.reported != r.desired]
    measured = {
        "devices": len(results),
        "converged": len(results) - len({r.device_id for r in behind + differ}),
        "behind": len(behind),
        "reported_differs": len(differ),
    }
    if not results:
        return CheckResult(name, False, measured, "no desired change was made")
    if behind or differ:
        names = sorted({r.device_id for r in behind + differ})
        return CheckResult(name, False, measured, f"not converged: {', '.join(names)}")
    return CheckResult(name, True, measured, "reported == desired on every device")


def check_no_stale_advance(
    samples: Sequence[RolloutSample], windows: Sequence[Window]
) -> CheckResult:
    """The rollout's wave did not move on while its devices were cut off (gates waited)."""
    name = "no_wave_advanced_on_stale_data"
    during = sorted((s for s in samples if _inside(s.at, windows)), key=lambda s: s.at)
    after = [s for s in samples if not _inside(s.at, windows) and during and s.at > during[-1].at]
    measured: dict[str, Any] = {
        "samples_during_fault": len(during),
        "wave_at_fault": during[0].wave if during else None,
        "max_wave_during_fault": max((s.wave for s in during), default=None),
        "final_wave": after[-1].wave if after else None,
        "final_status": after[-1].status if after else None,
    }
    if not during:
        return CheckResult(name, False, measured, "the rollout was not observed during the fault")
    advanced = [s for s in during if s.wave > during[0].wave]
    if advanced:
        return CheckResult(
            name,
            False,
            measured,
            f"wave {during[0].wave + 1} -> {advanced[0].wave + 1} at {advanced[0].at:.1f} s, "
            "while the devices were unreachable",
        )
    return CheckResult(
        name, True, measured, f"held at wave {during[0].wave + 1} for the whole partition"
    )


def skipped(name: str, reason: str) -> CheckResult:
    """A check that does not apply to this scenario or setup (not a failure)."""
    return CheckResult(name, None, {}, reason)


def verdict(passed: Iterable[bool | None]) -> bool:
    """Pass when no check failed and at least one ran (None: the check did not apply)."""
    ran = [p for p in passed if p is not None]
    return bool(ran) and all(ran)


def overall(results: Sequence[CheckResult]) -> bool:
    """``verdict`` of the results' ``passed``."""
    return verdict(r.passed for r in results)


__all__ = [
    "RESTRICTED_MARKERS",
    "RESTRICTED_PROMPTS",
    "CheckResult",
    "Convergence",
    "DeviceLedger",
    "RequestSample",
    "RolloutSample",
    "check_desired_converged",
    "check_local_serving",
    "check_no_stale_advance",
    "check_restricted_stayed",
    "check_telemetry_delivered",
    "overall",
    "percentile",
    "skipped",
    "verdict",
]
