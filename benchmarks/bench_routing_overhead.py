"""What the device router costs before (and around) a tier call, against LiteLLM's Router.

Part 1, the decision: ``Router.decide(RoutedRequest)`` — everything the router does before
it calls a tier: the sensitivity scan of every message, the header hints, the tier views
(breakers, latency windows) and the policy — on 0.5 KB, 4 KB and 32 KB prompts of realistic
public text (no secrets, so the whole scan runs and finds nothing), p50/p99 over many
iterations after a warm-up. The router is the one the agent builds
(``chat_service.build_router``) for a device with a local model and private and cloud
tiers. In the same loop, interleaved: the scan alone
(``SensitivityDetector.classify_messages``) and LiteLLM's pre-call routing step
(``litellm.Router.get_available_deployment``, two deployments in one model group).

Part 2, the overhead on top of the backend call: one loopback OpenAI-compatible mock
server (``controller/drills/openai_server.py``, in its own process, TCP_NODELAY) answers
three clients, interleaved and in rotating order: a bare ``httpx`` POST of the same JSON
with keep-alive (the baseline), our ``Router.complete()`` with the private and cloud
tiers pointing at the mock, and ``litellm.Router.completion()`` with two deployments
pointing at it. Each router's overhead is the median over rounds of (its call - the bare
POST of the same round); the ratio is LiteLLM's overhead / ours.

    .venv/bin/python -m benchmarks.bench_routing_overhead [--iterations 2000]
        [--calls 400] [--sizes 512,4096,32768] [--json-only]

LiteLLM is an optional dependency (``pip install -e '.[bench]'``); without it the LiteLLM
columns are skipped. It is kept offline: the bundled model cost map
(``LITELLM_LOCAL_MODEL_COST_MAP``), no telemetry, no callbacks.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import machine, median, print_table
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.routing.policy import RouteHints
from edge_agent.routing.router import RoutedRequest, Router
from edge_agent.routing.sensitivity import Level
from edge_agent.runtimes.base import ChatMessage, ChatRequest, Completion, CompletionChunk

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SIZES = (512, 4096, 32768)
MAX_TOKENS = 16

# Realistic public prompt text: instructions, code, versions, dates, quantities, public
# URLs and generic health questions, so that many rules fire candidates that the validators
# then reject (the expensive case for a scan that finds nothing).
SENTENCES = (
    "Plan the maintenance steps for replacing a conveyor belt on line 3 before the next shift.",
    "The torque for the M8 bolts on the gearbox cover is 25 Nm; tighten them in a cross pattern.",
    "Summarise the attached inspection notes in five bullet points for the shift supervisor.",
    "Version 2.4.1 of the firmware fixes the watchdog reset seen on 2026-10-14 at 06:30.",
    "Explain the difference between a PID controller and a simple on/off thermostat.",
    "What does the error code E-1042 on the packaging robot usually mean?",
    "Write a Python function that parses a CSV file and returns the average of column 4.",
    "def moving_average(values: list[float], window: int = 5) -> list[float]:",
    "    return [sum(values[i : i + window]) / window for i in range(len(values) - window)]",
    "See https://docs.python.org/3/library/statistics.html for the median and quantiles.",
    "The warehouse received 1,250 pallets in October and shipped 1,180 of them by Friday.",
    "Translate the safety notice into German and French, keeping the numbered list intact.",
    "How does metformin lower blood sugar, in terms a high school student would follow?",
    "List the common symptoms of dehydration and when a worker should take a break.",
    "Write a short blog post about cancer screening guidelines for people over 50.",
    "The pump draws 4.2 kW at 1450 rpm; estimate the monthly energy use at 16 hours a day.",
    "Compare LoRa and NB-IoT for battery-powered sensors that report every 15 minutes.",
    "Draft an email to the team announcing the new visitor badge process at the main gate.",
    "The oven temperature must stay between 180 and 185 degrees for the whole 40 minute cycle.",
    "Give me a checklist for the weekly forklift inspection: tyres, forks, chains, horn, lights.",
    "What are the opening hours of the passport office, and which documents should I bring?",
    "Convert 3/8 inch to millimetres and round to one decimal place.",
    "Our SLA promises 99.9% availability per quarter; how many minutes of downtime is that?",
    "Order 12 boxes of nitrile gloves, size L, and 4 rolls of 50 mm packing tape.",
    "The build failed on step 7 of 9 with exit code 137, which usually means out of memory.",
    "Rewrite this paragraph so that it is shorter and uses plain English, without jargon.",
    "Sensor 17 reported 23.4 C, 48% humidity and 1013 hPa at 14:05 UTC.",
    "Explain how a circuit breaker pattern protects a client from a failing remote service.",
    "Generate three test cases for a function that validates ISO 8601 dates like 2026-11-25.",
    "The roadmap for Q1 includes the new dashboard, offline maps and a faster sync protocol.",
    "Is it safe to run the chiller at 70% load for two weeks while the spare part is shipped?",
    "Write a haiku about the first snow falling on an empty factory car park.",
    "SELECT line, AVG(cycle_time) FROM runs WHERE day >= '2026-11-01' GROUP BY line;",
    "Give a step by step explanation of how TLS 1.3 negotiates keys with a server.",
    "The quarterly report shows revenue up 4.5% and scrap rate down from 2.1% to 1.7%.",
    "Which first aid steps apply if someone faints in the canteen during lunch?",
    "Describe the tradeoffs of int8 quantization for small language models on ARM CPUs.",
    "Reply in JSON with the keys task, priority and due_date for each item in the list.",
)


def build_prompt(size: int, rng: random.Random) -> str:
    """Exactly ``size`` bytes (ASCII) of sentences in random order (the last one cut)."""
    parts: list[str] = []
    length = 0
    while length < size + 200:
        sentence = rng.choice(SENTENCES)
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)[:size]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class _IdleLocal:
    """A loaded local model that is never called (decide() only looks at its health)."""

    runtime_name = "llama.cpp"
    model_name = "local"

    def complete(self, request: ChatRequest) -> Completion:
        raise RuntimeError("not used by this benchmark")

    def stream(self, request: ChatRequest) -> Iterator[CompletionChunk]:
        raise RuntimeError("not used by this benchmark")

    def close(self) -> None:
        pass


@contextmanager
def mock_backend() -> Iterator[str]:
    """``controller/drills/openai_server.py`` in its own process; yields its base URL (/v1).

    TCP_NODELAY on its sockets: the handler writes headers and body separately, and with
    Nagle's algorithm and delayed ACKs every keep-alive response would stall for 40 ms.
    """
    code = (
        "import sys\n"
        "from controller.drills.openai_server import start_provider\n"
        "p = start_provider('mock')\n"
        "p.server.RequestHandlerClass.disable_nagle_algorithm = True\n"
        "print(p.base_url, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise RuntimeError("mock server did not start")
        yield base_url
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def make_agent(state: Path, base_url: str, *, local: bool) -> tuple[Agent, Router]:
    """An agent as the product wires it; private (cheaper) and cloud tiers on ``base_url``."""
    config = AgentConfig.model_validate(
        {
            "device_id": "bench",
            "state_dir": str(state),
            "mqtt": None,
            "models": [{"name": "local", "path": str(MODEL), "n_ctx": 2048}] if local else [],
            "tiers": {
                "private": {"base_url": base_url, "model": "org-llm", "cost_per_1k_input": 0.1},
                "cloud": {"base_url": base_url, "model": "frontier", "cost_per_1k_input": 1.0},
            },
        }
    )
    agent = Agent(config)
    if local:
        agent.runtimes["local"] = _IdleLocal()
    return agent, agent.router


def load_litellm() -> Any | None:
    """LiteLLM, offline and quiet; None when it is not installed."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    try:
        litellm: Any = importlib.import_module("litellm")
    except ImportError:
        return None
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    return litellm


