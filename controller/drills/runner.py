"""The offline drill runner: the I/O shell around ``scenarios`` and ``checks``.

It starts the loopback cloud server and two cuttable proxies (agents -> broker, agents ->
cloud), N real agents, drives chat traffic through their APIs, performs the scenario's
steps on schedule, then waits for recovery, collects observations and judges them.
"""

import json
import logging
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from controller.drills import checks
from controller.drills.checks import (
    RESTRICTED_MARKERS,
    RESTRICTED_PROMPTS,
    CheckResult,
    Convergence,
    DeviceLedger,
    RequestKind,
    RequestSample,
    RolloutSample,
)
from controller.drills.openai_server import FakeProvider, start_provider
from controller.drills.processes import (
    CommandController,
    ControllerHandle,
    DrillError,
    EmbeddedController,
    Process,
    RemoteController,
    free_port,
    port_open,
    wait_until,
)
from controller.drills.scenarios import Scenario, Step, fault_plan, fault_windows, get_scenario
from controller.drills.tcp_proxy import TcpProxy
from shared.broker_url import parse_broker_url

log = logging.getLogger(__name__)
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CLOUD_TASK = "planning"  # the task class the drill's agents route to the cloud tier
PLAIN_PROMPTS = ("What is the capital of France?", "Name a primary colour.")
CLOUD_PROMPTS = ("Plan a three-step maintenance checklist.", "Outline a shift handover.")
Say = Callable[[str], None]


@dataclass
class DrillOptions:
    """Everything ``edgefleet drill offline`` takes."""

    scenario: str
    devices: int = 2
    duration_s: float = 60.0
    controller_url: str | None = None
    token: str | None = None
    broker_url: str = "mqtt://127.0.0.1:1883"
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    model: Path = DEFAULT_MODEL
    model_name: str = "drill"
    model_runtime: Literal["llama.cpp", "ort-genai"] = "llama.cpp"
    embedded: bool = False
    controller_cmd: str | None = None
    workdir: Path | None = None
    latency_budget_ms: float = 2000.0
    rate: float = 2.0  # requests per second per device
    flap_period_s: float = 2.0
    recovery_timeout_s: float = 90.0
    rollout_version: str | None = None  # a published version of model_name (remote fleets)
    store: bool = True  # POST the report to the controller
    keep_workdir: bool = False  # keep a work folder the drill made itself (logs, state)

    def validate(self) -> Scenario:
        scenario = get_scenario(self.scenario)
        if not 1 <= self.devices <= 50:
            raise ValueError("--devices must be between 1 and 50")
        if self.duration_s < 5:
            raise ValueError("--duration must be at least 5 seconds")
        if self.rate <= 0:
            raise ValueError("--rate must be positive")
        if not self.embedded and not self.controller_url:
            raise ValueError("give --url (and --token) of a controller, or --embedded")
        if not self.embedded and not self.token:
            raise ValueError("--token is required with --url (an operator's API token)")
        if not self.model.exists():
            raise ValueError(f"model {self.model} does not exist (give --model PATH)")
        # The agents' configs live in the work folder, and relative paths in a config are
        # taken from its folder: a relative --model would name a file that is not there.
        self.model = self.model.resolve()
        parse_broker_url(self.broker_url)
        return scenario


@dataclass
class _Agent:
    device_id: str
    port: int
    state_dir: Path
    config: Path
    proc: Process | None = None
    # (epoch, next_seq) of its outbox when the current broker/controller fault began
    fault_mark: tuple[int, int] | None = None
    produced_during_fault: int = 0
    buffered_at_heal: set[int] = field(default_factory=set)


@dataclass
class _Timeline:
    t0: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    events: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, name: str, **detail: Any) -> None:
        with self.lock:
            self.events.append({"t": round(self.now(), 3), "event": name, **detail})


def _skipped_report(options: DrillOptions, reason: str) -> dict[str, Any]:
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


