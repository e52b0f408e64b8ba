"""Phone numbers: by their format, or any number that could be one next to contact words.

Category ``phone`` (restricted). Fail closed: a number that libphonenumber would call
*possible* (seven to fifteen digits in a phone notation) is contact data when it has
context, even if no operator has that range (libphonenumber's *valid*):

* a word that announces a number before it ("Tel.", "Tél. :", "Móvil:", "Handy",
  "mobiel", "reachable on", "bel me terug op", "Son numéro :", "what's her number",
  ``data/phone_words.txt``), newlines included (a CSV header ``nombre,telefono``), at
  most 48 characters before it;
* such a word right after it ("0171 4492 830 anzurufen", "06 12 34 56 78 (mobile)");
* a person's name right before it, from the names list of :mod:`.names`
  ("Marta Castillo,766 5107 60", "Jan de Vries: 06-12345678").

Without context only formats that are phone numbers by themselves count: ``+``/``00``
numbers that libphonenumber calls valid, NANP ``(415) 555-2671``, the French pairs
format, a trunk code in brackets. A number found by its context is certain when
libphonenumber calls it valid (with the country code it carries, or the region its
context word suggests), otherwise it is an uncertain finding (the request stays local;
redaction leaves it). Versions, dates, IPs, timestamps, long digit runs and numbers after
an order/invoice/ticket/part word stay public; so does a service line of an organisation
("the Deutsche Bahn service hotline is ...") with no person word before it.

Generalised (issue 13): a generic word ("número", "number") owned by a possessive or
followed by a phone word takes any number libphonenumber calls possible in a common region
(DE FR ES NL GB US IT AT CH BE PT), not only ``+``/``0`` ones; so does a 9-13 digit number
after a name and a separator; signature lines ("M: ...", "T ...", "Ph", "Tfno") count;
header cells of phone columns may carry a prefix, a digit or a note ("mobile_phone",
"phone1", "Telefon (privat)") but not another number's label ("order_number").
Toll-free, shared-cost and premium-rate numbers (0800, 0180, 0900, 08 0x, 900-902,
0300/0345, 1-800/888/877/866/855/844/833) are an organisation's line when no person word
is before or after them.
"""

from __future__ import annotations

import re
from typing import Final

import phonenumbers

from edge_agent.routing.sensitivity.identifiers import DATE_LIKE, digits_of
from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.names import name_spans
from edge_agent.routing.sensitivity.terms import alternation

_WORDS: Final = alternation("phone_words.txt")
_SEP: Final = r" .\-/\x{a0}\x{2013}"
"""Separators inside a phone number: space, dot, hyphen, slash, no-break space, en dash."""
_NUMBER: Final = r"(?:\+|\(\+?)?[0-9][0-9()" + _SEP + r"]{5,24}[0-9]"

PHONE_RULE = (
    r"(?P<intl>(?:\+|\b00)[1-9][0-9]{0,2}\)?["
    + _SEP
    + r"]{0,3}(?:\(0?[0-9]{1,4}\)["
    + _SEP
    + r"]{0,3})?[0-9]{1,5}(?:["
    + _SEP
    + r"]{0,3}[0-9]{2,5}){1,4}\b)"
    r"|(?P<nanp>(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[\-.])[2-9][0-9]{2}[\-.][0-9]{4}\b)"
    r"|(?P<fr>\b0[1-9](?:[ .][0-9]{2}){4}\b)"
    r"|(?P<trunk>\(0[1-9][0-9]{0,3}\) ?[0-9]{2,4}(?:[ .\-]?[0-9]{2,4}){1,3}\b)"
)
"""Numbers that are phone numbers by their format alone."""

_GENERIC: Final = alternation("phone_words_generic.txt")

CONTEXT_RULE = (
    r"(?P<word>(?i:(?:\b|_)(?:" + _WORDS + r")(?:\b|_)))[^0-9+\n]{0,48}?"
    r"(?P<ctx>[+(]?[0-9][0-9()" + _SEP + r"]{4,}[0-9])"
    r"|(?m:^)[ \t]*(?P<sig>(?:M|T|P|F|Mob|Ph|Tfno|Tlf))\.?[ \t]*:?[ \t]*"
    r"(?P<sctx>(?:\+|\(|0)[0-9][0-9()" + _SEP + r"]{4,}[0-9])"
    r"|(?P<gword>(?i:(?:\b|_)(?:" + _GENERIC + r")(?:\b|_)))[^0-9+\n]{0,48}?"
    r"(?P<gctx>[+(]?[0-9][0-9()" + _SEP + r"]{4,}[0-9])"
)
"""A phone word, then (on its line, at most 48 characters on) a run of at least six digits
and separators (a generic word, "number", only before a ``+``, a bracket or a trunk
``0``); the number itself is read in Python. No line break in the filler: with one the RE2
set's automaton outgrew its memory on dense text (its cache was reset mid-scan: 10-17 ms
spikes per 4 KB)."""

