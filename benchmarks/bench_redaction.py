"""What reversible redaction adds to a restricted request, against the scan alone.

On prompts of realistic text (``bench_routing_overhead.SENTENCES``) with personal data
woven in every ~600 bytes (``--every``; the first sentence is always personal): e-mail
addresses, phone numbers, IBANs, card numbers, some values repeated; for the router the
agent builds (``chat_service.build_router``) with a local model and private and cloud
tiers, interleaved in rotating order (µs, p50/p99 after a warm-up):

* ``scan``: the routing detector alone (``classify_messages``; it stops at the first
  restricted finding, as routing does);
* ``full``: the full scan alone (every finding: what redaction needs instead of ``scan``);
* ``plain``: ``Router.plan()`` without redaction (the request is restricted: local);
* ``redact``: ``Router.plan()`` with ``X-Redact: true`` (the full scan instead of the
  routing scan, placeholders, the redacted copy scanned again, the policy: the request
  goes to the cloud);
* ``own``: redaction's own work on top of the full scan: ``PlaceholderMap.redact`` and
  the scan of the redacted copy; ``replace``: ``PlaceholderMap.redact`` alone;
* ``restore``: restoring an answer of the same size with one placeholder per ~100 bytes;
* ``stream``: the same answer restored through a :class:`StreamRestorer` in 4-character
  chunks (about one chunk per token).

"redaction adds" is ``redact - plain`` (p99 against p99, and the median of per-iteration
differences); the ratio is against the scan alone in the same run. The difference is
mostly ``full - scan``: the routing scan stops at the first restricted finding, redaction
must find them all (on text full of personal data, the detector's validators and name
search dominate); ``own`` is what the redaction code adds to that.

    .venv/bin/python -m benchmarks.bench_redaction [--iterations 2000] [--sizes 512,4096]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._common import machine, median, print_table
from benchmarks.bench_routing_overhead import SENTENCES, make_agent, pct, prefill_latency
from edge_agent.routing.policy import RouteHints
from edge_agent.routing.redaction import PlaceholderMap
from edge_agent.routing.router import RoutedRequest, Router
from edge_agent.routing.sensitivity import Level
from edge_agent.runtimes.base import ChatMessage, ChatRequest

PERSONAL = (
    "Send the summary to {name}@posteo.de before noon.",
    "Call the site lead on +49 30 2318 4{n:03d} if the belt slips again.",
    "Refund the deposit to IBAN DE44 5001 0517 5407 3249 31 after the inspection.",
    "Charge the repair to card 4556 7375 8689 9855 and mail the receipt to {name}@posteo.de.",
)
NAMES = ("jane.doe", "r.ortega", "li.wei", "m.kowalski")


def build_prompt(size: int, rng: random.Random, every: int = 600) -> str:
    """About ``size`` bytes: ordinary sentences with a personal one every ~``every`` bytes (the
    last ordinary sentence cut so that no value is)."""
    parts: list[str] = []
    length, since = 0, every  # a personal sentence first
    while length < size:
        if since >= every:
            template = rng.choice(PERSONAL)
            sentence = template.format(name=rng.choice(NAMES), n=rng.randrange(1000))
            since = 0
        else:
            sentence = rng.choice(SENTENCES)
            since += len(sentence) + 1
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)


def build_answer(size: int, placeholders: PlaceholderMap, rng: random.Random) -> str:
    """An answer of about ``size`` bytes with an issued placeholder every ~100 bytes."""
    issued = ["[EMAIL_1]", "[PHONE_1]", "[IBAN_1]", "[CARD_1]", "[EMAIL_2]"]
    assert any(placeholders.restore(p) != p for p in issued)
    parts: list[str] = []
    length = 0
    while length < size:
        piece = rng.choice(SENTENCES)[:90] + " " + rng.choice(issued)
        parts.append(piece)
        length += len(piece) + 1
    return " ".join(parts)


def measure(
    router: Router, size: int, iterations: int, seed: int, every: int = 600
) -> dict[str, list[float]]:
    """The five timings, interleaved in rotating order (µs)."""
    rng = random.Random(seed)
    prompts = [build_prompt(size, rng, every) for _ in range(20)]

    def routed(prompt: str, redact: bool) -> RoutedRequest:
        request = ChatRequest(messages=(ChatMessage("user", prompt),), max_tokens=16)
        return RoutedRequest(request, RouteHints(task_class="planning", redact=redact))

    plain = [routed(p, False) for p in prompts]
    redacted = [routed(p, True) for p in prompts]
    prefill_latency(router, rng)
    for r in redacted:  # every prompt is restricted and redactable, or this measures nothing
        planned = router.plan(r)
        assert planned.redaction_status == "applied", planned.redaction_status
        assert planned.decision.level is Level.PUBLIC
    for r in plain:
        assert router.plan(r).decision.level is Level.RESTRICTED
    first = router.plan(routed(prompts[0], True))
    assert first.redaction is not None
    sample = first.redaction.placeholders
    answers = [build_answer(size, sample, rng) for _ in range(5)]
    detector = router.detector
    findings = [detector.classify_messages([p], every_finding=True).findings for p in prompts]

    def run_own(i: int) -> None:
        copy = PlaceholderMap().redact([prompts[i % 20]], findings[i % 20])
        detector.classify_messages(copy.texts)

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1000

    def run_stream(answer: str) -> None:
        restorer = sample.restorer()
        for i in range(0, len(answer), 4):
            restorer.feed(answer[i : i + 4])
        restorer.flush()

    methods: list[tuple[str, Callable[[int], float]]] = [
        ("scan", lambda i: timed(lambda: detector.classify_messages([prompts[i % 20]]))),
        (
            "full",
            lambda i: timed(
                lambda: detector.classify_messages([prompts[i % 20]], every_finding=True)
            ),
        ),
        ("plain", lambda i: timed(lambda: router.plan(plain[i % 20]))),
        ("redact", lambda i: timed(lambda: router.plan(redacted[i % 20]))),
        ("own", lambda i: timed(lambda: run_own(i))),
        (
            "replace",
            lambda i: timed(lambda: PlaceholderMap().redact([prompts[i % 20]], findings[i % 20])),
        ),
        ("restore", lambda i: timed(lambda: sample.restore(answers[i % 5]))),
        ("stream", lambda i: timed(lambda: run_stream(answers[i % 5]))),
    ]
    out: dict[str, list[float]] = {name: [] for name, _ in methods}
    warm = max(50, iterations // 10)
    gc.collect()
    for i in range(warm + iterations):
        shift = i % len(methods)
        for name, fn in methods[shift:] + methods[:shift]:
            t = fn(i)
            if i >= warm:
                out[name].append(t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--sizes", default="512,4096")
    parser.add_argument("--every", type=int, default=600, help="bytes between personal data")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, float | int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        agent, router = make_agent(Path(tmp) / "state", "http://127.0.0.1:9/v1", local=True)
        try:
            for size in sizes:
                t = measure(router, size, args.iterations, seed=size, every=args.every)
                diffs = [r - p for r, p in zip(t["redact"], t["plain"], strict=True)]
                row: dict[str, float | int] = {"size": size}
                for name, values in t.items():
                    row[f"{name}_p50_us"] = round(pct(values, 50), 1)
                    row[f"{name}_p99_us"] = round(pct(values, 99), 1)
                row["added_p99_us"] = round(pct(t["redact"], 99) - pct(t["plain"], 99), 1)
                row["added_median_diff_us"] = round(median(diffs), 1)
                row["added_over_scan_p99"] = round(
                    float(row["added_p99_us"]) / float(row["scan_p99_us"]), 2
                )
                rows.append(row)
        finally:
            agent.stop()
    print(json.dumps({"machine": machine(), "iterations": args.iterations, "rows": rows}))
    if not args.json_only:
        print_table(
            [
                "bytes",
                "scan",
                "full scan",
                "plain",
                "redact",
                "added p99",
                "own",
                "replace",
                "restore",
                "stream",
            ],
            [
                [
                    str(r["size"]),
                    f"{r['scan_p50_us']} / {r['scan_p99_us']}",
                    f"{r['full_p50_us']} / {r['full_p99_us']}",
                    f"{r['plain_p50_us']} / {r['plain_p99_us']}",
                    f"{r['redact_p50_us']} / {r['redact_p99_us']}",
                    f"{r['added_p99_us']} ({r['added_over_scan_p99']}x scan)",
                    f"{r['own_p50_us']} / {r['own_p99_us']}",
                    f"{r['replace_p50_us']} / {r['replace_p99_us']}",
                    f"{r['restore_p50_us']} / {r['restore_p99_us']}",
                    f"{r['stream_p50_us']} / {r['stream_p99_us']}",
                ]
                for r in rows
            ],
        )


if __name__ == "__main__":
    main()