def litellm_router(litellm: Any, base_url: str) -> Any:
    """Two deployments in one model group, both on the mock: LiteLLM's default strategy."""
    deployments = [
        {
            "model_name": "edge",
            "litellm_params": {"model": f"openai/{model}", "api_base": base_url, "api_key": "sk"},
        }
        for model in ("org-llm", "frontier")
    ]
    return litellm.Router(model_list=deployments, num_retries=0)


def _time_us(fn: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1000


def measure_decide(
    router: Router, llm_router: Any | None, size: int, iterations: int, seed: int
) -> dict[str, list[float]]:
    """decide(), the scan alone and LiteLLM's get_available_deployment, interleaved (µs)."""
    rng = random.Random(seed)
    prompts = [build_prompt(size, rng) for _ in range(20)]
    routed = [
        RoutedRequest(ChatRequest(messages=(ChatMessage("user", p),), max_tokens=MAX_TOKENS))
        for p in prompts
    ]
    dicts = [[{"role": "user", "content": p}] for p in prompts]
    prefill_latency(router, rng)
    for r in routed:  # the prompts must be public, or the scan would not run to the end
        decision, categories = router.decide(r)
        assert decision.level is Level.PUBLIC and not categories, categories
        assert decision.plan[0] == "local", decision
    detector = router.detector
    out: dict[str, list[float]] = {"decide": [], "scan": [], "litellm": []}

    def run_decide(i: int) -> float:
        r = routed[i % len(routed)]
        t0 = time.perf_counter_ns()
        router.decide(r)
        return (time.perf_counter_ns() - t0) / 1000

    def run_scan(i: int) -> float:
        texts = [m.content for m in routed[i % len(routed)].request.messages]
        t0 = time.perf_counter_ns()
        detector.classify_messages(texts)
        return (time.perf_counter_ns() - t0) / 1000

    def run_litellm(i: int) -> float:
        assert llm_router is not None
        msgs = dicts[i % len(dicts)]
        t0 = time.perf_counter_ns()
        llm_router.get_available_deployment(model="edge", messages=msgs)
        return (time.perf_counter_ns() - t0) / 1000

    methods: list[tuple[str, Callable[[int], float]]] = [
        ("decide", run_decide),
        ("scan", run_scan),
    ]
    if llm_router is not None:
        methods.append(("litellm", run_litellm))
    warm = max(50, iterations // 10)
    gc.collect()
    for i in range(warm + iterations):
        shift = i % len(methods)  # rotate: none always runs right after LiteLLM's work
        for name, fn in methods[shift:] + methods[:shift]:
            t = fn(i)
            if i >= warm:
                out[name].append(t)
    return out


def prefill_latency(router: Router, rng: random.Random) -> None:
    """Full latency windows, as on a device that has served a while (p95 sorts them)."""
    typical_ms = {"local": 450.0, "private": 900.0, "cloud": 1600.0}
    for tier, window in router.latency.items():
        for _ in range(router.config.latency_window):
            window.add(typical_ms[tier] * rng.uniform(0.7, 1.6))


def measure_calls(
    router: Router,
    llm_router: Any | None,
    base_url: str,
    size: int,
    calls: int,
    pause_s: float,
    seed: int,
) -> dict[str, list[float]]:
    """Bare POST, Router.complete() and LiteLLM completion() on the mock, interleaved (µs)."""
    rng = random.Random(seed)
    prompt = build_prompt(size, rng)
    request = ChatRequest(messages=(ChatMessage("user", prompt),), max_tokens=MAX_TOKENS)
    routed = RoutedRequest(request, RouteHints())
    messages = [{"role": "user", "content": prompt}]
    payload = {
        "model": "org-llm",
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "top_p": 1.0,
        "stream": False,
    }
    url = base_url + "/chat/completions"
    prefill_latency(router, rng)
    out: dict[str, list[float]] = {"bare": [], "ours": [], "litellm": []}
    with httpx.Client(timeout=30) as client:

        def bare() -> None:
            body = client.post(url, json=payload).json()
            assert body["choices"][0]["message"]["content"]

        def ours() -> None:
            result = router.complete(routed)
            assert result.outcome.tier == "private", result.outcome

        def theirs() -> None:
            assert llm_router is not None
            response = llm_router.completion(
                model="edge", messages=messages, max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0
            )
            assert response.choices[0].message.content

        methods: list[tuple[str, Callable[[], None]]] = [("bare", bare), ("ours", ours)]
        if llm_router is not None:
            methods.append(("litellm", theirs))
        warm = max(10, calls // 10)
        gc.collect()
        for i in range(warm + calls):
            shift = i % len(methods)  # rotate the order so no method always goes first
            for name, fn in methods[shift:] + methods[:shift]:
                t = _time_us(fn)
                if i >= warm:
                    out[name].append(t)
                time.sleep(pause_s)  # let background threads (LiteLLM's logging) settle
    return out


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000, help="decide() per size")
    parser.add_argument("--calls", type=int, default=400, help="mock-backend calls per size")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--pause-ms", type=float, default=1.0, help="between measured calls")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM columns")
    parser.add_argument("--json-only", action="store_true")
    return parser.parse_args()


def _decide_row(
    router: Router, llm_router: Any | None, size: int, iterations: int, seed: int
) -> tuple[dict[str, float], list[str]]:
    """Part 1 for one prompt size: the JSON entry and the table row."""
    t = measure_decide(router, llm_router, size, iterations, seed=seed)
    row = {
        "decide_p50_us": median(t["decide"]),
        "decide_p99_us": pct(t["decide"], 99),
        "scan_p50_us": median(t["scan"]),
        "scan_p99_us": pct(t["scan"], 99),
    }
    if llm_router is not None:
        row["litellm_gad_p50_us"] = median(t["litellm"])
        row["litellm_gad_p99_us"] = pct(t["litellm"], 99)
        row["ratio_p50"] = row["litellm_gad_p50_us"] / row["decide_p50_us"]
    table_row = [
        f"{size / 1024:g} KB",
        f"{row['scan_p50_us']:.1f} / {row['scan_p99_us']:.1f}",
        f"{row['decide_p50_us']:.1f} / {row['decide_p99_us']:.1f}",
        f"{row['litellm_gad_p50_us']:.1f} / {row['litellm_gad_p99_us']:.1f}"
        if llm_router is not None
        else "-",
        f"{row['ratio_p50']:.1f}x" if llm_router is not None else "-",
    ]
    return {k: round(v, 2) for k, v in row.items()}, table_row


def _calls_row(
    router: Router,
    llm_router: Any | None,
    base_url: str,
    size: int,
    calls: int,
    pause_s: float,
    seed: int,
) -> tuple[dict[str, float], list[str]]:
    """Part 2 for one prompt size: the JSON entry and the table row."""
    c = measure_calls(router, llm_router, base_url, size, calls, pause_s, seed=seed)
    bare, ours = median(c["bare"]), median(c["ours"])
    # paired: each call minus the bare POST of the same round (drift cancels)
    ours_over = median([o - b for o, b in zip(c["ours"], c["bare"], strict=True)])
    row = {"bare_p50_us": bare, "ours_p50_us": ours, "ours_overhead_us": ours_over}
    if llm_router is not None:
        theirs = median(c["litellm"])
        theirs_over = median([t - b for t, b in zip(c["litellm"], c["bare"], strict=True)])
        row["litellm_p50_us"] = theirs
        row["litellm_overhead_us"] = theirs_over
        row["ratio_overhead"] = theirs_over / max(ours_over, 1.0)
    table_row = [
        f"{size / 1024:g} KB",
        f"{bare:.0f}",
        f"{ours:.0f} (+{ours_over:.0f})",
        f"{row['litellm_p50_us']:.0f} (+{row['litellm_overhead_us']:.0f})"
        if llm_router is not None
        else "-",
        f"{row['ratio_overhead']:.1f}x" if llm_router is not None else "-",
    ]
    return {k: round(v, 2) for k, v in row.items()}, table_row


def _print_tables(
    args: argparse.Namespace,
    version: str | None,
    decide_rows: list[list[str]],
    call_rows: list[list[str]],
) -> None:
    print(f"machine: {machine()}")
    print(f"litellm: {version or 'not installed'}")
    print(f"\nrouting decision, µs p50 / p99 over {args.iterations} iterations per size")
    print_table(
        [
            "prompt",
            "scan only",
            "Router.decide()",
            "LiteLLM get_available_deployment",
            "ratio p50",
        ],
        decide_rows,
    )
    print(
        f"\nmock backend call, µs median over {args.calls} rounds per size "
        "(+overhead: median of the paired difference to the bare POST)"
    )
    print_table(
        [
            "prompt",
            "bare httpx POST",
            "Router.complete() (+overhead)",
            "LiteLLM completion() (+overhead)",
            "LiteLLM/ours",
        ],
        call_rows,
    )


def main() -> None:
    args = _parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    litellm = None if args.no_litellm else load_litellm()
    version = None
    if litellm is not None:
        from importlib.metadata import version as dist_version

        version = dist_version("litellm")

    decide_rows: list[list[str]] = []
    call_rows: list[list[str]] = []
    result: dict[str, Any] = {
        "benchmark": "routing_overhead",
        "machine": machine(),
        "litellm": version,
        "decide": {},
        "calls": {},
    }
    with tempfile.TemporaryDirectory() as tmp, mock_backend() as base_url:
        device, router = make_agent(Path(tmp) / "device", base_url, local=True)
        remote_only, remote_router = make_agent(Path(tmp) / "remote", base_url, local=False)
        llm_router = litellm_router(litellm, base_url) if litellm is not None else None
        try:
            for n, size in enumerate(sizes):
                entry, table_row = _decide_row(router, llm_router, size, args.iterations, n)
                result["decide"][str(size)] = entry
                decide_rows.append(table_row)
            for n, size in enumerate(sizes):
                entry, table_row = _calls_row(
                    remote_router,
                    llm_router,
                    base_url,
                    size,
                    args.calls,
                    args.pause_ms / 1000,
                    100 + n,
                )
                result["calls"][str(size)] = entry
                call_rows.append(table_row)
        finally:
            for agent in (device, remote_only):
                agent.runtimes.clear()
                agent.stop()
    result["iterations"] = args.iterations
    result["calls_per_size"] = args.calls

    if not args.json_only:
        _print_tables(args, version, decide_rows, call_rows)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