COLUMN_RULE = (
    r"(?m)(?:^|[,;\t|])[ \t]*[\"']?(?i:(?:[a-z]+_)?(?:" + _WORDS + "|" + _GENERIC + r")"
    r"(?:_[a-z]+)?[0-9]?(?:[ \t]*\([^()\n,;|]{1,20}\))?)[\"']?[ \t]*(?:[,;\t|]|\r?\n)"
)
"""A phone word as a cell of a delimited header line: the column below holds numbers."""

_NUMBER_AT: Final = re.compile(r"(?:\+|\(\+?)?[0-9][0-9() .\-/\u00a0\u2013]{5,24}[0-9]")
"""The number that starts where the context rule's match ends."""

AFTER_RULE = (
    r"(?P<after>(?:\+|\b00|\b0|\(0)[0-9][0-9()" + _SEP + r"]{5,22}[0-9])[^0-9\n]{0,24}?"
    r"(?i:\b(?:" + _WORDS + "|" + _GENERIC + r")\b)"
)
"""A number written like a phone number, then a phone word on the same line."""

NAMED_RULE = (
    r"\b\p{Lu}\p{Ll}+(?:(?:[ \t]*[,;:|\t]|[ \t]+[\-\x{2013}])[ \t]*(?P<named>" + _NUMBER + r")"
    r"|[ \t]+(?P<named2>(?:\+|\b0|\(\+?|\(0)[0-9(][0-9()" + _SEP + r"]{5,24}[0-9]))"
)
"""A number right after a capitalised word and a separator ("Marta Castillo,766 5107
60"), or after a space when written like a phone number ("Anna Schmidt 0171 2345678")."""

_PHONE_WORD: Final = re.compile(r"(?i)(?:\b|_)(?:" + _WORDS + "|" + _GENERIC + r")(?:\b|_)")
_PHONE_CELL: Final = re.compile(r"(?i)(?:\b|_)(?:" + _WORDS + "|" + _GENERIC + r")(?:\b|_|[0-9])")
"""A phone word in a header cell ("phone1", "Telefon (privat)", "mobile_phone")."""
_SPECIFIC_CELL: Final = re.compile(r"(?i)(?:\b|_)(?:" + _WORDS + r")(?:\b|_|[0-9])")
"""A header cell with a phone word proper, not only "number"/"contact"."""
_LABEL_CELL: Final = re.compile(r"(?i)\b(?:" + alternation("number_labels.txt") + r")\b")
"""A header cell for another kind of number ("order_number", "Kundennummer")."""

_GENERIC_WORDS: Final = frozenset(
    {"number", "nummer", "numéro", "numero", "número", "no", "nr", "contact", "kontakt"}
)
"""Words that announce numbers of all kinds: the number must then look like a phone's."""

_LABEL: Final = re.compile(r"(?i)\b(?:" + alternation("number_labels.txt") + r")\b[^0-9\n]{0,24}\Z")
"""A word for another kind of number right before the candidate ("order number ...")."""

