"""People: dates of birth, and person names next to other personal data.

Categories ``date_of_birth`` and ``person_name`` (restricted).

Dates of birth (rules in the scanner's RE2 set, :data:`RULES`):

* a date that words announce as a birth date, in English, German, French, Spanish, Dutch
  (and Italian, Portuguese): "born", "DOB", "date of birth", "birthday", "geboren",
  "geb.", "Geburtsdatum", "né le", "née le", "date de naissance", "fecha de nacimiento",
  "nacido el", "geboortedatum", JSON/CSV keys such as ``date_of_birth``, ``birthDate``,
  ``fecha_nacimiento``. The set sees the word only; :func:`on_dob` then looks for a date
  at most five words after it (three after a verb: "born in Madrid on"), in the same
  sentence. A word that heads a CSV/TSV column
  (``name,dob,phone``) makes the dates in that column of the rows below it birth dates.
* field 7 of an HL7 v2 ``PID`` segment (whose field 5, the patient's name, gives
  ``person_name`` findings for its family, given and middle names);
* a numeric date right after a person's name ("Anna Schmidt, 12.03.1985", "Jan de Vries
  (1979-11-02)", "Anna Schmidt * 12.03.1985"), when the name is a listed name
  (:mod:`.names`) and the year lies between 1900 and ten years ago.

Dates: day, month and year in any order that people write them, numeric (``12.03.1985``,
``03/12/1985``, ``1985-03-12``, ``12-03-85``, ``19850312`` after a keyword) or with the
month's name in one of the seven languages (``12 March 1985``, ``March 12th, 1985``,
``12. März 1985``, ``3 mars 1985``, ``12 de marzo de 1985``, ``12 maart 1985``); the day,
month and year must be valid, the year from 1900 to this year. After a keyword that is
no verb a month and a year alone (``DOB: 03/1985``) count too; after a verb ("born",
"geboren", "né le") the date must be whole and at most three words away. The span is the
date. In a line about a public figure ("a short biography of ...", "the president was
born on ...") a birth date is history, not personal data, and no finding.

Person names (:func:`find_names`, run by the scanner after all rules, and only when a
rule found health, contact, identity, financial data or a date of birth): the names of
:func:`.names.name_spans` within 160 characters of such a finding, in the same
paragraph, that overlap no other finding. The names list never enters the RE2 set, so
ordinary text still costs one pass.
"""

from __future__ import annotations

import datetime
import re
from typing import Final

from edge_agent.routing.sensitivity import names
from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan

THIS_YEAR: Final = datetime.date.today().year

_MONTHS: Final[dict[str, int]] = {}
for _number, _words in enumerate(
    (
        "january jan januar jänner jaenner janvier janv enero ene januari gennaio janeiro",
        "february feb februar février fevrier févr fevr febrero februari febbraio fevereiro",
        "march mar märz maerz mrz mars marzo maart mrt março marco",
        "april apr avril avr abril aprile",
        "may mai mayo mei maggio maio",
        "june jun juni juin junio giugno junho",
        "july jul juli juillet juil julio luglio julho",
        "august aug août aout agosto augustus",
        "september sep sept septembre septiembre setiembre settembre setembro",
        "october oct oktober okt octobre octubre ottobre outubro out",
        "november nov novembre noviembre novembro",
        "december dec dezember dez décembre decembre déc dic diciembre dicembre dezembro",
    ),
    start=1,
):
    for _word in _words.split():
        _MONTHS[_word] = _number

_MONTH: Final = "(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY: Final = r"(?:[0-2]?[0-9]|3[01])"
_ORDINAL: Final = r"(?:st|nd|rd|th|er|e|º|°|\.)?"
_YEAR4: Final = r"(?:19|20)[0-9]{2}"

