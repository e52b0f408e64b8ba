"""Health information about a person: medical terms and the "about a person" rule.

Category ``health`` (restricted). The rule is described in the package docstring; the
terms are in ``data/health_terms.txt`` (``data/health_acronyms.txt``: those matched in
upper case only), the words the rule reads around a term in ``data/health_cues.json``.

Terms, cue words and patient-record cues are in English, German, French, Spanish and
Dutch ("Diagnose", "diagnostiqué", "diagnosticado", "Patientin", "paciente", "patiënt",
"mein Vater hat", "ma mère a", "mi madre tiene", "mijn vader heeft"; HL7 ``PID``
segments, ``patient_id``/MRN fields and foreign birth-date fields are record cues). Beyond
the package docstring's rule, a person named before the term in its sentence ties it to
that person: a name from the names list (:mod:`.names`) of two words or after an
honorific ("Tobias Lehmann leidet an einer Depression", "Mme Vidal est hospitalisée"),
not right after a topic word ("an article about Steve Jobs"), or two capitalised words
and a health verb of another language ("Kwame Mensah leidet an").

Records are read whole (:mod:`.health_records`): a short message (at most
:data:`RECORD_CHARS` characters), a table row with its header, a JSON line, an HL7
message with a ``PID`` segment or a FHIR resource that identifies a person anywhere in
it (a case/record/room/bed number, an identifying column or key, a name) makes every
medical term in it an uncertain finding (fail closed). In short texts the medical
shapes (doses, drug stems, condition suffixes: :data:`MEDICAL_SHAPES`) count as terms
too (:func:`find_shapes`); they stay out of the RE2 set.

The detector adds every term to its RE2 set one by one (:func:`term_pattern`), next to
the patient-record cues (:data:`CLINICAL_CUES`) and one pattern for "a term with a person
in its sentence" (:func:`person_cue_pattern`); :func:`find_health` then checks, in ASCII
text, only the terms that the set saw, and :func:`on_health` is the plain rule's handler
(non-ASCII text, or when the set gave up).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

from edge_agent.routing.sensitivity import health_records, names
from edge_agent.routing.sensitivity.matching import (
    Hit,
    Scan,
    bounded,
    escape,
    match_spans,
    options,
    search,
)
from edge_agent.routing.sensitivity.terms import entries, word_lists

_HEALTH_TERMS: Final[tuple[str, ...]] = entries("health_terms.txt")
"""Medical terms; a person must be tied to one for a ``health`` finding (package doc)."""

_CASE_SENSITIVE_TERMS: Final[frozenset[str]] = frozenset(entries("health_acronyms.txt"))
"""Acronyms that are ordinary words in lower case ("aids in", "prep time"): upper case only."""

# the words that the rule reads around a term (see health_about_person)
_CUES: Final = word_lists("health_cues.json")
_POSSESSIVES: Final = frozenset(_CUES["possessives"])
_SUBJECTS: Final = frozenset(_CUES["subjects"])
_SUBJECT_WITH_VERB: Final = frozenset(_CUES["subjects_with_verb"])
_HEALTH_VERBS: Final = frozenset(_CUES["health_verbs"])
_NAME_VERBS: Final = frozenset(_CUES["name_verbs"])
_NAME_VERBS_LISTED: Final = frozenset(_CUES["name_verbs_listed"]) - _NAME_VERBS
_OBJECTS: Final = frozenset(_CUES["objects"])
_TOPIC_WORDS: Final = frozenset(_CUES["topic_words"])
_TOPIC_AFTER: Final = frozenset(_CUES["topic_after"])
_NAME_STOP: Final = frozenset(_CUES["name_stop"])
_ABBREVIATIONS: Final = _CUES["abbreviations"]  # a full stop after one ends no sentence

_PATIENT_AFTER: Final = re.compile(
    r"(?:e|in|en|innen|es|s)?(?:[\s_-]*(?:(?i:name|id|no\.?|nr\.?|number|nummer|num|n\.?[º°]|"
    r"numéro|número|dossier)\b|[\s_\"'-]*[#:;|/])"
    r"|\s+(?!(?:Portal|Education|Experience|Journey|Satisfaction|Engagement|Information|"
    r"Leaflet|Safety|Care|Data|Services|Advocacy|Management|App)\b)"
    r"[A-Z][a-z]+\b(?!\s+(?:care|safety|data)))"
)
"""After a patient word ("patient", "Patientin", "paciente", "patiënt"): an ID or name
field ("patient_id", "Patientennr;", "n.º", a JSON key ``"patient":``, a FHIR reference
``Patient/123``), or a capitalised name."""

_PATIENT_WORDS: Final = ("patient", "paciente", "pati\u00ebnt")
_PATIENT_BEFORE: Final = (
    "the ",
    "this ",
    "our ",
    "my ",
    "der ",
    "die ",
    "den ",
    "dem ",
    "unser ",
    "unsere ",
    "le ",
    "la ",
    "notre ",
    "el ",
    "nuestro ",
    "nuestra ",
    "de ",
    "onze ",
    "mijn ",
    "mon ",
    "ma ",
    "mi ",
    "mein ",
    "meine ",
)
"""Words before a patient word that make it a specific patient ("the patient")."""

_TITLE_NAME: Final = re.compile(
    r"(?:M(?:r|rs|s|iss)|Herr|Frau|Mme|Mlle|M\.|Sra?|Srta|Dhr|Mevr)\.?\s+[A-Z][a-z]+"
)
"""An honorific and a name; one that ends a longer word ("PM. Then") is no cue (checked
in Python: a lookbehind here would cost the regex its fast scan for a first letter)."""


_RECORD_FIELD: Final = re.compile(
    r"(?:DOB|MRN|[Dd]ate of birth|Geburtsdatum|[Dd]ate de naissance|[Ff]echa de nacimiento|"
    r"[Gg]eboortedatum)\b|(?<![^\n])PID\|"
)
"""A record field ("DOB", "Geburtsdatum") or an HL7 ``PID`` segment at a line start; the
``\\b`` before a field is checked by :func:`_starts`."""


_BOUNDARY_AT: Final = re.compile(r"[.!?](?=\s)|\n(?=[ \t]*\n)")


_FIRST_BOUNDARY: Final = re.compile(r"[.!?](?=\s)|\n[ \t]*\n")


_PUNCT: Final = "\"'`.,;:!?()[]{}<>*_/\\|-\u2013\u2014\u201c\u201d\u2018\u2019\u00ab\u00bb"


def _sentence(text: str, start: int, end: int) -> tuple[int, int]:
    """Bounds of the sentence around ``text[start:end]``, at most 160 characters before
    and 100 after it; a full stop after an abbreviation ("Mr.", "Dr.") does not end it.

    A sentence ends at ``.``/``!``/``?`` before whitespace or at a blank line; it starts
    after the last such boundary that lies wholly before the term.
    """
    lo = max(0, start - 160)
    s = lo
    marks = [m.start() for m in _BOUNDARY_AT.finditer(text, lo, start)]
    for dot in reversed(marks):
        c = text[dot]
        if c == "\n":
            s = text.index("\n", dot + 1) + 1
            break
        if c == "." and text[max(0, dot - 6) : dot].endswith(_ABBREVIATIONS):
            continue
        s = dot + 2
        break
    hi = min(len(text), end + 100)
    e, pos = hi, end
    while pos < hi:
        m = _FIRST_BOUNDARY.search(text, pos, hi)
        if m is None:
            break
        dot = m.start()
        if text[dot] == "." and text[max(0, dot - 6) : dot].endswith(_ABBREVIATIONS):
            pos = dot + 1
            continue
        e = dot
        break
    return s, e


_SEPARATE: Final = str.maketrans(dict.fromkeys(_PUNCT, " "))


def _split_words(fragment: str) -> list[str]:
    """Words between whitespace, punctuation stripped, curly apostrophes made straight."""
    words = (w.strip(_PUNCT) for w in fragment.replace("\u2019", "'").split())
    return [w for w in words if w]


def health_about_person(text: str, start: int, end: int) -> bool:
    """The health rule of the package docstring, on the words of the term's sentence.

    Clinical records ("Patient: Jane Roe") are checked separately by :func:`clinical_spots`.
    """
    s, e = _sentence(text, start, end)
    # a word that the 160/100-character window cuts in two is not read ("enemy" as "my")
    if s == start - 160 and s > 0 and not text[s - 1].isspace():
        while s < start and not text[s].isspace():
            s += 1
    if e == end + 100 and e < len(text) and not text[e].isspace():
        while e > end and not text[e - 1].isspace():
            e -= 1
    before_cased = _split_words(text[s:start])
    before = [w.lower() for w in before_cased]
    after = _split_words(text[end:e].lower())
    if not _TOPIC_AFTER.isdisjoint(after[:2]):
        return False  # "diabetes prediction model", "cancer research"
    n = len(before)
    first = 0  # words before a topic word ("write an article about ...") do not count
    for i, w in enumerate(before):
        if w in _TOPIC_WORDS:
            first = i + 1
    for i in range(first, n):
        w = before[i]
        if w in _POSSESSIVES:
            if i >= n - 3:  # "my type 2 diabetes", "her HIV test"
                return True
            if not _HEALTH_VERBS.isdisjoint(before[i + 2 : i + 6]):  # "my dad takes"
                return True
        elif w in _SUBJECT_WITH_VERB:  # "I'm pregnant", "she's on insulin"
            return True
        elif w in _SUBJECTS and not _HEALTH_VERBS.isdisjoint(before[i + 1 : i + 5]):
            return True  # "I was diagnosed with", "he has been taking"
    # a name, a health verb, the term within three words: "John has diabetes"
    for i in range(max(first, n - 5), n - 1):
        w = before_cased[i]
        if (
            before[i + 1] in _NAME_VERBS
            and w[:1].isupper()
            and len(w) > 2
            and w not in _NAME_STOP
            and before[i] not in _HEALTH_TERM_SET
        ):
            return True
    # two capitalised words and a health verb of another language: "Kwame Mensah leidet an"
    for i in range(max(first + 1, n - 5), n - 1):
        if (
            before[i + 1] in _NAME_VERBS_LISTED
            and _capitalised_name_word(before_cased[i])
            and _capitalised_name_word(before_cased[i - 1])
        ):
            return True
    if _named_before(text, s, start, before_cased[first:]):
        return True
    # the person right after the term: "prescribed me", "safe for me", "which he takes"
    if after and after[0] in _OBJECTS:
        return True
    for i, w in enumerate(after[:8]):
        if w == "for" and i + 1 < len(after) and (after[i + 1] in _OBJECTS or after[i + 1] == "my"):
            return True
        if w in _SUBJECTS and not _HEALTH_VERBS.isdisjoint(after[i + 1 : i + 3]):
            return True
    return False


_RECORD_WORDS: Final = (
    "dob",
    "mrn",
    "date of birth",
    "geburtsdatum",
    "date de naissance",
    "fecha de nacimiento",
    "geboortedatum",
    "pid|",
)


_HONORIFIC_BEFORE: Final = re.compile(
    r"(?:M(?:r|rs|s|iss)|Herr|Frau|Mme|Mlle|M\.|Sra?|Srta|Dhr|Mevr|Dr|Prof)\.?[ \t]+$"
)


def _capitalised_name_word(word: str) -> bool:
    """A capitalised word that may be part of a name: not a stop word or a medical term."""
    return (
        word[:1].isupper()
        and len(word) > 1
        and word not in _NAME_STOP
        and word.lower() not in _HEALTH_TERM_SET
    )


_NAME_TOPIC: Final = _TOPIC_WORDS | frozenset(
    ("by", "of", "on", "von", "über", "par", "sur", "por", "sobre", "door", "over")
)
"""Words that make the name right after them a topic, not a person the text is about."""


def _two_capitalised(name: str) -> bool:
    """Two capitalised words of ``name`` next to each other ("Anna Schmidt", "Jan van de
    Berg" has none): what the set's cue for a name before a term sees."""
    parts = re.split(r"[ \t]+", name)
    return any(a[:1].isupper() and b[:1].isupper() for a, b in itertools.pairwise(parts))


def _named_before(text: str, s: int, start: int, words: list[str]) -> bool:
    """A person named from the names list before the term in its sentence, with no topic
    word after the name: "Tobias Lehmann leidet seit März an einer Depression", "Mme
    Caroline Vidal est hospitalisée". The name must have two capitalised words next to
    each other, or follow an honorific ("Frau Kessler"); with a verb from
    ``name_verbs_listed`` right after it a listed name of one word does too ("Marie est
    malade").

    ``words`` are the sentence's words before the term from the last topic word on, as
    written (the rule's other cues read the same words); the name must lie among them,
    and one of them must be a listed name or an honorific for the names list to be read.
    """
    if not any(w in names.NAME_WORDS for w in words):
        return False  # no listed name, no honorific: nothing for the names list to find
    lowered_tail = " ".join(words).lower()
    for ns, ne in names.name_spans(text, s, start):
        name = text[ns:ne]
        parts = name.split()
        last = parts[-1].lower()
        if last not in lowered_tail:
            continue  # the name is before a topic word ("an article about ...")
        lead = [w.lower() for w in _split_words(text[s:ns])[-3:]]
        if not _NAME_TOPIC.isdisjoint(lead):
            continue  # a name that is the topic: "an article about Steve Jobs and cancer"
        after = text[ne:start].split()
        verb = after[0].lower().strip(",;:") if after else ""
        if _two_capitalised(name) or _HONORIFIC_BEFORE.search(text, max(s, ns - 8), ns):
            if _TOPIC_WORDS.isdisjoint(w.lower() for w in after):
                return True
        elif verb in _NAME_VERBS_LISTED or verb in _NAME_VERBS:
            return True
    return False


def clinical_spots(text: str) -> list[int]:
    """Positions of patient-record cues: "Patient: Jane Roe", "patient ID", "the patient",
    "Mrs. Alvarez", "DOB"/"MRN" fields, an HL7 ``PID`` segment, and the same in German,
    French, Spanish and Dutch ("Patientin Meier", "Patientennr;", "la patiente",
    "Paciente n.º", "de patiënt", "Frau Meier", "Mme Vidal", "Geburtsdatum"). A medical
    term within 400 characters after or 200 before one is about that patient."""
    spots: list[int] = []
    lowered = text.lower()
    for word in _PATIENT_WORDS:
        size = len(word)
        i = lowered.find(word)
        while i != -1:
            if _PATIENT_AFTER.match(text, i + size) or lowered[max(0, i - 8) : i].endswith(
                _PATIENT_BEFORE
            ):
                spots.append(i)
            i = lowered.find(word, i + size)
    spots.extend(_title_spots(text))
    if any(cue in lowered for cue in _RECORD_WORDS):
        spots.extend(_starts(text, lowered, _RECORD_WORDS, _RECORD_FIELD))
    spots.sort()
    return spots


_TITLES: Final = tuple(
    re.compile(p + r"\.?\s+[A-Z][a-z]+")
    for p in (r"M(?:r|rs|s|iss|me|lle|evr|\.)", "Herr", "Frau", r"Sr(?:a|ta)?", "Dhr")
)
""":data:`_TITLE_NAME` split by first letters: each starts with a literal, which ``re``
searches for quickly (one alternation of them is searched position by position)."""


def _title_spots(text: str) -> list[int]:
    """The starts of :data:`_TITLE_NAME` matches as ``finditer`` finds them, except those
    right after an ASCII letter ("PM. Then")."""
    matches = sorted((m.start(), m.end()) for title in _TITLES for m in title.finditer(text))
    found: list[int] = []
    end = 0
    for start, stop in matches:
        if start < end:
            continue
        end = stop
        if start and text[start - 1].isascii() and text[start - 1].isalpha():
            continue
        found.append(start)
    return found


def _starts(
    text: str, lowered: str, firsts: tuple[str, ...], pattern: re.Pattern[str]
) -> list[int]:
    """Where ``pattern`` matches, left to right and without overlap, tried only where one
    of ``firsts`` occurs in ``lowered`` (a substring search instead of a regex search that
    starts with ``\\b`` and so has no fast scan), and not right after a word character
    (the ``\\b``), unless the match is an HL7 ``PID|`` (a line start)."""
    candidates: set[int] = set()
    for first in firsts:
        i = lowered.find(first)
        while i != -1:
            candidates.add(i)
            i = lowered.find(first, i + 1)
    found: list[int] = []
    end = 0
    for i in sorted(candidates):
        if i < end:
            continue
        m = pattern.match(text, i)
        if m is None:
            continue
        before = text[i - 1] if i else ""
        if before and (before.isalnum() or before == "_") and not m.group().startswith("PID|"):
            continue
        found.append(i)
        end = m.end()
    return found


_HEALTH_TERM_SET: Final = frozenset(_HEALTH_TERMS)

RECORD_CHARS: Final = health_records.RECORD_CHARS
"""A text up to this long is read as one record (the scanner runs the rule for it)."""


_PERSON_WORDS: Final = (
    _POSSESSIVES
    | _SUBJECTS
    | _OBJECTS
    | frozenset(w.translate(_SEPARATE).split()[0] for w in _SUBJECT_WITH_VERB)
)
"""Words one of which :func:`health_about_person` needs in the term's sentence, unless a
name does it ("John has"); "i'm", "he's" ... count as "i", "he" ... (their first word once
punctuation separates words)."""


def person_cue_pattern(terms: str | None = None) -> str:
    """RE2 pattern that matches wherever :func:`health_about_person` could see a person
    in a medical term's sentence.

    Without ``terms``: for the joined windows of :func:`people_near` (ASCII text, each
    term replaced by a NUL, windows between ``\x01\x01``). With ``terms`` (the health
    rule's pattern): for any text, in the RE2::Set (no match: no term has a person).

    A cue is a person word between non-alphanumerics (a superset of the words that
    :func:`_split_words` strips down to one), or a capitalised word of three or more
    characters, whitespace and punctuation-only words, then a name verb. Between the cue
    and the term (either way round) there must be no sentence boundary of
    :func:`_sentence`: no ``.``/``!``/``?`` before whitespace (``str.isspace``) unless
    it is an abbreviation's full stop, and no blank line. The approximations (no limit on
    the distance; more full stops taken for an abbreviation's than the rule takes) all
    err towards a match: a cue the rule would not see, never one that it would.
    """
    if terms is None:
        ws, sep = r"\t-\r\x1c-\x1f ", r"\x01"
        upper, before_term, after_term = "[A-Z]", r"\x00", r"\x00"
    else:  # Python's whitespace, and (for isupper) any non-ASCII character
        ws, sep = r"\t-\r\x1c-\x1f\x85\pZ", ""
        upper = r"(?:[A-Z]|[^\x00-\x7f])"
        before_term = f"(?:{terms})"
        # an abbreviation that runs into the term ("...St.", "...e.g."): not a boundary
        after_term = rf"(?:{terms})(?:\.|\.[eg]\.)?"
    space = f"[{ws}]"
    solid = f"[^{ws}{sep}]"
    punct = "[" + "".join("\\" + c if c.isascii() else c for c in _PUNCT) + "]"
    person = "(?i:" + "|".join(sorted(_PERSON_WORDS)) + ")"
    verbs = "(?i:" + "|".join(sorted(_NAME_VERBS | _NAME_VERBS_LISTED)) + ")"
    abbreviation = "(?:" + "|".join(escape(a) for a in _ABBREVIATIONS) + r")\."
    # stretches with no boundary (and no window separator) in them
    inside = (
        "(?:"
        + "|".join(
            [
                rf"[^.!?\n{sep}]",  # a character that cannot start one
                # terminal punctuation before a character that is neither whitespace nor
                # terminal punctuation, or before an abbreviation
                rf"[.!?]+(?:[^{ws}.!?{sep}]|{abbreviation})",
                abbreviation,  # an abbreviation and its full stop
                # a line break, spaces or tabs, and a character other than a line break
                rf"\n[ \t]*(?:[^\n \t{sep}]|{abbreviation})",
            ]
        )
        + ")*"
    )
    edge = r"(?:[^A-Za-z0-9]|\z)"
    cue = rf"(?:\A|[^A-Za-z0-9]){person}{edge}"
    cue_after_stop = f"[^A-Za-z0-9{ws}{sep}]{person}{edge}"  # the "(" of ".(me"
    name = f"{upper}{solid}{{2,}}{space}+(?:{punct}+{space}+)*{punct}*{verbs}{edge}"
    # a listed name (two capitalised words next to each other; an honorific and a name;
    # a capitalised word and a verb: the alternative above)
    # (a word with no terminal punctuation in it, or a short honorific and its full stop:
    # "Friday. How" is no name, "Mr. Smith" may be)
    dotted = r"(?:Mr|Mrs|Ms|Mx|Dr|Prof|Hr|Fr|M|Mme|Mlle|Sr|Sra|Srta|Dhr|Mevr|Mw|Sig|Dott)\."
    name2 = f"(?:{upper}[^{ws}{sep}.!?]*|{dotted})[ \t]+{upper}"
    before = f"(?:{cue}|{name}|{name2}){inside}" + r"(?:\n[ \t]*|[.!?]+)?" + before_term
    after = after_term + inside + rf"(?:\n[ \t]*)?(?:[.!?]*{cue_after_stop}|{cue})"
    return f"{before}|{after}"


_PERSON_CUE: Final[Any] = re2.compile(person_cue_pattern(), options(1 << 20))


def people_near(text: str, data: bytes, spans: Sequence[tuple[int, int]]) -> list[bool]:
    """For each medical term ``text[s:e]`` (ASCII text, ``data`` its bytes), whether
    :func:`health_about_person` may find a person for it: False only where it cannot (a
    necessary condition of the rule, checked for all terms at once).

    The window the rule may look at for each term (160 characters before it, 100 after)
    is cut out with the term replaced by a NUL; the windows are joined with ``\x01\x01``
    between them and RE2 searches the result for :func:`person_cue_pattern` (once, in the
    common case of text without a person in it). A term is let through unsearched where
    the pattern could not see a full stop as an abbreviation's ("Dr.": the abbreviation
    runs into the term or out of the window), and every term where the text holds a
    ``\x01``.
    """
    n = len(spans)
    if b"\x01" in data:
        return [True] * n
    near = [False] * n
    parts: list[bytes] = []
    starts: list[int] = []  # where each window begins in the joined bytes
    size = 0
    length = len(data)
    for k, (s, e) in enumerate(spans):
        lo = s - 160 if s > 160 else 0
        hi = e + 100 if e + 100 < length else length
        if (lo and data.find(b".", lo, lo + 6) != -1 and _abbreviation_in(text, lo)) or (
            data.find(b".", e, e + 6) != -1 and _abbreviation_in(text, e)
        ):
            near[k] = True
        parts += (b"\x01\x01", data[lo:s], b"\x00", data[e:hi])
        size += 2
        starts.append(size)
        size += s - lo + 1 + hi - e
    joined = b"".join(parts)
    pos = 0
    while True:
        ms = search(_PERSON_CUE, joined, pos)
        if ms == -1:
            break
        k = bisect.bisect_right(starts, ms + 1) - 1  # a cue may begin on the \x01 before
        near[k] = True
        if k + 1 == n:
            break
        pos = starts[k + 1] - 1
    return near


def _abbreviation_in(text: str, at: int) -> bool:
    """An abbreviation's full stop ("Dr.", "e.g.") in ``text[at:at + 6]``."""
    dot = text.find(".", at, at + 6)
    while dot != -1:
        if text[max(0, dot - 6) : dot].endswith(_ABBREVIATIONS):
            return True
        dot = text.find(".", dot + 1, at + 6)
    return False


CLINICAL_CUES: Final = (
    r"(?i:patient|paciente|pati\x{eb}nt)",
    r"(?:M(?:r|rs|s|iss)|Herr|Frau|Mme|Mlle|M\.|Sra?|Srta|Dhr|Mevr)\.?"
    r"[\t-\r\x1c-\x1f\x85\pZ]+[A-Z][a-z]",
    r"\b(?i:dob|mrn|date of birth|geburtsdatum|date de naissance|fecha de nacimiento|"
    r"geboortedatum)\b|(?m:^)(?i:pid)\|",
    # a record that the record rule reads whole (health_records): a JSON or HL7 line, an
    # identifier word and a number, a header cell naming an identifier or a person
    r"(?m:^)[ \t]*\{|(?m:^)[A-Z][A-Z0-9]{2}\||#[ \t]?[0-9]{3}"
    r"|\b(?i:case|mrn|fall(?:nummer)?|akte|dossier|historia|expediente|nhc|ipp|"
    r"pati[e\x{eb}]nt(?:en)?(?:nummer|nr)|room|bed|zimmer|bett|chambre|habitaci\x{f3}n|cama|"
    r"kamer|zi|pat|pt|enc|subject|proband|sujet|sujeto|participant|claim|policyholder|"
    r"record|chart|encounter|admission|ward|lit|sala)\b[^\n0-9]?[^\n0-9]?[^\n0-9]?[^\n0-9]?"
    r"(?:[A-Za-z][A-Za-z]?[A-Za-z]?[A-Za-z]?[-/]?)?[0-9]"
    r"|(?:\b|_)(?i:id|nr|name|naam|nom|nombre|nachname|dob)[ \t\"]*(?:[,;\t|]|\r?\n)",
    health_records.SHAPE_GATE,  # a medical shape may be in the text (find_shapes)
)
r"""RE2 patterns in the set that fire whenever :func:`clinical_spots` can find a cue (its
"patient" substring, its ``\s`` as Python's Unicode whitespace); when none fires, the
spots are not looked for."""


_WORD_BYTES: Final = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
r"""RE2's ``\b`` is ASCII: a word byte next to a non-word byte (or an end)."""


@dataclass(frozen=True, slots=True)
class Term:
    """A medical term as the health rule looks for it in ASCII text (``find_health``).

    ``rank`` is its place in the rule's alternation: at one position the regex takes the
    first alternative that matches, so the lowest rank wins.
    """

    rank: int
    cased: bool  # an acronym matched in upper case only ("AIDS", not "aids")
    needle: bytes  # lower case unless ``cased``
    words: re.Pattern[bytes] | None  # multi-word terms: the words with [\t\n\f\r ]+ between


MEDICAL_SHAPES: Final = health_records.MEDICAL_SHAPES
_SHAPE_STOP: Final = health_records.SHAPE_STOP
_SHAPES: Final[Any] = re2.compile(
    "|".join(r"\b(?i:" + shape + r")\b" for shape in MEDICAL_SHAPES), options(1 << 20)
)


def find_shapes(sc: Scan, found_term: bool) -> None:
    """Medical shapes (doses, drug stems, condition suffixes) in a short text (at most
    :data:`RECORD_CHARS` characters) that identifies a person: uncertain ``health``
    findings. The shapes stay out of the scanner's RE2 set (they would cost every text a
    few microseconds); a short text is searched for them directly, in one RE2 pass."""
    if len(sc.data) > RECORD_CHARS or not (sc.cues or sc.people or found_term):
        return  # long, or the set saw no dose, record cue, person or medical term
    seen: dict[str, bool] = {}
    for spans in match_spans(_SHAPES, sc.data):
        s, e = sc.char(spans[0][0]), sc.char(spans[0][1])
        word = sc.text[s:e].lower()
        if word in _SHAPE_STOP or word in _HEALTH_TERM_SET:
            continue  # an ordinary word, or a listed term (the term rule judges it)
        if any(f.category == "health" and f.start <= s < f.end for f in sc.findings):
            continue
        if _in_person_record(sc.text, s, e, seen):
            sc.add("health", s, e, certain=False)


def health_alternatives() -> list[tuple[str, bool]]:
    """The medical terms in the order of the health rule's alternation, with whether each
    is matched in upper case only: case-insensitive terms first, longest first, then the
    medical shapes (:data:`MEDICAL_SHAPES`) are not among them: :func:`find_shapes`."""
    insensitive = [t for t in _HEALTH_TERMS if t not in _CASE_SENSITIVE_TERMS]
    sensitive = [t.upper() for t in _HEALTH_TERMS if t in _CASE_SENSITIVE_TERMS]
    return [(t, False) for t in sorted(insensitive, key=len, reverse=True)] + [
        (t, True) for t in sorted(sensitive, key=len, reverse=True)
    ]


def make_term(rank: int, literal: str, cased: bool) -> Term:
    words = literal.split()
    needle = literal.encode() if cased else literal.lower().encode()
    pattern = None
    if len(words) > 1:  # RE2's \s is [\t\n\f\r ]
        pattern = re.compile(rb"[\t\n\f\r ]+".join(re.escape(w) for w in needle.split()))
    return Term(rank, cased, needle, pattern)


def _ascii_edges(literal: str) -> bool:
    return literal[:1].isascii() and literal[-1:].isascii()


def term_pattern(literal: str, cased: bool) -> str:
    """The RE2 pattern of one term (the health rule's alternative, alone). RE2's ``\\b``
    is ASCII: a term that starts or ends with another letter ("épilepsie",
    "diagnostiqué") has no boundary on that side."""
    body = escape(literal) if cased else "(?i:" + escape(literal) + ")"
    return bounded(body, literal)


def health_pattern() -> str:
    """The health rule's RE2 pattern: every term, in :func:`health_alternatives` order
    (terms with a non-ASCII first or last letter after the others, unbounded there)."""
    alternatives = health_alternatives()
    plain = [(t, cased) for t, cased in alternatives if _ascii_edges(t)]
    other = [(t, cased) for t, cased in alternatives if not _ascii_edges(t)]
    ci = "|".join(escape(t) for t, cased in plain if not cased)
    cs = "|".join(escape(t) for t, cased in plain if cased)
    pattern = r"\b(?:(?i:" + ci + r")|" + cs + r")\b"
    if other:
        pattern += "|" + "|".join(term_pattern(t, cased) for t, cased in other)
    return pattern


def _near_clinical_record(sc: Scan, start: int, end: int) -> bool:
    """A patient-record cue at most 400 characters before or 200 after the span."""
    if not sc.cues:
        return False
    if sc.clinical is None:
        sc.clinical = clinical_spots(sc.text)
    i = bisect.bisect_left(sc.clinical, start - 400)
    return i < len(sc.clinical) and sc.clinical[i] <= end + 200


def _may_name_person(sc: Scan, start: int, end: int) -> bool:
    """False when :func:`health_about_person` cannot tie ``text[start:end]`` to a
    person: a necessary condition of it, at a fraction of its cost.

    The rule needs, in the term's sentence, a person word (my, his, her, our, I, he,
    she, me, him, I'm, I've ...), a capitalised word and a name verb ("John has") or a
    listed name before the term: :func:`people_near` in ASCII text; elsewhere any such
    word, or a listed name before the term, in the widest window the rule may look at
    (160 characters before the term, 100 after).
    """
    if sc.ascii:
        return people_near(sc.text, sc.data, [(start, end)])[0]
    lo = max(0, start - 160)
    hi = min(len(sc.text), end + 100)
    words = sc.text[lo:hi].lower().translate(_SEPARATE).split()
    if not (_PERSON_WORDS.isdisjoint(words) and _NAME_VERBS.isdisjoint(words)):
        return True
    return bool(names.name_spans(sc.text, lo, start))


def find_health(sc: Scan, terms: list[Term]) -> None:
    """The health rule on ASCII text, given the terms that the set saw.

    Finds what the rule's regex would (leftmost-first, non-overlapping matches of
    ``\\b(?:terms)\\b``) by substring search for those terms only, then checks each.
    """
    data = sc.data
    lowered = data.lower()
    n = len(data)
    word = _WORD_BYTES
    found: list[tuple[int, int, int]] = []  # (start, rank, end)
    for term in terms:
        hay = data if term.cased else lowered
        if term.words is None:
            size = len(term.needle)
            i = hay.find(term.needle)
            while i != -1:
                j = i + size
                if (i == 0 or hay[i - 1] not in word) and (j == n or hay[j] not in word):
                    found.append((i, term.rank, j))
                i = hay.find(term.needle, i + 1)
        else:
            m = term.words.search(hay)
            while m is not None:
                i, j = m.span()
                if (i == 0 or hay[i - 1] not in word) and (j == n or hay[j] not in word):
                    found.append((i, term.rank, j))
                m = term.words.search(hay, i + 1)
    found.sort()
    spans: list[tuple[int, int]] = []
    pos = 0
    for s, _rank, e in found:
        if s >= pos:
            spans.append((s, e))
            pos = e
    text = sc.text
    people = people_near(text, data, spans) if sc.people else [False] * len(spans)
    records: dict[str, bool] = {}
    for (s, e), near in zip(spans, people, strict=True):
        if (near and health_about_person(text, s, e)) or (
            sc.cues and _near_clinical_record(sc, s, e)
        ):
            sc.add("health", s, e)
        elif _in_person_record(text, s, e, records):
            sc.add("health", s, e, certain=False)


def _in_person_record(text: str, s: int, e: int, seen: dict[str, bool]) -> bool:
    """The term lies in a record that identifies a person (:mod:`.health_records`);
    ``seen`` caches the answer per record text."""
    bounds = health_records.record_bounds(text, s, e)
    if bounds is None:
        return False
    record, structured = bounds
    if record not in seen:
        seen[record] = health_records.identifies_person(
            record, structured, _NAME_STOP, _HEALTH_TERM_SET
        )
    return seen[record]


def _check_health(sc: Scan, s: int, e: int) -> None:
    """The health rule for one medical term (regex path: non-ASCII text, or the set gave up)."""
    if (sc.people and _may_name_person(sc, s, e) and health_about_person(sc.text, s, e)) or (
        _near_clinical_record(sc, s, e)
    ):
        sc.add("health", s, e)
    elif _in_person_record(sc.text, s, e, {}):
        sc.add("health", s, e, certain=False)


def on_health(sc: Scan, m: Hit) -> None:
    s, e = m.span()
    _check_health(sc, s, e)


__all__ = [
    "CLINICAL_CUES",
    "Term",
    "clinical_spots",
    "find_health",
    "find_shapes",
    "health_about_person",
    "health_alternatives",
    "health_pattern",
    "make_term",
    "on_health",
    "people_near",
    "person_cue_pattern",
    "term_pattern",
]
