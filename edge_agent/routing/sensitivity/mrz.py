"""Machine-readable zones of travel documents (ICAO Doc 9303): passports and ID cards.

Categories ``passport`` (document code ``P``, or a 44-character number line with no
names line above it) and ``national_id`` (ID cards and other documents, codes ``I``,
``A``, ``C``) for the number line(s), and ``person_name`` for the name field of the names
line (``ERIKSSON<<ANNA<MARIA``), so that redaction replaces each as one value.

Formats (Doc 9303 parts 4-6): TD3 (passports) is two lines of 44 characters, TD2 two of
36, TD1 (ID cards) three of 30. The number line of TD3/TD2 holds the document number and
its check digit, the nationality, the date of birth and its check digit, the sex, the
expiry date and its check digit; TD1 has the document number on its first line and the
dates on its second. Check digits: character values (digits as such, ``A``-``Z`` 10-35,
``<`` 0) weighted 7, 3, 1, 7, 3, 1 ..., summed, modulo 10.

The rule (:data:`MRZ_RULE`) matches the number line's fixed core (or a TD1 first and
second line), and :func:`on_mrz` validates the check digits:

* all three check digits right: a certain finding;
* a check digit wrong but a names line (``P<UTOERIKSSON<<ANNA<MARIA<<<...``) next to it:
  an uncertain finding (fail closed: the names and dates are there, a check digit may
  have been mistyped or OCR-read wrong);
* otherwise (a stray string of that shape with wrong check digits): nothing.

A names line alone (``P<UTOERIKSSON<<ANNA<MARIA<<<...`` of 30 characters or more, with the
``<<`` between surname and given names) gives its ``person_name`` finding: it is a
person's name from a travel document, whatever follows it.
"""

from __future__ import annotations

import re
from typing import Final

from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan

MRZ_RULE: Final = (
    # TD3/TD2 number line: document number, check, nationality, birth date, check, sex,
    # expiry date, check
    r"(?:\b|\\n)(?P<line>[A-Z0-9<]{9}[0-9][A-Z<]{3}[0-9]{6}[0-9][MFX<][0-9]{6}[0-9][A-Z0-9<]{7,16})"
    # TD1 first line (code, state, document number, check) and second line's dates
    r"|(?P<td1>\b[ACI][A-Z0-9<][A-Z<]{3}[A-Z0-9<]{9}[0-9<][A-Z0-9<]{15}[ \t]*\r?\n[ \t]*"
    r"[0-9]{6}[0-9][MFX<][0-9]{6}[0-9][A-Z<]{3}[A-Z0-9<]{11}[0-9]\b)"
    # a names line on its own: code, issuing state, SURNAME<<GIVEN<NAMES<<<
    r"|(?P<names>\b[PIAC][A-Z0-9<][A-Z<]{3}[A-Z]+(?:<[A-Z]+)*<<[A-Z]+[A-Z<]{4,})"
)
"""RE2 pattern of the rule: a TD3/TD2 number line, a TD1 zone's first two lines, or a
names line."""

_VALUES: Final[dict[str, int]] = {str(d): d for d in range(10)} | {
    chr(65 + i): 10 + i for i in range(26)
}


def check_digit(field: str) -> int:
    """The Doc 9303 check digit of ``field`` (``<`` and unknown characters count 0)."""
    weights = (7, 3, 1)
    return sum(_VALUES.get(c, 0) * weights[i % 3] for i, c in enumerate(field)) % 10


def _ok(field: str, check: str) -> bool:
    return check.isdigit() and check_digit(field) == int(check)


def number_line_ok(line: str) -> bool:
    """The three check digits of a TD3/TD2 number line (document, birth, expiry)."""
    return (
        len(line) >= 28
        and _ok(line[0:9], line[9])
        and _ok(line[13:19], line[19])
        and _ok(line[21:27], line[27])
    )