DATE: Final = re.compile(
    rf"(?<![0-9])(?:"
    rf"(?P<ymd>{_YEAR4})(?P<s1>[-/.])(?P<ymd_m>[01]?[0-9])(?P=s1)(?P<ymd_d>{_DAY})"
    rf"|(?P<a>{_DAY})(?P<s2>[./-])(?P<b>{_DAY})(?P=s2)(?P<y>{_YEAR4}|[0-9]{{2}})"
    rf"|(?P<dmy_d>{_DAY}){_ORDINAL}[ \t]*(?:of[ \t]+|de[ \t]+)?(?P<dmy_m>{_MONTH})"
    rf"[ \t,]*(?:de[ \t]+|del[ \t]+)?(?P<dmy_y>{_YEAR4}|[0-9]{{2}})"
    rf"|(?P<mdy_m>{_MONTH})[ \t]+(?P<mdy_d>{_DAY}){_ORDINAL},?[ \t]+(?P<mdy_y>{_YEAR4})"
    rf"|(?P<compact>{_YEAR4}[01][0-9][0-3][0-9])"
    rf"|(?P<my_m>{_MONTH}|[01]?[0-9])[ \t/.-]+(?:de[ \t]+)?(?P<my_y>{_YEAR4})"
    rf")(?![0-9])",
    re.IGNORECASE,
)
"""A date; the ``my_*`` (month and year) and ``compact`` forms count after a keyword only."""


def _valid(day: int, month: int, year: int) -> bool:
    if not (1 <= month <= 12 and 1 <= day <= 31 and 1900 <= year <= THIS_YEAR):
        return False
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def _year(text: str) -> int:
    value = int(text)
    if len(text) == 2:  # "12.03.85": the most recent such year that is not in the future
        value += 2000 if value <= THIS_YEAR % 100 else 1900
    return value


def date_ok(m: re.Match[str], partial: bool) -> bool:
    """Whether a :data:`DATE` match is a real date from 1900 to this year (``partial``:
    a month and year alone, or a compact ``19850312``, count)."""
    g = m.group
    if g("ymd"):
        return _valid(int(g("ymd_d")), int(g("ymd_m")), int(g("ymd")))
    if g("a"):
        a, b, y = int(g("a")), int(g("b")), _year(g("y"))
        return _valid(a, b, y) or _valid(b, a, y)  # day first, or the US month first
    if g("dmy_d"):
        month = _MONTHS[g("dmy_m").rstrip(".").lower()]
        return _valid(int(g("dmy_d")), month, _year(g("dmy_y")))
    if g("mdy_m"):
        month = _MONTHS[g("mdy_m").rstrip(".").lower()]
        return _valid(int(g("mdy_d")), month, int(g("mdy_y")))
    if not partial:
        return False
    if g("compact"):
        c = g("compact")
        return _valid(int(c[6:8]), int(c[4:6]), int(c[:4]))
    word = g("my_m").rstrip(".").lower()
    month = int(word) if word.isdigit() else _MONTHS[word]
    return _valid(1, month, int(g("my_y")))


# --------------------------------------------------------------------------------------
# Rules and their handlers.

DOB_RULE: Final = (
    r"(?:\b|_)(?i:(?:date[ _-]?of[ _-]?birth|birth[ _-]?date|birthday|born|d\.o\.b|dob|bday|"
    r"geboren|geburtsdatum|geburtstag|geb\.?[ -]?datum|"
    r"n[ée]\(?e?\)?[ \t]+le|n[ée]\(?e?\)?[ \t]*:|date[ _-](?:de[ _-])?naissance|naissance|"
    r"fecha[ _-](?:de[ _-])?nacimiento|fecha[ _-]de[ _-]nac|date[ _-]de[ _-]naiss|"
    r"nacid[oa]|f(?:echa)?\.?[ ]?nac|"
    r"geboortedatum|geboortedag|data[ _-]di[ _-]nascita|nat[oa][ \t]+il|"
    r"data[ _-]de[ _-]nascimento|nascid[oa]|geburtsdat|geb\.?[ -]?dat|"
    r"f[ _.-]?nac|fec\.?[ _-]?nac|dt[ _.-]?naiss|birth|nacimiento|geburt|geboorte)(?:\b|_)|geb\.|"
    # the short marks: "b. 03/04/1988", "\u00b0 12.3.1962" (a full date must follow at once)
    r"\b[bB]\.[ \t]?[0-9]|[ \t(,;]*\x{b0}[ \t]?[0-9])"
)
"""RE2 pattern of the words that announce a date of birth."""

