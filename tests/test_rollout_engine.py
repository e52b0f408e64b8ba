"""The rollout state machine, driven step by step with an injected clock and simulated
devices: named scenarios, then properties that must hold whatever happens."""

from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.rollouts.cohort import Wave, assign_waves, wave_sizes
from controller.rollouts.engine import (
    MAX_TIMESTAMP,
    Assign,
    Command,
    CommandRefused,
    DeviceView,
    MaintenanceWindow,
    ModelReport,
    Outcome,
    Revert,
    RolloutError,
    RolloutSpec,
    RolloutState,
    SetOutcome,
    Status,
    StepResult,
    TelemetryAggregate,
    in_windows,
    parse_model_report,
    step,
)
from controller.rollouts.gates import GatePolicy

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
TARGET = "smollm2/1.1/smollm2.gguf"
OLD = {"name": "smollm2", "target": "smollm2/1.0/smollm2.gguf", "version": "1.0"}
RID = 7


def spec(**kw: Any) -> RolloutSpec:
    base: dict[str, Any] = {
        "model": "smollm2",
        "version": "1.1",
        "target": TARGET,
        "rollout_key": "smollm2/1.1",
        "waves": (Wave(count=2), Wave(percent=50), Wave(percent=100)),
        "gates": GatePolicy(min_soak_s=60, min_samples=10, max_latency_p95_ms=200),
        "device_timeout_s": 120,
        "install_timeout_s": 600,
    }
    base.update(kw)
    return RolloutSpec(**base)


@dataclass
class Behaviour:
    """How a simulated device reacts to an assignment."""

    kind: Literal["ok", "fail", "silent", "crash_loop", "expired"] = "ok"
    delay_s: float = 5.0


class Fleet:
    """Simulated member devices: they report installs, talk, and follow reverts."""

    def __init__(
        self,
        spec: RolloutSpec,
        n: int,
        *,
        behaviour: dict[str, Behaviour] | None = None,
        quarantined: set[str] | None = None,
    ) -> None:
        self.spec = spec
        waves = assign_waves(spec.rollout_key, [f"dev-{i:02d}" for i in range(n)], spec.waves)
        self.views = {
            d: DeviceView(
                device_id=d,
                wave=w,
                quarantined=d in (quarantined or set()),
                last_seen=T0,
                report=ModelReport(target=OLD["target"], status="active"),
                reported_at=T0,
                previous=dict(OLD),
            )
            for d, w in waves.items()
        }
        self.behaviour = behaviour or {}
        self.assigned_at: dict[str, datetime] = {}
        self.reverted_at: dict[str, datetime] = {}
        self.ever_assigned: set[str] = set()
        self.state = RolloutState()
        self.telemetry = TelemetryAggregate(inferences=100, errors=0, latency_p95_ms=80.0)
        self.results: list[StepResult] = []

    def wave_of(self, wave: int) -> set[str]:
        return {d for d, v in self.views.items() if v.wave == wave}

    def live(self, now: datetime) -> None:
        """Devices act on what they were told before ``now``."""
        for d, v in list(self.views.items()):
            b = self.behaviour.get(d, Behaviour())
            if b.kind != "silent":
                v = replace(v, last_seen=now)
            if d in self.reverted_at:
                if b.kind != "silent" and now - self.reverted_at[d] >= timedelta(seconds=2):
                    v = replace(v, report=ModelReport(OLD["target"], "active"), reported_at=now)
            elif d in self.assigned_at and now - self.assigned_at[d] >= timedelta(
                seconds=b.delay_s
            ):
                if b.kind == "ok":
                    report = ModelReport(TARGET, "active", TARGET, RID, None)
                elif b.kind == "fail":
                    report = ModelReport(OLD["target"], "failed", TARGET, RID, error="bad hash")
                elif b.kind == "expired":
                    report = ModelReport(OLD["target"], "metadata_expired", TARGET, RID)
                elif b.kind == "crash_loop":
                    if now - self.assigned_at[d] < timedelta(seconds=b.delay_s * 3):
                        report = ModelReport(TARGET, "active", TARGET, RID)
                    else:
                        report = ModelReport(OLD["target"], "rolled_back", TARGET, RID)
                else:
                    report = v.report  # type: ignore[assignment]
                if b.kind != "silent":
                    v = replace(v, report=report, reported_at=now)
            self.views[d] = v

    def step(self, now: datetime, command: Command | None = None) -> StepResult:
        self.live(now)
        # Like the database: only installed devices of the current wave produce telemetry.
        wave = self.state.wave
        installed = any(
            v.wave == wave and v.outcome == Outcome.INSTALLED for v in self.views.values()
        )
        telemetry = self.telemetry if installed else TelemetryAggregate()
        result = step(
            RID, self.spec, self.state, list(self.views.values()), telemetry, now, command
        )
        for action in result.actions:
            v = self.views[action.device_id]
            if isinstance(action, Assign):
                assert not v.quarantined, "a quarantined device was assigned"
                self.assigned_at[action.device_id] = now
                self.ever_assigned.add(action.device_id)
                v = replace(v, outcome=Outcome.ASSIGNED, assigned_at=now, outcome_at=now)
            elif isinstance(action, SetOutcome):
                v = replace(v, outcome=action.outcome, outcome_at=action.at)
            elif isinstance(action, Revert):
                assert action.previous == OLD
                self.reverted_at[action.device_id] = now
            self.views[action.device_id] = v
        self.state = result.state
        self.results.append(result)
        return result

    def run(self, start: datetime, seconds: float, tick_s: float = 1.0) -> datetime:
        now = start
        end = start + timedelta(seconds=seconds)
        while now <= end and self.state.status not in (
            Status.COMPLETED,
            Status.ROLLED_BACK,
            Status.ABORTED,
            Status.HALTED,
        ):
            self.step(now)
            now += timedelta(seconds=tick_s)
        return now

    def audits(self, action: str) -> list[Any]:
        return [a for r in self.results for a in r.audits if a.action == action]

    def outcomes(self) -> dict[str, Outcome]:
        return {d: v.outcome for d, v in self.views.items()}


