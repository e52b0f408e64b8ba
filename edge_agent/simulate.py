"""Simulated devices: real agents without models, for load tests, fault tests and drills.

Each simulated device is a full ``Agent`` (durable outbox, shadow, MQTT link with its
session numbering, backoff, acks and heartbeats) minus the models and the HTTP API, so
what a simulation shows about sync is what a real device does. Progress is written to
stdout as JSON lines, one object per event, for the process that drives the simulation:

- ``ready``: agents built and prefilled, ``pending`` records buffered;
- ``appended``: one record stored (only with ``log_appends``), with its epoch and seq;
- ``drained``: every record appended so far has been acknowledged by the controller,
  ``elapsed_s`` after the links were started.

Each agent supervises its own workers (link, telemetry); the simulation supervises its
appender, which resumes from the record it was at after a crash.
"""

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.sync.outbox import Priority
from shared.supervision import Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SimulationPlan:
    devices: int = 1
    records: int = 0  # per device, appended after the links start
    rate: float = 0.0  # records per second per device; 0 means as fast as possible
    prefill: int = 0  # per device, buffered before connecting (as if offline)
    start_at: float | None = None  # wall-clock time to start the links (a storm barrier)
    log_appends: bool = False
    exit_when_drained: bool = False


DEVICE_ID_FIELD = "{device_id}"


def _own_files(config: AgentConfig) -> AgentConfig:
    """``{device_id}`` in the template's ``mqtt.cert_file`` / ``key_file`` becomes the
    device's id: each simulated device presents its own client certificate."""
    mqtt = config.mqtt
    if mqtt is None:
        return config
    update = {
        key: Path(str(value).replace(DEVICE_ID_FIELD, config.device_id))
        for key in ("cert_file", "key_file")
        if (value := getattr(mqtt, key)) is not None and DEVICE_ID_FIELD in str(value)
    }
    if not update:
        return config
    return config.model_copy(update={"mqtt": mqtt.model_copy(update=update)})


def device_configs(template: AgentConfig, count: int) -> list[AgentConfig]:
    """One config per simulated device: the template itself, or numbered copies of it
    (with ``{device_id}`` in the certificate and key paths filled in)."""
    if count == 1:
        return [_own_files(template)]
    return [
        _own_files(
            template.model_copy(
                update={
                    "device_id": f"{template.device_id}-{i:04d}",
                    "state_dir": template.state_dir / f"{template.device_id}-{i:04d}",
                }
            )
        )
        for i in range(count)
    ]


class Simulation:
    """A set of simulated devices in one process."""

    def __init__(
        self, template: AgentConfig, plan: SimulationPlan, *, out: TextIO = sys.stdout
    ) -> None:
        self.plan = plan
        self._out = out
        self._out_lock = threading.Lock()
        self._stop = threading.Event()
        self.agents = [Agent(cfg) for cfg in device_configs(template, plan.devices)]
        self.appended = 0
        self._appending_done = threading.Event()
        self.supervisor = Supervisor()
        self._next_n = 0  # the appender's progress, kept across its restarts
        self._append_started: float | None = None

    def emit(self, event: str, **fields: Any) -> None:
        with self._out_lock:
            self._out.write(json.dumps({"event": event, **fields}) + "\n")
            self._out.flush()

    def _append(self, agent: Agent, n: int) -> None:
        seq = agent.record("metric", "sim", {"n": n}, Priority.NORMAL)
        if seq is not None:
            self.appended += 1
            if self.plan.log_appends:
                self.emit(
                    "appended", device=agent.config.device_id, epoch=agent.outbox.epoch, seq=seq
                )

    def prefill(self) -> None:
        for agent in self.agents:
            for n in range(self.plan.prefill):
                self._append(agent, n)

    def pending(self) -> int:
        return sum(agent.outbox.pending() for agent in self.agents)

    def workers_down(self) -> list[str]:
        """Workers down now: the appender's, and each agent's as ``device/worker``."""
        down = self.supervisor.down()
        for agent in self.agents:
            down += [f"{agent.config.device_id}/{name}" for name in agent.workers_down()]
        return down

    def _append_loop(self) -> None:
        # Supervised: runs until stop, so it waits once every record is appended.
        interval = 1.0 / self.plan.rate if self.plan.rate > 0 else 0.0
        if self._append_started is None:
            self._append_started = time.monotonic()
        while self._next_n < self.plan.records and not self._stop.is_set():
            n = self._next_n
            for agent in self.agents:
                self._append(agent, self.plan.prefill + n)
            self._next_n = n + 1
            if interval:
                delay = self._append_started + (n + 1) * interval - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
        self._appending_done.set()
        self._stop.wait()

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Prefill, start the links, append, and report; returns when stopped."""
        self.prefill()
        self.emit("ready", devices=len(self.agents), pending=self.pending())
        if self.plan.start_at is not None:
            self._stop.wait(max(0.0, self.plan.start_at - time.time()))
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda a: a.start_link(), self.agents))
        self.supervisor.spawn("sim-append", self._append_loop, stopping=self._stop)
        drained_reported = False
        while not (self._stop.is_set() or should_stop()):
            if self._appending_done.is_set() and not drained_reported and self.pending() == 0:
                drained_reported = True
                self.emit(
                    "drained",
                    elapsed_s=round(time.monotonic() - started, 3),
                    appended=self.appended,
                )
                if self.plan.exit_when_drained:
                    break
            self._stop.wait(0.1)
        self._stop.set()
        self.supervisor.join("sim-append", 5)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self.supervisor.stop()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda a: a.stop(), self.agents))
