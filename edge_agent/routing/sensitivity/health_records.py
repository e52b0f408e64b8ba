"""Health data in a record: a medical term and an identifiable person anywhere in it.

The sentence rule of :mod:`.health` ties a term to a person in its own sentence. A record
is read as a whole instead, as a data-protection officer would read it: a short message
(at most :data:`RECORD_CHARS` characters), or a row of a delimited table (CSV/TSV/
Markdown) together with its header line, or one JSON/HL7 line. When a record holds a
medical term and anything that identifies a person, the term is health data about that
person. The finding is uncertain (``certain=False``): it keeps the request on the device
(fail closed) without claiming more than the rule knows.

What identifies a person here (:func:`identifies_person`):

* a case, record, patient or room number: an identifier word of the five languages
  ("case", "MRN", "Fallnummer", "Akte", "dossier", "historia clínica", "expediente",
  "patiëntnummer", "room"/"bed", "Zimmer"/"Bett", "chambre"/"lit", "habitación"/"cama",
  "kamer"/"bed" ...) followed by a number, or ``#`` and three digits or more;
* a column header that names an identifier or a person (``id``, ``patient_id``, ``name``,
  ``Nachname``, ``nom``, ``nombre``, ``naam``, ``dob`` ...);
* a person name: a listed name or honorific (:func:`.names.name_spans`), or two
  capitalised words next to each other that are neither stop words nor medical terms
  ("Kwabena Osei");
* a birth date word or a birth-date-shaped date next to a name.

A text framed as a topic ("write an article about ...", "explain ...") with no
identifier in it stays public, and so do texts about public figures.
"""

from __future__ import annotations

import re
from typing import Final

from edge_agent.routing.sensitivity import names
from edge_agent.routing.sensitivity.terms import entries

RECORD_CHARS: Final = 320
"""A text up to this long is one record (a chat message, a note, one log line)."""

_ID_WORDS: Final = (
    r"case|case[ _-]?(?:id|no|nr|number)|record|chart|mrn|encounter|admission|"
    r"patient(?:[ _-]?(?:id|no|nr|number))?|pat[ _-]?(?:id|nr)|pat|pt|enc|"
    r"paciente|patiente|patientin|pati[eë]nt|subject|proband|probandin|sujet|sujeto|"
    r"participant|claim|policyholder|versicherte[rn]?|"
    r"fall|fallnummer|fall[ _-]?nr|akte|aktenzeichen|patienten(?:nummer|nr|akte)|"
    r"dossier|n[°º]\s*dossier|num[ée]ro\s+de\s+dossier|ipp|nip|"
    r"historia(?:\s+cl[ií]nica)?|hc|nhc|expediente|n[°º]\s*historia|"
    r"pati[eë]nt(?:en)?nummer|pati[eë]ntnr|dossiernummer"
)
_ROOM_WORDS: Final = r"room|bed|ward|zimmer|zi|bett|chambre|lit|habitaci[oó]n|cama|sala|kamer"


def _number_after(words: str) -> re.Pattern[str]:
    """One of ``words``, then (after a few separators, "no."/"Nr."/"n°") a number."""
    return re.compile(
        rf"(?i)(?<![\w])(?:{words})(?![\w])[ \t._:#=\"'/-]{{0,6}}"
        r"(?:(?:no|nr|n[°º]|number|nummer|num|id)\b\.?[ \t:#=\"'-]{0,4})?"
        r"[A-Z]{0,4}[-/]?[0-9][0-9-]*"
    )


ID_CUE: Final = _number_after(_ID_WORDS)
"""An identifier word and a number after it ("Case #48213", "Fallnummer 2024-55812",
"historia clínica 339021")."""
ROOM_CUE: Final = _number_after(_ROOM_WORDS)
"""A room or bed number ("Zimmer 12", "bed 7", "cama 3"): a patient's, unless the text is
framed as a topic (an office's "Room 101")."""

_HEADER_CELL: Final = re.compile(
    r"(?i)^[ \t\"'`*]*(?:[a-z]+[ _-])?(?:id|nr|no|nummer|number|num|n[°º]|mrn|ipp|nhc|"
    r"name|naam|nom|nombre|apellidos?|nachname|vorname|prénom|prenom|voornaam|achternaam|"
    r"surname|patient|patientin|patiente|paciente|pati[eë]nt|dob|geburtsdatum|birth[ _-]?date|"
    r"date[ _-]de[ _-]naissance|fecha[ _-]de[ _-]nacimiento|geboortedatum|case|fall|dossier|"
    r"expediente|historia|room|bed|zimmer|bett|chambre|lit|cama|habitaci[oó]n|kamer)"
    r"[ \t\"'`*]*$"
)
"""A header cell that names an identifier or a person column."""

