"""Offline drills: the pure checks on hand-made observations, each scenario end to end at
small scale (embedded controller process, real Mosquitto, real agents serving the demo
GGUF), and stored reports on the API and console."""

import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

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
from controller.drills.processes import (
    PASSPHRASE,
    CommandController,
    DrillError,
    EmbeddedController,
    free_port,
    wait_until,
)
from controller.drills.runner import DrillOptions, DrillRunner, run_drill
from controller.drills.scenarios import SCENARIOS, Step, Window, fault_plan, fault_windows
from controller.pki.store import PkiStore
from shared.certificates import (
    certificate_info,
    certificate_pem,
    csr_for,
    new_private_key,
    private_key_pem,
)
from tests.conftest import Broker, MosquittoProcess
from tests.controller_harness import LiveController, live_controller
from tests.pki_world import BrokerFiles, tls_mosquitto
from tests.procs import run_cli

FAULT = [Window(2.0, 6.0)]
# The end-to-end drills pin behaviour (every check evaluated, records once, restricted data
# local), not this machine's speed: their latency budget (the p95 check, the routing budget,
# the model's expected latency) is longer than pytest's 300 s timeout for a whole test, so
# no answer can ever be over it. The budget check itself is pinned by
# test_local_serving_fails_on_failures_or_a_blown_budget.
UNTIMED_BUDGET_MS = 600_000.0


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


def _assert_every_check_evaluated(names: dict[str, dict[str, Any]], *, rollout: bool) -> None:
    """Every check of the drill ran (the stale-advance one only in a rollout drill), and the
    local serving check reports the measured p95 of its answers against the budget."""
    applies = {
        "local_serving",
        "restricted_data_stayed_local",
        "telemetry_delivered_after_fault",
        "desired_state_converged",
    } | ({"no_wave_advanced_on_stale_data"} if rollout else set())
    assert set(names) == applies | {"no_wave_advanced_on_stale_data"}
    assert {n for n, c in names.items() if c["passed"] is True} == applies, names
    local = names["local_serving"]["measured"]
    assert local["failed"] == 0 and local["ok"] >= 1
    assert local["p95_ms"] > 0 and local["budget_ms"] == UNTIMED_BUDGET_MS


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
        latency_budget_ms=UNTIMED_BUDGET_MS,
    )
    report = run_drill(options)
    assert report["passed"] is True, _failed(report)
    assert report["id"] is not None
    names = {c["name"]: c for c in report["checks"]}
    _assert_every_check_evaluated(names, rollout=rollout)
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


# --- over mutual TLS --------------------------------------------------------------------------
@dataclass
class TlsWorld:
    """A controller (``controller serve`` on a TUF repository and a device CA, started by
    the drill as --controller-cmd) on a Mosquitto whose only listener is mutual TLS with
    a CA and server certificate from that controller's store."""

    broker_url: str
    controller: EmbeddedController
    command: str
    store: PkiStore


@pytest.fixture
def brokers() -> Iterator[list[MosquittoProcess]]:
    started: list[MosquittoProcess] = []
    yield started
    for broker in started:
        broker.stop()


def _tls_world(
    folder: Path, model: Path, brokers: list[MosquittoProcess], *, hosts: list[str]
) -> TlsWorld:
    now = datetime.now(UTC)
    folder.mkdir(parents=True, exist_ok=True)
    store = PkiStore(folder / "pki", SecretStr(PASSPHRASE))
    store.initialize(now=now)
    server = store.write_server_certificate(hosts, folder / "srv", now=now)
    key = new_private_key()
    client_cert = store.sign_device(
        csr_for("edgefleet-controller", key), "edgefleet-controller", now=now
    )
    (folder / "controller.key").write_bytes(private_key_pem(key))
    (folder / "controller.crt").write_bytes(certificate_pem(client_cert))
    broker = tls_mosquitto(folder, BrokerFiles(store.ca_file, *server))
    broker.start()
    brokers.append(broker)
    url = f"mqtts://127.0.0.1:{broker.port}"
    controller = EmbeddedController(folder, url, protocol="5", repository=True)
    settings = yaml.safe_load(controller.config.read_text())
    settings["broker"] |= {
        "client_id": "edgefleet-controller",
        "ca_file": str(store.ca_file),
        "cert_file": str(folder / "controller.crt"),
        "key_file": str(folder / "controller.key"),
    }
    settings["pki"] = {"dir": str(store.dir)}
    controller.config.write_text(yaml.safe_dump(settings))
    controller.cli("db", "init")
    controller.cli("keys", "init")
    controller.cli("models", "add", str(model), "--name", "drill", "--version", "1.0",
                   "--runtime", "llama.cpp",
                   "--expected-latency-ms", str(int(UNTIMED_BUDGET_MS)))  # fmt: skip
    controller.bootstrap()
    command = (
        f"exec {sys.executable} -m controller serve --config {controller.config} "
        f"--port {controller.port} --log-level warning"
    )
    return TlsWorld(url, controller, command, store)


