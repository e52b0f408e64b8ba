"""Identifiers: payment cards, IBANs, national IDs and passport numbers.

Categories ``payment_card``, ``iban``, ``national_id`` and ``passport`` (all restricted).
Numbers are found by their format (:data:`NUMBER_RULE`) and must pass their checksum
(Luhn, mod 97, the national ID rules of ``python-stdnum``); other IDs are found after a
keyword that names them (:data:`IDKW_RULE`, keywords in ``data/id_keywords.txt``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from stdnum import iban as _std_iban
from stdnum.de import idnr as _de_idnr
from stdnum.es import dni as _es_dni
from stdnum.es import nie as _es_nie
from stdnum.fr import nir as _fr_nir
from stdnum.gb import nhs as _gb_nhs
from stdnum.it import codicefiscale as _it_cf
from stdnum.us import ssn as _us_ssn

from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.terms import alternation, pairs


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
    r"|(?P<dni>\b[XYZ]?[0-9]{7,8}-?[A-Z]\b)"
    r"|(?P<cf>\b[A-Z]{6}[0-9LMNPQRSTUV]{2}[ABCDEHLMPRST][0-9LMNPQRSTUV]{2}[A-Z]"
    r"[0-9LMNPQRSTUV]{3}[A-Z]\b)"
)


IDKW_RULE = (
    r"(?i:\b(?P<kw>" + alternation("id_keywords.txt") + r")\b)"
    r"[^A-Za-z0-9\n]{0,4}(?:(?i:number|num|no|nr|n°|#|id)\.?[^A-Za-z0-9\n]{0,4})?"
    r"(?:(?i:is|was|reads)\s*:?\s*)?(?P<id>[A-Z0-9](?:[A-Z0-9]|[ \-][A-Z0-9]){4,16})\b"
)


_NINO: Final = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z][0-9]{6}[A-D]")


def _ssn_digits(compact: str) -> bool:
    return len(compact) == 9 and compact.isdigit() and _us_ssn.is_valid(compact)


_KEYWORD_VALIDATORS: Final[dict[str, Callable[[str], bool]]] = {
    "social security": _ssn_digits,
    "ssn": _ssn_digits,
    "nhs": _gb_nhs.is_valid,
    "steuer-id": _de_idnr.is_valid,
    "steuerid": _de_idnr.is_valid,
    "steueridentifikationsnummer": _de_idnr.is_valid,
    "idnr": _de_idnr.is_valid,
    "dni": lambda c: _es_dni.is_valid(c) or _es_nie.is_valid(c),
    "nie": _es_nie.is_valid,
    "codice fiscale": _it_cf.is_valid,
    "national insurance": lambda c: _NINO.fullmatch(c) is not None and _nino_ok(c),
    "nino": lambda c: _NINO.fullmatch(c) is not None and _nino_ok(c),
}
"""Keyword-named IDs that have a checksum or a fixed format: the value must pass it."""


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
        if _es_dni.is_valid(value) or _es_nie.is_valid(value):
            sc.add("national_id", s, e)
    elif kind == "cf" and _it_cf.is_valid(value):
        sc.add("national_id", s, e)


def on_idkw(sc: Scan, m: Hit) -> None:
    ks, ke = m.span("kw")
    s, e = m.span("id")
    text = sc.text
    value = text[s:e]
    keyword = " ".join(text[ks:ke].lower().split())
    compact = value.replace(" ", "").replace("-", "")
    digits = digits_of(compact)
    if len(digits) < 2 or not 6 <= len(compact) <= 15 or DATE_LIKE.fullmatch(compact):
        return
    validator = _KEYWORD_VALIDATORS.get(keyword)
    if validator is not None:
        if validator(compact):
            sc.add("national_id", s, e)
    elif keyword in ("passport", "passeport", "pasaporte", "passaporto", "reisepass"):
        if len(compact) <= 9 and compact.isalnum():
            sc.add("passport", s, e)
    else:
        sc.add("national_id", s, e)


RULES: Final[list[tuple[str, str, Handler]]] = [
    ("idkw", IDKW_RULE, on_idkw),
    ("number", NUMBER_RULE, on_number),
]
"""This family's rules as (name, RE2 pattern, handler), in the order the scanner runs them."""

__all__ = [
    "DATE_LIKE",
    "IDKW_RULE",
    "NUMBER_RULE",
    "RULES",
    "digits_of",
    "on_idkw",
    "on_number",
]