MEDICAL_SHAPES: Final = (
    # a dose: "850 mg", "40mg", "0,5 mcg", "10 IE", "5 ml/h"
    r"[0-9]+(?:[.,][0-9]+)?[ \t]?(?:mg|mcg|µg|iu|ie|ui|mmol/l|mg/dl|mmhg|ml/h)",
    # a drug by its stem: "ramipril", "bisoprolol", "atorvastatin", "adalimumab", "heparin"
    r"[a-z]{2,}(?:pril|olol|sartan|statin|mab|cillin|mycin|cycline|floxacin|azole|"
    r"parin|triptan|oxetine|oxetin|azepam|azolam|tinib|ciclovir|vudine|gliptin|"
    r"glutide|gliflozin|lukast|dronat|dronate|semide|thiazide|tiazid|dipine|dipin|"
    r"profen|fenac|coxib|terol|isone|isolon|isolone|xaban|gatran|setron|tidine)",
    # a condition or procedure by its suffix: "pancreatitis", "appendectomy", "Anämie"
    r"[a-z]{3,}(?:itis|itiden|ectomy|ektomie|ectomie|ectomia|ostomy|plasty|plastik|"
    r"opathy|opathie|opatia|embolie|embolism|embolia|infarkt|insuffizienz|"
    r"sklerose|karzinom|carcinoma|carcinome|glioma|sarcoma|anaemia|anemia|penia|penie|"
    r"oscopy|oskopie|oscopie|oscopia|ämie|émie)",
    # French conditions in -ite ("cholécystite", "bronchite"): their stems, any prefix
    r"\pL*(?:cystite|bronchite|gastrite|colite|sinusite|otite|méningite|appendicite|"
    r"hépatite|arthrite|pancréatite|dermatite|conjonctivite|laryngite|pharyngite|"
    r"tendinite|diverticulite|néphrite|phlébite|cardite|vascularite|spondylarthrite)",
)
"""Shapes of medical words that no list can hold: doses, drug stems, condition and
procedure suffixes (lower case; matched in the lowered text, whole words only)."""


def _shape_gate() -> str:
    """An RE2 pattern for the set: a digit and a dose unit ("850 mg", "10IE")."""
    dose = MEDICAL_SHAPES[0][MEDICAL_SHAPES[0].index("[ \\t]?") :]
    return r"[0-9](?i:" + dose + r")\b"


SHAPE_GATE: Final = _shape_gate()
"""In the scanner's RE2 set (with the patient-record cues): a dose makes a short text
worth searching for medical shapes (so do a listed term, a person or a record cue).
The shapes' endings themselves cost the set 3 us per 4 KB (their words have no fixed
start), so they are not in it."""

SHAPE_STOP: Final = frozenset(entries("health_shape_stopwords.txt"))
"""Ordinary words that end like a medical word ("website", "pipeline", "someone")."""

_PATIENT_NAMED: Final = re.compile(
    r"(?i:\b(?:patient(?:in|e)?|paciente|pati[eë]nt|pt|pat)\b\.?[ \t]*:?[ \t]+)"
    r"(?!(?:Portal|Education|Experience|Journey|Satisfaction|Engagement|Information|Leaflet|"
    r"Safety|Care|Data|Services|Advocacy|Management|App|Zero|Records?)\b)"
    r"(?:[A-ZÀ-Þ]\.?[ \t]+)?(?:(?:de|van|von|da|del|di|le|la)[ \t]+)*[A-ZÀ-Þ][a-zß-ÿ]"
)
"""A patient word and a name after it ("Pt: Obi Nwosu", "patiënt J. de Graaf")."""

_DELIMITERS: Final = ",;\t|"
_TOPIC: Final = re.compile(
    r"(?i)\b(?:article|essay|blog|leaflet|brochure|lecture|course|slides?|explain|"
    r"webinar|seminar|conference|talk|podcast|workshop|announced|discovered|invented|"
    r"roadmap|release|api|portal|feature|product|office|booked|meeting room|"
    r"died|starb|mourut|murió|overleed|"
    r"explique|erkläre|explica|leg uit|what (?:is|are)|how (?:does|do|to)|was ist|"
    r"qu'est-ce|qué es|wat is|symptoms of|research|study|studie|étude|estudio|"
    r"wikipedia|biograph\w*|famous|celebrity|president|history of)\b"
)
"""Words that frame a text as a topic, not as a record about a person."""