def test_first_step_assigns_only_the_canary() -> None:
    """Starting a rollout assigns exactly the canary's devices, records who they are, and
    audits the start."""
    fleet = Fleet(spec(), 10)
    result = fleet.step(T0)
    assigned = {a.device_id for a in result.actions if isinstance(a, Assign)}
    assert assigned == fleet.wave_of(0)
    assert len(assigned) == 2
    assert result.state.status == Status.RUNNING and result.state.wave == 0
    assert [a.action for a in result.audits] == ["rollout.start"]


def test_happy_path_walks_every_wave_to_completion() -> None:
    """Healthy devices carry the rollout through every wave, each advance audited with its
    gate results, and every member ends installed."""
    fleet = Fleet(spec(), 10)
    fleet.run(T0, 3600)
    assert fleet.state.status == Status.COMPLETED
    assert set(fleet.outcomes().values()) == {Outcome.INSTALLED}
    advances = fleet.audits("rollout.advance")
    assert [a.detail["wave"] for a in advances] == [1, 2]
    assert all(g["status"] != "fail" for a in advances for g in a.detail["gates"])
    assert len(fleet.audits("rollout.complete")) == 1


def test_gate_decides_on_the_first_step_after_the_soak_ends() -> None:
    """With one-second steps, the next wave starts within one step of the soak's end."""
    fleet = Fleet(spec(), 10)
    fleet.run(T0, 3600)
    starts = [
        (r.state.updated_at, prev.state)
        for prev, r in zip(fleet.results, fleet.results[1:], strict=False)
        if any(a.action in ("rollout.advance", "rollout.complete") for a in r.audits)
    ]
    assert len(starts) == 3
    for decided_at, before in starts:
        assert before.soaking_since is not None and decided_at is not None
        soak_end = before.soaking_since + timedelta(seconds=60)
        assert soak_end <= decided_at < soak_end + timedelta(seconds=1)


