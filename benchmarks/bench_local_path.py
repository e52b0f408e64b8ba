"""The agent's local path (HTTP → router → llama.cpp) against llama-cpp-python called directly.

Baseline: ``llama_cpp.Llama.create_chat_completion`` in this process, with the same model,
``n_ctx``, ``n_threads`` and greedy settings (temperature 0, top_p 1) the agent uses.
Measured: the same request to a real ``edge-agent run`` process (its own uvicorn + FastAPI
app, router with sensitivity scan, outbox telemetry) over loopback HTTP, so the client and
the server never share a GIL. Both models are loaded once; nothing else runs while one is
measured.

Per run, interleaved and in rotating order, each request with a prompt of its own (the
same one on both paths), so every request pays its prompt processing and llama-cpp-python's
prefix reuse never favours one path:

* end to end: a non-streaming request, time until the whole answer is in;
* decode speed: a streaming request (SSE through the agent), tokens/s from the first to the
  last content chunk, ``(chunks - 1) / (t_last - t_first)`` — the same definition on both
  paths; also the time to the first token.

Both paths must produce the same number of tokens in every run (greedy and identical
settings), or the run fails. Medians over the runs, ratios agent / direct.

Extra, ONNX Runtime GenAI: no pretrained ORT GenAI export comparable to the GGUF model is
available offline, so there is no llama.cpp vs ORT GenAI comparison here. Instead, on the
tiny random-weight test model (``tests/tiny_models.py``), ``OrtGenaiRuntime.complete`` is
compared with a bare ``onnxruntime_genai`` loop on the same folder doing the same work
(chat template, encode, greedy generator loop, streaming detokenizer): the runtime's own
per-token overhead, since the tiny model computes almost nothing.

    .venv/bin/python -m benchmarks.bench_local_path [--runs 15] [--max-tokens 64]
        [--n-threads 2] [--n-ctx 1024] [--ort-runs 200] [--json-only]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import free_port, machine, median, print_table
from edge_agent.config import AgentConfig

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass(frozen=True)
class Stream:
    """One streamed answer: content chunks and when the first and last arrived (s)."""

    chunks: int
    first_s: float  # from the request to the first content chunk
    total_s: float  # from the request to the last content chunk

    @property
    def decode_tps(self) -> float:
        span = self.total_s - self.first_s
        return (self.chunks - 1) / span if self.chunks > 1 and span > 0 else 0.0


def agent_config(state: Path, port: int, n_ctx: int, n_threads: int) -> dict[str, Any]:
    return {
        "device_id": "bench-local",
        "state_dir": str(state),
        "mqtt": None,
        "api": {"host": "127.0.0.1", "port": port},
        "models": [{"name": "m", "path": str(MODEL), "n_ctx": n_ctx, "n_threads": n_threads}],
    }


@contextmanager
def agent_process(config: dict[str, Any], folder: Path) -> Iterator[str]:
    """``edge-agent run`` on the config; yields its base URL once /healthz says ok."""
    path = folder / "agent.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    script = Path(sys.executable).with_name("edge-agent")
    argv = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from edge_agent.cli import main; main()"]
    )
    proc = subprocess.Popen(
        [*argv, "run", "--config", str(path), "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{config['api']['port']}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"edge-agent exited with {proc.returncode}: {err[-2000:]}")
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("edge-agent did not become healthy within 180 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def direct_llama(n_ctx: int, n_threads: int) -> Any:
    """llama-cpp-python as the agent's runtime constructs it (same mlock setting)."""
    from llama_cpp import Llama

    model = AgentConfig.model_validate(
        {"device_id": "x", "models": [{"name": "m", "path": str(MODEL)}]}
    ).models[0]
    return Llama(
        model_path=str(MODEL),
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_gpu_layers=0,
        use_mlock=bool(getattr(model, "mlock", False)),
        verbose=False,
    )


