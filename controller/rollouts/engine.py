"""The rollout state machine: pure, with time injected.

One ``step`` takes the rollout's spec, its persisted state, what its devices report, the
current wave's telemetry aggregate, the time and perhaps an operator command, and returns
the next state with the actions to carry out (assign the model, revert a device, record a
device's outcome) and an audit record for every transition. It does no I/O: the service
loads the inputs from the database and applies the outputs in one transaction, so a
controller that restarts between two steps simply takes the next step from the database.

Statuses::

    pending --start--> running(wave i) --gates pass--> running(wave i+1) ... --> completed
                 running --gate fails--> halted | rolling_back --reverts confirmed--> rolled_back
    pending|running --pause--> paused --resume--> (where it was)
    any active --abort--> aborted          any active --rollback--> rolling_back

A wave starts only inside a maintenance window (if any are set); its soak starts when its
last device has settled (installed, failed or timed out), and the gates are asked on every
step, so a decision comes on the first step after the soak ends. Devices that go silent
mid-update time out, so a wave can always settle and a rollout never hangs.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.rollouts.cohort import CohortSelector, Wave, validate_waves
from controller.rollouts.gates import GateDecision, GatePolicy, Verdict, WaveObservation
from controller.rollouts.gates import decide as decide_gates
from controller.rollouts.gates import summarize as summarize_gates

SYSTEM_ACTOR = "system:rollouts"


class RolloutError(ValueError):
    """A rollout input is unusable (a spec, a state document or a device report)."""


class CommandRefused(RolloutError):
    """An operator command that makes no sense in the rollout's current status."""


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    COMPLETED = "completed"
    ABORTED = "aborted"


ACTIVE_STATUSES = frozenset(
    {Status.PENDING, Status.RUNNING, Status.PAUSED, Status.HALTED, Status.ROLLING_BACK}
)
TERMINAL_STATUSES = frozenset({Status.ROLLED_BACK, Status.COMPLETED, Status.ABORTED})


class Outcome(StrEnum):
    """Where one member device stands in the rollout."""

    PENDING = "pending"  # a member whose wave has not reached it (or quarantined so far)
    ASSIGNED = "assigned"  # desired state set, install not yet reported
    INSTALLED = "installed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    REVERTING = "reverting"  # rollback asked for, not yet confirmed by the device
    REVERTED = "reverted"
    REVERT_TIMED_OUT = "revert_timed_out"
    SKIPPED = "skipped"  # never assigned: the rollout ended first, or it stayed quarantined


# Reported ``model.status`` values that end an install attempt without the new model.
# ``metadata_expired`` is not one: the device keeps retrying (it cannot reach fresh metadata
# or is being served a frozen repository), so it stays assigned until it installs or its
# install timeout counts it as failed.
FAILED_REPORTS = frozenset({"failed", "rolled_back", "refused"})
_SETTLED = frozenset({Outcome.INSTALLED, Outcome.FAILED, Outcome.TIMED_OUT})
_TO_REVERT = frozenset({Outcome.ASSIGNED, Outcome.INSTALLED, Outcome.FAILED, Outcome.TIMED_OUT})
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MaintenanceWindow(BaseModel):
    """When new waves may start: ``start``-``end`` UTC on ``days`` (empty: every day).

    A window whose end is before its start runs past midnight; ``days`` names the day it
    opens on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: tuple[int, ...] = ()  # 0 = Monday ... 6 = Sunday
    start: time = time(0, 0)
    end: time = time(23, 59, 59, 999999)

    @field_validator("days", mode="before")
    @classmethod
    def _day_names(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(
                _DAY_NAMES.index(v[:3].lower())
                if isinstance(v, str) and v[:3].lower() in _DAY_NAMES
                else v
                for v in value
            )
        return value

    @field_validator("days")
    @classmethod
    def _check_days(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 0 <= d <= 6 for d in value):
            raise ValueError("days are 0 (Monday) to 6 (Sunday), or mon..sun")
        return value

    def contains(self, moment: datetime) -> bool:
        now = moment.astimezone(UTC)
        clock = now.time().replace(tzinfo=None)
        if self.start <= self.end:
            return (not self.days or now.weekday() in self.days) and (
                self.start <= clock <= self.end
            )
        # Past midnight: the late part belongs to today, the early part to yesterday.
        if clock >= self.start:
            return not self.days or now.weekday() in self.days
        if clock <= self.end:
            return not self.days or (now.weekday() - 1) % 7 in self.days
        return False


def in_windows(windows: Sequence[MaintenanceWindow], moment: datetime) -> bool:
    return not windows or any(w.contains(moment) for w in windows)


class RolloutSpec(BaseModel):
    """What to roll out, to whom, in which waves, and what counts as healthy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=64)  # registry name = the agent's model name
    version: str = Field(min_length=1, max_length=64)
    target: str = Field(min_length=1, max_length=255)  # the TUF target path
    rollout_key: str = Field(min_length=1, max_length=128)  # salts the wave hashing
    waves: tuple[Wave, ...]
    cohort: CohortSelector = Field(default_factory=CohortSelector)
    gates: GatePolicy = Field(default_factory=GatePolicy)
    # A device with no sign of life this long after its assignment (or its last message)
    # times out; one that has not settled this long after assignment times out too.
    device_timeout_s: float = Field(default=900.0, gt=0)
    install_timeout_s: float = Field(default=3600.0, gt=0)
    # Timed-out devices count as failed installs ("fail") or leave the gate's sample ("exclude").
    timeout_policy: Literal["fail", "exclude"] = "fail"
    windows: tuple[MaintenanceWindow, ...] = ()
    start_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _check(self) -> "RolloutSpec":
        validate_waves(self.waves)
        return self