def test_latency_breach_in_the_canary_halts() -> None:
    """A canary whose p95 latency is over budget halts the rollout before wave two, saying
    why, and nothing outside the canary was assigned."""
    fleet = Fleet(spec(), 10)
    fleet.telemetry = TelemetryAggregate(inferences=100, errors=0, latency_p95_ms=450.0)
    fleet.run(T0, 3600)
    assert fleet.state.status == Status.HALTED
    assert "latency_p95" in fleet.state.reason
    assert fleet.ever_assigned == fleet.wave_of(0)
    (halt,) = fleet.audits("rollout.halt")
    assert halt.actor == "system:rollouts"


def test_error_rate_breach_rolls_back_the_canary() -> None:
    """A canary with too many inference errors is rolled back: each device is sent back to
    its previous model, and the rollout ends rolled back once they report it."""
    fleet = Fleet(spec(), 10)
    fleet.telemetry = TelemetryAggregate(inferences=100, errors=30, latency_p95_ms=80.0)
    fleet.run(T0, 3600)
    assert fleet.state.status == Status.ROLLED_BACK
    canary = fleet.wave_of(0)
    assert set(fleet.reverted_at) == canary
    outcomes = fleet.outcomes()
    assert {outcomes[d] for d in canary} == {Outcome.REVERTED}
    assert {outcomes[d] for d in set(outcomes) - canary} == {Outcome.SKIPPED}


def test_silent_device_times_out_and_fails_the_install_gate() -> None:
    """A canary device that goes silent is marked timed out after the device timeout, which
    (policy "fail") breaks the install gate: the rollout does not hang."""
    probe = Fleet(spec(), 10)
    silent = sorted(probe.wave_of(0))[0]
    fleet = Fleet(spec(), 10, behaviour={silent: Behaviour("silent")})
    fleet.run(T0, 3600)
    (timeout,) = fleet.audits("rollout.device_timeout")
    assert timeout.detail["device"] == silent
    assert "silent for" in timeout.reason
    (rollback,) = fleet.audits("rollout.rollback")
    assert "install_success" in rollback.reason
    # Its last report still shows the old model, which is where the rollback wants it.
    assert fleet.state.status == Status.ROLLED_BACK
    assert fleet.outcomes()[silent] == Outcome.REVERTED


def test_silent_installed_device_cannot_confirm_its_revert() -> None:
    """A device that installed the new model and then went silent cannot confirm a
    rollback: its revert times out and the rollout still ends rolled back."""
    probe = Fleet(spec(), 10)
    gone = sorted(probe.wave_of(0))[0]
    fleet = Fleet(spec(), 10)
    fleet.telemetry = TelemetryAggregate(inferences=100, errors=40, latency_p95_ms=80.0)
    fleet.run(T0, 5)  # the canary installs at T0+5 s; its telemetry arrives a step later
    assert fleet.outcomes()[gone] == Outcome.INSTALLED
    assert fleet.state.status == Status.RUNNING
    fleet.behaviour[gone] = Behaviour("silent")
    fleet.run(T0 + timedelta(seconds=6), 3600)
    assert fleet.state.status == Status.ROLLED_BACK
    assert fleet.outcomes()[gone] == Outcome.REVERT_TIMED_OUT
    others = fleet.wave_of(0) - {gone}
    assert {fleet.outcomes()[d] for d in others} == {Outcome.REVERTED}


def test_silent_device_is_excluded_under_the_exclude_policy() -> None:
    """With timeout_policy "exclude", a silent canary device times out and leaves the sample,
    and the rollout carries on to completion."""
    probe = Fleet(spec(), 10)
    silent = sorted(probe.wave_of(0))[0]
    fleet = Fleet(spec(timeout_policy="exclude"), 10, behaviour={silent: Behaviour("silent")})
    fleet.run(T0, 3600)
    assert fleet.state.status == Status.COMPLETED
    assert fleet.outcomes()[silent] == Outcome.TIMED_OUT


