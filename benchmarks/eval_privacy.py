"""Privacy routing on the issue-13 corpus: what would leave the device, class by class.

The corpus (``tests/data/sensitivity_eval/{tuning,heldout}.jsonl``, written by
``python -m benchmarks.privacy_corpus.build``) has a tuning part, for detector work, and a
held-out part, for measuring it; they share no template, no text and no name or place.

Detector mode (the default) runs ``SensitivityDetector`` (default ``SensitivityConfig``) on
every row and reports:

* restricted rows whose verdict is below restricted (they could be routed off the device:
  a leak), by id and class; recall per evaluation class and per category;
* public rows raised to internal or restricted (a ``planning -> cloud`` rule would no longer
  escalate them): the false-positive rate, per decoy class;
* internal rows: how many are internal, raised to restricted, or left public (a leak of
  internal data to a public tier).

``--through-agent`` sends every row, one at a time, through a real agent (its HTTP API,
router and policy) with ``routing.rules: [{task_class: planning, tier: cloud}]``, a private
and a cloud tier that are recording OpenAI-compatible servers on loopback
(``controller/drills/openai_server.py``, as ``tests/test_routing_agent.py`` uses them) and
the real local model those tests use (the demo GGUF that ``scripts/dev setup`` fetches;
rows the router keeps local are answered by it, one token each). It counts restricted
rows that reached a remote tier (and whether their text was in what it received), public
rows the cloud received (escalated) and where internal rows went. With ``--redact`` the
agent also has ``routing.redact.task_classes: [planning]``: restricted rows may then leave
redacted, and a row leaks when any of its recorded personal or secret values is in the
messages a remote tier received (generated rows record their values; hand-written rows
cannot be checked that way and are listed apart).

A through-agent run takes minutes (about 7 for the tuning part on a 2-core box, mostly
the local model reading the prompts it keeps).

Texts are never printed, only ids and classes.

    .venv/bin/python -m benchmarks.eval_privacy [--part heldout|tuning|all] [--json]
        [--through-agent [--redact]] [--only ID_PREFIX]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "sensitivity_eval"
PARTS = ("tuning", "heldout")
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LEVELS = ("public", "internal", "restricted")


@dataclass(frozen=True)
class Row:
    """One labelled corpus row (the fields the evaluation needs)."""

    id: str
    text: str
    level: str
    categories: tuple[str, ...]
    cls: str
    lang: str
    fmt: str
    values: tuple[str, ...] = ()
    """The personal or secret values a generated row was filled with (empty otherwise)."""


class VerdictLike(Protocol):
    """What the evaluation reads from a verdict: its level (with a ``label``) and categories."""

    @property
    def level(self) -> Any: ...

    @property
    def categories(self) -> tuple[str, ...]: ...


def load(part: str) -> list[Row]:
    """The rows of ``part`` (``tuning``, ``heldout`` or ``all``)."""
    rows: list[Row] = []
    for name in PARTS if part == "all" else (part,):
        for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                o = json.loads(line)
                rows.append(
                    Row(
                        o["id"],
                        o["text"],
                        o["level"],
                        tuple(o["categories"]),
                        o["class"],
                        o["lang"],
                        o["format"],
                        tuple(o.get("values", ())),
                    )
                )
    return rows


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _level_label(verdict: VerdictLike) -> str:
    level = verdict.level
    return str(getattr(level, "label", level))


def evaluate(classify: Callable[[str], VerdictLike], rows: Sequence[Row]) -> dict[str, Any]:
    """Leaks, recall per class and category, public false positives, internal handling."""
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    cat_hit: Counter[str] = Counter()
    cat_n: Counter[str] = Counter()
    leaks: list[dict[str, str]] = []
    raised: list[dict[str, str]] = []
    internal: Counter[str] = Counter()
    for row in rows:
        verdict = classify(row.text)
        got = _level_label(verdict)
        per_class[row.cls]["n"] += 1
        per_class[row.cls][got] += 1
        found = set(verdict.categories)
        for cat in row.categories:
            cat_n[cat] += 1
            cat_hit[cat] += cat in found
        if row.level == "restricted" and got != "restricted":
            leaks.append({"id": row.id, "class": row.cls, "verdict": got})
        elif row.level == "public" and got != "public":
            raised.append({"id": row.id, "class": row.cls, "verdict": got})
        elif row.level == "internal":
            internal[got] += 1
    return _summary(rows, per_class, cat_hit, cat_n, leaks, raised, internal)


def _breakdown(
    rows: Sequence[Row], level: str, bad: set[str], key: Callable[[Row], str]
) -> dict[str, dict[str, Any]]:
    """Per ``key`` value (language, format): rows of ``level`` and the share not in ``bad``."""
    n: Counter[str] = Counter()
    ok: Counter[str] = Counter()
    for row in rows:
        if row.level == level:
            n[key(row)] += 1
            ok[key(row)] += row.id not in bad
    return {k: {"n": n[k], "kept": _ratio(ok[k], n[k])} for k in sorted(n)}


def _summary(
    rows: Sequence[Row],
    per_class: dict[str, Counter[str]],
    cat_hit: Counter[str],
    cat_n: Counter[str],
    leaks: list[dict[str, str]],
    raised: list[dict[str, str]],
    internal: Counter[str],
) -> dict[str, Any]:
    levels = Counter(r.level for r in rows)
    class_level = {r.cls: r.level for r in rows}
    leaked = {leak["id"] for leak in leaks}
    raised_ids = {r["id"] for r in raised}
    classes = {}
    for cls in sorted(per_class, key=lambda c: (LEVELS.index(class_level[c]) * -1, c)):
        c = per_class[cls]
        want = class_level[cls]
        classes[cls] = {
            "level": want,
            "n": c["n"],
            # restricted classes: share kept restricted; public: share left public (escalable)
            "recall" if want != "public" else "escalated": _ratio(c[want], c["n"]),
            "verdicts": {lv: c[lv] for lv in LEVELS if c[lv]},
        }
    return {
        "rows": len(rows),
        "levels": dict(levels),
        "restricted_leaks": len(leaks),
        "restricted_recall": _ratio(levels["restricted"] - len(leaks), levels["restricted"]),
        "leaks": leaks,
        "public_false_positive_rate": _ratio(len(raised), levels["public"]),
        "public_escalated": _ratio(levels["public"] - len(raised), levels["public"]),
        "public_raised": raised,
        "internal": {
            "n": levels["internal"],
            "kept_internal": internal["internal"],
            "raised_restricted": internal["restricted"],
            "left_public": internal["public"],
        },
        "classes": classes,
        "restricted_by_language": _breakdown(rows, "restricted", leaked, lambda r: r.lang),
        "restricted_by_format": _breakdown(rows, "restricted", leaked, lambda r: r.fmt),
        "public_by_language": _breakdown(rows, "public", raised_ids, lambda r: r.lang),
        "categories": {
            cat: {"n": cat_n[cat], "recall": _ratio(cat_hit[cat], cat_n[cat])}
            for cat in sorted(cat_n)
        },
    }


def detector_classify() -> Callable[[str], VerdictLike]:
    """The product detector with its default configuration."""
    from edge_agent.routing.sensitivity import SensitivityConfig, SensitivityDetector

    detector = SensitivityDetector(SensitivityConfig())
    return detector.classify


# --- through a real agent ------------------------------------------------------------------


def _agent_config(state: str, providers: dict[str, Any], redact: bool) -> dict[str, Any]:
    routing: dict[str, Any] = {"rules": [{"task_class": "planning", "tier": "cloud"}]}
    if redact:
        routing["redact"] = {"task_classes": ["planning"]}
    return {
        "device_id": "eval-privacy",
        "state_dir": state,
        "mqtt": None,
        "models": [{"name": "smollm2", "path": str(MODEL), "n_ctx": 2048}],
        "tiers": {
            "private": {
                "base_url": providers["private"].base_url,
                "model": "org-llm",
                "cost_per_1k_input": 0.1,
            },
            "cloud": {
                "base_url": providers["cloud"].base_url,
                "model": "frontier",
                "cost_per_1k_input": 1.0,
            },
        },
        "routing": routing,
    }


@contextmanager
def agent_client(redact: bool = False) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A ``TestClient`` on a real agent (planning -> cloud) and its two recording tiers."""
    from fastapi.testclient import TestClient

    from controller.drills.openai_server import start_provider
    from edge_agent.agent import Agent
    from edge_agent.api.app import create_agent_app
    from edge_agent.config import AgentConfig

    if not MODEL.is_file():
        raise SystemExit(f"{MODEL} missing: run scripts/fetch_demo_model.py")
    providers = {"private": start_provider("private"), "cloud": start_provider("cloud")}
    from edge_agent.runtimes.llama_cpp import LlamaCppRuntime

    runtime = LlamaCppRuntime("smollm2", MODEL, n_ctx=2048, n_threads=2)
    with tempfile.TemporaryDirectory() as state:
        agent = Agent(AgentConfig.model_validate(_agent_config(state, providers, redact)))
        agent.runtimes["smollm2"] = runtime
        try:
            yield TestClient(create_agent_app(agent)), providers
        finally:
            agent.runtimes.clear()
            agent.stop()
            runtime.close()
            for p in providers.values():
                if p.server is not None:
                    p.server.shutdown()


