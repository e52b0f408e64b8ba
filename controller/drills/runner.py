"""The offline drill runner: the I/O shell around ``scenarios`` and ``checks``.

It starts the loopback cloud server and two cuttable proxies (agents -> broker, agents ->
cloud), N real agents (``fleet``), drives chat traffic through their APIs, performs the
scenario's steps on schedule, then waits for recovery, collects observations (``calls``
asks the controller) and judges them (``report``).
"""

import json
import logging
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from controller.api_client import ApiError
from controller.drills import calls
from controller.drills.checks import Convergence, DeviceLedger, RequestSample, RolloutSample
from controller.drills.fleet import (
    DrillAgent,
    agent_config,
    drive_traffic,
    mark_fault,
    mark_heal,
    read_outbox,
)
from controller.drills.openai_server import FakeProvider, start_provider
from controller.drills.options import DEFAULT_MODEL, DrillOptions
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
from controller.drills.report import Observations, build_report, per_second, skipped_report
from controller.drills.scenarios import Step, fault_plan
from controller.drills.tcp_proxy import TcpProxy
from controller.drills.timeline import Timeline
from controller.drills.tls import agent_tls, check_broker, fetch_ca
from shared.broker_url import parse_broker_url

log = logging.getLogger(__name__)
Say = Callable[[str], None]


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
        self.timeline = Timeline()
        self.samples: list[RequestSample] = []
        self.rollout_samples: list[RolloutSample] = []
        self.agents: list[DrillAgent] = []
        self.controller: ControllerHandle | None = None
        self.cloud: FakeProvider | None = None
        self.broker_proxy: TcpProxy | None = None
        self.cloud_proxy: TcpProxy | None = None
        self.ca_file: Path | None = None  # the controller's device CA, for mqtts:// brokers
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
            embedded.cli("db", "init")  # a fresh controller: its database, on purpose
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

    def _agent_config(self, device_id: str, port: int, state_dir: Path) -> Path:
        assert self.broker_proxy is not None and self.cloud_proxy is not None
        assert self.controller is not None
        tls = None
        if self.ca_file is not None:
            tls = agent_tls(self.controller, device_id, state_dir / "tls", self.ca_file)
            if not self.agents:  # the first agent's files: one handshake before any starts
                broker = parse_broker_url(self.options.broker_url)
                check_broker(broker.host, broker.port, tls)
        config = agent_config(
            self.options,
            device_id=device_id,
            port=port,
            state_dir=state_dir,
            broker_port=self.broker_proxy.port,
            cloud_port=self.cloud_proxy.port,
            tls=tls.config() if tls else None,
        )
        if self.scenario.rollout:
            root = self.workdir / "trusted-root.json"
            root.write_bytes(calls.trusted_root(self.controller))
            config["updates"] = {
                "enabled": True,
                "metadata_url": f"{self.controller.url}/tuf/metadata/",
                "targets_url": f"{self.controller.url}/tuf/targets/",
                "trusted_root": str(root),
                "health_max_tokens": 4,
                "confirm_after_s": 2.0,
            }
        path = self.workdir / f"{device_id}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _prepare_tls(self) -> None:
        """For an mqtts:// broker, the controller's CA (refused at once when it has none)."""
        if not parse_broker_url(self.options.broker_url).tls:
            return
        assert self.controller is not None
        self.ca_file = fetch_ca(self.controller, self.workdir / "tls", self.options.broker_url)

    def _start_agents(self) -> None:
        for i in range(self.options.devices):
            device_id = f"drill-{self.run_id}-{i}"
            port = free_port()
            state_dir = self.workdir / device_id
            agent = DrillAgent(
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

    def _wait_up(self, agent: DrillAgent) -> None:
        """Until the agent's API answers and the controller sees it online."""
        proc, controller = agent.proc, self.controller
        assert proc is not None and controller is not None
        try:
            wait_until(lambda: port_open(agent.port) or not proc.alive(), 120, agent.device_id)
        except DrillError:
            raise DrillError(f"{agent.device_id} did not start:\n{proc.log_tail()}") from None
        if not proc.alive():
            raise DrillError(f"{agent.device_id} exited:\n{proc.log_tail()}")
        wait_until(
            lambda: calls.device_state(controller, agent.device_id) == "online",
            60,
            f"{agent.device_id} to be online at the controller",
        )
        try:  # the first attestation verdict; a quarantined device may not use the cloud
            wait_until(
                lambda: calls.quarantine(controller, agent.device_id) is None, 30, "attestation"
            )
        except DrillError:
            reason = calls.quarantine(controller, agent.device_id)
            self.say(f"{agent.device_id} is quarantined ({reason}): it will not use the cloud")
            self.quarantined[agent.device_id] = str(reason)

    def _record(self, sample: RequestSample) -> None:
        with self._lock:
            self.samples.append(sample)

    def _poll_rollout(self) -> None:
        assert self.controller is not None
        while not self._stop_polling.is_set():
            if self.rollout_id is not None:
                progress = calls.rollout_progress(self.controller, self.rollout_id)
                if progress is not None:
                    with self._lock:
                        self.rollout_samples.append(
                            RolloutSample(self.timeline.now(), progress[0], progress[1])
                        )
            self._stop_polling.wait(0.5)

    # --- faults ---------------------------------------------------------------------------
    def _set_desired(self) -> None:
        """A desired label on every drill device, made while the fault is in force (just
        before it for a controller crash: a dead controller takes no PATCH)."""
        assert self.controller is not None
        value = f"{self.run_id}-{self.scenario.name}"
        for agent in self.agents:
            labels = {"drill": value}
            version = calls.set_desired(self.controller, agent.device_id, labels)
            self.desired[agent.device_id] = (version, labels)
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
        self.rollout_id = calls.start_rollout(self.controller, body)
        self.timeline.event("rollout_started", rollout=self.rollout_id, waves=waves)

    def _perform(self, step: Step) -> None:
        assert self.broker_proxy and self.cloud_proxy and self.controller
        at = self.timeline.now()
        if step.action == "cut_broker":
            self.broker_proxy.cut()
            mark_fault(self.agents)
            self.timeline.event("fault_injected", fault="broker link cut")
        elif step.action == "heal_broker":
            mark_heal(self.agents)
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
            mark_fault(self.agents)
            self.timeline.event("fault_injected", fault="controller killed (SIGKILL)")
        elif step.action == "start_controller":
            mark_heal(self.agents)
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
    def _ledgers(self) -> list[DeviceLedger]:
        assert self.controller is not None
        deadline = time.monotonic() + self.options.recovery_timeout_s
        ledgers = []
        for agent in self.agents:
            while True:
                epoch, produced, pending, dropped = read_outbox(agent)
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            stored, reported = calls.stored_telemetry(self.controller, agent.device_id)
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

    def _redelivered(self) -> int | None:
        """Redeliveries the controller discarded during the drill (information only)."""
        assert self.controller is not None
        after = calls.ingest_duplicates(self.controller)
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
                shadow = calls.shadow(self.controller, device_id)
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
                return skipped_report(self.options, reason)
            broker = parse_broker_url(o.broker_url)
            self.say(
                f"drill {self.run_id}: {self.scenario.name}, "
                f"{o.devices} device(s), {o.duration_s:.0f} s"
            )
            self._start_controller()
            self._prepare_tls()
            self.cloud = start_provider("drill-cloud")
            assert self.cloud.server is not None
            self.broker_proxy = TcpProxy(broker.host, broker.port)
            self.broker_proxy.start()
            self.cloud_proxy = TcpProxy("127.0.0.1", self.cloud.server.server_address[1])
            self.cloud_proxy.start()
            self._start_agents()
            assert self.controller is not None
            self.ingest_duplicates_before = calls.ingest_duplicates(self.controller)
            self.say(f"{len(self.agents)} agent(s) online; traffic and faults start now")
            self.timeline = Timeline()
            plan = fault_plan(self.scenario, o.duration_s, flap_period_s=o.flap_period_s)
            threads = [self._traffic_thread(a) for a in self.agents]
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
            seen = self._observe()
            self._stop_polling.set()
            if poller is not None:
                poller.join(10)
            report = self._report(seen)
            if o.store:
                report["id"] = self._store(report)
            return report
        finally:
            self._stop_traffic.set()
            self._stop_polling.set()
            self._teardown()

    def _traffic_thread(self, agent: DrillAgent) -> threading.Thread:
        return threading.Thread(
            target=drive_traffic,
            args=(agent,),
            kwargs={
                "rate": self.options.rate,
                "timeline": self.timeline,
                "stop": self._stop_traffic,
                "record": self._record,
            },
            daemon=True,
        )

    def _observe(self) -> Observations:
        ledgers = self._ledgers()
        self.redelivered = self._redelivered()
        convergence = self._convergence()
        assert self.cloud is not None
        with self.cloud.lock:
            bodies = [json.dumps(b) for b in self.cloud.received]
        with self._lock:
            samples, rollout_samples = list(self.samples), list(self.rollout_samples)
        return Observations(
            samples, rollout_samples, bodies, ledgers, convergence, self.redelivered
        )

    def _report(self, seen: Observations) -> dict[str, Any]:
        run = {
            "run_id": self.run_id,
            "device_ids": [a.device_id for a in self.agents],
            "controller": self.controller.url if self.controller else None,
            "quarantined": self.quarantined,
            "rollout": {"id": self.rollout_id, "version": self.rollout_version},
        }
        return build_report(self.scenario, self.options, self.timeline, seen, run=run)

    def _store(self, report: dict[str, Any]) -> int | None:
        assert self.controller is not None
        try:
            return calls.store_report(self.controller, report)
        except ApiError as e:
            self.say(f"report not stored on the controller: {e}")
            return None

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


def run_drill(options: DrillOptions, say: Say | None = None) -> dict[str, Any]:
    """Run one drill and return its report (``report["passed"]``: True, False or None)."""
    return DrillRunner(options, say).run()


__all__ = ["DEFAULT_MODEL", "DrillError", "DrillOptions", "DrillRunner", "per_second", "run_drill"]
