"""Resident memory of a model-less ``edge-agent run``, against two baselines, same run.

Measured: ``edge-agent run`` with a config without models, connected to a throwaway
Mosquitto (MQTT 5), its HTTP API on a free port, once ``/healthz`` answers and it has
published a few heartbeats (seen by a subscriber here). Baselines: a bare interpreter
(``python -c "import time; time.sleep(…)"``) and an interpreter that only imports the
modules ``edge-agent run`` imports (``edge_agent.cli``, ``edge_agent.agent``,
``edge_agent.api.app``). RSS, and USS/PSS from ``/proc/<pid>/smaps`` via psutil; medians
of a few samples per process. Ratios: agent/bare, and agent/imports-only.

``--breakdown`` adds, in a fresh interpreter, the RSS after each import in the order the
agent does them (and after constructing an ``Agent``), to show who costs what, then what
the features the agent imports on first use add when they are used (a ``/metrics``
scrape, a sensitivity classification), and which deferred libraries were loaded before.

    .venv/bin/python -m benchmarks.bench_agent_memory [--heartbeats 3] [--samples 5]
        [--breakdown]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._common import free_port, machine, median, mosquitto_broker, print_table

GOAL_BYTES = 70_000_000  # issue 15's "70 MB", read strictly (66.8 MiB)
MB = 1024 * 1024  # tables are in MiB
AGENT_IMPORTS = "import edge_agent.cli, edge_agent.agent, edge_agent.api.app"
# Import order of `edge-agent run`: the CLI module, then (inside run) the agent and its API.
BREAKDOWN_STEPS = [
    ("yaml", "import yaml"),
    ("pydantic", "import pydantic"),
    ("psutil", "import psutil"),
    ("typer (+ click)", "import typer"),
    ("uvicorn", "import uvicorn"),
    ("edge_agent.cli (+ config, shared)", "import edge_agent.cli"),
    ("paho.mqtt", "import paho.mqtt.client"),
    ("sqlite3", "import sqlite3"),
    # httpx, jsonschema, RE2 (the sensitivity detector), python-tuf and prometheus_client
    # are no longer imported at start: each loads when its feature is first used.
    ("edge_agent.routing.router", "import edge_agent.routing.router"),
    ("edge_agent.agent", "import edge_agent.agent"),
    ("fastapi", "import fastapi"),
    ("edge_agent.api.app", "import edge_agent.api.app"),
    ("execution_providers() (child process)", "edge_agent.agent.execution_providers()"),
    ("available_runtimes()", "edge_agent.agent.available_runtimes()"),
]
# Loaded by a feature's first use only; the breakdown says which were loaded before it.
DEFERRED = (
    "numpy",
    "onnxruntime",
    "llama_cpp",
    "tuf",
    "httpx",
    "jsonschema",
    "prometheus_client",
    "re2",
    "phonenumbers",
    "stdnum",
)
# What the first use of each deferred feature adds (after Agent() and create_agent_app()).
FIRST_USE_STEPS = [
    ("first /metrics scrape (prometheus_client)", "a.metrics.exposition()"),
    ("first classification (RE2, phonenumbers, stdnum)", "a.router.detector.classify('x')"),
]


@dataclass(frozen=True, slots=True)
class Memory:
    rss: float
    uss: float | None
    pss: float | None
    threads: int


def sample(pid: int, samples: int) -> Memory:
    proc = psutil.Process(pid)
    rss: list[float] = []
    uss: list[float] = []
    pss: list[float] = []
    threads = 0
    for i in range(samples):
        if i:
            time.sleep(0.5)
        try:
            full = proc.memory_full_info()
            uss.append(full.uss / MB)
            pss.append(getattr(full, "pss", float("nan")) / MB)
            rss.append(full.rss / MB)
        except psutil.AccessDenied:
            rss.append(proc.memory_info().rss / MB)
        threads = proc.num_threads()
    return Memory(
        rss=median(rss),
        uss=median(uss) if uss else None,
        pss=median(pss) if pss else None,
        threads=threads,
    )


def measure_script(code: str, samples: int) -> Memory:
    """Start ``python -c code`` (which prints a line when settled), sample it, kill it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "baseline process did not start"
        time.sleep(0.5)
        return sample(proc.pid, samples)
    finally:
        proc.kill()
        proc.wait(10)