def test_metadata_expired_is_a_retry_not_a_failure() -> None:
    """A device that reports ``metadata_expired`` (it keeps retrying the repository) stays
    assigned rather than failing at once, until its install timeout counts it as failed."""
    probe = Fleet(spec(), 10)
    stuck = sorted(probe.wave_of(0))[0]
    fleet = Fleet(spec(), 10, behaviour={stuck: Behaviour("expired")})
    fleet.run(T0, 300)
    assert fleet.outcomes()[stuck] == Outcome.ASSIGNED
    fleet.run(T0 + timedelta(seconds=301), 3600)
    assert fleet.outcomes()[stuck] in (Outcome.TIMED_OUT, Outcome.REVERTED)
    assert fleet.state.status == Status.ROLLED_BACK


def test_crash_loop_after_install_counts_as_a_failure() -> None:
    """A device that installed and then rolled itself back (crash loop) turns from installed
    to failed, and the install gate rolls the rollout back."""
    probe = Fleet(spec(), 10)
    bad = sorted(probe.wave_of(0))[0]
    fleet = Fleet(spec(), 10, behaviour={bad: Behaviour("crash_loop", delay_s=20)})
    fleet.run(T0, 3600)
    changes = [
        a.outcome
        for r in fleet.results
        for a in r.actions
        if isinstance(a, SetOutcome) and a.device_id == bad
    ]
    assert changes[:2] == [Outcome.INSTALLED, Outcome.FAILED]
    assert fleet.state.status == Status.ROLLED_BACK


def test_pause_stops_assignments_until_resume() -> None:
    """A paused rollout assigns nobody even when its soak ends; resume picks up at the same
    wave and the operator's commands are audited with their names."""
    fleet = Fleet(spec(), 10)
    fleet.run(T0, 10)  # the canary installs and starts its soak
    paused = fleet.step(T0 + timedelta(seconds=11), Command("pause", "user:alice", "lunch"))
    assert paused.state.status == Status.PAUSED
    later = T0 + timedelta(seconds=600)
    quiet = fleet.step(later)
    assert not [a for a in quiet.actions if isinstance(a, Assign)]
    resumed = fleet.step(later + timedelta(seconds=1), Command("resume", "user:bob"))
    assert resumed.state.status == Status.RUNNING
    assert {a.device_id for a in resumed.actions if isinstance(a, Assign)} == fleet.wave_of(1)
    (pause,) = fleet.audits("rollout.pause")
    assert (pause.actor, pause.reason) == ("user:alice", "lunch")
    assert fleet.audits("rollout.resume")[0].actor == "user:bob"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        pytest.param(Status.RUNNING, "resume", id="resume-running"),
        pytest.param(Status.HALTED, "pause", id="pause-halted"),
        pytest.param(Status.COMPLETED, "rollback", id="rollback-completed"),
        pytest.param(Status.ABORTED, "abort", id="abort-aborted"),
        pytest.param(Status.ROLLING_BACK, "rollback", id="rollback-twice"),
    ],
)
def test_commands_that_make_no_sense_are_refused(status: Status, kind: Any) -> None:
    """Commands outside their statuses raise CommandRefused, naming the status."""
    fleet = Fleet(spec(), 4)
    fleet.state = RolloutState(status=status, wave=0, wave_started_at=T0)
    with pytest.raises(CommandRefused):
        fleet.step(T0, Command(kind, "user:alice"))


def test_manual_rollback_reverts_assigned_devices_only() -> None:
    """An operator's rollback mid-wave sends assigned devices back to their previous model;
    members never assigned are skipped."""
    fleet = Fleet(spec(), 10)
    now = fleet.run(T0, 100)  # past the canary, into wave two
    assert fleet.state.wave == 1
    result = fleet.step(now, Command("rollback", "user:alice", "customer complaint"))
    reverted = {a.device_id for a in result.actions if isinstance(a, Revert)}
    assert reverted == fleet.ever_assigned
    fleet.run(now + timedelta(seconds=1), 600)
    assert fleet.state.status == Status.ROLLED_BACK
    assert fleet.audits("rollout.rollback")[0].actor == "user:alice"


