"""Offline drills: the pure checks on hand-made observations, each scenario end to end at
small scale (embedded controller process, real Mosquitto, real agents serving the demo
GGUF), and stored reports on the API and console."""

import json
import os
from pathlib import Path
from typing import Any

import pytest

from controller.drills.checks import (
    RESTRICTED_MARKERS,
    Convergence,
    DeviceLedger,
    RequestSample,
    RolloutSample,
    check_desired_converged,
    check_local_serving,
    check_no_stale_advance,
    check_restricted_stayed,
    check_telemetry_delivered,
    overall,
    skipped,
)
from controller.drills.processes import CommandController, DrillError, free_port, wait_until
from controller.drills.runner import DrillOptions, DrillRunner, run_drill
from controller.drills.scenarios import SCENARIOS, Step, Window, fault_plan, fault_windows
from tests.conftest import Broker
from tests.controller_harness import LiveController, live_controller
from tests.procs import run_cli

FAULT = [Window(2.0, 6.0)]


def _ledger(
    stored: list[tuple[int, int]],
    produced: int = 4,
    dropped: int = 0,
    buffered: frozenset[int] = frozenset({2}),
) -> DeviceLedger:
    return DeviceLedger("dev-1", 0, produced, frozenset(), dropped, tuple(stored), 2, buffered)


def _delivered(ledgers: list[DeviceLedger], fault_buffering: bool = True) -> Any:
    return check_telemetry_delivered(ledgers, fault_buffering=fault_buffering, redelivered=3)


# --- pure checks ---------------------------------------------------------------------------
def test_telemetry_passes_on_every_record_once_with_one_delivered_after_the_heal() -> None:
    """Records 0..n-1 of the agent's epoch stored once, one of them buffered at the heal,
    pass, and the controller's redelivery count is reported as it came."""
    result = _delivered([_ledger([(0, 0), (0, 1), (0, 2), (0, 3)])])
    assert result.passed is True
    assert result.measured["produced"] == 4
    assert result.measured["delivered_after_heal"] == 1
    assert result.measured["redelivered"] == 3


def test_telemetry_fails_when_nothing_was_buffered_during_a_broker_fault() -> None:
    """With every record stored but none buffered over a broker or controller fault the
    check fails (nothing was tested); without such a fault that is not required."""
    ledger = _ledger([(0, 0), (0, 1), (0, 2), (0, 3)], buffered=frozenset())
    result = _delivered([ledger])
    assert result.passed is False
    assert "nothing tested" in result.detail
    assert _delivered([ledger], fault_buffering=False).passed is True


def test_telemetry_fails_on_a_duplicate_record() -> None:
    """A record the API lists twice fails the check and is counted."""
    result = _delivered([_ledger([(0, 0), (0, 1), (0, 1), (0, 2), (0, 3)])])
    assert result.passed is False
    assert result.measured["duplicates"] == 1


def test_telemetry_fails_on_a_gap_the_agent_did_not_drop() -> None:
    """A missing record fails unless the agent counted it as dropped itself."""
    assert _delivered([_ledger([(0, 0), (0, 2), (0, 3)])]).passed is False
    assert _delivered([_ledger([(0, 0), (0, 2), (0, 3)], dropped=1)]).passed is True


def test_restricted_check_fails_on_a_leaked_marker() -> None:
    """A cloud request body carrying a restricted marker fails the check."""
    samples = [RequestSample(1.0, "dev-1", "restricted", 200, 50.0, "local")]
    clean = check_restricted_stayed(['{"content": "hello"}'], samples, RESTRICTED_MARKERS)
    assert clean.passed is True
    leaked = check_restricted_stayed(
        [json.dumps({"content": f"card {RESTRICTED_MARKERS[0]}"})], samples, RESTRICTED_MARKERS
    )
    assert leaked.passed is False
    assert leaked.measured["leaked_markers"] == 1


def test_restricted_check_fails_when_answered_off_device() -> None:
    """A restricted prompt answered by a remote tier fails even if no marker was seen."""
    samples = [RequestSample(1.0, "dev-1", "restricted", 200, 50.0, "cloud")]
    assert check_restricted_stayed([], samples, RESTRICTED_MARKERS).passed is False