def _contents(provider: Any, start: int) -> list[str] | None:
    """The message texts ``provider`` received since request ``start`` (None: no request)."""
    with provider.lock:
        new = list(provider.received[start:])
    if not new:
        return None
    out = []
    for body in new:
        for message in body.get("messages", []) if isinstance(body, dict) else []:
            content = message.get("content") if isinstance(message, dict) else message
            out.append(content if isinstance(content, str) else json.dumps(content))
    return out


def _leaked_values(row: Row, contents: Sequence[str]) -> bool:
    """Whether any recorded value of ``row`` (a multi-line one: any long line of it) is in
    ``contents``, as a whole word."""
    pieces: list[str] = []
    for value in row.values:
        lines = [ln.strip() for ln in value.splitlines()]
        if len(lines) > 1:
            pieces.extend(ln for ln in lines if len(ln) >= 8)
        else:
            pieces.append(value)
    joined = "\n".join(contents)
    return any(re.search(rf"(?<!\w){re.escape(p)}(?!\w)", joined) for p in pieces if p)


@dataclass
class AgentTally:
    """What the through-agent run saw, row by row."""

    leaks: list[dict[str, str]] = field(default_factory=list)
    redacted_ok: list[str] = field(default_factory=list)
    unverifiable: list[dict[str, str]] = field(default_factory=list)
    kept_public: list[dict[str, str]] = field(default_factory=list)
    internal_routes: Counter[str] = field(default_factory=Counter)
    routes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: list[dict[str, str]] = field(default_factory=list)

    def restricted(self, row: Row, got: dict[str, list[str]], redact: bool) -> None:
        """Count one restricted row that reached the tiers in ``got``."""
        text_in = any(row.text in c for contents in got.values() for c in contents)
        entry = {"id": row.id, "class": row.cls, "tier": ",".join(got), "text": str(text_in)}
        if not redact or text_in:
            self.leaks.append(entry)
        elif not row.values:
            self.unverifiable.append(entry)
        elif any(_leaked_values(row, contents) for contents in got.values()):
            self.leaks.append(entry)
        else:
            self.redacted_ok.append(row.id)


