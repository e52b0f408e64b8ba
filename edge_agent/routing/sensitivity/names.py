"""Person names from a list: given names and surnames, honorifics and name labels.

Used by :mod:`.people` around other findings only (never over a whole text): the lists
hold a few thousand names (``data/given_names.txt``, ``data/surnames.txt``; words that
are also ordinary words in ``data/name_stopwords.txt``), looked up in Python sets, so the
RE2 set of the scanner carries none of them.

A run of capitalised words (``Anna``, ``Müller``, ``O'Brien``, ``Al-Masri``; nobiliary
particles such as ``van der``, ``de la``, ``bin`` inside it) is a person name when

* an honorific precedes it (``Mr``, ``Mrs``, ``Ms``, ``Dr``, ``Prof``, ``Herr``, ``Frau``,
  ``M.``, ``Mme``, ``Mlle``, ``Sr.``, ``Sra.``, ``Srta.``, ``Dhr.``, ``Mevr.`` ...) or a
  label does (``Name:``, ``Patient:``, ``Nom :``, ``Nombre:``, ``Naam:``, ``"name": "``
  ...): the run, at most four words;
* or its first word is a listed given name or surname that is not a stop word: the run
  goes on while the words are listed names, and takes one unlisted capitalised word at
  its end (an unknown surname: ``Anna Kowalczykowa``).

The span is the name's words only (no honorific, no label, no punctuation around it).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from edge_agent.routing.sensitivity.terms import entries

GIVEN_NAMES: Final[frozenset[str]] = frozenset(entries("given_names.txt"))
SURNAMES: Final[frozenset[str]] = frozenset(entries("surnames.txt"))
STOP_WORDS: Final[frozenset[str]] = frozenset(entries("name_stopwords.txt"))
_LISTED: Final = (GIVEN_NAMES | SURNAMES) - STOP_WORDS

_UPPER: Final = "A-ZÀ-ÖØ-ÞĀĂĄĆČĎĐĒĘĚĞİŁŃŇŐŒŘŚŞŠŢŤŮŰŸŹŻŽ"
_LOWER: Final = "a-zß-öø-ÿāăąćčďđēęěğıłńňőœřśşšţťůűźżž"
_WORD: Final = (
    rf"[{_UPPER}](?:[{_UPPER}]+(?![{_LOWER}])|[{_LOWER}'\u2019]*(?:[{_UPPER}][{_LOWER}'\u2019]+)?)"
    rf"(?:-[{_UPPER}][{_LOWER}'\u2019]+)*"
)
"""A capitalised word: "Anna", "Müller", "O'Brien", "McDonald", "Al-Masri", "SCHMIDT"."""
_PARTICLE: Final = (
    r"(?:van\s+der|van\s+den|van\s+de|von\s+der|de\s+la|de\s+los|de\s+las|van|von|vom|zu|"
    r"de|del|della|di|da|dos|das|du|le|la|ter|ten|bin|ibn|bint|al|el|y)"
)
_RUN: Final = rf"{_WORD}(?:[ \t]+(?:{_PARTICLE}[ \t]+)*{_WORD}){{0,4}}"

_HONORIFIC: Final = (
    r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Herr|Frau|Hr|Fr|Mme|Mlle|Sr|Sra|Srta|Dña|Dhr|Mevr|Mw|"
    r"Sig|Sig\.ra|Dott|Mr\.|Mrs\.|Ms\.|Dr\.|Prof\.|Hr\.|Fr\.|M\.|Mme\.|Mlle\.|Sr\.|Sra\.|"
    r"Srta\.|Dhr\.|Mevr\.|Mw\.|Sig\.|Dott\.|Don|Doña|Señor|Señora|Monsieur|Madame)"
)
_LABEL: Final = (
    r"(?i:full\s+name|name|patient(?:in|e)?(?:\s+name)?|patiënt|paciente|client(?:e)?|"
    r"customer|kunde|kundin|nom|prénom|prenom|nom\s+complet|nombre|apellidos?|naam|"
    r"voornaam|achternaam|vorname|nachname|traveller|traveler|passenger|reisende[r]?|"
    r"employee|mitarbeiter(?:in)?|contact|kontakt|titular|inhaber(?:in)?|"
    r"account\s+holder|kontoinhaber(?:in)?|holder|recipient|empfänger(?:in)?|"
    r"destinataire|destinatario|ontvanger|sender|absender|from|to|von|an|de|para|van|aan|"
    r"first_?name|last_?name|given_?name|family_?name|full_?name|patient_?name|surname|"
    r"family|given|fn|nm)"
)

_RUN_RE: Final = re.compile(_RUN)
_WORD_RE: Final = re.compile(_WORD)
_LABEL_BEFORE: Final = re.compile(
    rf"(?:(?<![\w]){_LABEL}[\"']?[ \t]*[:=][ \t]*\[?[ \t]*[\"']?|<{_LABEL}>)[ \t]*\Z"
)
"""A label right before a name: ``Name:``, ``"family": "``, ``"given": ["``, ``FN:``,
``<Nm>`` (vCard, FHIR, SEPA XML)."""
_HONORIFIC_WORDS: Final = frozenset(
    [
        "Mr",
        "Mrs",
        "Ms",
        "Mx",
        "Miss",
        "Dr",
        "Prof",
        "Herr",
        "Frau",
        "Hr",
        "Fr",
        "Mme",
        "Mlle",
        "Sr",
        "Sra",
        "Srta",
        "Dhr",
        "Mevr",
        "Mw",
        "Sig",
        "Dott",
        "Don",
        "Doña",
        "Señor",
        "Señora",
        "Monsieur",
        "Madame",
    ]
)
NAME_WORDS: Final[frozenset[str]] = (
    GIVEN_NAMES | SURNAMES | _HONORIFIC_WORDS | frozenset(w.upper() for w in _LISTED)
)
"""Every word that can start or anchor a name as written (names, honorifics; a cheap
first test before :func:`name_spans`)."""

_HONORIFIC_DOTTED: Final = frozenset(("M.", "Sig.ra"))
_JOINERS: Final = frozenset("_'\u2019-")


def _fold(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def _listed(word: str) -> bool:
    """A listed name that is no stop word (all-caps words are looked up as capitalised)."""
    cut = _possessive(word)
    if cut:
        word = word[:-cut]  # "Anna's", "Jones'"
    if word.isupper() and len(word) > 1:
        word = word.capitalize()
    return word in _LISTED or (not word.isascii() and _fold(word) in _LISTED)


def _unlisted_ok(word: str) -> bool:
    """An unlisted capitalised word that may end a name (an unknown surname)."""
    return word not in STOP_WORDS and not word.isupper() and len(word) > 1


def _starts_name(words: list[tuple[int, int, str]], i: int) -> bool:
    """A name may start at ``words[i]``: a listed name, or a given name that is also an
    ordinary word ("Grace", "Jack") with a name word after it."""
    word = words[i][2]
    if _listed(word):
        return True
    if word in GIVEN_NAMES and i + 1 < len(words):
        after = words[i + 1][2]
        return _listed(after) or _unlisted_ok(after)
    return False


def _possessive(word: str) -> int:
    """How many characters of ``word`` are a possessive ending ("Smith's": 2)."""
    return 2 if word.endswith(("'s", "\u2019s")) else (1 if word.endswith(("'", "\u2019")) else 0)


def _span(words: list[tuple[int, int, str]], i: int, j: int) -> tuple[int, int]:
    """The span of ``words[i:j]``, a possessive ending cut off ("Anna Smith's")."""
    for k in range(i, j):
        cut = _possessive(words[k][2])
        if cut:
            return words[i][0], words[k][1] - cut
    return words[i][0], words[j - 1][1]


def _anchored(text: str, lo: int, s: int) -> bool:
    """An honorific or a name label right before ``text[s]`` (not before ``lo``)."""
    tail = text[max(lo, s - 6) : s]
    if (":" in tail or "=" in tail or ">" in tail) and _LABEL_BEFORE.search(
        text[max(lo, s - 40) : s]
    ):
        return True
    if tail[-1:] not in (" ", "\t"):
        return False
    before = text[max(lo, s - 12) : s].split()
    return bool(before) and (
        before[-1] in _HONORIFIC_DOTTED or before[-1].rstrip(".") in _HONORIFIC_WORDS
    )


def _sentence_inner(text: str, start: int) -> bool:
    """``text[start]`` does not begin a sentence or a line (where any word is capitalised)."""
    before = text[max(0, start - 3) : start].rstrip(" \t")
    return bool(before) and before[-1] not in ".!?\n:;\"'([{>|"


def name_spans(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """Spans of person names in ``text[lo:hi]`` (the rules of the module docstring)."""
    spans: list[tuple[int, int]] = []
    for m in _RUN_RE.finditer(text, lo, hi):
        s, e = m.span()
        words = [(w.start(), w.end(), w.group()) for w in _WORD_RE.finditer(text, s, e)]
        # a word that is part of a longer token is no name word ("xAnna", "Anna_1",
        # the "ID" of "Steuer-ID")
        if words and s > lo and (text[s - 1].isalnum() or text[s - 1] in _JOINERS):
            words = words[1:]
        if words and e < hi and (text[e].isalnum() or text[e] in _JOINERS):
            words = words[:-1]
        if words:
            s = words[0][0]
        anchored = _anchored(text, lo, s)
        if words and words[0][2] in _HONORIFIC_WORDS and len(words) > 1:
            words = words[1:]  # "Frau Kessler", "Mr Smith"
            anchored = True
        if not words:
            continue
        if anchored:
            # the first word, an unknown second one, then listed names only (a label's run
            # stops before a word that is no name: "Name: Jane Roe Diagnosis")
            j = 1
            if j < len(words) and (_listed(words[j][2]) or _unlisted_ok(words[j][2])):
                j += 1
            while j < min(len(words), 4) and _listed(words[j][2]):
                j += 1
            if words[0][2] not in STOP_WORDS or words[0][2] in GIVEN_NAMES:
                spans.append(_span(words, 0, j))
            continue
        # no anchor: the first word that may start a name starts it
        i = 0
        while i < len(words) and not _starts_name(words, i):
            i += 1
        if i == len(words):
            continue
        if (
            i > 0
            and words[i][2] in SURNAMES
            and _unlisted_ok(words[i - 1][2])
            and words[i - 1][2] not in NAME_WORDS
            and (i == 1 or not _listed(words[i - 2][2]))
            and _sentence_inner(text, words[i - 1][0])
        ):
            i -= 1  # an unknown given name before a listed surname: "Kwame Mensah"
        j = i + 1
        while j < len(words) and _listed(words[j][2]):
            j += 1
        if j < len(words) and _unlisted_ok(words[j][2]):
            j += 1
        if j - i == 1 and (not _listed(words[i][2]) or words[i][2].isupper()):
            continue  # one word alone: a listed name, not an acronym ("IBAN", "NIE")
        spans.append(_span(words, i, j))
    return spans


def unlisted_name_spans(text: str, lo: int, hi: int) -> list[tuple[int, int]]:
    """Two or more capitalised words in a row that could be a name nobody listed
    ("Kwabena Osei", "Ngozi Adeyemi") in ``text[lo:hi]``: no stop word among them, none in
    capitals only, and a sentence's or line's first word left out (any word is
    capitalised there). Reported by :func:`.people.find_names` as uncertain names next to
    personal data: they keep such a request local instead of leaving, redacted, with a
    name in it."""
    spans: list[tuple[int, int]] = []
    for m in _RUN_RE.finditer(text, lo, hi):
        s, e = m.span()
        words = [(w.start(), w.end(), w.group()) for w in _WORD_RE.finditer(text, s, e)]
        if words and s > lo and (text[s - 1].isalnum() or text[s - 1] in _JOINERS):
            words = words[1:]
        if words and e < hi and (text[e].isalnum() or text[e] in _JOINERS):
            words = words[:-1]
        if words and not _sentence_inner(text, words[0][0]):
            words = words[1:]
        i = 0
        while i < len(words):
            j = i
            while j < len(words) and _unlisted_ok(words[j][2]):
                j += 1
            if j - i >= 2:
                spans.append(_span(words, i, j))
            i = j + 1
    return spans


__all__ = [
    "GIVEN_NAMES",
    "NAME_WORDS",
    "STOP_WORDS",
    "SURNAMES",
    "name_spans",
    "unlisted_name_spans",
]