_CAPITALISED: Final = re.compile(
    r"(?<![\w'\u2019-])(?=([A-ZÀ-Þ][a-zß-ÿ'\u2019-]{1,})[ \t]+([A-ZÀ-Þ][a-zß-ÿ'\u2019-]{1,})"
    r"([^\n]{0,12}))"
)
"""Two capitalised words next to each other (overlapping pairs), and what follows."""

_AFTER_NAME: Final = re.compile(
    r"(?:[ \t]*(?:[,:;(\-\u2013/|]|$)|[ \t]+(?:has|had|is|was|needs|takes|got|hat|ist|war|"
    r"braucht|nimmt|leidet|a|est|prend|souffre|tiene|está|toma|necesita|sufre|heeft|is|"
    r"neemt|moet|lijdt)\b)"
)
"""What follows a name in a record: punctuation, the line's end, or a verb."""

_WORD: Final = re.compile(r"[^\W\d_]+")
_GERMAN: Final = re.compile(
    r"\b(?:der|die|das|und|ist|nicht|mit|für|eine|ein|bei|zu|am|im|auf|den|dem|hat|sich)\b"
)
"""Function words of German, whose nouns are capitalised like names."""


def title_case(record: str) -> bool:
    """A record written in title case (a headline, a question in capitals): most of its
    words after the first are capitalised, so capitals say nothing about names."""
    words: list[str] = [w for w in _WORD.findall(record)[1:] if len(w) > 2 and not w.isupper()]
    if len(words) < 3:
        return False
    capitalised = sum(1 for w in words if w[:1].isupper())
    return capitalised * 2 > len(words)


_ORGANISATION: Final = frozenset(entries("health_organisation_words.txt"))
"""Words next to a capitalised name that make it an organisation's ("Johns Hopkins
Medicine", "Hospital Santa Maria", "Diabetes UK"), not a person's."""


def _organisation_at(text: str, s: int, e: int) -> bool:
    """A word of :data:`_ORGANISATION` among the two words before or after ``text[s:e]``."""
    near = text[max(0, s - 30) : s].split()[-2:] + text[e : e + 30].split()[:2]
    return any(w.strip(".,;:'\"()").lower() in _ORGANISATION for w in near)


def _plain_name_pair(text: str, stop: frozenset[str], terms: frozenset[str]) -> bool:
    """Two capitalised words next to each other that may be a name ("Kwabena Osei"):
    neither a stop word of either list nor a medical term, followed by punctuation, the
    line's end or a verb ("Kwabena Osei has", "Sven Ekström -"), not an organisation's."""
    german = len(_GERMAN.findall(text)) >= 2  # nouns are capitalised: punctuation only
    for m in _CAPITALISED.finditer(text):
        a, b = m.group(1), m.group(2)
        after = _AFTER_NAME.match(m.group(3))
        if after is None or (german and after.group().strip()[:1].isalpha()):
            continue
        if a in stop or b in stop or a in names.STOP_WORDS or b in names.STOP_WORDS:
            continue
        if a.lower() in terms or b.lower() in terms:
            continue
        if a.lower() in _ORGANISATION or b.lower() in _ORGANISATION:
            continue
        if _organisation_at(text, m.start(), m.start() + len(a) + 1 + len(b)):
            continue
        return True
    return False


def _header_identifies(header: str, sep: str) -> bool:
    """A delimited header line with a column that names an identifier or a person."""
    return any(_HEADER_CELL.match(cell) for cell in header.split(sep))


_HL7_SEGMENT: Final = re.compile(r"[A-Z][A-Z0-9]{2}\|")
_CHAT_TURN: Final = re.compile(r"[ \t]*(?:\[[^\]\n]{1,30}\][ \t]*)?[\w .'-]{1,30}:[ \t]")
"""A line of a chat transcript: a speaker (and a time stamp) and a colon."""
_FHIR: Final = re.compile(r'"resourceType"\s*:')
_TABLE_LINES: Final = 500
"""How far up a table row looks for its header line."""