def through_agent(rows: Sequence[Row], redact: bool = False) -> dict[str, Any]:
    """Send each row as a planning request; count what reached the private and cloud tiers."""
    tally = AgentTally()
    with agent_client(redact) as (client, providers):
        for row in rows:
            marks = {name: p.count() for name, p in providers.items()}
            payload = {"messages": [{"role": "user", "content": row.text}], "max_tokens": 1}
            response = client.post(
                "/v1/chat/completions", json=payload, headers={"X-Task-Class": "planning"}
            )
            route = response.headers.get("x-edge-route", f"error:{response.status_code}")
            tally.routes[row.level][route] += 1
            if response.status_code != 200:
                tally.errors.append(
                    {"id": row.id, "class": row.cls, "status": str(response.status_code)}
                )
            got = {n: c for n, p in providers.items() if (c := _contents(p, marks[n])) is not None}
            if row.level == "restricted" and got:
                tally.restricted(row, got, redact)
            elif row.level == "public" and "cloud" not in got:
                tally.kept_public.append({"id": row.id, "class": row.cls, "route": route})
            elif row.level == "internal":
                tally.internal_routes[",".join(got) or "local"] += 1
    levels = Counter(r.level for r in rows)
    return {
        "rows": len(rows),
        "redact": redact,
        "restricted_off_device": len(tally.leaks),
        "restricted_text_reached_cloud": sum(
            1 for leak in tally.leaks if "cloud" in leak["tier"] and leak["text"] == "True"
        ),
        "leaks": tally.leaks,
        "restricted_sent_redacted": len(tally.redacted_ok),
        "restricted_sent_unverifiable": tally.unverifiable,
        "public_escalated": _ratio(levels["public"] - len(tally.kept_public), levels["public"]),
        "public_not_escalated": tally.kept_public,
        "internal_routes": dict(tally.internal_routes),
        "routes": {lv: dict(c) for lv, c in tally.routes.items()},
        "errors": tally.errors,
    }