class GateSnapshot(BaseModel):
    """The last gate evaluation, kept in the state so the API can show it."""

    wave: int
    verdict: str
    reasons: tuple[str, ...]
    gates: list[dict[str, Any]]
    observation: dict[str, Any]
    at: AwareDatetime


class RolloutState(BaseModel):
    """Everything the engine remembers between steps (persisted as JSON)."""

    status: Status = Status.PENDING
    wave: int = -1  # index of the wave in progress; -1 before the first starts
    wave_started_at: AwareDatetime | None = None
    soaking_since: AwareDatetime | None = None  # the current wave's devices all settled
    observe_since: AwareDatetime | None = None  # gates read telemetry from here (resume)
    paused_from: Status | None = None
    reason: str = ""
    updated_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    last_gate: GateSnapshot | None = None


@dataclass(frozen=True, slots=True)
class ModelReport:
    """The device's reported ``model`` key (contract 2), parsed."""

    target: str | None
    status: str | None
    desired_target: str | None = None
    rollout: int | None = None
    installed_at: float | None = None
    error: str | None = None


# The last second a datetime holds (9999-12-31T23:59:59Z), as a Unix time.
MAX_TIMESTAMP = 253402300799
# What a database text column refuses (PostgreSQL: NUL; any UTF-8 codec: lone surrogates).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RolloutError(f"reported model.{key} must be a string, not {type(value).__name__}")
    # Reported text ends up in outcome reasons: keep it short and storable.
    return _UNSTORABLE.sub("\ufffd", value[:512])