_PERSONAL: Final = re.compile(
    r"(?i)\b(?:my|his|her|their|mein|meine|sein|seine|ihr|ihre|mon|ma|son|sa|mi|su|tu|"
    r"mijn|zijn|haar|je|herr|frau|mr|mrs|ms|dr|mme|sr|sra|dhr|mevr)\b|'s\b"
)
_SERVICE: Final = re.compile(
    r"(?i)\b(?:customer\s+(?:service|support|care)|(?:service|support)[\s-]+(?:hotline|line|"
    r"number|desk)|help\s*desk|hotline|helpline|switchboard|kundenservice|kundendienst|"
    r"servicenummer|service-hotline|zentrale|service\s+client(?:s|[eè]le)?|standard|"
    r"atenci[oó]n\s+al\s+cliente|centralita|klantenservice|reception|rezeption|accueil|"
    r"recepci[oó]n|receptie)\b"
)
_REGIONS: Final[dict[str, str]] = {
    key: region for region, keys in (
        ("DE", ("tel", "telefon", "handy", "mobil", "anrufen", "anzurufen", "telefonnummer",
                "handynummer", "mobilnummer", "rückruf", "ruckruf", "erreichbar", "festnetz")),
        ("FR", ("tél", "téléphone", "telephone", "portable", "joindre", "appeler", "rappeler",
                "numéro", "joignable")),
        ("ES", ("teléfono", "telefono", "móvil", "movil", "llamar", "llámame", "llamadme",
                "número", "localizable")),
        ("NL", ("mobiel", "telefoon", "telefoonnummer", "bel", "bellen", "terugbellen",
                "bereikbaar", "gsm")),
        ("IT", ("cellulare", "chiamare")),
    ) for key in keys
}  # fmt: skip
"""The region a context word suggests, for numbers written without a country code."""


def _parse_valid(number: str, region: str | None) -> tuple[bool, bool]:
    """(possible, valid) for ``number`` in ``region`` (None: it carries ``+``)."""
    if number.startswith("00"):
        number, region = "+" + number[2:], None
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return False, False
    return phonenumbers.is_possible_number(parsed), phonenumbers.is_valid_number(parsed)


def _phone_shaped(value: str) -> bool:
    """Written like a phone number: a ``+``, a trunk ``0``, brackets, or digit groups."""
    if value[0] in "+(0":
        return True
    groups = [g for g in re.split(r"[ .\-/\u00a0\u2013]+", value) if g]
    return len(groups) >= 3 and all(1 <= len(g) <= 5 for g in groups)


def _not_a_phone(value: str) -> bool:
    """Dates, versions, IP addresses and the like, or a digit count no phone has."""
    digits = digits_of(value)
    if not 7 <= len(digits) <= 15 or DATE_LIKE.search(value):
        return True
    return value.count(".") >= 3  # a dotted version or an IP address


def _certain(value: str, region: str | None) -> bool:
    """True: valid (with its country code, or in ``region``); False: possible, or not
    known to be valid (the finding is raised to fail closed)."""
    if value.startswith(("+", "00")):
        return _parse_valid(value, None)[1]
    if region is not None:
        return _parse_valid(value, region)[1]
    return False


def _inside_number(text: str, s: int, e: int) -> bool:
    """The candidate is a part of a longer number ("6011 2815 0145 8754")."""
    before, after = text[max(0, s - 2) : s], text[e : e + 2]
    sep = r"[ .\-/\u00a0\u2013]"
    return bool(re.fullmatch(r"[0-9]" + sep, before) or re.fullmatch(sep + r"[0-9]", after))


def _service_line(text: str, start: int, end: int | None = None) -> bool:
    """An organisation's service number: a service word before it in its sentence, or a
    toll-free/premium-rate number (:data:`_BUSINESS_NUMBER`), and no person word
    (possessive, honorific) before it or up to 60 characters after it."""
    lead = text[max(0, start - 80) : start]
    cut = max(lead.rfind("\n"), lead.rfind(". "), lead.rfind("? "), lead.rfind("! "))
    lead = lead[cut + 1 :]
    tail = ""
    if end is not None:
        tail = text[end : end + 60]
        stop = min((i for i in (tail.find("\n"), tail.find(". ")) if i != -1), default=len(tail))
        tail = tail[:stop]
    if _PERSONAL.search(lead) is not None or _PERSONAL.search(tail) is not None:
        return False
    if _SERVICE.search(lead) is not None:
        return True
    return end is not None and _BUSINESS_NUMBER.match(text, start, end) is not None


_BUSINESS_NUMBER: Final = re.compile(
    r"(?:\+49[ \-/]?|0)(?:800|180[0-9]?|900|137)[ \-/0-9]"
    r"|(?:\+33[ .]?|0[ .]?)8[ .]?0[0-9]|(?:\+34[ .]?)?90[0-2][ .\-]?[0-9]"
    r"|(?:\+31[ \-]?|0)(?:800|900|90[69])[ \-]?[0-9]|(?:\+44[ ]?|0)(?:800|808|300|345|870)[ 0-9]"
    r"|(?:\+?1[ \-.]?)?\(?(?:800|888|877|866|855|844|833)\)?[ \-.][0-9]"
)
"""Toll-free, shared-cost and premium-rate numbers (0800, 0180, 0900 in DE/NL, 08 0x in
FR, 900-902 in ES, 0800/0300/0345 in the UK, 800/888/877/866/855/844/833 in NANP): an
organisation's line, public unless a person word is near it."""