def test_restricted_check_fails_when_none_was_answered_locally() -> None:
    """Restricted prompts that all failed test nothing and fail the check; failures outside
    the fault window are counted for information."""
    samples = [
        RequestSample(1.0, "dev-1", "restricted", 0, 50.0, reason="ConnectError"),
        RequestSample(3.0, "dev-1", "restricted", 503, 50.0),
    ]
    result = check_restricted_stayed([], samples, RESTRICTED_MARKERS, FAULT)
    assert result.passed is False
    assert "nothing tested" in result.detail
    assert result.measured["failed_outside_fault"] == 1
    assert result.measured["failed_during_fault"] == 1
    answered = [*samples, RequestSample(7.0, "dev-1", "restricted", 200, 50.0, "local")]
    assert check_restricted_stayed([], answered, RESTRICTED_MARKERS, FAULT).passed is True


def test_stale_advance_check_fails_when_the_wave_moves_during_the_partition() -> None:
    """A wave that advances inside the fault window fails; one after the heal passes."""
    held = [RolloutSample(t, 0, "running") for t in (2.5, 3.5, 5.5)] + [
        RolloutSample(7.0, 1, "running")
    ]
    assert check_no_stale_advance(held, FAULT).passed is True
    moved = [RolloutSample(2.5, 0, "running"), RolloutSample(4.0, 1, "running")]
    result = check_no_stale_advance(moved, FAULT)
    assert result.passed is False
    assert result.measured["max_wave_during_fault"] == 1


def test_local_serving_fails_on_failures_or_a_blown_budget() -> None:
    """Failed local requests, or a p95 over the budget, during the fault fail the check;
    requests outside the fault window do not count."""
    ok = [RequestSample(3.0 + i / 10, "d", "local", 200, 100.0, "local") for i in range(10)]
    assert check_local_serving(ok, FAULT, 500).passed is True
    before = [RequestSample(1.0, "d", "local", 0, 9000.0)]
    assert check_local_serving(ok + before, FAULT, 500).passed is True
    failed = [RequestSample(4.0, "d", "local", 503, 10.0)]
    assert check_local_serving(ok + failed, FAULT, 500).passed is False
    assert check_local_serving(ok, FAULT, 50).passed is False


def test_desired_convergence_and_overall() -> None:
    """A device behind the desired version fails convergence; skipped checks do not decide."""
    good = Convergence("d", 3, 3, {"drill": "x"}, {"drill": "x"})
    behind = Convergence("e", 3, 2, {"drill": "x"}, None)
    assert check_desired_converged([good]).passed is True
    assert check_desired_converged([good, behind]).passed is False
    assert overall([check_desired_converged([good]), skipped("x", "n/a")]) is True
    assert overall([skipped("x", "n/a")]) is False


def test_fault_plans_heal_every_fault() -> None:
    """Every scenario's plan heals what it breaks, inside the drill's duration."""
    for scenario in SCENARIOS.values():
        steps = fault_plan(scenario, 20, flap_period_s=2)
        windows = fault_windows(steps)
        assert windows, scenario.name
        assert all(0 < w.start < w.end <= 20 for w in windows)
    flaps = fault_windows(fault_plan(SCENARIOS["flapping-link"], 20, flap_period_s=2))
    assert len(flaps) >= 2
    assert fault_windows([Step(1, "cut_broker"), Step(3, "heal_broker")]) == [Window(1, 3)]


# --- scenarios end to end --------------------------------------------------------------------
def _failed(report: dict[str, Any]) -> str:
    return json.dumps(
        {"checks": report["checks"], "events": report["events"]}, indent=1, default=str
    )