def test_abort_leaves_devices_alone() -> None:
    """Abort ends the rollout at once without reverting anyone; unassigned members are
    skipped."""
    fleet = Fleet(spec(), 10)
    fleet.step(T0)
    result = fleet.step(T0 + timedelta(seconds=1), Command("abort", "user:alice"))
    assert result.state.status == Status.ABORTED
    assert not [a for a in result.actions if isinstance(a, Revert | Assign)]
    assert fleet.outcomes()[sorted(fleet.wave_of(2))[0]] == Outcome.SKIPPED


def test_quarantined_devices_wait_and_join_when_cleared() -> None:
    """A quarantined member is never assigned; once cleared, it is assigned on the next
    step if its wave has started."""
    probe = Fleet(spec(), 10)
    q = sorted(probe.wave_of(0))[0]
    fleet = Fleet(spec(), 10, quarantined={q})
    fleet.step(T0)
    assert q not in fleet.ever_assigned
    fleet.views[q] = replace(fleet.views[q], quarantined=False)
    result = fleet.step(T0 + timedelta(seconds=1))
    assert [a.device_id for a in result.actions if isinstance(a, Assign)] == [q]


def test_a_fully_quarantined_canary_holds_the_rollout_instead_of_being_skipped() -> None:
    """When every canary device is quarantined the rollout waits in the canary wave (no
    later wave is assigned, however long), and carries on once a canary is cleared."""
    probe = Fleet(spec(), 10)
    canary = probe.wave_of(0)
    fleet = Fleet(spec(), 10, quarantined=set(canary))
    fleet.run(T0, 3600)
    assert fleet.state.status == Status.RUNNING and fleet.state.wave == 0
    assert fleet.ever_assigned == set()
    assert "quarantined" in fleet.state.reason
    for d in canary:
        fleet.views[d] = replace(fleet.views[d], quarantined=False)
    fleet.run(T0 + timedelta(seconds=3601), 3600)
    assert fleet.state.status == Status.COMPLETED
    assert fleet.ever_assigned == set(fleet.views)


def test_start_time_and_maintenance_windows_hold_the_start() -> None:
    """A rollout waits for its start time and then for a window before its first wave."""
    window = MaintenanceWindow(days=(0,), start=time(22, 0), end=time(2, 0))  # Mon 22-02
    fleet = Fleet(spec(start_at=T0 + timedelta(hours=1), windows=(window,)), 6)
    assert fleet.step(T0).state.status == Status.PENDING
    assert "starts at" in fleet.state.reason
    assert fleet.step(T0 + timedelta(hours=2)).state.status == Status.PENDING
    assert fleet.state.reason == "waiting for a maintenance window"
    assert not fleet.ever_assigned
    started = fleet.step(T0.replace(hour=23))
    assert started.state.status == Status.RUNNING


def test_next_wave_waits_for_a_window() -> None:
    """A wave that passes its gates outside every window waits, and starts when one opens."""
    window = MaintenanceWindow(start=time(10, 0), end=time(10, 0, 30))
    fleet = Fleet(spec(windows=(window,)), 10)
    fleet.run(T0, 400)
    assert fleet.state.wave == 0 and fleet.state.status == Status.RUNNING
    assert "waits for a window" in fleet.state.reason
    fleet.run(T0 + timedelta(days=1), 2)
    assert fleet.state.wave == 1