class DrillRunner:
    """One drill run; ``run()`` returns the report (a JSON-able dict)."""

    def __init__(self, options: DrillOptions, say: Say | None = None) -> None:
        self.options = options
        self.scenario = options.validate()
        self.say: Say = say or (lambda line: log.info("%s", line))
        self.run_id = uuid.uuid4().hex[:6]
        self._own_workdir = options.workdir is None
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-drill-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeline = _Timeline()
        self.samples: list[RequestSample] = []
        self.rollout_samples: list[RolloutSample] = []
        self.agents: list[_Agent] = []
        self.controller: ControllerHandle | None = None
        self.cloud: FakeProvider | None = None
        self.broker_proxy: TcpProxy | None = None
        self.cloud_proxy: TcpProxy | None = None
        self.rollout_id: int | None = None
        self.rollout_version: str | None = options.rollout_version
        self.desired: dict[str, tuple[int, Any]] = {}
        self.quarantined: dict[str, str] = {}
        self.ingest_duplicates_before: int | None = None
        self.redelivered: int | None = None
        self._stop_traffic = threading.Event()
        self._stop_polling = threading.Event()
        self._lock = threading.Lock()

    # --- setup ----------------------------------------------------------------------------
    def _skip_reason(self) -> str | None:
        o = self.options
        if self.scenario.link == "controller" and not (o.embedded or o.controller_cmd):
            return (
                "controller-crash needs a controller the drill may kill and restart: give "
                "--controller-cmd (the command that starts it) or run with --embedded"
            )
        if self.scenario.rollout and not o.embedded and not o.rollout_version:
            return (
                "rollout-partition against a remote controller needs --rollout-version: a "
                f"published version of model {o.model_name!r} the drill devices may install"
            )
        return None

    def _start_controller(self) -> None:
        """Set ``self.controller`` before starting anything, so teardown stops what started."""
        o = self.options
        if o.embedded:
            # A TUF repository always: attestation checks the agents' model hash against
            # the published targets (an unknown model is quarantined, and a quarantined
            # device may not use the cloud tier).
            embedded = EmbeddedController(
                self.workdir, o.broker_url, protocol=o.mqtt_protocol, repository=True
            )
            self.controller = embedded
            embedded.cli("keys", "init")
            self._publish(embedded)
            embedded.bootstrap()
            embedded.start()
            return
        assert o.controller_url is not None and o.token is not None
        if o.controller_cmd:
            command = CommandController(o.controller_cmd, o.controller_url, o.token, self.workdir)
            self.controller = command
            if not command.ready():
                command.start()
            elif self.scenario.link == "controller":
                raise DrillError(
                    f"a controller already answers at {command.url}: controller-crash kills "
                    "and restarts the one --controller-cmd starts, so stop that one first"
                )
        else:
            self.controller = RemoteController(o.controller_url, o.token)
        if not self.controller.ready():
            raise DrillError(
                f"controller {self.controller.url} does not answer /api/ingest/stats with "
                "that token"
            )

    def _publish(self, embedded: EmbeddedController) -> None:
        """The factory model as 1.0 and, for a rollout drill, a byte-different copy as 2.0."""
        o = self.options
        embedded.cli(
            "models", "add", str(o.model), "--name", o.model_name, "--version", "1.0",
            "--runtime", o.model_runtime,
            "--expected-latency-ms", str(int(o.latency_budget_ms)),
        )  # fmt: skip
        if not self.scenario.rollout:
            return
        variant = self.workdir / f"{o.model_name}-2.0{o.model.suffix}"
        if o.model.is_dir():
            shutil.copytree(o.model, variant)
            (variant / "drill-variant.txt").write_text(self.run_id + "\n")
        else:
            with o.model.open("rb") as src, variant.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                out.write(f"\nedgefleet-drill {self.run_id}\n".encode())  # llama.cpp ignores it
        embedded.cli(
            "models", "add", str(variant), "--name", o.model_name, "--version", "2.0",
            "--runtime", o.model_runtime,
            "--expected-latency-ms", str(int(o.latency_budget_ms)),
        )  # fmt: skip
        self.rollout_version = "2.0"

    def _trusted_root(self) -> Path:
        assert self.controller is not None
        path = self.workdir / "trusted-root.json"
        with self.controller.api() as api:
            response = api.get("/tuf/metadata/1.root.json")
        if response.status_code != 200:
            raise DrillError(f"controller has no TUF root ({response.status_code}); updates off?")
        path.write_bytes(response.content)
        return path

    def _agent_config(self, device_id: str, port: int, state_dir: Path) -> Path:
        o = self.options
        assert self.broker_proxy is not None and self.cloud_proxy is not None
        assert self.controller is not None
        config: dict[str, Any] = {
            "device_id": device_id,
            "device_class": "drill",
            "state_dir": str(state_dir),
            "mqtt": {
                "url": f"mqtt://127.0.0.1:{self.broker_proxy.port}",
                "keepalive_s": 2,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 2.0,
                "protocol": o.mqtt_protocol,
                "session_expiry_s": 3600,
            },
            "api": {"host": "127.0.0.1", "port": port},
            "heartbeat_interval_s": 1.0,
            "telemetry_interval_s": 2.0,
            "outbox": {"ack_timeout_s": 3.0, "batch_records": 100},
            "models": [
                {
                    "name": o.model_name,
                    "runtime": o.model_runtime,
                    "path": str(o.model),
                    "n_ctx": 256,
                    "n_threads": 1,
                    "max_tokens_default": 4,
                    "mlock": False,
                }
            ],
            "tiers": {
                "cloud": {
                    "base_url": f"http://127.0.0.1:{self.cloud_proxy.port}/v1",
                    "model": "drill-cloud",
                    "timeout_s": 2.0,
                    "connect_timeout_s": 1.0,
                    "cost_per_1k_input": 1.0,
                }
            },
            "routing": {
                "rules": [{"task_class": CLOUD_TASK, "tier": "cloud"}],
                "default_latency_budget_ms": o.latency_budget_ms,
                "cascade": {"enabled": False},
                "breaker": {"failure_threshold": 2, "window_s": 10.0, "open_s": 2.0},
            },
        }
        if self.scenario.rollout:
            config["updates"] = {
                "enabled": True,
                "metadata_url": f"{self.controller.url}/tuf/metadata/",
                "targets_url": f"{self.controller.url}/tuf/targets/",
                "trusted_root": str(self._trusted_root()),
                "health_max_tokens": 4,
                "confirm_after_s": 2.0,
            }
        path = self.workdir / f"{device_id}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _start_agents(self) -> None:
        for i in range(self.options.devices):
            device_id = f"drill-{self.run_id}-{i}"
            port = free_port()
            state_dir = self.workdir / device_id
            agent = _Agent(
                device_id, port, state_dir, self._agent_config(device_id, port, state_dir)
            )
            self.agents.append(agent)  # before it starts: teardown stops every one started
            agent.proc = Process(
                device_id,
                [sys.executable, "-m", "edge_agent", "run",
                 "--config", str(agent.config), "--log-level", "warning"],
                self.workdir,
            )  # fmt: skip
        for agent in self.agents:
            self._wait_up(agent)

    def _wait_up(self, agent: _Agent) -> None:
        """Until the agent's API answers and the controller sees it online."""
        proc = agent.proc
        assert proc is not None
        try:
            wait_until(lambda: port_open(agent.port) or not proc.alive(), 120, agent.device_id)
        except DrillError:
            raise DrillError(f"{agent.device_id} did not start:\n{proc.log_tail()}") from None
        if not proc.alive():
            raise DrillError(f"{agent.device_id} exited:\n{proc.log_tail()}")
        wait_until(
            lambda: self._device_state(agent.device_id) == "online",
            60,
            f"{agent.device_id} to be online at the controller",
        )
        try:  # the first attestation verdict; a quarantined device may not use the cloud
            wait_until(lambda: self._quarantine(agent.device_id) is None, 30, "attestation")
        except DrillError:
            reason = self._quarantine(agent.device_id)
            self.say(f"{agent.device_id} is quarantined ({reason}): it will not use the cloud")
            self.quarantined[agent.device_id] = str(reason)

    def _quarantine(self, device_id: str) -> Any:
        """The desired ``quarantine`` the controller set for the device, or None."""
        assert self.controller is not None
        try:
            with self.controller.api(timeout=5) as api:
                response = api.get(f"/api/devices/{device_id}/shadow")
        except httpx.HTTPError:
            return "unknown"
        if response.status_code != 200:
            return "unknown"
        return (response.json().get("desired") or {}).get("quarantine")

    def _device_state(self, device_id: str) -> str | None:
        assert self.controller is not None
        try:
            with self.controller.api(timeout=5) as api:
                response = api.get(f"/api/devices/{device_id}")
        except httpx.HTTPError:
            return None
        return str(response.json().get("state")) if response.status_code == 200 else None

    # --- traffic --------------------------------------------------------------------------
    def _traffic(self, agent: _Agent) -> None:
        """Sequential chat requests at ``rate``: plain, cloud-routed and restricted in turn."""
        interval = 1.0 / self.options.rate
        n = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{agent.port}", timeout=30) as client:
            while not self._stop_traffic.is_set():
                began = time.monotonic()
                kind: RequestKind = ("local", "cloud", "restricted")[n % 3]
                headers = {}
                if kind == "local":
                    prompt = PLAIN_PROMPTS[n % len(PLAIN_PROMPTS)]
                elif kind == "cloud":
                    prompt = CLOUD_PROMPTS[n % len(CLOUD_PROMPTS)]
                    headers["X-Task-Class"] = CLOUD_TASK
                else:
                    prompt = RESTRICTED_PROMPTS[(n // 3) % len(RESTRICTED_PROMPTS)][1]
                    headers["X-Task-Class"] = CLOUD_TASK  # would go to the cloud if it could
                n += 1
                at = self.timeline.now()
                status, route, degraded, reason = 0, "", False, ""
                try:
                    response = client.post(
                        "/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 4},
                        headers=headers,
                    )
                    status = response.status_code
                    route = response.headers.get("x-edge-route", "")
                    degraded = response.headers.get("x-edge-degraded") == "true"
                    reason = response.headers.get("x-edge-route-reason", "")
                except httpx.HTTPError as e:
                    reason = type(e).__name__
                latency = (time.monotonic() - began) * 1000
                with self._lock:
                    self.samples.append(
                        RequestSample(
                            at, agent.device_id, kind, status, latency, route, degraded, reason
                        )
                    )
                self._stop_traffic.wait(max(0.0, interval - (time.monotonic() - began)))

    def _poll_rollout(self) -> None:
        assert self.controller is not None
        while not self._stop_polling.is_set():
            if self.rollout_id is not None:
                try:
                    with self.controller.api(timeout=5) as api:
                        view = api.get(f"/api/rollouts/{self.rollout_id}").json()
                    with self._lock:
                        self.rollout_samples.append(
                            RolloutSample(
                                self.timeline.now(), int(view["wave"]), str(view["status"])
                            )
                        )
                except (httpx.HTTPError, KeyError, ValueError, TypeError):
                    pass
            self._stop_polling.wait(0.5)

    # --- faults ---------------------------------------------------------------------------
    def _set_desired(self) -> None:
        """A desired label on every drill device, made while the fault is in force (just
        before it for a controller crash: a dead controller takes no PATCH)."""
        assert self.controller is not None
        value = f"{self.run_id}-{self.scenario.name}"
        for agent in self.agents:
            with self.controller.api() as api:
                response = api.patch(
                    f"/api/devices/{agent.device_id}/shadow/desired",
                    json={"labels": {"drill": value}},
                )
            if response.status_code != 200:
                raise DrillError(f"PATCH desired for {agent.device_id}: {response.text}")
            self.desired[agent.device_id] = (
                int(response.json()["desired_version"]),
                {"drill": value},
            )
        self.timeline.event("desired_set", value=value)

    def _start_rollout(self) -> None:
        assert self.controller is not None
        waves = ["canary:1", "100%"] if len(self.agents) > 1 else ["100%"]
        body = {
            "model": self.options.model_name,
            "version": self.rollout_version,
            "waves": waves,
            "cohort": {"device_ids": [a.device_id for a in self.agents]},
            "gates": {"min_soak_s": 1, "min_samples": 1},
            # Longer than the partition: silence alone must not settle the wave.
            "device_timeout_s": self.options.duration_s * 2 + self.options.recovery_timeout_s,
        }
        with self.controller.api() as api:
            response = api.post("/api/rollouts", json=body)
        if response.status_code != 201:
            raise DrillError(f"POST /api/rollouts: {response.status_code} {response.text}")
        self.rollout_id = int(response.json()["id"])
        self.timeline.event("rollout_started", rollout=self.rollout_id, waves=waves)

    def _mark_fault(self) -> None:
        """Note each agent's outbox position as a broker/controller fault begins."""
        for agent in self.agents:
            try:
                epoch, next_seq, _, _ = self._outbox(agent)
            except sqlite3.Error as e:
                log.warning("outbox of %s not read at the fault: %s", agent.device_id, e)
                agent.fault_mark = None
                continue
            agent.fault_mark = (epoch, next_seq)

    def _mark_heal(self) -> None:
        """Before the heal: the records numbered during the fault, and which of them are
        still buffered (so cannot have been stored yet)."""
        for agent in self.agents:
            mark, agent.fault_mark = agent.fault_mark, None
            if mark is None:
                continue
            try:
                epoch, next_seq, pending, _ = self._outbox(agent)
            except sqlite3.Error as e:
                log.warning("outbox of %s not read at the heal: %s", agent.device_id, e)
                continue
            if epoch != mark[0]:
                continue  # the agent started a new epoch: its old numbers do not compare
            agent.produced_during_fault += max(0, next_seq - mark[1])
            agent.buffered_at_heal.update(s for s in pending if mark[1] <= s < next_seq)

    def _perform(self, step: Step) -> None:
        assert self.broker_proxy and self.cloud_proxy and self.controller
        at = self.timeline.now()
        if step.action == "cut_broker":
            self.broker_proxy.cut()
            self._mark_fault()
            self.timeline.event("fault_injected", fault="broker link cut")
        elif step.action == "heal_broker":
            self._mark_heal()
            at = self.timeline.now()
            self.broker_proxy.heal()
            self.timeline.event("fault_healed", fault="broker link healed")
        elif step.action == "cut_cloud":
            self.cloud_proxy.cut()
            self.timeline.event("fault_injected", fault="cloud link cut")
        elif step.action == "heal_cloud":
            self.cloud_proxy.heal()
            self.timeline.event("fault_healed", fault="cloud link healed")
        elif step.action == "kill_controller":
            self._set_desired()
            at = self.timeline.now()
            self.controller.kill()
            self._mark_fault()
            self.timeline.event("fault_injected", fault="controller killed (SIGKILL)")
        elif step.action == "start_controller":
            self._mark_heal()
            at = self.timeline.now()
            self.controller.start()
            self.timeline.event("fault_healed", fault="controller restarted")
        elif step.action == "start_rollout":
            self._start_rollout()
        self.timeline.steps.append(Step(at, step.action))

    def _run_schedule(self, plan: list[Step]) -> None:
        desired_at = plan[0].at_s + 1.0 if plan else None
        pending = sorted(plan, key=lambda s: s.at_s)
        desired_done = self.scenario.link == "controller"
        while self.timeline.now() < self.options.duration_s:
            now = self.timeline.now()
            while pending and pending[0].at_s <= now:
                self._perform(pending.pop(0))
            if not desired_done and desired_at is not None and now >= desired_at:
                self._set_desired()
                desired_done = True
            time.sleep(0.05)
        for step in pending:  # never leave a fault in force
            self._perform(step)

    # --- recovery and observations ----------------------------------------------------------
    def _outbox(self, agent: _Agent) -> tuple[int, int, frozenset[int], int]:
        """(epoch, next_seq, pending seqs, dropped) read in one snapshot of the agent's outbox."""
        db = sqlite3.connect(f"file:{agent.state_dir / 'outbox.db'}?mode=ro", uri=True, timeout=5)
        try:
            db.execute("BEGIN")
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            epoch = int(meta.get("epoch", 0))
            pending = frozenset(
                int(s) for (s,) in db.execute("SELECT seq FROM record WHERE epoch = ?", (epoch,))
            )
            dropped = sum(
                int(meta.get(k, 0)) for k in ("dropped_low", "dropped_normal", "dropped_events")
            )
            db.execute("COMMIT")
        finally:
            db.close()
        return epoch, int(meta.get("next_seq", 0)), pending, dropped

    def _stored(self, device_id: str) -> tuple[list[tuple[int, int]], int]:
        """(epoch, seq) of every record the controller holds, and the drops it was told of."""
        assert self.controller is not None
        keys: list[tuple[int, int]] = []
        reported_drops = 0
        offset = 0
        with self.controller.api() as api:
            while True:
                response = api.get(
                    f"/api/devices/{device_id}/telemetry", params={"limit": 5000, "offset": offset}
                )
                if response.status_code != 200:
                    raise DrillError(f"GET telemetry of {device_id}: {response.text}")
                page = response.json()
                for r in page["data"]:
                    keys.append((int(r["epoch"]), int(r["seq"])))
                    if r["name"] == "outbox_drops":
                        reported_drops += sum(int(v) for v in r["body"].values())
                offset += len(page["data"])
                if not page["data"] or offset >= int(page["count"]):
                    return keys, reported_drops

    def _ledgers(self) -> list[DeviceLedger]:
        deadline = time.monotonic() + self.options.recovery_timeout_s
        ledgers = []
        for agent in self.agents:
            while True:
                epoch, produced, pending, dropped = self._outbox(agent)
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            stored, reported = self._stored(agent.device_id)
            ledgers.append(
                DeviceLedger(
                    agent.device_id,
                    epoch,
                    produced,
                    pending,
                    dropped + reported,
                    tuple(stored),
                    agent.produced_during_fault,
                    frozenset(agent.buffered_at_heal),
                )
            )
        self.timeline.event("telemetry_drained")
        return ledgers

    def _ingest_duplicates(self) -> int | None:
        """The controller's ``records_duplicate`` counter (redeliveries it discarded), or
        None when it cannot be read. Controller-wide, and reset when the controller starts."""
        assert self.controller is not None
        try:
            with self.controller.api(timeout=5) as api:
                response = api.get("/api/ingest/stats")
            if response.status_code != 200:
                return None
            return int(response.json()["records_duplicate"])
        except (httpx.HTTPError, KeyError, ValueError, TypeError):
            return None

    def _redelivered(self) -> int | None:
        """Redeliveries the controller discarded during the drill (information only)."""
        after = self._ingest_duplicates()
        if after is None or self.ingest_duplicates_before is None:
            return None
        if self.scenario.link == "controller":
            return after  # the counter restarted with the controller, before the redeliveries
        return max(0, after - self.ingest_duplicates_before)

    def _convergence(self) -> list[Convergence]:
        assert self.controller is not None
        deadline = time.monotonic() + self.options.recovery_timeout_s
        results = []
        for device_id, (version, desired) in self.desired.items():
            while True:
                with self.controller.api() as api:
                    shadow = api.get(f"/api/devices/{device_id}/shadow").json()
                applied = int(shadow.get("applied_desired_version") or 0)
                reported = (shadow.get("reported") or {}).get("labels")
                if (applied >= version and reported == desired) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            results.append(Convergence(device_id, version, applied, desired, reported))
        self.timeline.event("desired_checked")
        return results

    def _settle_rollout(self) -> None:
        """After the heal, give the rollout until the recovery timeout to move on or end."""
        deadline = time.monotonic() + self.options.recovery_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                last = self.rollout_samples[-1] if self.rollout_samples else None
            if last is not None and (
                last.status in ("completed", "halted", "rolled_back", "aborted") or last.wave > 0
            ):
                break
            time.sleep(0.5)
        self.timeline.event("rollout_observed")

    # --- the run --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        o = self.options
        poller: threading.Thread | None = None
        threads: list[threading.Thread] = []
        try:
            reason = self._skip_reason()
            if reason is not None:
                self.say(f"skipped: {reason}")
                return _skipped_report(self.options, reason)
            broker = parse_broker_url(o.broker_url)
            self.say(
                f"drill {self.run_id}: {self.scenario.name}, "
                f"{o.devices} device(s), {o.duration_s:.0f} s"
            )
            self._start_controller()
            self.cloud = start_provider("drill-cloud")
            assert self.cloud.server is not None
            self.broker_proxy = TcpProxy(broker.host, broker.port)
            self.broker_proxy.start()
            self.cloud_proxy = TcpProxy("127.0.0.1", self.cloud.server.server_address[1])
            self.cloud_proxy.start()
            self._start_agents()
            self.ingest_duplicates_before = self._ingest_duplicates()
            self.say(f"{len(self.agents)} agent(s) online; traffic and faults start now")
            self.timeline = _Timeline()
            plan = fault_plan(self.scenario, o.duration_s, flap_period_s=o.flap_period_s)
            threads = [
                threading.Thread(target=self._traffic, args=(a,), daemon=True) for a in self.agents
            ]
            for t in threads:
                t.start()
            if self.scenario.rollout:
                poller = threading.Thread(target=self._poll_rollout, daemon=True)
                poller.start()
            self._run_schedule(plan)
            self._stop_traffic.set()
            for t in threads:
                t.join(35)
            self.timeline.event("traffic_stopped")
            self.say("faults over; waiting for recovery")
            if self.scenario.rollout:
                self._settle_rollout()
            ledgers = self._ledgers()
            self.redelivered = self._redelivered()
            convergence = self._convergence()
            self._stop_polling.set()
            if poller is not None:
                poller.join(10)
            report = self._report(ledgers, convergence)
            if o.store:
                report["id"] = self._store(report)
            return report
        finally:
            self._stop_traffic.set()
            self._stop_polling.set()
            self._teardown()

    def _checks(
        self, ledgers: list[DeviceLedger], convergence: list[Convergence]
    ) -> list[CheckResult]:
        windows = fault_windows(self.timeline.steps)
        assert self.cloud is not None
        with self.cloud.lock:
            bodies = [json.dumps(b) for b in self.cloud.received]
        results = [
            checks.check_local_serving(self.samples, windows, self.options.latency_budget_ms),
            checks.check_restricted_stayed(bodies, self.samples, RESTRICTED_MARKERS, windows),
            checks.check_telemetry_delivered(
                ledgers,
                # the broker or controller fault cuts the devices' telemetry off; a cloud
                # outage does not
                fault_buffering=self.scenario.link in ("broker", "controller"),
                redelivered=self.redelivered,
            ),
            checks.check_desired_converged(convergence),
        ]
        if self.scenario.rollout:
            results.append(checks.check_no_stale_advance(self.rollout_samples, windows))
        else:
            results.append(
                checks.skipped("no_wave_advanced_on_stale_data", "only in rollout-partition")
            )
        return results

    def _report(
        self, ledgers: list[DeviceLedger], convergence: list[Convergence]
    ) -> dict[str, Any]:
        results = self._checks(ledgers, convergence)
        windows = fault_windows(self.timeline.steps)
        return {
            "scenario": self.scenario.name,
            "summary": self.scenario.summary,
            "run_id": self.run_id,
            "devices": len(self.agents),
            "device_ids": [a.device_id for a in self.agents],
            "duration_s": self.options.duration_s,
            "latency_budget_ms": self.options.latency_budget_ms,
            "controller": self.controller.url if self.controller else None,
            "embedded": self.options.embedded,
            "quarantined": self.quarantined,
            "started_at": self.timeline.started_at.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "passed": checks.overall(results),
            "checks": [r.to_json() for r in results],
            "events": self.timeline.events,
            "fault_windows": [
                {"start": round(w.start, 3), "end": round(w.end, 3)} for w in windows
            ],
            "timeline": per_second(self.samples),
            "rollout": {"id": self.rollout_id, "version": self.rollout_version}
            if self.scenario.rollout
            else None,
        }

    def _store(self, report: dict[str, Any]) -> int | None:
        assert self.controller is not None
        try:
            with self.controller.api() as api:
                response = api.post("/api/drills", json=report)
        except httpx.HTTPError as e:
            self.say(f"report not stored on the controller: {e}")
            return None
        if response.status_code != 201:
            self.say(f"report not stored on the controller: {response.status_code} {response.text}")
            return None
        return int(response.json()["id"])

    def _teardown(self) -> None:
        """Stop everything the drill started, each part even if an earlier one fails, then
        remove the work folder the drill made itself (unless ``keep_workdir``)."""
        parts: list[tuple[str, Callable[[], None]]] = [
            (a.device_id, a.proc.stop) for a in self.agents if a.proc is not None
        ]
        parts += [(f"proxy :{p.port}", p.stop) for p in (self.broker_proxy, self.cloud_proxy) if p]
        server = self.cloud.server if self.cloud is not None else None
        if server is not None:
            parts += [("cloud server", server.shutdown), ("cloud socket", server.server_close)]
        if self.controller is not None:
            parts.append(("controller", self.controller.close))
        for what, stop in parts:
            try:
                stop()
            except Exception:
                log.exception("stopping %s failed", what)
        if self._own_workdir:
            if self.options.keep_workdir:
                self.say(f"work folder kept: {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)


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


def run_drill(options: DrillOptions, say: Say | None = None) -> dict[str, Any]:
    """Run one drill and return its report (``report["passed"]``: True, False or None)."""
    return DrillRunner(options, say).run()


__all__ = ["DEFAULT_MODEL", "DrillError", "DrillOptions", "DrillRunner", "per_second", "run_drill"]