_VERB: Final = re.compile(r"(?i)born|geboren\b|n[ée]|nacid|nat[oa]|nascid")
"""Birth-date words that are verbs (after them a full date is needed)."""

_GAP_WORDS: Final = 5
_VERB_GAP_WORDS: Final = 3  # "born in Madrid on 3 May 1980", not "Born to Run was released on"
_SENTENCE_END: Final = re.compile(r"[.!?]\s+[A-Z]|\n\s*\n")
"""A sentence end inside a gap (an abbreviation's full stop, "Geb.-Dat. ", is none)."""
_CELL_SEPARATORS: Final = ",;\t|"


_PUBLIC_CONTEXT: Final = re.compile(
    r"(?i)\b(?:biograph\w*|biografi\w*|biografía|wikipedia|famous|berühmt\w*|célèbre|famos[oa]|"
    r"beroemd\w*|president\w*|präsident\w*|présiden\w*|king|queen|könig\w*|roi|reine|rey|"
    r"reina|koning\w*|scientist|physicist|composer|painter|novelist|poet|actor|actress|"
    r"singer|footballer|chancellor|kanzler\w*|emperor|kaiser\w*|empereur|emperador)\b"
)
"""Words of a text about a public figure ("a short biography of ..."): a birth date next
to them is history, not personal data (a person of the public record)."""


def _public_figure(text: str, start: int, end: int) -> bool:
    """Public-figure words in the line around ``text[start:end]`` (120 characters each side)."""
    lo = text.rfind("\n", max(0, start - 120), start) + 1 or max(0, start - 120)
    hi = text.find("\n", end, end + 120)
    return (
        _PUBLIC_CONTEXT.search(text, lo, hi if hi != -1 else min(len(text), end + 120)) is not None
    )


def _gap_ok(gap: str, words: int = _GAP_WORDS) -> bool:
    """The text between a keyword and a date: at most ``words`` words, no sentence end."""
    if _SENTENCE_END.search(gap):
        return False
    if gap.count("\n") > 1:
        return False
    return len(re.findall(r"[^\W\d_]{2,}", gap)) <= words


def _column_dates(sc: Scan, ks: int, ke: int, sep: str) -> bool:
    """``text[ks:ke]`` heads a column of a table with cells separated by ``sep``: the
    dates in that column of the following rows are birth dates. False: no table."""
    text = sc.text
    line_start = text.rfind("\n", 0, ks) + 1
    line_end = text.find("\n", ke)
    if line_end == -1:
        return False
    header = text[line_start:line_end]
    if header.count(sep) < 1:
        return False
    column = text[line_start:ks].count(sep)
    pos = line_end + 1
    rows = 0
    while pos < len(text) and rows < 200:
        end = text.find("\n", pos)
        end = len(text) if end == -1 else end
        if end == pos:
            break  # a blank line ends the table
        cells = text[pos:end].split(sep)
        if column < len(cells):
            start = pos + sum(len(c) + 1 for c in cells[:column])
            cell = cells[column]
            m = DATE.search(cell)
            if m is not None and date_ok(m, True):
                sc.add("date_of_birth", start + m.start(), start + m.end())
        pos = end + 1
        rows += 1
    return True


_TWO_CAPITALISED: Final = re.compile(r"[A-ZÀ-Þ][a-zß-ÿ'-]+[ \t]+[A-ZÀ-Þ][a-zß-ÿ'-]+")
"""A name before a short birth mark ("Jonas Weber, b. 03/04/1988")."""