def measure_agent(port: int, heartbeats: int, samples: int, state: Path) -> Memory:
    api_port = free_port()
    config = state / "agent.yaml"
    config.write_text(
        "device_id: mem-agent\n"
        f"state_dir: {state / 'state'}\n"
        "heartbeat_interval_s: 1\n"
        "telemetry_interval_s: 10\n"
        "api:\n"
        "  host: 127.0.0.1\n"
        f"  port: {api_port}\n"
        "mqtt:\n"
        f"  url: mqtt://127.0.0.1:{port}\n"
        '  protocol: "5"\n'
    )
    seen = threading.Semaphore(0)

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe("ef/v1/mem-agent/heartbeat", qos=1)

    def on_message(*_: Any) -> None:
        seen.release()

    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_connect = on_connect
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    log = (state / "agent.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"agent exited {proc.returncode}; see {log.name}"
            assert time.monotonic() < deadline, "agent API never answered"
            try:
                httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        for n in range(heartbeats):
            assert seen.acquire(timeout=30), f"only {n} heartbeats arrived"
        return sample(proc.pid, samples)
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        sub.disconnect()
        sub.loop_stop()


def breakdown() -> tuple[list[tuple[str, float]], str]:
    """RSS (MiB) after each import step, in one fresh interpreter, then after the first use
    of each deferred feature, and which ``DEFERRED`` modules were loaded before that."""
    lines = [
        "import resource, sys",
        "def rss():",
        "    with open('/proc/self/statm') as f:",
        "        return int(f.read().split()[1]) * resource.getpagesize() / 1048576",
        "print('interpreter', rss(), flush=True)",
    ]
    for label, statement in BREAKDOWN_STEPS:
        # A module that is not there (any more) prints its label with an unchanged RSS.
        lines += ["try:", f"    {statement}", "except (ImportError, AttributeError):", "    pass"]
        lines.append(f"print({label!r}, rss(), flush=True)")
    lines += [
        "import tempfile, pathlib",
        "from edge_agent.config import AgentConfig",
        "d = tempfile.mkdtemp()",
        "a = edge_agent.agent.Agent(AgentConfig(device_id='x', state_dir=pathlib.Path(d)))",
        "print('Agent() constructed', rss(), flush=True)",
        "app = edge_agent.api.app.create_agent_app(a)",
        "print('create_agent_app()', rss(), flush=True)",
        f"heavy = [m for m in {DEFERRED!r} if m in sys.modules]",
        "print('heavy modules loaded', ','.join(heavy) or 'none', flush=True)",
    ]
    for label, statement in FIRST_USE_STEPS:
        lines += [statement, f"print({label!r}, rss(), flush=True)"]
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, check=True
    ).stdout
    steps = []
    heavy = "none"
    for line in out.splitlines():
        label, value = line.rsplit(" ", 1)
        if label == "heavy modules loaded":
            heavy = value
        else:
            steps.append((label, float(value)))
    return steps, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heartbeats", type=int, default=3, help="wait for this many first")
    parser.add_argument("--samples", type=int, default=5, help="memory samples per process")
    parser.add_argument("--breakdown", action="store_true", help="RSS after each import")
    args = parser.parse_args()
    settle = "print('ready', flush=True); import time; time.sleep(120)"
    bare = measure_script(settle, args.samples)
    imports = measure_script(f"{AGENT_IMPORTS}; {settle}", args.samples)
    with mosquitto_broker() as port, tempfile.TemporaryDirectory() as tmp:
        agent = measure_agent(port, args.heartbeats, args.samples, Path(tmp))

    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    print(f"machine: {machine()}")
    print(f"edge-agent run, no models, MQTT 5 connected, after {args.heartbeats} heartbeats")
    print_table(
        ["process", "RSS MiB", "USS MiB", "PSS MiB", "threads"],
        [
            ["bare python (baseline)", mb(bare.rss), mb(bare.uss), mb(bare.pss), str(bare.threads)],
            [
                "imports only (baseline)",
                mb(imports.rss),
                mb(imports.uss),
                mb(imports.pss),
                str(imports.threads),
            ],
            ["edge-agent run", mb(agent.rss), mb(agent.uss), mb(agent.pss), str(agent.threads)],
        ],
    )
    met = agent.rss * MB <= GOAL_BYTES
    print(
        f"agent RSS {agent.rss * MB / 1e6:.1f} MB; goal <= {GOAL_BYTES / 1e6:.0f} MB "
        f"({GOAL_BYTES / MB:.1f} MiB): {'met' if met else 'missed'}; "
        f"ratio agent/bare {agent.rss / bare.rss:.2f}, agent/imports {agent.rss / imports.rss:.2f}"
    )
    result: dict[str, Any] = {
        "benchmark": "agent_memory",
        "machine": machine(),
        "bare_rss_mib": round(bare.rss, 1),
        "imports_rss_mib": round(imports.rss, 1),
        "agent_rss_mib": round(agent.rss, 1),
        "agent_rss_mb": round(agent.rss * MB / 1e6, 1),
        "agent_uss_mib": None if agent.uss is None else round(agent.uss, 1),
        "agent_pss_mib": None if agent.pss is None else round(agent.pss, 1),
        "agent_threads": agent.threads,
        "ratio_agent_bare": round(agent.rss / bare.rss, 2),
        "ratio_agent_imports": round(agent.rss / imports.rss, 2),
        "goal_mb": GOAL_BYTES / 1e6,
        "goal_met": met,
    }
    if args.breakdown:
        steps, heavy = breakdown()
        print("\nRSS after each step, one fresh interpreter, in the agent's order:")
        rows = []
        previous = 0.0
        for label, value in steps:
            rows.append([label, f"{value:.1f}", f"{value - previous:+.1f}"])
            previous = value
        print_table(["step", "RSS MiB", "delta"], rows)
        print(f"deferred modules loaded before their first use: {heavy}")
        result["breakdown_mib"] = {label: round(value, 1) for label, value in steps}
        result["breakdown_heavy_modules"] = heavy
    print(json.dumps(result))


if __name__ == "__main__":
    main()