def td1_ok(first: str, second: str) -> bool:
    """The check digits of a TD1 zone: document number (first line), birth and expiry
    (second line)."""
    return (
        len(first) >= 15
        and len(second) >= 15
        and _ok(first[5:14], first[14])
        and _ok(second[0:6], second[6])
        and _ok(second[8:14], second[14])
    )


_NAMES_LINE: Final = re.compile(r"[PIAC][A-Z0-9<][A-Z<]{3}[A-Z]+(?:<[A-Z]+)*<<[A-Z<]+")

_NUMBER_LINE: Final = re.compile(
    r"[ \t]*\r?\n[ \t]*[A-Z0-9<]{9}[0-9][A-Z<]{3}[0-9]{6}[0-9][MFX<][0-9]{6}[0-9]"
)
"""A TD3/TD2 number line starting on the next line (the line rule then has the zone)."""


def _line_above(text: str, start: int) -> tuple[int, str] | None:
    """The line right above the one that starts at ``start``: (start, text). Lines end at
    a line break or, in JSON and log strings, at a written ``\\n``."""
    if text[max(0, start - 2) : start] == "\\n":
        # an escaped line break: the names line is the MRZ-character run before it
        end = start - 2
        begin = end
        while begin > 0 and (
            text[begin - 1].isupper() or text[begin - 1].isdigit() or text[begin - 1] == "<"
        ):
            begin -= 1
        return (begin, text[begin:end]) if begin < end else None
    line_start = text.rfind("\n", 0, start) + 1
    if line_start == 0:
        return None
    above_start = text.rfind("\n", 0, line_start - 1) + 1
    above = text[above_start : line_start - 1].rstrip("\r")
    stripped = above.strip()
    return above_start + (len(above) - len(above.lstrip())), stripped


def _category(code: str, length: int) -> str:
    if code.startswith("P") or (not code and length >= 44):
        return "passport"
    return "national_id"


def _add_name(sc: Scan, start: int, field: str) -> None:
    """A ``person_name`` finding for the name field ``SURNAME<<GIVEN<NAMES<<<`` that
    starts at ``start``: from its first letter to its last."""
    letters = [i for i, c in enumerate(field) if c.isalpha()]
    if letters:
        sc.add("person_name", start + letters[0], start + letters[-1] + 1)


def on_mrz(sc: Scan, m: Hit) -> None:
    """Validates a zone's check digits (the module docstring says what is found)."""
    text = sc.text
    if m.has("line"):
        s, e = m.span("line")
        line = text[s:e]
        above = _line_above(text, s)
        names = above is not None and _NAMES_LINE.fullmatch(above[1]) is not None
        code = above[1][:1] if above is not None and names else ""
        ok = number_line_ok(line)
        if ok or names:
            sc.add(_category(code, len(line)), s, e, certain=ok)
        if names and above is not None:
            _add_name(sc, above[0] + 5, above[1][5:])
    elif m.has("td1"):
        s, e = m.span("td1")
        first, _nl, second = text[s:e].partition("\n")
        certain = td1_ok(first.strip(), second.strip())
        after = text[e : e + 40]
        third = after.strip().split("\n", 1)[0].strip() if after[:1] in "\r\n" else ""
        has_names = bool(third) and set(third) <= set(_MRZ_LETTERS) and "<<" in third
        if certain or has_names:
            sc.add(_category(first.strip()[:1], 30), s, e, certain=certain)
        if has_names:
            _add_name(sc, text.index(third, e), third)
    else:
        s, e = m.span("names")
        if e - s >= 30 and _NUMBER_LINE.match(text, e) is None:
            _add_name(sc, s + 5, text[s + 5 : e])


_MRZ_LETTERS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ<"


RULES: Final[list[tuple[str, str, Handler]]] = [("mrz", MRZ_RULE, on_mrz)]
"""This family's rules as (name, RE2 pattern, handler)."""

__all__ = ["MRZ_RULE", "RULES", "check_digit", "number_line_ok", "on_mrz", "td1_ok"]