@pytest.mark.parametrize(
    ("window", "moment", "inside"),
    [
        pytest.param(MaintenanceWindow(), T0, True, id="default-always"),
        pytest.param(MaintenanceWindow(days=("sat", "sun")), T0, False, id="weekend-only"),
        pytest.param(
            MaintenanceWindow(days=(0,), start=time(22), end=time(2)),
            T0.replace(day=3, hour=1),
            True,
            id="past-midnight-belongs-to-monday",
        ),
        pytest.param(
            MaintenanceWindow(days=(1,), start=time(22), end=time(2)),
            T0.replace(day=3, hour=1),
            False,
            id="tuesday-window-not-open-tuesday-1am",
        ),
        pytest.param(
            MaintenanceWindow(start=time(9), end=time(11)),
            T0.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo")),
            True,
            id="compares-in-utc",
        ),
    ],
)
def test_maintenance_windows(window: MaintenanceWindow, moment: datetime, inside: bool) -> None:
    """Windows are UTC, may cross midnight, and name days by number or name."""
    assert window.contains(moment) is inside
    assert in_windows([], moment)


def test_resume_after_halt_starts_a_fresh_soak() -> None:
    """Resuming a halted rollout restarts the soak and reads telemetry only from then."""
    fleet = Fleet(spec(), 10)
    fleet.telemetry = TelemetryAggregate(inferences=100, errors=0, latency_p95_ms=450.0)
    now = fleet.run(T0, 3600)
    assert fleet.state.status == Status.HALTED
    fleet.telemetry = TelemetryAggregate(inferences=100, errors=0, latency_p95_ms=90.0)
    resumed = fleet.step(now, Command("resume", "user:alice", "fixed the thermal issue"))
    assert resumed.state.observe_since == now
    assert resumed.state.soaking_since == now
    fleet.run(now + timedelta(seconds=1), 3600)
    assert fleet.state.status == Status.COMPLETED


def test_bad_device_reports_are_refused_with_a_reason() -> None:
    """A malformed reported model raises the module's error saying which field is wrong."""
    assert parse_model_report(None) is None
    assert parse_model_report({"target": "a/b/c", "status": "active"}) == ModelReport(
        "a/b/c", "active"
    )
    for doc, field in (
        ([1], "object"),
        ({"rollout": "7"}, "rollout"),
        ({"installed_at": "yesterday"}, "installed_at"),
        ({"target": 5}, "target"),
    ):
        with pytest.raises(RolloutError, match=field):
            parse_model_report(doc)


@pytest.mark.parametrize(
    "installed_at",
    [1e18, float("nan"), float("inf"), float("-inf"), -1, -0.5, 10**400, MAX_TIMESTAMP + 1],
    ids=["1e18", "nan", "inf", "-inf", "negative", "negative-fraction", "huge-int", "year-10000"],
)
def test_an_install_time_no_datetime_holds_is_refused(installed_at: float) -> None:
    """An ``installed_at`` that is not finite, negative or past year 9999 raises the
    module's error (so the report counts as none), never OverflowError or ValueError."""
    with pytest.raises(RolloutError, match="installed_at"):
        parse_model_report({"target": TARGET, "status": "active", "installed_at": installed_at})


def test_install_times_at_the_limits_are_kept() -> None:
    """The epoch and the last second of year 9999 are valid install times."""
    for value in (0, 0.0, MAX_TIMESTAMP, float(MAX_TIMESTAMP)):
        report = parse_model_report({"installed_at": value})
        assert report is not None and report.installed_at == float(value)
        datetime.fromtimestamp(report.installed_at, UTC)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
report_keys = st.sampled_from(
    ["target", "status", "desired_target", "rollout", "installed_at", "error", "name", "x"]
)


@settings(max_examples=300)
@given(doc=json_values | st.dictionaries(report_keys, json_values, max_size=7))
def test_any_reported_document_parses_or_raises_the_module_error(doc: Any) -> None:
    """Whatever a device reports, parsing raises nothing but RolloutError, and a parsed
    report holds an install time a datetime holds and text a database stores."""
    try:
        report = parse_model_report(doc)
    except RolloutError:
        return
    if report is None:
        return
    if report.installed_at is not None:
        datetime.fromtimestamp(report.installed_at, UTC)
    for text in (report.target, report.status, report.desired_target, report.error):
        if text is not None:
            assert len(text) <= 512 and "\x00" not in text
            text.encode("utf-8")  # no lone surrogate