def on_dob(sc: Scan, m: Hit) -> None:
    """A birth-date word: the date after it (or the dates of its column)."""
    ks, ke = m.span()
    text = sc.text
    if text[ke - 1 : ke].isdigit():  # a short mark ("b. 1", "\u00b0 1"): the date at once
        ke -= 1
        d = DATE.match(text, ke)
        line = max(text.rfind("\n", 0, ks) + 1, ks - 60)
        named = _TWO_CAPITALISED.search(text, line, ks) or names.name_spans(text, line, ks)
        if d and named and date_ok(d, False) and not _public_figure(text, ks, d.end()):
            sc.add("date_of_birth", d.start(), d.end())
        return
    after = text[ke : ke + 3].lstrip("\"' ")
    if after[:1] in _CELL_SEPARATORS and after[:1] and _column_dates(sc, ks, ke, after[0]):
        return
    window = text[ke : ke + 80]
    # a verb ("born", "geboren", "né le") needs a full date: "born in March 1991" is a
    # birth month and year, which public text tells of people and things alike
    partial = _VERB.match(text, ks) is None
    for d in DATE.finditer(window):
        if not _gap_ok(window[: d.start()], _GAP_WORDS if partial else _VERB_GAP_WORDS):
            return
        if date_ok(d, partial):
            if not _public_figure(text, ks, ke + d.end()):
                sc.add("date_of_birth", ke + d.start(), ke + d.end())
            return


NAME_DATE_RULE: Final = (
    r"\p{Lu}[\pL'-]+[ \t]+(?:\pL+[ \t]+){0,2}\p{Lu}[\pL'-]+[ \t]*"
    r"(?:,|\(|;|\*|:|-|\x{2013}|/|\||,[ \t]*\*)?[ \t]*"
    r"(?:[0-9]{1,2}[./-][0-9]{1,2}[./-](?:19|20)[0-9]{2}|(?:19|20)[0-9]{2}-[0-9]{2}-[0-9]{2}"
    r"|[0-9]{1,2}\.?[ \t]+(?:de[ \t]+)?\pL{3,}\.?[ \t]+(?:de[ \t]+)?(?:19|20)[0-9]{2})\b"
)
"""RE2 pattern of a capitalised name and a date right after it (numeric, or a day, a
month's name and a year)."""

_NAME_THEN_DATE: Final = re.compile(r"[ \t]*(?:,|\(|;|\*|:|-|\u2013|/|\||,[ \t]*\*)?[ \t]*")
_UNLISTED_NAME: Final = re.compile(
    r"(?<![\w'-])([A-ZÀ-Þ][a-zß-ÿ'-]+)[ \t]+((?:(?:de|van|von|da|del|di|le|la)[ \t]+)*"
    r"[A-ZÀ-Þ][a-zß-ÿ'-]+)(?=[ \t]*(?:,|\(|;|\*|:|-|\u2013|/|\||,[ \t]*\*)?[ \t]*[0-9])"
)
"""Two capitalised words right before a date: a name that the list does not know."""


def on_name_date(sc: Scan, m: Hit) -> None:
    """A listed name and a date of a plausible birth year right after it."""
    s, e = m.span()
    text = sc.text
    for _ns, ne in names.name_spans(text, s, e):
        after = _NAME_THEN_DATE.match(text, ne, e)
        if after is None:
            continue
        d = DATE.fullmatch(text, after.end(), e)
        if d is None or not date_ok(d, False):
            continue
        year = int(re.findall(r"(?:19|20)[0-9]{2}", d.group())[-1])
        if year <= THIS_YEAR - 10 and not _public_figure(text, s, e):
            sc.add("date_of_birth", d.start(), d.end())
        return
    _unlisted_name_date(sc, s, e)


def _unlisted_name_date(sc: Scan, s: int, e: int) -> None:
    """Two capitalised words that are no stop words right before a date of a plausible
    birth year ("Kwabena Osei 12.03.1985"): an uncertain birth date (fail closed)."""
    text = sc.text
    for n in _UNLISTED_NAME.finditer(text, s, e):
        if n.group(1) in names.STOP_WORDS or n.group(2) in names.STOP_WORDS:
            continue
        after = _NAME_THEN_DATE.match(text, n.end(), e)
        d = DATE.fullmatch(text, after.end(), e) if after else None
        if d is None or not date_ok(d, False):
            continue
        year = int(re.findall(r"(?:19|20)[0-9]{2}", d.group())[-1])
        if year <= THIS_YEAR - 10 and not _public_figure(text, s, e):
            sc.add("date_of_birth", d.start(), d.end(), certain=False)
        return


