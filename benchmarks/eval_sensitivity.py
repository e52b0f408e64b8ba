"""Sensitivity detector: quality on the labelled set and scan latency.

Quality: per-level and per-category recall and precision on
``tests/data/sensitivity_labelled.jsonl``, the restricted recall (a restricted text labelled
lower is a leak: it could leave the device) and the false-positive rate (public or internal
texts raised above their label).

Latency: ``SensitivityDetector.classify`` on 0.5 KB, 4 KB and 32 KB prompts built by
concatenating labelled texts (once from the public texts only, the common case in which the
whole scan runs and finds nothing, once from all texts, dense with findings), p50 and p99
over interleaved runs, against two baselines measured on the same prompts in the same loop:
``text.lower()`` (one pass over the text in C) and one trivial compiled regex search.

    .venv/bin/python -m benchmarks.eval_sensitivity [--prompts 40] [--rounds 25] [--json-only]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.routing.sensitivity import Level, SensitivityConfig, SensitivityDetector

LABELLED = Path(__file__).resolve().parent.parent / "tests" / "data" / "sensitivity_labelled.jsonl"
SIZES = (512, 4096, 32768)


@dataclass(frozen=True)
class Row:
    text: str
    level: Level
    categories: frozenset[str]


def load(path: Path = LABELLED) -> list[Row]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            rows.append(Row(obj["text"], Level.parse(obj["level"]), frozenset(obj["categories"])))
    return rows


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def evaluate(detector: SensitivityDetector, rows: Sequence[Row]) -> dict[str, Any]:
    """Recall/precision per level and category, restricted recall, false-positive rate."""
    confusion = {a.label: {b.label: 0 for b in Level} for a in Level}
    cat_tp: dict[str, int] = {}
    cat_fn: dict[str, int] = {}
    cat_fp: dict[str, int] = {}
    leaks: list[str] = []
    raised: list[str] = []
    for row in rows:
        verdict = detector.classify(row.text)
        confusion[row.level.label][verdict.level.label] += 1
        got = set(verdict.categories)
        for c in row.categories | got:
            if c in row.categories and c in got:
                cat_tp[c] = cat_tp.get(c, 0) + 1
            elif c in row.categories:
                cat_fn[c] = cat_fn.get(c, 0) + 1
            else:
                cat_fp[c] = cat_fp.get(c, 0) + 1
        if verdict.level < row.level and row.level is Level.RESTRICTED:
            leaks.append(row.text[:80])
        if verdict.level > row.level:
            raised.append(row.text[:80])

    levels = {}
    for lv in Level:
        tp = confusion[lv.label][lv.label]
        actual = sum(confusion[lv.label].values())
        predicted = sum(confusion[a.label][lv.label] for a in Level)
        levels[lv.label] = {
            "n": actual,
            "recall": _ratio(tp, actual),
            "precision": _ratio(tp, predicted),
        }
    categories = {}
    for c in sorted(set(cat_tp) | set(cat_fn) | set(cat_fp)):
        tp, fn, fp = cat_tp.get(c, 0), cat_fn.get(c, 0), cat_fp.get(c, 0)
        categories[c] = {
            "n": tp + fn,
            "recall": _ratio(tp, tp + fn),
            "precision": _ratio(tp, tp + fp),
        }
    restricted = [r for r in rows if r.level is Level.RESTRICTED]
    lower = [r for r in rows if r.level is not Level.RESTRICTED]
    return {
        "rows": len(rows),
        "restricted_recall": _ratio(len(restricted) - len(leaks), len(restricted)),
        "leaks": leaks,
        "false_positive_rate": _ratio(len(raised), len(lower)),
        "public_raised": confusion["public"]["internal"] + confusion["public"]["restricted"],
        "internal_raised": confusion["internal"]["restricted"],
        "raised": raised,
        "confusion": confusion,
        "levels": levels,
        "categories": categories,
    }


def build_prompts(texts: Sequence[str], size: int, count: int, seed: int = 7) -> list[str]:
    """``count`` prompts of exactly ``size`` characters, labelled texts joined by newlines."""
    rnd = random.Random(seed)
    prompts = []
    for _ in range(count):
        parts: list[str] = []
        n = 0
        while n < size:
            t = rnd.choice(texts)
            parts.append(t)
            n += len(t) + 1
        prompts.append("\n".join(parts)[:size])
    return prompts


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    funcs: dict[str, Callable[[str], object]], prompts: Sequence[str], rounds: int
) -> dict[str, dict[str, float]]:
    """p50/p99 in microseconds of each function, interleaved prompt by prompt.

    One untimed pass over all prompts first: RE2 builds its DFA states lazily, so the first
    scan of unseen text is slower (reported separately as ``cold``).
    """
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    clock = time.perf_counter_ns
    for p in prompts:
        for f in funcs.values():
            f(p)
    for _ in range(rounds):
        for p in prompts:
            for name, f in funcs.items():
                t0 = clock()
                f(p)
                samples[name].append((clock() - t0) / 1000)
    return {name: _stats(v) for name, v in samples.items()}


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50_us": round(statistics.median(values), 2),
        "p99_us": round(_pct(values, 0.99), 2),
        "n": len(values),
    }


def cold(prompts: Sequence[str]) -> dict[str, float]:
    """First scans by a fresh detector: includes building RE2 DFA states for unseen text."""
    detector = SensitivityDetector()
    detector.classify("warm up the validators' imports: jane@posteo.de +44 20 7946 0958")
    times = []
    for p in prompts:
        t0 = time.perf_counter_ns()
        detector.classify(p)
        times.append((time.perf_counter_ns() - t0) / 1000)
    return _stats(times)


def latency(
    detector: SensitivityDetector, rows: Sequence[Row], prompts: int, rounds: int
) -> dict[str, Any]:
    trivial = re.compile(r"@")
    funcs: dict[str, Callable[[str], object]] = {
        "baseline_lower": str.lower,
        "baseline_regex": trivial.search,
        "classify": detector.classify,
    }
    public = [r.text for r in rows if r.level is Level.PUBLIC]
    pools = {
        # public texts with nothing any rule fires on: the RE2 pass alone
        "plain": [t for t in public if detector._rules_fired(t) == []],
        "public": public,
        "all": [r.text for r in rows],
    }
    out: dict[str, Any] = {}
    for pool_name, pool in pools.items():
        for size in SIZES:
            n_rounds = rounds if size < 32768 else max(3, rounds // 5)
            ps = build_prompts(pool, size, prompts, seed=size)
            res: dict[str, Any] = {"cold_classify": cold(ps)}
            res.update(measure(funcs, ps, n_rounds))
            res["x_lower_p50"] = round(
                res["classify"]["p50_us"] / max(res["baseline_lower"]["p50_us"], 1e-3), 1
            )
            res["texts_in_pool"] = len(pool)
            out[f"{pool_name}_{size}"] = res
    # a caller that only needs the level (the router) can stop at the first restricted finding
    stopper = SensitivityDetector(SensitivityConfig(stop_at_restricted=True))
    ps = build_prompts(pools["all"], 4096, prompts, seed=4096)
    res = {"cold_classify": cold(ps)}
    res.update(measure({**funcs, "classify": stopper.classify}, ps, rounds))
    res["x_lower_p50"] = round(
        res["classify"]["p50_us"] / max(res["baseline_lower"]["p50_us"], 1e-3), 1
    )
    res["texts_in_pool"] = len(pools["all"])
    out["all_4096_stop_at_restricted"] = res
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40, help="prompts per size")
    parser.add_argument("--rounds", type=int, default=25, help="passes over the prompts")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()

    from benchmarks._common import machine

    detector = SensitivityDetector()
    rows = load()
    quality = evaluate(detector, rows)
    timing = latency(detector, rows, args.prompts, args.rounds)
    report = {"machine": machine(), "quality": quality, "latency": timing}

    if not args.json_only:
        print(f"machine: {report['machine']}")
        print(
            f"labelled rows: {quality['rows']}  restricted recall: "
            f"{_fmt(quality['restricted_recall'])}  false-positive rate: "
            f"{_fmt(quality['false_positive_rate'])} (public raised {quality['public_raised']}, "
            f"internal raised {quality['internal_raised']})\n"
        )
        _table(
            ["level", "n", "recall", "precision"],
            [
                [k, str(v["n"]), _fmt(v["recall"]), _fmt(v["precision"])]
                for k, v in quality["levels"].items()
            ],
        )
        _table(
            ["category", "n", "recall", "precision"],
            [
                [k, str(v["n"]), _fmt(v["recall"]), _fmt(v["precision"])]
                for k, v in quality["categories"].items()
            ],
        )
        lat_rows = []
        for key, res in timing.items():
            lat_rows.append(
                [
                    key,
                    f"{res['baseline_lower']['p50_us']:.1f}",
                    f"{res['baseline_regex']['p50_us']:.1f}",
                    f"{res['classify']['p50_us']:.1f}",
                    f"{res['classify']['p99_us']:.1f}",
                    f"{res['cold_classify']['p50_us']:.1f}",
                    f"{res['x_lower_p50']}",
                ]
            )
        _table(
            [
                "prompts",
                "lower p50 us",
                "regex p50 us",
                "classify p50 us",
                "classify p99 us",
                "cold p50 us",
                "x lower",
            ],
            lat_rows,
        )
        if quality["leaks"]:
            print("leaks (restricted classified lower):", *quality["leaks"], sep="\n  ")
        if quality["raised"]:
            print("raised above their label:", *quality["raised"], sep="\n  ")
        print()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