@pytest.mark.e2e
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_passes_at_small_scale(
    scenario: str, mosquitto: Broker, model_path: Path, tmp_path: Path
) -> None:
    """Each scenario, with its fault injected into a real fleet of one or two agents,
    passes every check that applies to it and stores its report on the controller."""
    rollout = SCENARIOS[scenario].rollout
    options = DrillOptions(
        scenario=scenario,
        devices=2 if rollout else 1,
        duration_s=12 if rollout else 8,
        embedded=True,
        broker_url=mosquitto.url,
        model=model_path,
        workdir=tmp_path / "drill",
        recovery_timeout_s=60,
        # Two llama.cpp agents, the controller and a model install share this machine's two
        # cores during a rollout drill: its budget is wider (the check itself is pinned by
        # test_local_serving_fails_on_failures_or_a_blown_budget).
        latency_budget_ms=5000 if rollout else 2000,
    )
    report = run_drill(options)
    assert report["passed"] is True, _failed(report)
    assert report["id"] is not None
    names = {c["name"]: c for c in report["checks"]}
    assert names["restricted_data_stayed_local"]["measured"]["leaked_markers"] == 0
    telemetry = names["telemetry_delivered_after_fault"]["measured"]
    assert telemetry["duplicates"] == 0
    if scenario != "cloud-outage":
        assert telemetry["delivered_after_heal"] >= 1
    assert report["fault_windows"]
    if rollout:
        assert names["no_wave_advanced_on_stale_data"]["passed"] is True
    if scenario == "cloud-outage":
        assert names["local_serving"]["measured"]["cloud_routed_degraded"] >= 1


def test_controller_crash_is_skipped_against_a_remote_controller(
    model_path: Path, tmp_path: Path
) -> None:
    """controller-crash against a controller the drill cannot restart is skipped with the
    reason, and the CLI exits 0 and says so."""
    report = run_drill(
        DrillOptions(
            scenario="controller-crash",
            controller_url="http://127.0.0.1:9",
            token="t",
            model=model_path,
            workdir=tmp_path,
        )
    )
    assert report["passed"] is None
    assert "--controller-cmd" in report["skipped"]


def test_own_workdir_is_removed_unless_kept(model_path: Path) -> None:
    """A work folder the drill made itself is gone after the run, skipped or not, unless
    ``keep_workdir`` is set."""
    base = DrillOptions(
        scenario="controller-crash",
        controller_url="http://127.0.0.1:9",
        token="t",
        model=model_path,
    )
    runner = DrillRunner(base)
    assert runner.workdir.is_dir()
    runner.run()
    assert not runner.workdir.exists()
    kept = DrillRunner(DrillOptions(**{**base.__dict__, "keep_workdir": True}))
    kept.run()
    assert kept.workdir.is_dir()
    kept.workdir.rmdir()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_controller_command_that_fails_to_start_leaves_nothing_running(tmp_path: Path) -> None:
    """A --controller-cmd that exits before its controller answers is a DrillError, and the
    child it left behind in its session is stopped."""
    pidfile = tmp_path / "child.pid"
    command = f"sleep 300 & echo $! > {pidfile}; exit 3"
    handle = CommandController(command, f"http://127.0.0.1:{free_port()}", "t", tmp_path)
    with pytest.raises(DrillError, match="exited"):
        handle.start()
    pid = int(pidfile.read_text())
    try:
        wait_until(lambda: _gone(pid), 10, "the orphaned child to stop")
    finally:
        if not _gone(pid):
            os.kill(pid, 9)


