"""A drill's report: what it observed, judged by ``checks``, as one JSON-able dict."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.drills import checks
from controller.drills.checks import (
    RESTRICTED_MARKERS,
    CheckResult,
    Convergence,
    DeviceLedger,
    RequestSample,
    RolloutSample,
)
from controller.drills.options import DrillOptions
from controller.drills.scenarios import Scenario, fault_windows
from controller.drills.timeline import Timeline


@dataclass(frozen=True)
class Observations:
    """Everything the drill observed, once traffic stopped and recovery was waited for."""

    samples: list[RequestSample]
    rollout_samples: list[RolloutSample]
    cloud_bodies: list[str]  # each request the fake cloud received, as JSON
    ledgers: list[DeviceLedger]
    convergence: list[Convergence]
    redelivered: int | None


def skipped_report(options: DrillOptions, reason: str) -> dict[str, Any]:
    """The report of a drill that could not run against this controller."""
    return {
        "scenario": options.scenario,
        "devices": options.devices,
        "duration_s": options.duration_s,
        "started_at": datetime.now(UTC).isoformat(),
        "passed": None,
        "skipped": reason,
        "checks": [],
        "events": [],
        "fault_windows": [],
        "timeline": [],
    }


def judge(
    scenario: Scenario, options: DrillOptions, timeline: Timeline, seen: Observations
) -> list[CheckResult]:
    """Every check of the drill, in report order."""
    windows = fault_windows(timeline.steps)
    results = [
        checks.check_local_serving(seen.samples, windows, options.latency_budget_ms),
        checks.check_restricted_stayed(
            seen.cloud_bodies, seen.samples, RESTRICTED_MARKERS, windows
        ),
        checks.check_telemetry_delivered(
            seen.ledgers,
            # the broker or controller fault cuts the devices' telemetry off; a cloud
            # outage does not
            fault_buffering=scenario.link in ("broker", "controller"),
            redelivered=seen.redelivered,
        ),
        checks.check_desired_converged(seen.convergence),
    ]
    if scenario.rollout:
        results.append(checks.check_no_stale_advance(seen.rollout_samples, windows))
    else:
        results.append(
            checks.skipped("no_wave_advanced_on_stale_data", "only in rollout-partition")
        )
    return results


def build_report(
    scenario: Scenario,
    options: DrillOptions,
    timeline: Timeline,
    seen: Observations,
    *,
    run: dict[str, Any],
) -> dict[str, Any]:
    """The report; ``run`` adds what only the runner knows (run id, devices, controller,
    quarantined devices, the rollout)."""
    results = judge(scenario, options, timeline, seen)
    windows = fault_windows(timeline.steps)
    return {
        "scenario": scenario.name,
        "summary": scenario.summary,
        "run_id": run["run_id"],
        "devices": len(run["device_ids"]),
        "device_ids": run["device_ids"],
        "duration_s": options.duration_s,
        "latency_budget_ms": options.latency_budget_ms,
        "controller": run["controller"],
        "embedded": options.embedded,
        "quarantined": run["quarantined"],
        "started_at": timeline.started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "passed": checks.overall(results),
        "checks": [r.to_json() for r in results],
        "events": timeline.events,
        "fault_windows": [{"start": round(w.start, 3), "end": round(w.end, 3)} for w in windows],
        "timeline": per_second(seen.samples),
        "rollout": run["rollout"] if scenario.rollout else None,
    }


def per_second(samples: list[RequestSample]) -> list[dict[str, Any]]:
    """Requests bucketed by whole second from the start: ok, failed and the p95 of the ok."""
    buckets: dict[int, list[RequestSample]] = {}
    for s in samples:
        buckets.setdefault(int(s.at), []).append(s)
    rows = []
    for second in range(max(buckets, default=-1) + 1):
        items = buckets.get(second, [])
        ok = [s.latency_ms for s in items if s.status == 200]
        p95 = checks.percentile(ok, 95)
        rows.append(
            {
                "t": second,
                "ok": len(ok),
                "failed": len(items) - len(ok),
                "p95_ms": None if p95 is None else round(p95, 1),
            }
        )
    return rows


__all__ = [
    "Observations",
    "build_report",
    "judge",
    "per_second",
    "skipped_report",
]