# --- output ------------------------------------------------------------------------------------


def _print_detector(part: str, report: dict[str, Any]) -> None:
    lv = report["levels"]
    print(f"== {part}: {report['rows']} rows ({', '.join(f'{k} {v}' for k, v in lv.items())})")
    print(
        f"restricted rows that would leave the device: {report['restricted_leaks']} of "
        f"{lv.get('restricted', 0)} (recall {report['restricted_recall']})"
    )
    print(
        f"public rows raised (not escalated): {len(report['public_raised'])} of "
        f"{lv.get('public', 0)} (false-positive rate {report['public_false_positive_rate']}, "
        f"escalated {report['public_escalated']})"
    )
    print(f"internal rows: {report['internal']}")
    print(f"\n{'class':34} {'level':10} {'n':>4} {'kept':>7}  verdicts")
    for cls, c in report["classes"].items():
        share = c.get("recall", c.get("escalated"))
        verdicts = " ".join(f"{k}={v}" for k, v in c["verdicts"].items())
        print(f"{cls:34} {c['level']:10} {c['n']:>4} {share!s:>7}  {verdicts}")
    for title, key in (
        ("restricted kept, by language", "restricted_by_language"),
        ("restricted kept, by format", "restricted_by_format"),
        ("public escalated, by language", "public_by_language"),
    ):
        parts = ", ".join(f"{k} {v['kept']} ({v['n']})" for k, v in report[key].items())
        print(f"{title}: {parts}")
    print(f"\n{'category':20} {'n':>4} {'recall':>7}")
    for cat, c in report["categories"].items():
        print(f"{cat:20} {c['n']:>4} {c['recall']!s:>7}")
    if report["leaks"]:
        print("\nleaks (id class verdict):")
        for leak in report["leaks"]:
            print(f"  {leak['id']} {leak['class']} {leak['verdict']}")
    if report["public_raised"]:
        print("\npublic rows raised (id class verdict):")
        for r in report["public_raised"]:
            print(f"  {r['id']} {r['class']} {r['verdict']}")


def _print_agent(part: str, report: dict[str, Any]) -> None:
    print(f"== {part} through the agent (planning -> cloud): {report['rows']} rows")
    print(
        f"restricted rows that reached a remote tier: {report['restricted_off_device']} "
        f"(text in the cloud's request: {report['restricted_text_reached_cloud']})"
    )
    if report["redact"]:
        print(
            f"restricted rows sent redacted with none of their values: "
            f"{report['restricted_sent_redacted']}; sent, hand-written (values unknown): "
            f"{len(report['restricted_sent_unverifiable'])}"
        )
    print(f"public rows escalated to the cloud: {report['public_escalated']}")
    print(f"internal rows by tier: {report['internal_routes']}")
    print(f"routes by level: {report['routes']}")
    for leak in report["leaks"]:
        print(f"  leak {leak['id']} {leak['class']} -> {leak['tier']}")
    for r in report["restricted_sent_unverifiable"]:
        print(f"  sent (hand-written, unverified) {r['id']} {r['class']} -> {r['tier']}")
    for r in report["public_not_escalated"]:
        print(f"  kept {r['id']} {r['class']} ({r['route']})")
    for e in report["errors"]:
        print(f"  error {e['id']} {e['class']} HTTP {e['status']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen evaluation on the chosen part(s) and print or dump the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=(*PARTS, "all"), default="heldout")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--through-agent", action="store_true")
    parser.add_argument("--redact", action="store_true", help="routing.redact for planning")
    parser.add_argument("--only", metavar="PREFIX", help="only rows whose id starts with PREFIX")
    args = parser.parse_args(argv)
    rows = load(args.part)
    if args.only:
        rows = [r for r in rows if r.id.startswith(args.only)]
    started = time.perf_counter()
    if args.through_agent:
        report = through_agent(rows, args.redact)
    else:
        report = evaluate(detector_classify(), rows)
    report["part"] = args.part
    report["seconds"] = round(time.perf_counter() - started, 2)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    elif args.through_agent:
        _print_agent(args.part, report)
    else:
        _print_detector(args.part, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