def _installed_at(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RolloutError("reported model.installed_at must be a number or null")
    # Compared before any float(): an integer too large for a float would raise
    # OverflowError. NaN fails both comparisons, infinities and huge integers the second.
    if not 0 <= value <= MAX_TIMESTAMP:
        raise RolloutError(
            "reported model.installed_at must be a Unix time from 1970 to 9999 (0 to "
            f"{MAX_TIMESTAMP})"
        )
    return float(value)


def parse_model_report(doc: Any) -> ModelReport | None:
    """Parse a reported ``model`` document; None if there is none, RolloutError if malformed.

    Devices write this document: whatever it holds, this raises nothing but RolloutError,
    and what it returns is safe for the engine (an ``installed_at`` a datetime can hold)
    and for the database (strings without NUL or lone surrogates).
    """
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise RolloutError(f"reported model must be an object, not {type(doc).__name__}")
    rollout = doc.get("rollout")
    if rollout is not None and (isinstance(rollout, bool) or not isinstance(rollout, int)):
        raise RolloutError("reported model.rollout must be an integer or null")
    return ModelReport(
        target=_opt_str(doc, "target"),
        status=_opt_str(doc, "status"),
        desired_target=_opt_str(doc, "desired_target"),
        rollout=rollout,
        installed_at=_installed_at(doc.get("installed_at")),
        error=_opt_str(doc, "error"),
    )


def _reported_time(installed_at: float) -> datetime | None:
    """A reported install time as a datetime; None if no datetime holds it (a ModelReport
    built by hand, not by ``parse_model_report``)."""
    try:
        return datetime.fromtimestamp(installed_at, UTC)
    except (OverflowError, ValueError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One member device as the engine sees it: its rollout record and live facts."""

    device_id: str
    wave: int
    outcome: Outcome = Outcome.PENDING
    assigned_at: datetime | None = None
    outcome_at: datetime | None = None
    quarantined: bool = False
    last_seen: datetime | None = None
    report: ModelReport | None = None
    reported_at: datetime | None = None
    previous: dict[str, Any] | None = None  # the model it ran before (its revert target)


@dataclass(frozen=True, slots=True)
class TelemetryAggregate:
    """Inference and drift telemetry of the current wave's devices since their install."""

    inferences: int = 0
    errors: int = 0
    cascaded: int = 0
    latency_p95_ms: float | None = None
    drift_score: float | None = None
    drift_samples: int = 0


@dataclass(frozen=True, slots=True)
class Command:
    """An operator's instruction, applied at the start of a step."""

    kind: Literal["pause", "resume", "abort", "rollback"]
    actor: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Assign:
    """Set the device's desired model to the rollout's target."""

    device_id: str
    wave: int


@dataclass(frozen=True, slots=True)
class Revert:
    """Set the device's desired model back to ``previous`` (None: the factory model)."""

    device_id: str
    previous: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class SetOutcome:
    """Record a device's new outcome (``installed``, ``timed_out``, ...) and why."""

    device_id: str
    outcome: Outcome
    at: datetime
    reason: str = ""


Action = Assign | Revert | SetOutcome


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit log entry the service writes (who, what, why)."""

    action: str
    reason: str
    actor: str = SYSTEM_ACTOR
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepResult:
    state: RolloutState
    actions: tuple[Action, ...]
    audits: tuple[AuditRecord, ...]
    decision: GateDecision | None = None


def wave_observation(
    devices: Sequence[DeviceView], wave: int, telemetry: TelemetryAggregate, policy: str
) -> WaveObservation:
    """The gate input for ``wave``: install counts from the devices, plus the telemetry."""
    counts = dict.fromkeys(Outcome, 0)
    for d in devices:
        if d.wave == wave:
            counts[d.outcome] += 1
    timed_out = counts[Outcome.TIMED_OUT] if policy == "fail" else 0
    installed = counts[Outcome.INSTALLED]
    failed = counts[Outcome.FAILED] + timed_out
    pending = counts[Outcome.ASSIGNED]
    return WaveObservation(
        assigned=installed + failed + pending,
        installed=installed,
        failed=failed,
        pending=pending,
        inferences=telemetry.inferences,
        errors=telemetry.errors,
        cascaded=telemetry.cascaded,
        latency_p95_ms=telemetry.latency_p95_ms,
        drift_score=telemetry.drift_score,
        drift_samples=telemetry.drift_samples,
    )


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class _Step:
    """One step's working set; ``run`` fills the actions and audits."""

    def __init__(
        self,
        rollout_id: int,
        spec: RolloutSpec,
        state: RolloutState,
        devices: Sequence[DeviceView],
        now: datetime,
    ) -> None:
        self.rollout_id = rollout_id
        self.spec = spec
        self.state = state.model_copy(deep=True)
        self.now = now
        self.devices = {d.device_id: d for d in devices}
        self.outcomes = {d.device_id: d.outcome for d in devices}
        self.outcome_at = {d.device_id: d.outcome_at for d in devices}
        self.actions: list[Action] = []
        self.audits: list[AuditRecord] = []
        self.decision: GateDecision | None = None

    # --- bookkeeping -------------------------------------------------------------------
    def set_outcome(self, device_id: str, outcome: Outcome, reason: str, at: datetime) -> None:
        self.outcomes[device_id] = outcome
        self.outcome_at[device_id] = at
        self.actions.append(SetOutcome(device_id, outcome, at, reason))

    def transition(
        self,
        status: Status,
        action: str,
        reason: str,
        *,
        actor: str = SYSTEM_ACTOR,
        detail: dict[str, Any] | None = None,
    ) -> None:
        before = self.state.status
        self.state.status = status
        self.state.reason = reason
        if status in TERMINAL_STATUSES:
            self.state.finished_at = self.now
        self.audits.append(
            AuditRecord(
                action=action,
                reason=reason,
                actor=actor,
                detail={
                    "from": before.value,
                    "to": status.value,
                    "wave": self.state.wave,
                    **(detail or {}),
                },
            )
        )

    def views(self) -> list[DeviceView]:
        """The devices with this step's outcome changes applied."""
        out = []
        for d in self.devices.values():
            outcome = self.outcomes[d.device_id]
            if outcome != d.outcome:
                d = DeviceView(
                    device_id=d.device_id,
                    wave=d.wave,
                    outcome=outcome,
                    assigned_at=d.assigned_at,
                    outcome_at=self.outcome_at[d.device_id],
                    quarantined=d.quarantined,
                    last_seen=d.last_seen,
                    report=d.report,
                    reported_at=d.reported_at,
                    previous=d.previous,
                )
            out.append(d)
        return out

    # --- commands ------------------------------------------------------------------------
    def command(self, command: Command) -> None:
        status = self.state.status
        reason = command.reason or f"{command.kind} by {command.actor}"
        if status in TERMINAL_STATUSES:
            raise CommandRefused(f"the rollout is already {status.value}")
        if command.kind == "pause":
            if status not in (Status.PENDING, Status.RUNNING):
                raise CommandRefused(f"only a pending or running rollout pauses, not {status}")
            self.state.paused_from = status
            self.transition(Status.PAUSED, "rollout.pause", reason, actor=command.actor)
        elif command.kind == "resume":
            if status == Status.PAUSED:
                back = self.state.paused_from or Status.RUNNING
                self.state.paused_from = None
                self.transition(back, "rollout.resume", reason, actor=command.actor)
            elif status == Status.HALTED:
                # Another look with fresh data: the soak and the gates' telemetry restart now.
                self.state.observe_since = self.now
                self.state.soaking_since = None
                self.transition(Status.RUNNING, "rollout.resume", reason, actor=command.actor)
            else:
                raise CommandRefused(f"only a paused or halted rollout resumes, not {status}")
        elif command.kind == "abort":
            self.transition(Status.ABORTED, "rollout.abort", reason, actor=command.actor)
        elif command.kind == "rollback":
            if status == Status.ROLLING_BACK:
                raise CommandRefused("the rollout is already rolling back")
            self.transition(Status.ROLLING_BACK, "rollout.rollback", reason, actor=command.actor)
        else:  # pragma: no cover - Literal keeps this out
            raise CommandRefused(f"unknown command {command.kind!r}")

    # --- device outcomes -----------------------------------------------------------------
    def _is_ours(self, d: DeviceView, report: ModelReport) -> bool:
        if report.rollout is not None:
            return report.rollout == self.rollout_id
        # No rollout id: a report about our target, newer than our assignment.
        return (
            report.desired_target == self.spec.target
            and d.assigned_at is not None
            and d.reported_at is not None
            and d.reported_at >= d.assigned_at
        )

    def track_installs(self) -> None:
        for d in self.devices.values():
            outcome = self.outcomes[d.device_id]
            if outcome not in (Outcome.ASSIGNED, Outcome.TIMED_OUT, Outcome.INSTALLED):
                continue
            r = d.report
            if r is not None and r.target == self.spec.target and r.status == "active":
                if outcome != Outcome.INSTALLED:
                    at = self.now
                    if r.installed_at is not None:
                        reported = _reported_time(r.installed_at)
                        if (
                            reported is not None
                            and d.assigned_at is not None
                            and d.assigned_at <= reported <= self.now
                        ):
                            at = reported
                    self.set_outcome(d.device_id, Outcome.INSTALLED, "reported active", at)
                continue
            if r is not None and r.status in FAILED_REPORTS and self._is_ours(d, r):
                why = f"device reported {r.status}" + (f": {r.error}" if r.error else "")
                self.set_outcome(d.device_id, Outcome.FAILED, why, self.now)
                continue
            if outcome == Outcome.ASSIGNED and d.assigned_at is not None:
                self._check_timeout(d)

    def _check_timeout(self, d: DeviceView) -> None:
        assert d.assigned_at is not None
        last_sign = _later(d.assigned_at, _later(d.last_seen, d.reported_at))
        assert last_sign is not None
        silent = (self.now - last_sign).total_seconds()
        waiting = (self.now - d.assigned_at).total_seconds()
        reason = ""
        if silent > self.spec.device_timeout_s:
            reason = f"silent for {silent:.0f} s (timeout {self.spec.device_timeout_s:.0f} s)"
        elif waiting > self.spec.install_timeout_s:
            reason = (
                f"not installed {waiting:.0f} s after assignment "
                f"(timeout {self.spec.install_timeout_s:.0f} s)"
            )
        if reason:
            self.set_outcome(d.device_id, Outcome.TIMED_OUT, reason, self.now)
            self.audits.append(
                AuditRecord(
                    action="rollout.device_timeout",
                    reason=reason,
                    detail={"device": d.device_id, "wave": d.wave},
                )
            )

    # --- waves ---------------------------------------------------------------------------
    def eligible(self, d: DeviceView) -> bool:
        return self.outcomes[d.device_id] == Outcome.PENDING and not d.quarantined

    def assign_through(self, wave: int) -> int:
        """Assign every eligible member of waves up to ``wave``; returns how many."""
        n = 0
        for d in sorted(self.devices.values(), key=lambda v: v.device_id):
            if d.wave <= wave and self.eligible(d):
                self.actions.append(Assign(d.device_id, d.wave))
                self.outcomes[d.device_id] = Outcome.ASSIGNED
                self.outcome_at[d.device_id] = self.now
                n += 1
        return n

    def start_wave(self, first: int, action: str, detail: dict[str, Any]) -> None:
        """Start the first wave from ``first`` that has devices to assign (empty ones are
        passed over); completes the rollout when none is left."""
        total = len(self.spec.waves)
        wave = first
        # Only a wave with no one left to assign is passed over. A wave whose members are all
        # quarantined starts and waits for them (run_gates): skipping it would skip a canary.
        while wave < total and not any(
            d.wave == wave and self.outcomes[d.device_id] == Outcome.PENDING
            for d in self.devices.values()
        ):
            wave += 1
        if wave >= total:
            self.finish(detail)
            return
        self.state.wave = wave
        self.state.wave_started_at = self.now
        self.state.soaking_since = None
        self.state.observe_since = None
        assigned = self.assign_through(wave)
        self.transition(
            Status.RUNNING,
            action,
            f"wave {wave + 1}/{total} ({self.spec.waves[wave]}) started: "
            f"{assigned} devices assigned",
            detail={**detail, "assigned": assigned},
        )

    def finish(self, detail: dict[str, Any]) -> None:
        self.skip_remaining("the rollout completed before this device could be assigned")
        reason = "every wave passed its gates"
        if not any(o == Outcome.INSTALLED for o in self.outcomes.values()):
            reason = "no device installed the model: none was eligible (all quarantined)"
        self.transition(Status.COMPLETED, "rollout.complete", reason, detail=detail)

    def skip_remaining(self, reason: str) -> None:
        for device_id, outcome in list(self.outcomes.items()):
            if outcome == Outcome.PENDING:
                why = reason
                if self.devices[device_id].quarantined:
                    why = "quarantined"
                self.set_outcome(device_id, Outcome.SKIPPED, why, self.now)

    def soak_start(self, wave: int) -> datetime | None:
        """When the wave's devices had all settled (None while one is still installing)."""
        settled_at = _later(self.state.wave_started_at, self.state.observe_since)
        for d in self.devices.values():
            if d.wave != wave:
                continue
            outcome = self.outcomes[d.device_id]
            if outcome == Outcome.ASSIGNED:
                return None
            if outcome in _SETTLED:
                settled_at = _later(settled_at, self.outcome_at[d.device_id])
        return settled_at

    def run_gates(self, telemetry: TelemetryAggregate) -> None:
        wave = self.state.wave
        members = [d for d in self.devices.values() if d.wave == wave]
        if members and all(self.outcomes[d.device_id] == Outcome.PENDING for d in members):
            # Nobody in this wave could be assigned (all quarantined): no evidence, no verdict.
            self.state.reason = (
                f"wave {wave + 1} waits: all {len(members)} of its devices are quarantined"
            )
            return
        self.state.soaking_since = self.soak_start(wave)
        observation = wave_observation(self.views(), wave, telemetry, self.spec.timeout_policy)
        decision = decide_gates(
            self.spec.gates, observation, soaking_since=self.state.soaking_since, now=self.now
        )
        self.decision = decision
        self.state.last_gate = GateSnapshot(
            wave=wave,
            verdict=decision.verdict.value,
            reasons=decision.reasons,
            gates=summarize_gates(decision.gates),
            observation={
                "assigned": observation.assigned,
                "installed": observation.installed,
                "failed": observation.failed,
                "pending": observation.pending,
                "inferences": observation.inferences,
                "errors": observation.errors,
                "cascaded": observation.cascaded,
                "latency_p95_ms": observation.latency_p95_ms,
                "drift_score": observation.drift_score,
            },
            at=self.now,
        )
        detail = {"gates": summarize_gates(decision.gates), "gated_wave": wave}
        reason = "; ".join(decision.reasons)
        if decision.verdict == Verdict.ROLLBACK:
            self.transition(Status.ROLLING_BACK, "rollout.rollback", reason, detail=detail)
        elif decision.verdict == Verdict.HALT:
            self.transition(Status.HALTED, "rollout.halt", reason, detail=detail)
        elif decision.verdict == Verdict.ADVANCE:
            if wave + 1 >= len(self.spec.waves):
                self.finish(detail)
            elif in_windows(self.spec.windows, self.now):
                self.start_wave(wave + 1, "rollout.advance", detail)
            else:
                self.state.reason = f"wave {wave + 1} passed; next wave waits for a window"
        else:
            self.state.reason = reason

    # --- rollback ------------------------------------------------------------------------
    def roll_back(self) -> None:
        for d in sorted(self.devices.values(), key=lambda v: v.device_id):
            outcome = self.outcomes[d.device_id]
            if outcome in _TO_REVERT:
                self.actions.append(Revert(d.device_id, d.previous))
                self.set_outcome(d.device_id, Outcome.REVERTING, "rollback", self.now)
            elif outcome == Outcome.REVERTING:
                self._confirm_revert(d)
        if not any(o == Outcome.REVERTING for o in self.outcomes.values()):
            self.skip_remaining("rolled back before this device was assigned")
            self.transition(
                Status.ROLLED_BACK,
                "rollout.rolled_back",
                "every assigned device is off the rollout's model",
            )

    def _confirm_revert(self, d: DeviceView) -> None:
        r = d.report
        still_ours = r is not None and (
            r.target == self.spec.target
            or (r.desired_target == self.spec.target and r.status in ("downloading", "installing"))
        )
        if not still_ours:
            self.set_outcome(d.device_id, Outcome.REVERTED, "reported off the model", self.now)
            return
        since = self.outcome_at[d.device_id] or self.now
        waited = (self.now - since).total_seconds()
        if waited > self.spec.device_timeout_s:
            self.set_outcome(
                d.device_id,
                Outcome.REVERT_TIMED_OUT,
                f"revert not confirmed after {waited:.0f} s",
                self.now,
            )

    # --- the step ------------------------------------------------------------------------
    def run(self, telemetry: TelemetryAggregate, command: Command | None) -> None:
        if self.state.status in TERMINAL_STATUSES:
            if command is not None:
                self.command(command)  # raises CommandRefused
            return
        if command is not None:
            self.command(command)
        status = self.state.status
        if status == Status.ABORTED:
            self.skip_remaining("the rollout was aborted")
            return
        self.track_installs()
        if status == Status.PENDING:
            if self.spec.start_at is not None and self.now < self.spec.start_at:
                self.state.reason = f"starts at {self.spec.start_at.isoformat()}"
            elif not in_windows(self.spec.windows, self.now):
                self.state.reason = "waiting for a maintenance window"
            else:
                self.start_wave(0, "rollout.start", {})
        elif status == Status.RUNNING:
            if self.assign_through(self.state.wave):
                self.state.soaking_since = None
            self.run_gates(telemetry)
        if self.state.status == Status.ROLLING_BACK:
            self.roll_back()


def step(
    rollout_id: int,
    spec: RolloutSpec,
    state: RolloutState,
    devices: Sequence[DeviceView],
    telemetry: TelemetryAggregate,
    now: datetime,
    command: Command | None = None,
) -> StepResult:
    """Advance rollout ``rollout_id`` by one step at ``now`` (see the module docstring).

    ``devices`` are all members of the rollout; ``telemetry`` aggregates the current wave.
    Raises ``CommandRefused`` if ``command`` does not apply in the current status.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    work = _Step(rollout_id, spec, state, devices, now)
    work.run(telemetry, command)
    work.state.updated_at = now
    return StepResult(work.state, tuple(work.actions), tuple(work.audits), work.decision)


__all__ = [
    "ACTIVE_STATUSES",
    "FAILED_REPORTS",
    "MAX_TIMESTAMP",
    "SYSTEM_ACTOR",
    "TERMINAL_STATUSES",
    "Action",
    "Assign",
    "AuditRecord",
    "Command",
    "CommandRefused",
    "DeviceView",
    "GateSnapshot",
    "MaintenanceWindow",
    "ModelReport",
    "Outcome",
    "Revert",
    "RolloutError",
    "RolloutSpec",
    "RolloutState",
    "SetOutcome",
    "Status",
    "StepResult",
    "TelemetryAggregate",
    "in_windows",
    "parse_model_report",
    "step",
    "wave_observation",
]