@pytest.mark.parametrize("installed_at", [1e18, float("nan"), -5.0])
def test_a_hand_built_report_with_an_unusable_install_time_installs_now(
    installed_at: float,
) -> None:
    """A report built without the parser, whose install time no datetime holds, still
    installs the device (at the step's time) instead of failing the step."""
    fleet = Fleet(spec(), 4)
    fleet.step(T0)
    canary = sorted(fleet.wave_of(0))
    now = T0 + timedelta(seconds=10)
    for d in canary:
        report = ModelReport(TARGET, "active", TARGET, RID, installed_at)
        fleet.views[d] = replace(fleet.views[d], report=report, reported_at=now)
    result = step(
        RID, fleet.spec, fleet.state, list(fleet.views.values()), TelemetryAggregate(), now
    )
    installs = [a for a in result.actions if isinstance(a, SetOutcome)]
    assert sorted((a.device_id, a.outcome, a.at) for a in installs) == [
        (d, Outcome.INSTALLED, now) for d in canary
    ]


# --- properties ----------------------------------------------------------------------------
commands = st.sampled_from(["pause", "resume", "abort", "rollback", *[None] * 16])
behaviours = st.sampled_from(["ok"] * 12 + ["fail", "silent", "crash_loop"])


@settings(max_examples=60)
@given(
    n=st.integers(1, 25),
    kinds=st.lists(behaviours, min_size=25, max_size=25),
    quarantine=st.lists(st.booleans(), min_size=25, max_size=25),
    script=st.lists(st.tuples(commands, st.integers(1, 90)), min_size=5, max_size=60),
    errors=st.sampled_from([0, 0, 0, 1, 30]),
    p95=st.sampled_from([90.0, 90.0, 90.0, 450.0]),
)
def test_invariants_hold_whatever_happens(
    n: int,
    kinds: list[str],
    quarantine: list[bool],
    script: list[tuple[str | None, int]],
    errors: int,
    p95: float,
) -> None:
    """Under any mix of device behaviour, quarantine, telemetry and operator commands:
    assignments never exceed the current wave's cumulative size, quarantined devices are
    never assigned, paused rollouts assign nothing, terminal states stay terminal, and every
    status or wave change has an audit record."""
    s = spec()
    ids = [f"dev-{i:02d}" for i in range(n)]
    fleet = Fleet(
        s,
        n,
        behaviour={d: Behaviour(kinds[i], delay_s=3) for i, d in enumerate(ids)},  # type: ignore[arg-type]
        quarantined={d for i, d in enumerate(ids) if quarantine[i]},
    )
    fleet.telemetry = TelemetryAggregate(inferences=100, errors=errors, latency_p95_ms=p95)
    sizes = wave_sizes(s.waves, n)
    now = T0
    for kind, gap in script:
        before = fleet.state
        command = Command(kind, "user:prop") if kind else None  # type: ignore[arg-type]
        try:
            result = fleet.step(now, command)
        except CommandRefused:
            result = fleet.step(now)
        after = result.state
        if after.wave >= 0:
            assert len(fleet.ever_assigned) <= sizes[after.wave]
            assert all(fleet.views[d].wave <= after.wave for d in fleet.ever_assigned)
        if after.status == Status.PAUSED:
            assert not [a for a in result.actions if isinstance(a, Assign)]
        if before.status in (Status.COMPLETED, Status.ROLLED_BACK, Status.ABORTED):
            assert after.status == before.status and not result.actions
        if (before.status, before.wave) != (after.status, after.wave):
            assert result.audits, f"{before.status}/{before.wave} -> {after.status}/{after.wave}"
        now += timedelta(seconds=gap)