_COMMON_REGIONS: Final = ("DE", "FR", "ES", "NL", "GB", "US", "IT", "AT", "CH", "BE", "PT")
"""Regions tried, in order, for a number written without a country code."""


def _possible_somewhere(value: str) -> bool:
    """libphonenumber calls ``value`` a possible number in one of the common regions."""
    return any(_parse_valid(value, region)[0] for region in _COMMON_REGIONS)


def _personal_number(text: str, word_start: int, s: int, e: int) -> bool:
    """A number after a generic word ("número", "number") that a possessive or a person
    word owns ("Mi número es 612 345 678", "his number: ..."), with nine or more digits,
    possible in a common region."""
    lead = text[max(0, word_start - 16) : word_start]
    if _PERSONAL.search(lead) is None and not _PHONE_WORD.search(text, e, min(len(text), e + 24)):
        return False
    value = text[s:e]
    return 9 <= len(digits_of(value)) <= 13 and _possible_somewhere(value)


def _named(sc: Scan, s: int, e: int, value: str) -> None:
    """A number right after a capitalised word: a finding when that word ends a name."""
    text = sc.text
    if _found(sc, s, e):
        return
    if not _phone_shaped(value) and not (
        9 <= len(digits_of(value)) <= 13 and _possible_somewhere(value)
    ):
        return
    end = s
    while end > max(0, s - 6) and text[end - 1] in " \t,;:|-\u2013":
        end -= 1  # back over the separator to the end of the name
    if not any(ne == end for _ns, ne in name_spans(text, max(0, end - 60), end)):
        return
    sc.add("phone", s, e, certain=_certain(value, None))


def _found(sc: Scan, s: int, e: int) -> bool:
    """A phone finding of an earlier phone rule already covers ``[s, e)``."""
    return any(f.category == "phone" and f.start <= s and e <= f.end for f in sc.findings)


def _contextual(sc: Scan, s: int, e: int, value: str, word: str) -> None:
    """A number next to a phone word: a finding unless it is clearly something else."""
    text = sc.text
    if _found(sc, s, e):
        return
    if _not_a_phone(value) or _LABEL.search(text, max(0, s - 60), s) is not None:
        return
    if _inside_number(text, s, e):
        return
    if word.lower() in _GENERIC_WORDS and not _phone_shaped(value):
        return
    if _service_line(text, s, e):
        return
    sc.add("phone", s, e, certain=_certain(value, _REGIONS.get(word.lower().rstrip("."))))


def _context_near(text: str, s: int, e: int) -> bool:
    """A phone word, a person's name or an e-mail address within 60 characters."""
    lo, hi = max(0, s - 60), min(len(text), e + 60)
    if _PHONE_WORD.search(text, lo, hi) or "@" in text[lo:hi]:
        return True
    return bool(name_spans(text, lo, s))


_DELIMITERS: Final = ",;\t|"


def on_column(sc: Scan, m: Hit) -> None:
    """A header line with a phone column ("nombre,telefono,ciudad"): the numbers in that
    column of the rows below (at most 50) are phone numbers."""
    text = sc.text
    s, _e = m.span()
    line_start = text.rfind("\n", 0, s + 1) + 1 if text[s : s + 1] != "\n" else s + 1
    line_end = text.find("\n", s + 1)
    if line_end == -1:
        return  # no rows below
    e = line_end + 1
    header = text[line_start:line_end].rstrip("\r")
    delims = [d for d in _DELIMITERS if d in header]
    if len(delims) != 1:
        return
    d = delims[0]
    cells = header.split(d)
    columns = [
        i
        for i, c in enumerate(cells)
        if _PHONE_CELL.search(c) and not _LABEL_CELL.search(c.replace("_", " "))
    ]
    if not columns:
        return
    generic = {i for i in columns if not _SPECIFIC_CELL.search(cells[i])}
    word = _PHONE_WORD.search(cells[columns[0]])
    region = _REGIONS.get(word.group().strip("_").lower().rstrip(".")) if word else None
    pos = e
    for _ in range(50):
        end = text.find("\n", pos)
        row = text[pos : len(text) if end == -1 else end]
        values = row.split(d)
        if len(values) != len(cells):
            break
        for i in columns:
            offset = pos + sum(len(v) + 1 for v in values[:i])
            value = values[i].strip(" \"'")
            if (
                value
                and not _not_a_phone(value)
                and (i not in generic or _phone_shaped(value))
                and not _found(sc, offset, offset + len(values[i]))
            ):
                vs = offset + values[i].index(value)
                sc.add("phone", vs, vs + len(value), certain=_certain(value, region))
        if end == -1:
            break
        pos = end + 1


