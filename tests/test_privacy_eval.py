"""The issue-13 privacy corpus and its harness: size, split, labels, identifier validity,
determinism, and that the harness counts leaks right. Nothing here asserts the detector's
quality on either part (the held-out part must not become a tuning target)."""

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.nl import bsn
from stdnum.us import ssn

from benchmarks import eval_privacy
from benchmarks.privacy_corpus import build
from benchmarks.privacy_corpus.pools import pool
from edge_agent.routing.sensitivity import CATEGORY_LEVELS, Level, Verdict

DATA = Path(__file__).resolve().parent / "data" / "sensitivity_eval"
LANGS = {"en", "de", "fr", "es", "nl"}
VALIDATORS = {
    "bsn": bsn.is_valid,
    "steuer_id": idnr.is_valid,
    "dni": dni.is_valid,
    "nie": nie.is_valid,
    "nir": nir.is_valid,
    "ssn": ssn.is_valid,
    "iban": iban.is_valid,
    "card": luhn.is_valid,
}
NINO = re.compile(r"(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z][0-9]{6}[A-D]")


def compact(text: str) -> str:
    return re.sub(r"\s", "", text)


def rows_of(part: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"{part}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def parts() -> dict[str, list[dict[str, Any]]]:
    return {part: rows_of(part) for part in build.PARTS}


def icao_check(field: str) -> int:
    """ICAO 9303 check digit, written independently of the generator's."""
    values = {c: i for i, c in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")} | {"<": 0}
    return sum(values[c] * (7, 3, 1)[i % 3] for i, c in enumerate(field)) % 10


def mrz_valid(line2: str) -> bool:
    """All five check digits of a TD3 second line hold."""
    doc, dob, exp, pers = line2[0:10], line2[13:20], line2[21:28], line2[28:43]
    fields_ok = all(icao_check(f[:-1]) == int(f[-1]) for f in (doc, dob, exp))
    pers_ok = (
        pers[-1] in "<0" if set(pers[:-1]) == {"<"} else icao_check(pers[:-1]) == int(pers[-1])
    )
    composite = icao_check(doc + dob + exp + pers) == int(line2[43])
    return len(line2) == 44 and fields_ok and pers_ok and composite


def test_corpus_size_split_and_mix(parts: dict[str, list[dict[str, Any]]]) -> None:
    """At least 1,000 rows, about 40 % tuning / 60 % held-out, at least 35 % public, ~100
    hand-written rows spread over both parts."""
    total = sum(len(rows) for rows in parts.values())
    assert total >= 1000
    assert 0.3 <= len(parts["tuning"]) / total <= 0.5
    everything = [r for rows in parts.values() for r in rows]
    assert sum(r["level"] == "public" for r in everything) / total >= 0.35
    assert sum(r["source"] == "handwritten" for r in everything) >= 100
    for rows in parts.values():
        assert sum(r["source"] == "handwritten" for r in rows) >= 30
        assert {r["level"] for r in rows} == {"restricted", "internal", "public"}


def test_rows_are_well_formed(parts: dict[str, list[dict[str, Any]]]) -> None:
    """Every row has the schema's fields, a known language, unique id, and categories that
    are the detector's names and agree with its level (none for public rows); a restricted
    row lists the personal/secret values in its text."""
    ids: set[str] = set()
    for rows in parts.values():
        for r in rows:
            assert {
                "id",
                "text",
                "level",
                "categories",
                "class",
                "lang",
                "format",
                "source",
            } <= set(r)
            assert r["id"] not in ids
            ids.add(r["id"])
            assert r["lang"] in LANGS and r["source"] in {"generated", "handwritten"}
            assert set(r["categories"]) <= set(CATEGORY_LEVELS), r["id"]
            levels = {CATEGORY_LEVELS[c].label for c in r["categories"]}
            if r["level"] == "public":
                assert not r["categories"] and r["class"].startswith("decoy_"), r["id"]
            else:
                assert r["level"] in levels, r["id"]
            if r["level"] == "restricted":
                assert r["values"] and all(v in r["text"] for v in r["values"]), r["id"]


def test_parts_share_no_template_text_or_pool_entry(
    parts: dict[str, list[dict[str, Any]]],
) -> None:
    """Templates, hand-written rows, texts, template patterns and name/place pools are each
    in exactly one part."""
    tuning, heldout = (set(r["template"] for r in parts[p]) for p in build.PARTS)
    assert not tuning & heldout
    assert not {r["text"] for r in parts["tuning"]} & {r["text"] for r in parts["heldout"]}
    sources = {p: build.part_sources(p) for p in build.PARTS}
    patterns = {p: {t.pattern for t in sources[p][0]} for p in build.PARTS}
    assert not patterns["tuning"] & patterns["heldout"]
    hand = {p: {h.text for h in sources[p][1]} for p in build.PARTS}
    assert not hand["tuning"] & hand["heldout"]
    assert not pool("tuning").entries() & pool("heldout").entries()


def test_every_restricted_class_is_in_both_parts(parts: dict[str, list[dict[str, Any]]]) -> None:
    """Each restricted evaluation class has at least 5 rows in each part (recall per class
    means something on both)."""
    counts = {p: Counter(r["class"] for r in parts[p] if r["level"] == "restricted") for p in parts}
    assert set(counts["tuning"]) == set(counts["heldout"])
    assert len(counts["tuning"]) >= 25
    for part, c in counts.items():
        thin = {cls: n for cls, n in c.items() if n < 5}
        assert not thin, (part, thin)


def test_generated_identifiers_are_valid_and_decoys_invalid(
    parts: dict[str, list[dict[str, Any]]],
) -> None:
    """python-stdnum accepts every identifier of a restricted row and rejects every
    deliberately broken one; phones are possible, valid or not as their kind says (per
    libphonenumber); MRZ lines have valid ICAO 9303 check digits."""
    seen: Counter[str] = Counter()
    for rows in parts.values():
        for r in rows:
            for kind, value, *extra in r["checks"]:
                seen[kind] += 1
                assert compact(value) in compact(r["text"]), (r["id"], kind)
                base = kind.removesuffix("_invalid")
                if base in VALIDATORS:
                    ok = VALIDATORS[base](value.replace(" ", ""))
                    assert ok == (kind == base), (r["id"], kind, value)
                    assert (r["level"] == "public") == (kind != base), r["id"]
                elif kind.startswith("phone"):
                    number = phonenumbers.parse(value, extra[0])
                    assert phonenumbers.is_possible_number(number), (r["id"], value)
                    assert phonenumbers.is_valid_number(number) == (kind == "phone_valid")
                elif kind == "mrz":
                    assert mrz_valid(value), (r["id"], value)
                elif kind == "nino":
                    assert NINO.fullmatch(value), value
    for kind in ("bsn", "steuer_id", "nir", "ssn", "iban", "card", "mrz", "nino", "dni", "nie"):
        assert seen[kind] >= 5, kind
    for kind in ("iban_invalid", "card_invalid", "bsn_invalid", "ssn_invalid"):
        assert seen[kind] >= 3, kind
    assert seen["phone_possible_not_valid"] >= 20


def test_unallocated_phone_rows_hold_only_unallocated_numbers(
    parts: dict[str, list[dict[str, Any]]],
) -> None:
    """Generated rows of class phone_unallocated carry a number libphonenumber calls
    possible but not valid, and nothing it calls valid."""
    for rows in parts.values():
        for r in rows:
            if r["class"] == "phone_unallocated" and r["source"] == "generated":
                kinds = {c[0] for c in r["checks"]}
                assert kinds == {"phone_possible_not_valid"}, r["id"]


def test_generation_is_deterministic_and_matches_committed_files() -> None:
    """Building twice gives the same rows, and they are exactly the committed JSONL files."""
    for part in build.PARTS:
        first = build.render(build.build_part(part))
        assert first == build.render(build.build_part(part))
        assert first == (DATA / f"{part}.jsonl").read_text(encoding="utf-8"), (
            f"{part}.jsonl is stale: run python -m benchmarks.privacy_corpus.build"
        )


def test_harness_counts_every_leak_of_a_detector_that_finds_nothing() -> None:
    """A detector that calls everything public leaks every restricted row and raises no
    public row; one that calls everything restricted leaks nothing and raises every public
    row; one that misses exactly one restricted row leaks exactly that row."""
    rows = eval_privacy.load("all")
    restricted = [r for r in rows if r.level == "restricted"]
    public = [r for r in rows if r.level == "public"]

    nothing = eval_privacy.evaluate(lambda _text: Verdict(Level.PUBLIC), rows)
    assert nothing["restricted_leaks"] == len(restricted) and nothing["restricted_recall"] == 0
    assert {leak["id"] for leak in nothing["leaks"]} == {r.id for r in restricted}
    assert nothing["public_false_positive_rate"] == 0 and nothing["public_escalated"] == 1
    assert nothing["internal"]["left_public"] == nothing["internal"]["n"]
    assert all(c["recall"] == 0 for c in nothing["categories"].values())

    everything = eval_privacy.evaluate(lambda _text: Verdict(Level.RESTRICTED), rows)
    assert everything["restricted_leaks"] == 0 and everything["restricted_recall"] == 1
    assert everything["public_false_positive_rate"] == 1
    assert len(everything["public_raised"]) == len(public)

    missed = restricted[0]
    one = eval_privacy.evaluate(
        lambda text: Verdict(Level.PUBLIC if text == missed.text else Level.RESTRICTED), rows
    )
    assert one["leaks"] == [{"id": missed.id, "class": missed.cls, "verdict": "public"}]
    assert one["classes"][missed.cls]["verdicts"]["public"] == 1


def test_through_agent_counts_what_reaches_the_cloud(
    monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    """Through a real agent with planning -> cloud and recording loopback tiers: with the
    detector forced to say public, every restricted row is counted as reaching the cloud
    with its text, and every public row as escalated."""
    from edge_agent.routing.sensitivity.scanner import SensitivityDetector

    monkeypatch.setattr(
        SensitivityDetector, "classify", lambda self, text, **kw: Verdict(Level.PUBLIC)
    )
    monkeypatch.setattr(
        SensitivityDetector, "classify_messages", lambda self, texts, **kw: Verdict(Level.PUBLIC)
    )
    rows = eval_privacy.load("tuning")
    sample = [r for r in rows if r.level == "restricted"][:4] + [
        r for r in rows if r.level == "public"
    ][:3]
    report = eval_privacy.through_agent(sample)
    assert not report["errors"]
    assert report["restricted_off_device"] == 4
    assert report["restricted_text_reached_cloud"] == 4
    assert {leak["id"] for leak in report["leaks"]} == {r.id for r in sample[:4]}
    assert report["public_escalated"] == 1 and not report["public_not_escalated"]


def test_redacted_rows_leak_only_when_a_recorded_value_left() -> None:
    """In --redact mode a restricted row sent with placeholders is not a leak, one whose
    recorded value (or a line of a multi-line one) reached a tier is, a value inside a
    longer word is not, and a hand-written row without values is listed as unverifiable."""
    row = eval_privacy.Row(
        "x-1", "Call Anna Berg on +49 151 2345 6789", "restricted", ("phone",), "phone", "en",
        "prose", ("Anna Berg", "+49 151 2345 6789"),
    )  # fmt: skip
    key = eval_privacy.Row(
        "x-2", "k", "restricted", ("private_key",), "pem_ssh_key", "en", "prose",
        ("-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQAB\n-----END KEY-----",),
    )  # fmt: skip
    hand = eval_privacy.Row("x-3", "t", "restricted", ("phone",), "phone", "en", "prose")
    tally = eval_privacy.AgentTally()
    tally.restricted(row, {"cloud": ["Call [PERSON_1] on [PHONE_1]"]}, redact=True)
    tally.restricted(row, {"cloud": ["Call [PERSON_1] on +49 151 2345 6789"]}, redact=True)
    tally.restricted(row, {"cloud": ["Call XAnna Bergx on [PHONE_1]"]}, redact=True)
    tally.restricted(key, {"cloud": ["key: AAAAB3NzaC1yc2EAAAADAQAB"]}, redact=True)
    tally.restricted(hand, {"cloud": ["[PHONE_1]"]}, redact=True)
    tally.restricted(row, {"private": ["Call [PERSON_1] on [PHONE_1]"]}, redact=False)
    assert tally.redacted_ok == ["x-1", "x-1"]
    assert [(leak["id"], leak["tier"]) for leak in tally.leaks] == [
        ("x-1", "cloud"),
        ("x-2", "cloud"),
        ("x-1", "private"),
    ]
    assert [u["id"] for u in tally.unverifiable] == ["x-3"]


HAND_IDS = {
    "bsn": (re.compile(r"\b\d{9}\b"), bsn.is_valid),
    "steuer_id": (re.compile(r"\b\d{11}\b"), idnr.is_valid),
    "nie_dni": (re.compile(r"\b[XYZ0-9]\d{7}[A-Z]\b"),
                lambda v: dni.is_valid(v) or nie.is_valid(v)),
    "nir": (re.compile(r"\b[12](?: ?\d){14}\b"), lambda v: nir.is_valid(compact(v))),
    "ssn": (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), ssn.is_valid),
    "iban": (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
             lambda v: iban.is_valid(compact(v))),
    "card": (re.compile(r"\b\d{4}(?: \d{4}){3}\b"), lambda v: luhn.is_valid(compact(v))),
    "passport_mrz": (re.compile(r"^[A-Z0-9<]{44}$", re.M),
                     lambda v: v.startswith("P<") or mrz_valid(v)),
}  # fmt: skip


def test_hand_written_identifiers_are_valid() -> None:
    """Every hand-written restricted row of a check-digit class holds an identifier of that
    class that python-stdnum (or the ICAO check) accepts."""
    checked: Counter[str] = Counter()
    for part in build.PARTS:
        for hw in build.part_sources(part)[1]:
            if hw.cls in HAND_IDS and hw.level == "restricted":
                pattern, valid = HAND_IDS[hw.cls]
                found = pattern.findall(hw.text)
                assert found and all(valid(v) for v in found), (part, hw.text)
                checked[hw.cls] += 1
    assert sum(checked.values()) >= 15 and len(checked) == len(HAND_IDS), checked
