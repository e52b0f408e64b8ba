"""What the agent's HTTP layer costs on top of llama.cpp.

Baseline: the llama.cpp runtime called directly. Measured: the same greedy request through
the agent's OpenAI-compatible API over loopback HTTP (uvicorn + FastAPI + JSON). Reports
medians of several runs and the ratio API / direct, both measured in this run.

    .venv/bin/python benchmarks/bench_agent_overhead.py [--runs 15] [--max-tokens 16]
"""

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from benchmarks._common import free_port, machine, median
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from edge_agent.runtimes.base import ChatMessage, ChatRequest

MODEL = Path("models/SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPT = "Name three colours."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        config = AgentConfig.model_validate(
            {
                "device_id": "bench",
                "state_dir": state,
                "mqtt": None,
                "api": {"host": "127.0.0.1", "port": port},
                "models": [{"name": "m", "path": str(MODEL), "n_ctx": 512, "n_threads": 2}],
            }
        )
        agent = Agent(config)
        agent.load_models()
        runtime = agent.runtimes["m"]
        server = uvicorn.Server(
            uvicorn.Config(
                create_agent_app(agent), host="127.0.0.1", port=port, log_level="warning"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        request = ChatRequest(messages=(ChatMessage("user", PROMPT),), max_tokens=args.max_tokens)
        body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": args.max_tokens}
        direct: list[float] = []
        api: list[float] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for _ in range(2):  # warm both paths
                runtime.complete(request)
                client.post("/v1/chat/completions", json=body)
            for _ in range(args.runs):  # interleaved, so drift hits both equally
                t = time.perf_counter()
                tokens = runtime.complete(request).completion_tokens
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                response = client.post("/v1/chat/completions", json=body)
                api.append(time.perf_counter() - t)
                assert response.json()["usage"]["completion_tokens"] == tokens
        server.should_exit = True
        thread.join(10)
        agent.stop()
    d, a = median(direct), median(api)
    print(f"machine: {machine()}")
    print(f"runs: {args.runs}, completion tokens: {tokens}")
    print(f"direct llama.cpp   median {d * 1000:8.1f} ms")
    print(f"agent HTTP API     median {a * 1000:8.1f} ms")
    print(f"ratio api/direct   {a / d:.3f}  (overhead {(a - d) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