def _settings(max_tokens: int) -> dict[str, Any]:
    # What LlamaCppRuntime passes for an API request with default sampling fields.
    return {"max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "stop": None}


def direct_complete(llama: Any, prompt: str, max_tokens: int) -> tuple[float, int]:
    messages = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    result = llama.create_chat_completion(messages=messages, **_settings(max_tokens))
    elapsed = time.perf_counter() - start
    return elapsed, int(result["usage"]["completion_tokens"])


def direct_stream(llama: Any, prompt: str, max_tokens: int) -> Stream:
    messages = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    first = last = 0.0
    chunks = 0
    for part in llama.create_chat_completion(
        messages=messages, stream=True, **_settings(max_tokens)
    ):
        if part["choices"][0].get("delta", {}).get("content"):
            last = time.perf_counter() - start
            if chunks == 0:
                first = last
            chunks += 1
    return Stream(chunks, first, last)


def api_complete(client: httpx.Client, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    start = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    assert response.headers["x-edge-route"] == "local", response.headers
    return elapsed, int(response.json()["usage"]["completion_tokens"])


def api_stream(client: httpx.Client, prompt: str, max_tokens: int) -> Stream:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    start = time.perf_counter()
    first = last = 0.0
    chunks = 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                last = time.perf_counter() - start
                if chunks == 0:
                    first = last
                chunks += 1
    return Stream(chunks, first, last)


def ort_genai_overhead(runs: int, max_tokens: int) -> dict[str, float] | None:
    """OrtGenaiRuntime vs a bare onnxruntime_genai loop on the tiny test model (per token)."""
    try:
        import numpy as np
        import onnxruntime_genai as og

        from edge_agent.runtimes.ort_genai import OrtGenaiRuntime

        tiny_models: Any = importlib.import_module("tests.tiny_models")
    except ImportError:
        return None
    from edge_agent.runtimes.base import ChatMessage, ChatRequest

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_models.build_tiny_genai_model(Path(tmp) / "tiny")
        runtime = OrtGenaiRuntime("tiny", folder)
        model = og.Model(og.Config(str(folder)))
        tokenizer = og.Tokenizer(model)
        eos = {int(t) for t in tokenizer.eos_token_ids}
        context = runtime.context_length

        def bare(text: str) -> tuple[int, str]:
            chat = json.dumps([{"role": "user", "content": text}])
            ids = tokenizer.encode(tokenizer.apply_chat_template(chat, add_generation_prompt=True))
            params = og.GeneratorParams(model)
            params.set_search_options(
                max_length=min(len(ids) + max_tokens, context),
                min_length=0,
                num_beams=1,
                repetition_penalty=1.0,
                do_sample=False,
                top_k=1,
            )
            generator = og.Generator(model, params)
            stream = tokenizer.create_stream()
            generator.append_tokens(np.asarray(ids, dtype=np.int32))
            pieces: list[str] = []
            while not generator.is_done():
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if token in eos:
                    break
                pieces.append(stream.decode(token))
            return len(pieces), "".join(pieces)

        def wrapped(text: str) -> tuple[int, str]:
            request = ChatRequest(messages=(ChatMessage("user", text),), max_tokens=max_tokens)
            completion = runtime.complete(request)
            return completion.completion_tokens, completion.text

        times: dict[str, list[float]] = {"bare": [], "runtime": []}
        counts: list[int] = []
        words = [
            "hello",
            "world",
            "the",
            "quick",
            "brown",
            "fox",
            "jumps",
            "over",
            "the",
            "lazy",
            "dog",
        ]
        for n in range(runs + 10):
            text = " ".join(words[n % len(words) :] + words[: n % len(words)])
            out: dict[str, tuple[int, str]] = {}
            order = [("bare", bare), ("runtime", wrapped)]
            for name, fn in order if n % 2 else order[::-1]:
                start = time.perf_counter()
                out[name] = fn(text)
                if n >= 10:
                    times[name].append(time.perf_counter() - start)
            if out["bare"] != out["runtime"]:
                raise RuntimeError(f"ort-genai run {n}: runtime and bare loop disagree")
            if n >= 10:
                counts.append(out["bare"][0])
        runtime.close()
    tokens = median([float(c) for c in counts])
    bare_s, runtime_s = median(times["bare"]), median(times["runtime"])
    return {
        "tokens_median": tokens,
        "bare_us_per_token": bare_s / tokens * 1e6,
        "runtime_us_per_token": runtime_s / tokens * 1e6,
        "ratio": runtime_s / bare_s,
    }


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--ort-runs", type=int, default=200, help="0 skips the ORT GenAI part")
    parser.add_argument("--json-only", action="store_true")
    return parser.parse_args()


def _run_once(
    n: int, llama: Any, client: httpx.Client, max_tokens: int
) -> tuple[tuple[float, int], tuple[float, int], Stream, Stream]:
    """One run: both paths, end to end and streaming, in rotating order; checks that both
    made the same number of tokens and chunks."""
    one, two = f"Request {n}a. {PROMPT}", f"Request {n}b. {PROMPT}"
    steps: list[tuple[str, str, Callable[[], Any]]] = [
        ("e2e", "direct", partial(direct_complete, llama, one, max_tokens)),
        ("e2e", "agent", partial(api_complete, client, one, max_tokens)),
        ("stream", "direct", partial(direct_stream, llama, two, max_tokens)),
        ("stream", "agent", partial(api_stream, client, two, max_tokens)),
    ]
    shift = n % len(steps)
    results: dict[tuple[str, str], Any] = {}
    for kind, path, fn in steps[shift:] + steps[:shift]:
        results[(kind, path)] = fn()
    (d_s, d_tok), (a_s, a_tok) = results[("e2e", "direct")], results[("e2e", "agent")]
    d_st, a_st = results[("stream", "direct")], results[("stream", "agent")]
    if d_tok != a_tok:
        raise RuntimeError(f"run {n}: direct made {d_tok} tokens, agent {a_tok}")
    if d_st.chunks != a_st.chunks:
        raise RuntimeError(f"run {n}: direct streamed {d_st.chunks} chunks, agent {a_st.chunks}")
    return (d_s, d_tok), (a_s, a_tok), d_st, a_st


def _measure(
    args: argparse.Namespace,
) -> tuple[dict[str, list[float]], dict[str, list[Stream]], list[int]]:
    """The interleaved runs after the warm-ups: end-to-end times, streams, token counts."""
    e2e: dict[str, list[float]] = {"direct": [], "agent": []}
    streams: dict[str, list[Stream]] = {"direct": [], "agent": []}
    tokens: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = agent_config(Path(tmp) / "state", free_port(), args.n_ctx, args.n_threads)
        llama = direct_llama(args.n_ctx, args.n_threads)
        with (
            agent_process(config, Path(tmp)) as base,
            httpx.Client(base_url=base, timeout=300) as client,
        ):
            for n in range(args.warmup + args.runs):
                (d_s, d_tok), (a_s, _a_tok), d_st, a_st = _run_once(
                    n, llama, client, args.max_tokens
                )
                if n < args.warmup:
                    continue
                e2e["direct"].append(d_s)
                e2e["agent"].append(a_s)
                streams["direct"].append(d_st)
                streams["agent"].append(a_st)
                tokens.append(d_tok)
        llama.close()
    return e2e, streams, tokens


def _print_report(
    args: argparse.Namespace,
    result: dict[str, Any],
    ort: dict[str, float] | None,
    medians: dict[str, tuple[float, float]],
) -> None:
    """The human-readable tables; ``medians``: (direct, agent) per measure."""
    d_e2e, a_e2e = medians["e2e"]
    d_tps, a_tps = medians["tps"]
    d_ttft, a_ttft = medians["ttft"]
    print(f"machine: {machine()}")
    print(
        f"runs: {args.runs}, max_tokens: {args.max_tokens}, completion tokens (median): "
        f"{result['completion_tokens_median']:g}, n_threads {args.n_threads}, "
        f"n_ctx {args.n_ctx}"
    )
    print_table(
        ["median", "llama-cpp-python direct", "agent over HTTP", "ratio agent/direct"],
        [
            [
                "end to end (ms)",
                f"{d_e2e * 1000:.1f}",
                f"{a_e2e * 1000:.1f}",
                f"{a_e2e / d_e2e:.3f}",
            ],
            ["decode (tokens/s)", f"{d_tps:.1f}", f"{a_tps:.1f}", f"{a_tps / d_tps:.3f}"],
            [
                "first token (ms)",
                f"{d_ttft * 1000:.1f}",
                f"{a_ttft * 1000:.1f}",
                f"{a_ttft / d_ttft:.3f}",
            ],
        ],
    )
    if ort is not None:
        print(
            f"\nORT GenAI, tiny random model, {args.ort_runs} runs, "
            f"{ort['tokens_median']:g} tokens (median)"
        )
        print_table(
            ["median per token", "bare onnxruntime_genai loop", "OrtGenaiRuntime", "ratio"],
            [
                [
                    "µs/token",
                    f"{ort['bare_us_per_token']:.1f}",
                    f"{ort['runtime_us_per_token']:.1f}",
                    f"{ort['ratio']:.3f}",
                ]
            ],
        )


def main() -> None:
    args = _parse_args()
    e2e, streams, tokens = _measure(args)
    d_e2e, a_e2e = median(e2e["direct"]), median(e2e["agent"])
    d_tps = median([s.decode_tps for s in streams["direct"]])
    a_tps = median([s.decode_tps for s in streams["agent"]])
    d_ttft = median([s.first_s for s in streams["direct"]])
    a_ttft = median([s.first_s for s in streams["agent"]])
    result = {
        "benchmark": "local_path",
        "machine": machine(),
        "runs": args.runs,
        "max_tokens": args.max_tokens,
        "n_threads": args.n_threads,
        "n_ctx": args.n_ctx,
        "completion_tokens_median": median([float(t) for t in tokens]),
        "direct_e2e_ms": round(d_e2e * 1000, 1),
        "agent_e2e_ms": round(a_e2e * 1000, 1),
        "ratio_e2e": round(a_e2e / d_e2e, 3),
        "direct_decode_tps": round(d_tps, 1),
        "agent_decode_tps": round(a_tps, 1),
        "ratio_decode": round(a_tps / d_tps, 3),
        "direct_ttft_ms": round(d_ttft * 1000, 1),
        "agent_ttft_ms": round(a_ttft * 1000, 1),
    }
    ort = ort_genai_overhead(args.ort_runs, args.max_tokens) if args.ort_runs > 0 else None
    if ort is not None:
        result["ort_genai_tiny"] = {k: round(v, 3) for k, v in ort.items()}
    if not args.json_only:
        medians = {"e2e": (d_e2e, a_e2e), "tps": (d_tps, a_tps), "ttft": (d_ttft, a_ttft)}
        _print_report(args, result, ort, medians)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
