"""Generate the two corpus parts deterministically and write them as JSONL.

    .venv/bin/python -m benchmarks.privacy_corpus.build [--check]

Each part is its own templates (generated rows, values from its own pool, seeded by the
template id) plus its own hand-written rows. ``--check`` compares with the committed files
instead of writing them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.privacy_corpus.fill import fill
from benchmarks.privacy_corpus.model import Handwritten, Row, Template
from benchmarks.privacy_corpus.pools import pool
from benchmarks.privacy_corpus.values import Gen

OUT_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "sensitivity_eval"
PARTS = ("tuning", "heldout")
MODULES = {
    "tuning": (("templates_tuning", "decoys_tuning"), "handwritten_tuning"),
    "heldout": (
        ("templates_heldout", "decoys_heldout", "templates_heldout_b"),
        "handwritten_heldout",
    ),
}


def part_sources(part: str) -> tuple[list[Template], list[Handwritten]]:
    """The templates and hand-written rows of ``part``."""
    template_modules, hand_module = MODULES[part]
    templates: list[Template] = []
    for name in template_modules:
        module = importlib.import_module(f"benchmarks.privacy_corpus.{name}")
        templates += [*getattr(module, "TEMPLATES", ()), *getattr(module, "DECOYS", ())]
    hand = importlib.import_module(f"benchmarks.privacy_corpus.{hand_module}")
    return templates, list(hand.ROWS)


def _seed(part: str, tid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{part}/{tid}".encode()).digest()[:8], "big")


def template_rows(part: str, template: Template, seen: set[str]) -> list[Row]:
    """Up to ``template.count`` distinct rows of ``template`` (texts not in ``seen``)."""
    rng = random.Random(_seed(part, template.tid))
    rows: list[Row] = []
    for _ in range(template.count * 5):
        if len(rows) == template.count:
            break
        gen = Gen(rng, pool(part))
        text = fill(gen, template.pattern)
        if text in seen:
            continue
        seen.add(text)
        rows.append(
            Row(
                id=f"{template.tid}-{len(rows) + 1}",
                text=text,
                level=template.level,
                categories=sorted(template.categories),
                cls=template.cls,
                lang=template.lang,
                fmt=template.fmt,
                source="generated",
                template=template.tid,
                checks=gen.checks,
                values=gen.values if template.level != "public" else [],
            )
        )
    return rows


def build_part(part: str) -> list[Row]:
    """Every row of ``part``, in a stable order."""
    templates, hand = part_sources(part)
    seen: set[str] = set()
    rows: list[Row] = []
    for template in templates:
        rows.extend(template_rows(part, template, seen))
    prefix = "tu" if part == "tuning" else "ho"
    for i, hw in enumerate(hand, 1):
        if hw.text in seen:
            raise ValueError(f"hand-written row {i} of {part} repeats a generated text")
        seen.add(hw.text)
        rows.append(
            Row(
                id=f"{prefix}-hw-{i}",
                text=hw.text,
                level=hw.level,
                categories=sorted(hw.categories),
                cls=hw.cls,
                lang=hw.lang,
                fmt=hw.fmt,
                source="handwritten",
                template=f"{prefix}-hw-{i}",
                values=list(hw.values),
            )
        )
    return rows


def render(rows: Sequence[Row]) -> str:
    """The JSONL text of ``rows``."""
    return "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or, with ``--check``, compare) both parts."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    args = parser.parse_args(argv)
    parts = PARTS if args.part == "all" else (args.part,)
    stale = []
    for part in parts:
        path = OUT_DIR / f"{part}.jsonl"
        text = render(build_part(part))
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"{path}: {text.count(chr(10))} rows")
    if stale:
        print("stale: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