def _table_header(text: str, ls: int, line: str) -> str | None:
    """The header line of the delimited table whose row is ``line`` (starting at ``ls``):
    the first line of the block of non-blank lines with the row's delimiter above it."""
    for sep in _DELIMITERS:
        if line.count(sep) < 1:
            continue
        top = ls
        for _ in range(_TABLE_LINES):
            if top == 0:
                break
            prev = text.rfind("\n", 0, top - 1) + 1
            above = text[prev : top - 1]
            if not above.strip() or sep not in above:
                break
            top = prev
        end = text.find("\n", top)
        header = text[top : end if end != -1 else len(text)]
        if header.count(sep) >= 1:
            return header
    return None


def record_bounds(text: str, start: int, end: int) -> tuple[str, bool] | None:
    """The record around ``text[start:end]`` and whether it is structured; None when the
    term lies in running text that is longer than one record.

    A short text is one record. Otherwise: a whole HL7 v2 message (a ``PID`` segment in
    the text) or FHIR resource (``"resourceType"``), one JSON line, a short paragraph (an
    e-mail's), a short chat turn ("user: ...", "[10:02] Anna: ..."), or a table row with
    its header line (the header alone, with the row below it, when the term is in it).
    """
    if len(text) <= RECORD_CHARS:
        return text, False
    ls = text.rfind("\n", 0, start) + 1
    le = text.find("\n", end)
    if (le if le != -1 else len(text)) - ls > 2000:
        return None  # a long line of running text (no copy of it is made)
    line = text[ls : le if le != -1 else len(text)]
    if _HL7_SEGMENT.match(line):
        return (text, True) if "PID|" in text else (line, True)
    if len(text) <= 20000 and '"resourceType"' in text and _FHIR.search(text):
        return text, True
    if line.lstrip().startswith("{"):
        return line, True
    ps = text.rfind("\n\n", 0, start)
    ps = 0 if ps == -1 else ps + 2
    pe = text.find("\n\n", end)
    pe = len(text) if pe == -1 else pe
    if pe - ps <= RECORD_CHARS:  # a short paragraph of an e-mail or a note
        return text[ps:pe], False
    if len(line) <= RECORD_CHARS and _CHAT_TURN.match(line):
        return line, False
    header = _table_header(text, ls, line)
    if header is not None:
        if text.startswith(header, ls) and le != -1:  # the term is in the header line
            below = text.find("\n", le + 1)
            return header + "\n" + text[le + 1 : below if below != -1 else len(text)], True
        return header + "\n" + line, True
    return None


_STRUCTURED_PERSON: Final = re.compile(
    r'(?i)"(?:patient|subject|patient_?id|mrn|name|family|given|birth_?date|dob|'
    r'full_?name|first_?name|last_?name)"\s*:|"reference"\s*:\s*"Patient/'
)
"""Keys of a JSON/FHIR record that name or point to a person."""


def identifies_person(
    record: str, structured: bool, stop: frozenset[str], terms: frozenset[str]
) -> bool:
    """Whether ``record`` holds something that identifies a person (module docstring)."""
    if ID_CUE.search(record) or _PATIENT_NAMED.search(record):
        return True
    topic = _TOPIC.search(record) is not None
    if not topic and ROOM_CUE.search(record):
        return True
    first = record.split("\n", 1)[0]
    if "\n" in record:
        for sep in _DELIMITERS:
            if first.count(sep) >= 1 and _header_identifies(first, sep):
                return True
    if topic or title_case(record):
        return False
    for ns, ne in names.name_spans(record, 0, len(record)):
        words = record[ns:ne].lower().split()
        if _ORGANISATION.isdisjoint(words) and not _organisation_at(record, ns, ne):
            return True
    if structured and _STRUCTURED_PERSON.search(record):
        return True
    return _plain_name_pair(record, stop, terms) or _lower_case_name(record)


_LOWER_PAIR: Final = re.compile(r"(?<![\w-])([a-zß-ÿ]{2,})[ \t]+([a-zß-ÿ'-]{2,})(?![\w])")


def _lower_case_name(record: str) -> bool:
    """A name written in lower case, as in quick chat messages ("ana garcía tiene ..."):
    a listed given name and a listed surname, neither a stop word."""
    for m in _LOWER_PAIR.finditer(record):
        given, family = m.group(1).capitalize(), m.group(2).capitalize()
        if (
            given in names.GIVEN_NAMES
            and family in names.SURNAMES
            and given not in names.STOP_WORDS
            and family not in names.STOP_WORDS
        ):
            return True
    return False


__all__ = [
    "ID_CUE",
    "MEDICAL_SHAPES",
    "RECORD_CHARS",
    "SHAPE_GATE",
    "SHAPE_STOP",
    "identifies_person",
    "record_bounds",
]