HL7_PID_RULE: Final = r"(?m:^PID\|[^\r\n]*)"
"""RE2 pattern of an HL7 v2 ``PID`` (patient identification) segment."""

_HL7_NAME_PART: Final = re.compile(r"[^\W\d_][\w'\-. ]*[^\W\d_]|[^\W\d_]")


def on_hl7_pid(sc: Scan, m: Hit) -> None:
    """An HL7 ``PID`` segment: the patient's name (field 5, ``family^given^middle``) and
    date of birth (field 7, ``YYYYMMDD[hhmm]``)."""
    s, e = m.span()
    text = sc.text
    fields: list[tuple[int, int]] = []
    start = s
    for i in range(s, e + 1):
        if i == e or text[i] == "|":
            fields.append((start, i))
            start = i + 1
    if len(fields) > 5:
        fs, fe = fields[5]
        pos = fs
        for component in text[fs:fe].split("^")[:3]:
            part = _HL7_NAME_PART.search(component)
            if part is not None and len(part.group()) > 1:
                sc.add("person_name", pos + part.start(), pos + part.end())
            pos += len(component) + 1
    if len(fields) > 7:
        ds, de = fields[7]
        value = text[ds:de]
        if len(value) >= 8 and value[:8].isdigit():
            y, mo, d = int(value[:4]), int(value[4:6]), int(value[6:8])
            if _valid(d, mo, y):
                sc.add("date_of_birth", ds, ds + 8)


RULES: Final[list[tuple[str, str, Handler]]] = [
    ("dob", DOB_RULE, on_dob),
    ("namedate", NAME_DATE_RULE, on_name_date),
    ("hl7pid", HL7_PID_RULE, on_hl7_pid),
]
"""This family's rules as (name, RE2 pattern, handler), in the order the scanner runs them."""


# --------------------------------------------------------------------------------------
# Person names next to other findings.

TRIGGERS: Final = frozenset(
    {
        "health",
        "email",
        "phone",
        "street_address",
        "national_id",
        "passport",
        "iban",
        "payment_card",
        "date_of_birth",
    }
)
"""Categories next to which a person name is itself a finding."""

_REACH: Final = 160


def _window(text: str, start: int, end: int) -> tuple[int, int]:
    """Up to 160 characters either side of a span, inside its paragraph."""
    lo = max(0, start - _REACH)
    hi = min(len(text), end + _REACH)
    blank = text.rfind("\n\n", lo, start)
    if blank != -1:
        lo = blank + 2
    blank = text.find("\n\n", end, hi)
    if blank != -1:
        hi = blank
    return lo, hi


def find_names(sc: Scan) -> None:
    """Adds ``person_name`` findings around the findings of :data:`TRIGGERS`."""
    anchors = [f for f in sc.findings if f.category in TRIGGERS and f.message == sc.message]
    if not anchors:
        return
    text = sc.text
    windows = sorted(_window(text, f.start, f.end) for f in anchors)
    merged: list[list[int]] = []
    for lo, hi in windows:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    taken = [(f.start, f.end) for f in sc.findings]
    for lo, hi in merged:
        for s, e in names.name_spans(text, lo, hi):
            if not any(s < te and ts < e for ts, te in taken):
                sc.add("person_name", s, e)
                taken.append((s, e))
        # capitalised words nobody listed, next to personal data: perhaps a name, so an
        # uncertain one (the text is restricted already; redaction will not send it)
        for s, e in names.unlisted_name_spans(text, lo, hi):
            if not any(s < te and ts < e for ts, te in taken):
                sc.add("person_name", s, e, certain=False)


__all__ = [
    "DATE",
    "DOB_RULE",
    "HL7_PID_RULE",
    "NAME_DATE_RULE",
    "RULES",
    "TRIGGERS",
    "date_ok",
    "find_names",
    "on_dob",
    "on_hl7_pid",
    "on_name_date",
]
