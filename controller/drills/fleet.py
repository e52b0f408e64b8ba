"""The drill's devices: real agents, their configs, their outboxes and their chat traffic.

Traffic goes to each agent's own local API (not the controller's), so it uses httpx itself.
"""

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.drills.checks import RESTRICTED_PROMPTS, RequestKind, RequestSample
from controller.drills.options import DrillOptions
from controller.drills.processes import Process
from controller.drills.timeline import Timeline

log = logging.getLogger(__name__)
CLOUD_TASK = "planning"  # the task class the drill's agents route to the cloud tier
PLAIN_PROMPTS = ("What is the capital of France?", "Name a primary colour.")
CLOUD_PROMPTS = ("Plan a three-step maintenance checklist.", "Outline a shift handover.")


@dataclass
class DrillAgent:
    """One drill device: its agent process and what the drill noted of its outbox."""

    device_id: str
    port: int
    state_dir: Path
    config: Path
    proc: Process | None = None
    # (epoch, next_seq) of its outbox when the current broker/controller fault began
    fault_mark: tuple[int, int] | None = None
    produced_during_fault: int = 0
    buffered_at_heal: set[int] = field(default_factory=set)


def agent_config(
    options: DrillOptions,
    *,
    device_id: str,
    port: int,
    state_dir: Path,
    broker_port: int,
    cloud_port: int,
    tls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The config of one drill agent: through the drill's proxies to the broker and the
    fake cloud, with short timers so faults show within seconds. With ``tls`` (its
    ``ca_file``, ``cert_file``, ``key_file``) it speaks mqtts:// through the proxy."""
    o = options
    scheme = "mqtts" if tls else "mqtt"
    return {
        "device_id": device_id,
        "device_class": "drill",
        "state_dir": str(state_dir),
        "mqtt": {
            "url": f"{scheme}://127.0.0.1:{broker_port}",
            **(tls or {}),
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
                "base_url": f"http://127.0.0.1:{cloud_port}/v1",
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


def read_outbox(agent: DrillAgent) -> tuple[int, int, frozenset[int], int]:
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


def mark_fault(agents: list[DrillAgent]) -> None:
    """Note each agent's outbox position as a broker/controller fault begins."""
    for agent in agents:
        try:
            epoch, next_seq, _, _ = read_outbox(agent)
        except sqlite3.Error as e:
            log.warning("outbox of %s not read at the fault: %s", agent.device_id, e)
            agent.fault_mark = None
            continue
        agent.fault_mark = (epoch, next_seq)


def mark_heal(agents: list[DrillAgent]) -> None:
    """Before the heal: the records numbered during the fault, and which of them are
    still buffered (so cannot have been stored yet)."""
    for agent in agents:
        mark, agent.fault_mark = agent.fault_mark, None
        if mark is None:
            continue
        try:
            epoch, next_seq, pending, _ = read_outbox(agent)
        except sqlite3.Error as e:
            log.warning("outbox of %s not read at the heal: %s", agent.device_id, e)
            continue
        if epoch != mark[0]:
            continue  # the agent started a new epoch: its old numbers do not compare
        agent.produced_during_fault += max(0, next_seq - mark[1])
        agent.buffered_at_heal.update(s for s in pending if mark[1] <= s < next_seq)


def _request(n: int) -> tuple[RequestKind, str, dict[str, str]]:
    """The ``n``-th request of the traffic: plain, cloud-routed and restricted in turn."""
    kind: RequestKind = ("local", "cloud", "restricted")[n % 3]
    if kind == "local":
        return kind, PLAIN_PROMPTS[n % len(PLAIN_PROMPTS)], {}
    if kind == "cloud":
        return kind, CLOUD_PROMPTS[n % len(CLOUD_PROMPTS)], {"X-Task-Class": CLOUD_TASK}
    # would go to the cloud if it could
    prompt = RESTRICTED_PROMPTS[(n // 3) % len(RESTRICTED_PROMPTS)][1]
    return kind, prompt, {"X-Task-Class": CLOUD_TASK}


def drive_traffic(
    agent: DrillAgent,
    *,
    rate: float,
    timeline: Timeline,
    stop: threading.Event,
    record: Callable[[RequestSample], None],
) -> None:
    """Sequential chat requests to the agent's API at ``rate`` until ``stop``; each one
    ``record``-ed as a sample."""
    interval = 1.0 / rate
    n = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{agent.port}", timeout=30) as client:
        while not stop.is_set():
            began = time.monotonic()
            kind, prompt, headers = _request(n)
            n += 1
            at = timeline.now()
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
            record(
                RequestSample(at, agent.device_id, kind, status, latency, route, degraded, reason)
            )
            stop.wait(max(0.0, interval - (time.monotonic() - began)))


__all__ = [
    "CLOUD_TASK",
    "DrillAgent",
    "agent_config",
    "drive_traffic",
    "mark_fault",
    "mark_heal",
    "read_outbox",
]
