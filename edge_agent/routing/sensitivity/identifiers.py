"""Identifiers: payment cards, IBANs, national IDs and passport numbers.

Categories ``payment_card``, ``iban``, ``national_id`` and ``passport`` (all restricted).
Numbers are found by their format (:data:`NUMBER_RULE`) and must pass their checksum
(Luhn, mod 97, the national ID rules of ``python-stdnum``); other IDs are found after a
word that names them, in English, German, French, Spanish or Dutch (:data:`IDKW_RULE`,
names and the kind of ID each names in ``data/id_keywords.txt``: "BSN",
"burgerservicenummer", "Steuer-ID", "steuerliche Identifikationsnummer", "NIE", "DNI",
"numéro de sécurité sociale", "NIR", "Reisepass", "Passnummer", "pasaporte", "paspoort"
...), with up to three connecting words between name and value ("BSN-nummer is",
"Reisepass hat die Nummer", "número de DNI es"). Machine-readable zones of passports and
ID cards are in :mod:`.mrz`.

A value after an ID's name is checked by the ID's kind: one that passes its check digits
is a finding; one of the ID's exact shape that fails them is taken for a mistyped real ID
and kept local (an uncertain finding, :func:`_typo_of_id`) unless it is a placeholder
(:func:`is_placeholder`: ``000000000``, ``123456789``, ``111111110``). Where the kind has
no check digit (SSN ranges, NINO letters) a value that fails is a decoy; passport numbers
have none either, so any 6-9 letters and digits with some variety are taken.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from stdnum import iban as _std_iban
from stdnum.de import idnr as _de_idnr
from stdnum.es import dni as _es_dni
from stdnum.es import nie as _es_nie
from stdnum.es import nif as _es_nif
from stdnum.fr import nir as _fr_nir
from stdnum.gb import nhs as _gb_nhs
from stdnum.it import codicefiscale as _it_cf
from stdnum.nl import bsn as _nl_bsn
from stdnum.us import ssn as _us_ssn

from edge_agent.routing.sensitivity import mrz
from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.terms import entries, pairs


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix_ok(d: str) -> bool:
    first = d[0]
    if first == "4" or first == "6":
        return True
    if first == "5":
        return "50" <= d[:2] <= "55"
    if first == "2":
        return "2221" <= d[:4] <= "2720"
    if first == "3":
        return d[:2] in ("34", "37", "35", "36", "38", "30", "39")
    return False


def _card_ok(candidate: str) -> bool:
    """13-19 digits, one separator kind, card-like grouping, issuer prefix, Luhn."""
    seps = {c for c in candidate if not c.isdigit()}
    if len(seps) > 1:
        return False
    if seps:
        groups = [len(g) for g in candidate.split(seps.pop())]
        if not (all(g == 4 for g in groups[:-1]) or groups in ([4, 6, 5], [4, 6, 4])) or any(
            g == 0 for g in groups
        ):
            return False
    digits = "".join(c for c in candidate if c.isdigit())
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 2:
        return False
    return _card_prefix_ok(digits) and _luhn(digits)


_IBAN_CHARS: Final = {chr(c): str(c - 55) for c in range(65, 91)} | {
    str(d): str(d) for d in range(10)
}


def _iban_mod97(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    try:
        return int("".join(_IBAN_CHARS[c] for c in rearranged)) % 97 == 1
    except KeyError:
        return False


_IBAN_LENGTHS: Final[dict[str, int]] = {
    country: int(length) for country, length in pairs("iban_lengths.txt").items()
}
"""IBAN length per country (SWIFT IBAN registry), to cut a candidate before validating."""


def _iban_span(candidate: str) -> int:
    """Length in ``candidate`` of the valid IBAN it starts with (0 if none).

    The candidate may run on into following text ("DE89 ... 00 BIC"), so it is cut at the
    country's IBAN length; the mod-97 check runs first, the registry check of
    ``python-stdnum`` (country format, national check digits) only on a mod-97 pass.
    """
    length = _IBAN_LENGTHS.get(candidate[:2])
    if length is None:
        return 0
    count = 0
    for i, c in enumerate(candidate):
        if c.isalnum():
            count += 1
            if count == length:
                compact = "".join(ch for ch in candidate[: i + 1] if ch.isalnum())
                if _iban_mod97(compact) and _std_iban.is_valid(compact):
                    return i + 1
                return 0
    return 0


_NINO_BAD_PREFIXES: Final = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def _nino_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    return compact[:2] not in _NINO_BAD_PREFIXES and compact[1] != "O"


DATE_LIKE: Final = re.compile(
    r"(?:19|20)[0-9]{2}[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[1-9]|[12][0-9]|3[01])[-/.](?:0[1-9]|1[0-2])[-/.](?:19|20)[0-9]{2}"
)


def digits_of(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


# --------------------------------------------------------------------------------------
# Rules and their handlers.

NUMBER_RULE = (
    r"(?P<nir>\b[12] ?[0-9]{2} ?(?:0[1-9]|1[0-2]|[2-9][0-9]) ?(?:[0-9]{2}|2[AB]) ?[0-9]{3} ?"
    r"[0-9]{3} ?[0-9]{2}\b)"
    r"|(?P<card>\b[0-9](?:[ \-]?[0-9]){12,18}\b)"
    r"|(?P<ssn>\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b)"
    r"|(?P<iban>\b[A-Z]{2}[0-9]{2}(?:[ \-]?[A-Z0-9]{4}){2,7}(?:[ \-]?[A-Z0-9]{1,3})?\b)"
    r"|(?P<nino>\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b)"
    r"|(?P<dni>\b(?:[XYZ][ -]?)?[0-9]{1,2}\.?[0-9]{3}\.?[0-9]{3}[ -]?[A-Z]\b)"
    r"|(?P<cf>\b[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z]"
    r"[0-9LMNPQRSTUV]{3}[A-Z]\b)"
)


def _keyword_table() -> tuple[tuple[str, str, re.Pattern[str]], ...]:
    """(kind, RE2 fragment, compiled fragment) for each line of ``data/id_keywords.txt``."""
    table = []
    for entry in entries("id_keywords.txt"):
        kind, _space, fragment = entry.partition(" ")
        # field names write the spaces and hyphens as underscores: steuer_id, social_security
        fragment = fragment.strip().replace(r"\s+", r"[\s_]+").replace("-?", "[-_]?")
        table.append((kind, fragment, re.compile(fragment, re.IGNORECASE)))
    return tuple(table)


_KEYWORDS: Final = _keyword_table()
"""The ID names and the kind of ID each names (which validator its value must pass)."""

_CONNECTORS: Final = (
    r"number|num|no|nr|nummer|numéro|numero|número|núm|code|id|"
    r"is|was|reads|ist|lautet|lautete|est|es|era|luidt|was|are|sind|"
    r"the|die|der|des|le|la|el|de|del|du|van|von|vom|het|my|mein|meine|mon|ma|mi|mijn|"
    r"has|hat|with|mit|avec|con|met|a|tiene|heeft|of|for|für|pour|para|voor|"
    r"klant|client|customer|kunde|kundin|cliente|patient|patiënt|paciente|employee|"
    r"mitarbeiter|werknemer|empleado|salarié|holder|inhaber|titular|titulaire"
)
"""Words that may stand between an ID's name and its value ("BSN-nummer is", "pasaporte
número", "Reisepass hat die Nummer", "BSN-nummer van de klant"), at most four of them;
capitalised words count too ("Steuer-ID von Frau Petra Hoffmann:")."""

IDKW_RULE = (
    r"(?i:\b(?P<kw>" + "|".join(frag for _kind, frag, _re in _KEYWORDS) + r")\b)"
    r"(?:[^A-Za-z0-9\n]{0,4}(?:\pL+|(?i:n)[°º]|#)\.?){0,6}[^A-Za-z0-9\n]{0,4}"
    r"(?:[A-Z]{1,4}[ .\-/]?)?[0-9]"
)
"""RE2 pattern of an ID's name and, at most six words later, something that starts like
a value (a digit, or up to four capitals and a digit); the value itself is looked for in
Python (:func:`on_idkw`), so any words may stand between them ("Steuer-ID (neu):",
"BSN van mijn dochter:", "passport, which expires in 2031, is")."""

_VALUE: Final = re.compile(
    r"(?<![A-Za-z0-9])[A-Z0-9](?:[A-Z0-9]|[ .\-/][A-Z0-9]|[ \t]?\n[ \t]?[0-9]){4,22}"
    r"(?![A-Za-z0-9])"
)
"""A value after an ID's name: letters and digits, groups split by spaces, dots, hyphens,
slashes or a line break."""
_LOWER_PASSPORT: Final = re.compile(r"(?<![A-Za-z0-9])[a-z]{0,3}[0-9]{5,9}(?![A-Za-z0-9])")
"""A passport number written in lower case ("xda123456"): up to three letters, digits."""
_GAP_WORD: Final = re.compile(r"[^\W\d_]+")

_NINO: Final = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z][0-9]{6}[A-D]?")


def _ssn_digits(compact: str) -> bool:
    return len(compact) == 9 and compact.isdigit() and _us_ssn.is_valid(compact)


def _nino(compact: str) -> bool:
    return _NINO.fullmatch(compact) is not None and _nino_ok(compact)


def _es_id(compact: str) -> bool:
    return _es_dni.is_valid(compact) or _es_nie.is_valid(compact) or _es_nif.is_valid(compact)


def _bsn(compact: str) -> bool:
    return compact.isdigit() and len(compact) in (8, 9) and _nl_bsn.is_valid(compact)


_VALIDATORS: Final[dict[str, Callable[[str], bool]]] = {
    "ssn": _ssn_digits,
    "nhs": _gb_nhs.is_valid,
    "idnr": _de_idnr.is_valid,
    "dni": _es_id,
    "nie": _es_nie.is_valid,
    "cf": _it_cf.is_valid,
    "nino": _nino,
    "nir": _fr_nir.is_valid,
    "bsn": _bsn,
}
"""Kinds of keyword-named IDs that have a checksum or a fixed format: the value must pass
it to be a certain finding (see :func:`_typo_of_id` for values that fail it)."""

_SHAPES: Final[dict[str, re.Pattern[str]]] = {
    "nhs": re.compile(r"[0-9]{10}"),
    "idnr": re.compile(r"[1-9][0-9]{10}"),
    "dni": re.compile(r"[0-9]{8}[A-Z]|[XYZKLM][0-9]{7}[A-Z]|[A-HJNP-SUVW][0-9]{7}[0-9A-J]"),
    "nie": re.compile(r"[XYZ][0-9]{7}[A-Z]"),
    "cf": re.compile(
        r"[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]"
    ),
    "bsn": re.compile(r"[0-9]{8,9}"),
}
"""The exact shape of each kind: a value of that shape that fails its check digits is
taken for a mistyped real ID (fail closed), unless it is a placeholder. US SSNs and UK
NINOs have no check digit: one that fails is of a range never issued (``000-..``), which
is how placeholders are written, so they have no entry. The French NIR has no entry
either: a NIR with a wrong key stays public, as ``tests/test_sensitivity.py`` pins
(``NIR 1 85 05 78 006 048 31``); the other kinds with check digits fail closed."""


def is_placeholder(compact: str) -> bool:
    """A value written to stand for an ID, not to be one: one or two distinct digits
    ("000000000", "111111110"), five zeros in a row, or, in a value of digits only
    (and at most a final check character), a straight run ("123456789", "987654321",
    "12345678Z", "123456782") or a repeated group ("123123123")."""
    digits = digits_of(compact)
    if len(digits) < 4:
        return False
    if len(set(digits)) <= 2 or "00000" in digits:
        return True
    if not compact[:-1].isdigit():
        return False  # "XDA123456", "D1234-56789-01234": letters and digits, a real shape
    if digits in "01234567890123456789" or digits in "98765432109876543210":
        return True
    if len(digits) > 6 and digits[:-1] in "0123456789012345678":
        return True
    for period in (2, 3, 4):
        if len(digits) >= 2 * period and digits == (digits[:period] * 6)[: len(digits)]:
            return True
    return False


def _typo_of_id(kind: str, compact: str) -> bool:
    """A value after an ID's name that has the ID's exact shape but fails its check: the
    request is kept local (an uncertain finding), unless the value is a placeholder.

    A checksum catches every single mistyped digit, so a real ID with a typo fails it;
    sending it to the cloud would still send eight of its nine digits. Placeholders
    (``000000000``, ``123456789``) are what documentation and test data use instead.
    """
    shape = _SHAPES.get(kind)
    return (
        shape is not None and shape.fullmatch(compact) is not None and not is_placeholder(compact)
    )


_DECOY_CONTEXT: Final = re.compile(
    r"(?i)\b(?:test|tests|testing|fixture|fixtures|example|examples|e\.g|sample|dummy|fake|"
    r"mock|placeholder|invalid|invalide|ungültig|ungueltig|inválido|invalido|ongeldig|"
    r"beispiel|exemple|ejemplo|voorbeeld|validator|validate|validation|checksum|"
    r"prüfziffer|11-proef|elfproef|11-proof)\b"
)
"""Words that say a value is made up (a test fixture, an invalid example, a validator's
input): next to them a value that fails its check digits is a decoy, not a typo."""


def _line_around(text: str, start: int, end: int) -> str:
    """The sentence-ish context of a value: up to 100 characters either side, in its line."""
    lo = text.rfind("\n", max(0, start - 100), start) + 1 or max(0, start - 100)
    hi = text.find("\n", end, end + 100)
    return text[lo : hi if hi != -1 else end + 100]


def _passport_ok(compact: str) -> bool:
    """6-9 letters and digits, at least one digit, not one or two digits repeated.

    Passport numbers have no check digit, so there is no typo to tell from a decoy: a
    straight run ("987654321") after a passport word is kept local (fail closed); only
    values that cannot be a document number ("000000000", "C00000000") are let go.
    """
    digits = digits_of(compact)
    return (
        6 <= len(compact) <= 9
        and compact.isalnum()
        and len(digits) >= 1
        and len(set(digits)) > (2 if len(digits) >= 6 else 0)
        and "00000" not in digits
    )


def _keyword_kind(keyword: str) -> str:
    for kind, _fragment, pattern in _KEYWORDS:
        if pattern.fullmatch(keyword):
            return kind
    return "generic"


def on_number(sc: Scan, m: Hit) -> None:
    kind: str | None = m.kind
    if kind is None:
        return
    s, e = m.span(kind)
    text = sc.text
    value = text[s:e]
    before = text[max(0, s - 1) : s]
    after = text[e : e + 2]
    if kind == "nir":
        if _fr_nir.is_valid(value):
            sc.add("national_id", s, e)
            return
        kind = "card"  # 15 digits that are no NIR may still be a card number
    if kind == "card":
        if before in ("+", ".", "/") or (after[:1] in ".," and after[1:2].isdigit()):
            return
        if _card_ok(value):
            sc.add("payment_card", s, e)
    elif kind == "ssn":
        if _us_ssn.is_valid(value):
            sc.add("national_id", s, e)
    elif kind == "iban":
        n = _iban_span(value)
        if n:
            sc.add("iban", s, s + n)
    elif kind == "nino":
        if _nino_ok(value):
            sc.add("national_id", s, e)
    elif kind == "dni":
        value = "".join(c for c in value if c.isalnum())  # "12.345.678-Z", "X 1234567 L"
        if _es_dni.is_valid(value) or _es_nie.is_valid(value):
            sc.add("national_id", s, e)
    elif kind == "cf" and _it_cf.is_valid(value):
        sc.add("national_id", s, e)


def _judge(sc: Scan, kind: str, s: int, e: int) -> None:
    """The value ``text[s:e]`` named as an ID of ``kind``: a finding, an uncertain one (a
    typo of a real ID), or nothing (a placeholder, a decoy, no ID's shape)."""
    text = sc.text
    compact = "".join(c for c in text[s:e] if c.isalnum())
    digits = digits_of(compact)
    if not 6 <= len(compact) <= 15 or DATE_LIKE.fullmatch(compact):
        return
    if len(digits) < (1 if kind == "passport" else 2):
        return
    if kind == "passport":
        if _passport_ok(compact):
            sc.add("passport", s, e)
        return
    validator = _VALIDATORS.get(kind)
    if validator is None:  # generic: a named ID without a checksum
        if not is_placeholder(compact):
            sc.add("national_id", s, e)
    elif validator(compact):
        sc.add("national_id", s, e)
    elif _typo_of_id(kind, compact) and not _DECOY_CONTEXT.search(_line_around(text, s, e)):
        sc.add("national_id", s, e, certain=False)


_SENTENCE_END: Final = re.compile(r"[.!?][ \t]+[A-Z][a-z]")


def _gap_ok(gap: str) -> bool:
    """The text between an ID's name and a value: at most six words ("Steuer-ID (neu):",
    "my passport, which expires in 2031, is"), no sentence end."""
    return len(_GAP_WORD.findall(gap)) <= 6 and _SENTENCE_END.search(gap) is None


def _start(m: re.Match[str]) -> int:
    return m.start()


def on_idkw(sc: Scan, m: Hit) -> None:
    """An ID's name: the first value after it (80 characters on, its line and the next)
    that its kind accepts (``data/id_keywords.txt``, :func:`_judge`)."""
    ks, ke = m.span("kw")
    text = sc.text
    kind = _keyword_kind(" ".join(text[ks:ke].split()))
    end = min(len(text), ke + 80)
    first = text.find("\n", ke, end)
    if first != -1:
        second = text.find("\n", first + 1, end)
        end = second if second != -1 else end
    values = list(_VALUE.finditer(text, ke, end))
    if kind == "passport":
        values = sorted(values + list(_LOWER_PASSPORT.finditer(text, ke, end)), key=_start)
    for v in values:
        s, e = v.span()
        if not _gap_ok(text[ke:s]):
            return
        found = len(sc.findings)
        _judge(sc, kind, s, e)
        if len(sc.findings) > found:
            return


IDCOL_RULE: Final = (
    r"(?i:(?:\b|_)(?P<kw>" + "|".join(frag for _kind, frag, _re in _KEYWORDS) + r")"
    r"(?:[ _-]?(?:number|nummer|num|nr|no|id|n[°º])\.?)?(?:[ _-]?\([A-Za-z.-]{1,8}\))?"
    r"(?:[_-][a-z]{2})?(?:/[A-Za-z]{2,4})?)[\"']?[ \t]*(?:[,;\t|]|\r?\n)"
)
"""RE2 pattern of an ID's name as a table's column header (``naam;bsn;plaats``), with a
number word, a bracketed note, a country code or a second ID's name in its cell
("Passport No.", "Steuer-ID (IdNr)", "tax_id_de", "NIE/DNI"); :func:`on_idcol` checks
that a table follows. (Any 16 characters made "passport office, and" in prose a header.)"""

_CELL_SEPARATORS: Final = ",;\t|"


def _rows_follow(text: str, line_end: int, sep: str, count: int) -> bool:
    """One of the three lines after a header line has as many separators as it (a
    Markdown table's ``|---|`` line counts)."""
    pos = line_end + 1
    for _ in range(3):
        end = text.find("\n", pos)
        row = text[pos : end if end != -1 else len(text)]
        if row.count(sep) == count:
            return True
        if end == -1:
            break
        pos = end + 1
    return False


def on_idcol(sc: Scan, m: Hit) -> None:
    """An ID's name heading a column: each value below it in that column is judged as an
    ID of that kind (:func:`_judge`), up to a blank line or 200 rows."""
    ks, ke = m.span("kw")
    text = sc.text
    line_start = text.rfind("\n", 0, ks) + 1
    line_end = text.find("\n", ke)
    if line_end == -1:
        return
    header = text[line_start:line_end]
    counts = [(header.count(c), c) for c in _CELL_SEPARATORS]
    count, sep = max(counts)
    if count == 0:
        return
    column = text[line_start:ks].count(sep)
    if not _rows_follow(text, line_end, sep, count):
        return  # a line of prose with commas in it, not a table's header
    kind = _keyword_kind(" ".join(text[ks:ke].split()))
    pos, rows = line_end + 1, 0
    while pos < len(text) and rows < 200:
        end = text.find("\n", pos)
        end = len(text) if end == -1 else end
        if text[pos:end].strip() == "":
            break  # a blank line ends the table
        cells = text[pos:end].split(sep)
        if column < len(cells):
            start = pos + sum(len(c) + 1 for c in cells[:column])
            cell = cells[column]
            inner = cell.strip().strip("\"'").strip()
            if inner:
                offset = start + cell.index(inner)
                _judge(sc, kind, offset, offset + len(inner))
        pos, rows = end + 1, rows + 1


IDKW_BEFORE_RULE: Final = (
    r"(?P<id>\b[0-9](?:[ .\-/]?[0-9]){7,11}\b)[^A-Za-z0-9\n]{0,4}"
    r"(?:\pL+[^A-Za-z0-9\n]{1,4}){0,4}"
    r"(?i:\b(?P<kw>" + "|".join(frag for _kind, frag, _re in _KEYWORDS) + r")\b)"
)
"""RE2 pattern of a number and, at most four words later, an ID's name ("86095742719 ist
meine Steuer-ID", "111222333 is mijn BSN")."""


def on_idkw_before(sc: Scan, m: Hit) -> None:
    """A number before an ID's name: a finding only when it passes the check digits of
    an ID that has them (no typo is assumed for a number named after it)."""
    ks, ke = m.span("kw")
    s, e = m.span("id")
    kind = _keyword_kind(" ".join(sc.text[ks:ke].split()))
    validator = _VALIDATORS.get(kind)
    compact = "".join(c for c in sc.text[s:e] if c.isalnum())
    if validator is not None and validator(compact) and not is_placeholder(compact):
        sc.add("national_id", s, e)


RULES: Final[list[tuple[str, str, Handler]]] = [
    ("idkw", IDKW_RULE, on_idkw),
    ("idkw_before", IDKW_BEFORE_RULE, on_idkw_before),
    ("idcol", IDCOL_RULE, on_idcol),
    ("number", NUMBER_RULE, on_number),
    *mrz.RULES,
]
"""This family's rules as (name, RE2 pattern, handler), in the order the scanner runs them."""

__all__ = [
    "DATE_LIKE",
    "IDCOL_RULE",
    "IDKW_BEFORE_RULE",
    "IDKW_RULE",
    "NUMBER_RULE",
    "RULES",
    "digits_of",
    "is_placeholder",
    "on_idcol",
    "on_idkw",
    "on_number",
]