def _tls_options(world: TlsWorld, model: Path, workdir: Path) -> DrillOptions:
    return DrillOptions(
        scenario="broker-partition",
        devices=1,
        duration_s=8,
        controller_url=world.controller.url,
        token=world.controller.token,
        controller_cmd=world.command,
        broker_url=world.broker_url,
        model=model,
        workdir=workdir,
        recovery_timeout_s=60,
        latency_budget_ms=UNTIMED_BUDGET_MS,
    )


@pytest.mark.e2e
def test_broker_partition_passes_over_mutual_tls(
    model_path: Path, tmp_path: Path, brokers: list[MosquittoProcess]
) -> None:
    """Against an mqtts:// broker each drill agent gets a key made locally and a
    certificate from the controller's CA (through the API), speaks mqtts:// through the
    drill's proxy, and the broker partition passes every check."""
    world = _tls_world(tmp_path / "world", model_path, brokers, hosts=["127.0.0.1"])
    workdir = tmp_path / "drill"
    report = run_drill(_tls_options(world, model_path, workdir))
    assert report["passed"] is True, _failed(report)
    names = {c["name"]: c for c in report["checks"]}
    _assert_every_check_evaluated(names, rollout=False)
    telemetry = names["telemetry_delivered_after_fault"]
    assert telemetry["measured"]["delivered_after_heal"] >= 1
    (device_id,) = report["device_ids"]
    config = yaml.safe_load((workdir / f"{device_id}.yaml").read_text())
    assert config["mqtt"]["url"].startswith("mqtts://127.0.0.1:")
    cert = Path(config["mqtt"]["cert_file"])
    assert certificate_info(cert.read_bytes()).subject_cn == device_id
    assert Path(config["mqtt"]["ca_file"]).read_bytes() == world.store.ca_file.read_bytes()
    assert stat.S_IMODE(Path(config["mqtt"]["key_file"]).stat().st_mode) == 0o600


def test_mqtts_drill_against_a_controller_without_a_ca_fails_at_once(
    model_path: Path, tmp_path: Path, brokers: list[MosquittoProcess]
) -> None:
    """A drill of an mqtts:// broker whose controller has no device CA stops before any
    agent starts, saying to run ``edgefleet pki init``."""
    world = _tls_world(tmp_path / "world", model_path, brokers, hosts=["127.0.0.1"])
    settings = yaml.safe_load(world.controller.config.read_text())
    settings["pki"] = {"dir": str(tmp_path / "no-ca")}
    world.controller.config.write_text(yaml.safe_dump(settings))
    options = _tls_options(world, model_path, tmp_path / "drill")
    with pytest.raises(DrillError, match="edgefleet pki init"):
        run_drill(options)
    assert not list((tmp_path / "drill").glob("drill-*.yaml"))


def test_mqtts_drill_refuses_a_broker_certificate_without_the_loopback_address(
    model_path: Path, tmp_path: Path, brokers: list[MosquittoProcess]
) -> None:
    """A broker whose certificate does not name 127.0.0.1 (the address the agents dial
    through the drill's proxy) fails the drill before any agent starts, naming it."""
    world = _tls_world(tmp_path / "world", model_path, brokers, hosts=["broker.example"])
    with pytest.raises(DrillError, match=r"cannot verify for 127\.0\.0\.1"):
        run_drill(_tls_options(world, model_path, tmp_path / "drill"))
    assert not list((tmp_path / "drill").glob("drill-*.log"))


def test_mqtts_drill_with_a_token_that_may_not_issue_certificates_fails_at_once(
    model_path: Path, tmp_path: Path, brokers: list[MosquittoProcess]
) -> None:
    """With an operator's token (issuing a certificate is admin only) an mqtts:// drill
    stops before its first agent starts, naming the device the controller refused."""
    world = _tls_world(tmp_path / "world", model_path, brokers, hosts=["127.0.0.1"])
    world.controller.cli(
        "admin", "create", "--username", "op", "--role", "operator", "--password-stdin",
        stdin="drill-operator-" + os.urandom(8).hex() + "\n",
    )  # fmt: skip
    options = _tls_options(world, model_path, tmp_path / "drill")
    options.token = world.controller.cli("token", "create", "--username", "op").strip()
    with pytest.raises(DrillError, match="issued no certificate for drill-"):
        run_drill(options)
    assert not list((tmp_path / "drill").glob("drill-*.log"))


def test_embedded_controller_with_an_mqtts_broker_is_refused() -> None:
    """--embedded with an mqtts:// broker is refused before anything starts: the drill's
    own controller has no CA the broker trusts."""
    options = DrillOptions(
        scenario="broker-partition", embedded=True, broker_url="mqtts://127.0.0.1:8883"
    )
    with pytest.raises(ValueError, match="--embedded with an mqtts:// broker"):
        options.validate()


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