def on_phone(sc: Scan, m: Hit) -> None:
    kind: str | None = m.kind
    if kind is None:
        return
    if kind in ("sig", "sctx"):  # a signature line: "M: 0176 ...", "T 030 ..."
        s, e = m.span("sctx")
        number = _NUMBER_AT.match(sc.text, s)
        if number is not None:
            _contextual(sc, number.start(), number.end(), number.group(), "tel")
        return
    if kind in ("word", "gword"):
        kind = "ctx" if kind == "word" else "gctx"
    s, e = m.span(kind)
    text = sc.text
    value = text[s:e]
    if kind == "intl":
        _on_intl(sc, s, e, value)
    elif kind == "nanp":
        if text[s - 1 : s] in (".", "-") or (
            text[e : e + 1] in (".", "-") and text[e + 1 : e + 2].isdigit()
        ):
            return
        if not (_BUSINESS_NUMBER.match(text, s, e) and _service_line(text, s, e)):
            sc.add("phone", s, e)  # "1-888-555-0100": a toll-free line
    elif kind == "fr":
        if _parse_valid(value, "FR")[1] and not _service_line(text, s, e):
            sc.add("phone", s, e)
    elif kind == "trunk":  # "(02) 9374 4000", "(030) 901820": a trunk code in brackets
        if 8 <= len(digits_of(value)) <= 12 and not _service_line(text, s, e):
            sc.add("phone", s, e)
    elif kind in ("ctx", "gctx"):
        ws, we = m.span("word" if kind == "ctx" else "gword")
        number = _NUMBER_AT.match(text, s)
        if number is None:
            return
        if s - we > 48:  # the word is too far: a nearer one (the match swallowed it)?
            near = [w for w in _PHONE_WORD.finditer(text, max(0, s - 60), s) if s - w.end() <= 48]
            if not near:
                return
            ws, we = near[-1].span()
            kind = "gctx" if near[-1].group().strip("_").lower() in _GENERIC_WORDS else "ctx"
        s, e = number.span()
        if kind == "gctx" and text[s] not in "+(0" and not _personal_number(text, ws, s, e):
            return
        _contextual(sc, s, e, text[s:e], text[ws:we].strip("_"))
    elif kind == "after":
        word = _PHONE_WORD.search(text, e)
        if word is None:
            return
        _contextual(sc, s, e, value, word.group().strip("_"))
    elif kind in ("named", "named2") and not _not_a_phone(value):
        if _inside_number(text, s, e) or _LABEL.search(text, max(0, s - 60), s) is not None:
            return
        _named(sc, s, e, value)


def _on_intl(sc: Scan, s: int, e: int, value: str) -> None:
    text = sc.text
    before = text[max(0, s - 2) : s]
    if before[-1:].isalnum() or (before[-1:] == " " and before[:1].isdigit()):
        return  # "x+1 ..." or a group inside a longer number ("3704 0044 0532")
    if _LABEL.search(text, max(0, s - 60), s) is not None:
        return  # "número de pedido 0012 3345 99": another kind of number
    possible, valid = _parse_valid(value, None)
    if valid:
        if not _service_line(text, s, e):
            sc.add("phone", s, e)
    elif possible and _context_near(text, s, e) and not _service_line(text, s, e):
        sc.add("phone", s, e, certain=False)


RULES: Final[list[tuple[str, str, Handler]]] = [
    ("phone", PHONE_RULE, on_phone),
    ("phonectx", CONTEXT_RULE, on_phone),
    ("phonecol", COLUMN_RULE, on_column),
    ("phoneafter", AFTER_RULE, on_phone),
    ("phonename", NAMED_RULE, on_phone),
]
"""This family's rules as (name, RE2 pattern, handler)."""

__all__ = [
    "AFTER_RULE",
    "COLUMN_RULE",
    "CONTEXT_RULE",
    "NAMED_RULE",
    "PHONE_RULE",
    "RULES",
    "on_column",
    "on_phone",
]