def test_a_relative_model_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative --model names the file from where the drill was started, not from the
    work folder its agent configs are written to (their relative paths resolve there)."""
    (tmp_path / "m.gguf").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    options = DrillOptions(scenario="cloud-outage", embedded=True, model=Path("m.gguf"))
    options.validate()
    assert options.model == tmp_path / "m.gguf"


def test_cli_refuses_bad_input(tmp_path: Path) -> None:
    """An unknown scenario, a missing model or no controller each exit non-zero with the
    reason on stderr."""
    base = ["-m", "controller", "drill", "offline", "--duration", "5"]
    unknown = run_cli([*base, "--scenario", "meteor-strike", "--embedded"])
    assert unknown.returncode == 2
    assert "unknown scenario" in unknown.stderr
    missing = run_cli(
        [*base, "--scenario", "cloud-outage", "--embedded", "--model", str(tmp_path / "x.gguf")]
    )
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    no_url = run_cli(
        [*base, "--scenario", "cloud-outage"], env={"EDGEFLEET_CLI_CONFIG": str(tmp_path / "n")}
    )
    assert no_url.returncode == 2
    assert "--url" in no_url.stderr


# --- stored reports ---------------------------------------------------------------------------
@pytest.fixture
def live(mosquitto: Broker, tmp_path: Path) -> Any:
    with live_controller(tmp_path, {"mode": "external", "url": mosquitto.url}) as controller:
        yield controller


def _report(passed: bool) -> dict[str, Any]:
    return {
        "scenario": "broker-partition",
        "devices": 2,
        "duration_s": 30,
        "passed": passed,
        "started_at": "2026-01-01T00:00:00+00:00",
        "latency_budget_ms": 2000,
        "checks": [
            {"name": "local_serving", "passed": passed, "measured": {"p95_ms": 120}, "detail": ""}
        ],
        "events": [{"t": 6.0, "event": "fault_injected", "fault": "broker link cut"}],
        "fault_windows": [{"start": 6.0, "end": 21.0}],
        "timeline": [{"t": 0, "ok": 4, "failed": 0, "p95_ms": 120.0}],
    }


def test_stored_verdict_is_recomputed_from_the_checks(live: LiveController) -> None:
    """The controller stores ``passed`` by the checks' rule, not the client's value: a
    failed check fails the report, all passing (skipped ones aside) passes it, and a skipped
    drill without checks is stored as skipped."""
    lying = live.client.post(
        "/api/drills", json=_report(False) | {"passed": True}, headers=live.auth
    )
    assert lying.status_code == 201, lying.text
    assert lying.json()["passed"] is False
    assert lying.json()["report"]["passed"] is False
    body = _report(True) | {"passed": False}
    body["checks"] = [*body["checks"], {"name": "x", "passed": None, "detail": "n/a"}]
    honest = live.client.post("/api/drills", json=body, headers=live.auth).json()
    assert honest["passed"] is True
    empty = live.client.post(
        "/api/drills", json=_report(True) | {"checks": []}, headers=live.auth
    ).json()
    assert empty["passed"] is False
    skip = _report(True) | {"checks": [], "passed": True, "skipped": "needs --controller-cmd"}
    assert live.client.post("/api/drills", json=skip, headers=live.auth).json()["passed"] is None
    stored = live.client.get(f"/api/drills/{lying.json()['id']}", headers=live.auth).json()
    assert stored["passed"] is False


def test_stored_report_is_listed_and_rendered(live: LiveController) -> None:
    """A posted report is listed on /api/drills, readable whole, and its console page and the
    list page render; an unknown scenario is refused with 422."""
    created = live.client.post("/api/drills", json=_report(False), headers=live.auth)
    assert created.status_code == 201, created.text
    drill_id = created.json()["id"]
    page = live.client.get("/api/drills", headers=live.auth).json()
    assert page["count"] == 1
    assert page["data"][0]["checks_failed"] == 1
    one = live.client.get(f"/api/drills/{drill_id}", headers=live.auth).json()
    assert one["report"]["fault_windows"] == [{"start": 6.0, "end": 21.0}]
    assert live.client.get("/api/drills/999", headers=live.auth).status_code == 404
    bad = live.client.post(
        "/api/drills", json={**_report(True), "scenario": "meteor"}, headers=live.auth
    )
    assert bad.status_code == 422

    from controller.auth.credentials import SESSION_COOKIE
    from tests.controller_harness import PASSWORD, console_login

    console_login(live.client, "admin", PASSWORD)
    assert SESSION_COOKIE in live.client.cookies
    listing = live.client.get("/console/drills")
    assert listing.status_code == 200
    assert "/static/drills.js" in listing.text
    assert 'href="/console/drills"' in listing.text
    detail = live.client.get(f"/console/drills/{drill_id}")
    assert detail.status_code == 200
    assert "broker-partition" in detail.text
    assert 'id="chart-requests"' in detail.text
    assert live.client.get("/console/drills/999").status_code == 404
