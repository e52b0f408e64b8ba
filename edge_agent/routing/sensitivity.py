"""Sensitivity detection: is this request ``public``, ``internal`` or ``restricted``?

The router calls :meth:`SensitivityDetector.classify` on every request, on the device, before
any routing decision. ``restricted`` requests may only run locally, ``internal`` ones locally
or on a private tier, ``public`` ones anywhere (the policy lives in the router; this module
only labels).

What is restricted (category names in parentheses, all at :attr:`Level.RESTRICTED`):

* credentials: AWS access key ids and secret keys (``aws_access_key``), GitHub, GitLab,
  Slack, Stripe, OpenAI/Anthropic, Hugging Face, npm, Google API/OAuth, SendGrid tokens,
  Azure SAS signatures, bearer/basic authorization headers and ``api_key=`` / ``token:`` /
  ``secret=`` assignments with a high-entropy value (``api_token``); JWTs whose first
  segment decodes to a JSON object with an ``alg`` member (``jwt``); PEM/OpenSSH/PGP/PuTTY
  private keys (``private_key``); URLs with ``user:password@``, ADO/JDBC strings with a
  password, Azure ``AccountKey=`` / ``SharedAccessKey=`` (``connection_string``);
  ``password=``/``password is ...`` values that are not placeholders (``password``);
* payment cards: 13-19 digits, consistently grouped, plausible issuer prefix, Luhn-valid
  (``payment_card``); IBANs with a valid mod-97 check and country format (``iban``);
* national IDs: US SSN (area/group/serial rules), UK NINO, French NIR, Spanish DNI/NIE,
  Italian codice fiscale by format and checksum; German Steuer-ID, NHS number and other
  IDs when a keyword names them (``national_id``); passport numbers after a passport
  keyword (``passport``);
* personal contact data: e-mail addresses (``email``), phone numbers (``phone``), street
  addresses (``street_address``);
* health information about a person (``health``), see the rule below.

What is internal (:attr:`Level.INTERNAL`): configured markers such as "confidential" or "do
not distribute" (``internal_marker``); host names under internal suffixes (``*.internal``,
``*.corp``, ``*.local``, ``*.lan`` ...) or configured company domains, and RFC 1918
addresses (``internal_host``). Everything else is public.

Health rule. A medical term (a condition, a diagnosis or prescription word, a medication
name, pregnancy ...) is health information about a person only when, in the same sentence,
a specific person is tied to it: a possessive within three words before the term ("my type 2
diabetes", "her HIV test", "my mother's cancer"), a subject followed by a health verb that
leads to the term ("I was diagnosed", "she is pregnant", "my dad takes metformin", "John has
diabetes"), an object pronoun right after it ("prescribed me"), "for me"/"for my son", or a
clinical record naming a patient ("the patient", "Patient: Jane Roe", "Mr. Smith"). Generic
questions ("what is diabetes?", "how does metformin work?", "write an article about cancer
for my blog") stay public; so do terms followed by a topic noun ("my diabetes prediction
model"). The sentence is looked at no further than 160 characters before the term and 100
after it, and a word cut in two by that window is not read.

Design and library choices (numbers from ``python -m benchmarks.eval_sensitivity`` on a
shared 2-core x86 box; ``docs/benchmarks.md`` has the full table):

* Candidates are found by **one pass of one combined automaton**: every rule's pattern is
  added to an ``RE2::Set`` (``google-re2``), whose DFA scans the UTF-8 bytes once and
  reports which rules match anywhere, in about 3 ns/byte however many rules there are
  (11 us for 4 KB of ordinary text, which is then done; 20-30 us when other work has
  pushed the DFA out of the CPU caches). Only the rules that fired run again (RE2, for
  spans), and only their candidates reach the Python validators. CPython's
  ``re`` was measured first: it pays about 70 ns at every position where some pattern could
  start, so one alternation over the keywords alone took 250 us+ for 4 KB; an Aho-Corasick
  automaton for the keywords took 15-30 us. RE2 patterns avoid large counted repetitions
  (``{1,64}`` of a Unicode class made one rule 60 times slower); lengths are checked in
  Python instead. A sentinel ``\\z`` pattern in the set proves the DFA read the whole text;
  if it is missing (DFA out of memory) every rule runs, so the memory budget can cost
  time but never a finding.
* The health rule is the one that fires on ordinary text (a medical question, a drug name)
  and then finds nothing, so it is built not to pay for that: its terms are in the set one
  by one, next to the patient-record cues ("patient", "Mr./Mrs. Name", DOB/MRN) and one
  pattern for "a medical term and a person (a person word, or a capitalised word and a
  name verb) with no sentence boundary between them" (:func:`_person_cue_pattern`). When
  neither of the latter fires, no term can be a finding and the rule does not run at all.
  Otherwise, in ASCII text, the terms the set saw are found by substring search (no second
  regex pass over the text), one RE2 search of their joined windows (:func:`_people_near`)
  drops those without a person in their own sentence, and only the rest go through the
  word-level rule. Each shortcut is a necessary condition of the rule (it may let a term
  through that the rule then rejects, never the reverse); non-ASCII text takes the plain
  RE2 pass.
* Validators: ``python-stdnum`` (IBAN registry and country formats after a local mod-97
  pre-check, US SSN, French NIR, Spanish DNI/NIE, Italian codice fiscale, German IdNr, NHS
  number); ``phonenumbers`` (the ``phonenumberslite`` distribution, 5 MB instead of 48 MB
  without geocoder/carrier data) only for candidates written with a ``+``/``00`` country
  code or in the French pairs format: a parse costs about 30 us, so it never sees the text
  itself. Luhn, JWT header decoding, entropy and the health rule are local.
* Yelp's ``detect-secrets`` was measured on the labelled set: with its default plugins it
  takes about 40 ms per 4 KB prompt (regexes run line by line, plugin after plugin) and
  flags 215 of the 219 public texts (its keyword and entropy plugins are made for source
  files), and it has no notion of personal data. Its credential formats are covered here.
* Findings carry only the category and the span, never the matched text, so logging a
  :class:`Verdict` cannot leak what it found.
* Cost grows with the number of candidates, not with the number of rules: dense text
  (every sentence a hard negative or a finding) costs 0.25-1.2 ms per 4 KB, mostly in the
  Python validators. ``SensitivityConfig.stop_at_restricted`` stops at the first
  restricted finding for callers that only need the level.

``extra_restricted_patterns`` / ``extra_internal_patterns`` are Python ``re`` patterns run
with ``re.finditer`` over the text after the RE2 pass; each costs a scan of its own, so
anchor them on a literal prefix (``"EMP-[0-9]{6}"``), which ``re`` searches for quickly.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

import phonenumbers
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from stdnum import iban as _std_iban
from stdnum.de import idnr as _de_idnr
from stdnum.es import dni as _es_dni
from stdnum.es import nie as _es_nie
from stdnum.fr import nir as _fr_nir
from stdnum.gb import nhs as _gb_nhs
from stdnum.it import codicefiscale as _it_cf
from stdnum.us import ssn as _us_ssn

__all__ = [
    "CATEGORY_LEVELS",
    "DEFAULT_INTERNAL_KEYWORDS",
    "DEFAULT_INTERNAL_SUFFIXES",
    "Finding",
    "Level",
    "SensitivityConfig",
    "SensitivityDetector",
    "Verdict",
]


class Level(IntEnum):
    """How far a request may travel: the higher, the closer to the device it stays."""

    PUBLIC = 0
    INTERNAL = 1
    RESTRICTED = 2

    @property
    def label(self) -> str:
        """The lower-case name used in configuration and logs: ``"public"`` ..."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Level:
        """``Level.parse("internal") is Level.INTERNAL``; case-insensitive, raises ValueError."""
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown sensitivity level {value!r}") from None


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected item: its category and span ``text[start:end]``, never the text itself.

    ``message`` is the index of the text in :meth:`SensitivityDetector.classify_messages`
    (always 0 for :meth:`SensitivityDetector.classify`).
    """

    category: str
    start: int
    end: int
    message: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The level of a request and the findings that raised it (empty when public)."""

    level: Level
    findings: tuple[Finding, ...] = ()

    @property
    def categories(self) -> tuple[str, ...]:
        """Sorted unique categories of the findings."""
        return tuple(sorted({f.category for f in self.findings}))


DEFAULT_INTERNAL_KEYWORDS: Final[tuple[str, ...]] = (
    "confidential",
    "internal only",
    "internal use only",
    "for internal use",
    "do not distribute",
    "do not forward",
    "do not share externally",
    "not for distribution",
    "not for external distribution",
    "not for public release",
    "proprietary and confidential",
    "proprietary information",
    "company proprietary",
    "under nda",
    "trade secret",
    "need to know basis",
    "embargoed",
)
"""Phrases that mark a text as company-internal (case-insensitive, whole words)."""

DEFAULT_INTERNAL_SUFFIXES: Final[tuple[str, ...]] = (
    "internal",
    "corp",
    "local",
    "lan",
    "intranet",
    "intra",
    "private",
    "localdomain",
    "home.arpa",
)
"""DNS suffixes that only resolve inside an organisation (``*.corp``, ``*.internal`` ...)."""


@dataclass(frozen=True)
class SensitivityConfig:
    """What the detector treats as internal or restricted beyond its built-in rules.

    * ``internal_keywords``: phrases (case-insensitive, whole words, any whitespace between
      words) that make a text internal. "confidential" right after "keep/kept/remain/stay"
      ("keep customer data confidential") is a sentence about secrecy, not a marker, and is
      ignored.
    * ``internal_domains``: company domains (``"acme.com"``); the domain and its sub-domains
      are internal hosts.
    * ``internal_host_suffixes``: DNS suffixes (without the leading dot) that are internal.
    * ``private_ips_internal``: RFC 1918 addresses (10/8, 172.16/12, 192.168/16) are
      internal hosts.
    * ``extra_restricted_patterns`` / ``extra_internal_patterns``: category -> Python ``re``
      pattern; every match is a finding of that category at that level.
    * ``disabled_categories``: built-in categories to switch off (for example
      ``{"street_address"}`` on a device whose prompts are mostly shipping labels that the
      operator has cleared for the cloud).
    * ``stop_at_restricted``: stop scanning a text at the first restricted finding. The
      level is the same; the findings are then only those found so far. For callers that
      need the level only (routing), this bounds the cost of texts full of personal data.
    """

    internal_keywords: tuple[str, ...] = DEFAULT_INTERNAL_KEYWORDS
    internal_domains: tuple[str, ...] = ()
    internal_host_suffixes: tuple[str, ...] = DEFAULT_INTERNAL_SUFFIXES
    private_ips_internal: bool = True
    extra_restricted_patterns: Mapping[str, str] = field(default_factory=dict)
    extra_internal_patterns: Mapping[str, str] = field(default_factory=dict)
    disabled_categories: frozenset[str] = frozenset()
    stop_at_restricted: bool = False


CATEGORY_LEVELS: Final[Mapping[str, Level]] = {
    "aws_access_key": Level.RESTRICTED,
    "api_token": Level.RESTRICTED,
    "jwt": Level.RESTRICTED,
    "private_key": Level.RESTRICTED,
    "connection_string": Level.RESTRICTED,
    "password": Level.RESTRICTED,
    "payment_card": Level.RESTRICTED,
    "iban": Level.RESTRICTED,
    "national_id": Level.RESTRICTED,
    "passport": Level.RESTRICTED,
    "email": Level.RESTRICTED,
    "phone": Level.RESTRICTED,
    "street_address": Level.RESTRICTED,
    "health": Level.RESTRICTED,
    "internal_marker": Level.INTERNAL,
    "internal_host": Level.INTERNAL,
}
"""Built-in categories and their levels."""


# --------------------------------------------------------------------------------------
# Scanning state: the text, its UTF-8 bytes and the byte -> character offset mapping.


class _Scan:
    __slots__ = (
        "_clinical",
        "_cp_bytes",
        "_cp_chars",
        "ascii",
        "cues",
        "data",
        "findings",
        "message",
        "people",
        "text",
    )

    def __init__(self, text: str, message: int) -> None:
        self.text = text
        self.message = message
        self.ascii = text.isascii()
        # Unencodable characters (lone surrogates) become one "?" byte each, so decoding a
        # prefix of ``data`` gives exactly as many characters as the same prefix of ``text``.
        self.data = text.encode("ascii") if self.ascii else text.encode("utf-8", "replace")
        self.findings: list[Finding] = []
        # what the set saw (True when it cannot tell): a patient-record cue; a medical term
        # with a person word or a name in its sentence
        self.cues = True
        self.people = True
        self._clinical: list[int] | None = None
        self._cp_bytes = [0]
        self._cp_chars = [0]

    def near_clinical_record(self, start: int, end: int) -> bool:
        """A patient-record cue at most 400 characters before or 200 after the span."""
        if not self.cues:
            return False
        if self._clinical is None:
            self._clinical = _clinical_spots(self.text)
        i = bisect.bisect_left(self._clinical, start - 400)
        return i < len(self._clinical) and self._clinical[i] <= end + 200

    def may_name_person(self, start: int, end: int) -> bool:
        """False when :func:`_health_about_person` cannot tie ``text[start:end]`` to a
        person: a necessary condition of it, at a fraction of its cost.

        The rule needs, in the term's sentence, a person word (my, his, her, our, I, he,
        she, me, him, I'm, I've ...) or a capitalised word and a name verb ("John has"):
        :func:`_people_near` in ASCII text; elsewhere any such word in the widest window
        the rule may look at (160 characters before the term, 100 after).
        """
        if self.ascii:
            return _people_near(self.text, self.data, [(start, end)])[0]
        lo = max(0, start - 160)
        hi = min(len(self.text), end + 100)
        words = self.text[lo:hi].lower().translate(_SEPARATE).split()
        return not (_PERSON_WORDS.isdisjoint(words) and _NAME_VERBS.isdisjoint(words))

    def char(self, offset: int) -> int:
        """Character offset of a byte offset that RE2 reported (a character boundary)."""
        if self.ascii:
            return offset
        # decode only from the nearest known (byte, char) checkpoint before the offset
        i = bisect.bisect_right(self._cp_bytes, offset) - 1
        base_b, base_c = self._cp_bytes[i], self._cp_chars[i]
        if base_b == offset:
            return base_c
        chars = base_c + len(self.data[base_b:offset].decode("utf-8", "replace"))
        self._cp_bytes.insert(i + 1, offset)
        self._cp_chars.insert(i + 1, chars)
        return chars

    def add(self, category: str, start: int, end: int) -> None:
        self.findings.append(Finding(category, start, end, self.message))


class _Hit:
    """One RE2 match of a rule: group spans in bytes, read back in characters."""

    __slots__ = ("_names", "_sc", "_spans")

    def __init__(
        self, sc: _Scan, spans: Sequence[tuple[int, int]], names: tuple[tuple[str, int], ...]
    ) -> None:
        self._sc = sc
        self._spans = spans
        self._names = names

    @property
    def kind(self) -> str | None:
        """The first named group that took part in the match (the outermost alternative)."""
        for name, index in self._names:
            if self._spans[index][0] != -1:
                return name
        return None

    def _index(self, name: str | None) -> int:
        if name is None:
            return 0
        for n, index in self._names:
            if n == name:
                return index
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return self._spans[self._index(name)][0] != -1

    def span(self, name: str | None = None) -> tuple[int, int]:
        start, end = self._spans[self._index(name)]
        return self._sc.char(start), self._sc.char(end)


def _match_spans(regex: Any, data: bytes) -> Iterator[Sequence[tuple[int, int]]]:
    """All matches of a compiled RE2 pattern, as lists of group spans (bytes offsets).

    Calls the C++ ``RE2::Match`` of google-re2 directly when its internals are there (one
    call and one list per match); otherwise goes through the public ``finditer``.
    """
    raw = getattr(regex, "_regexp", None)
    if raw is None or _UNANCHORED is None:
        groups = range(regex.groups + 1)
        for m in regex.finditer(data):
            yield [m.span(i) for i in groups]
        return
    pos, n = 0, len(data)
    while pos <= n:
        spans = raw.Match(_UNANCHORED, data, pos, n)
        start, end = spans[0]
        if start == -1:
            return
        yield spans
        pos = end if end > pos else pos + 1


_UNANCHORED: Final[Any] = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)


_Handler = Callable[[_Scan, _Hit], None]


def _options(max_mem: int) -> Any:
    """RE2 options: quiet, with a memory budget for the compiled program and DFA cache.

    When a DFA exceeds its budget RE2 falls back to its (slower) NFA for that search, and
    the set reports no sentinel, so the budget bounds memory, never what is found.
    """
    options = re2.Options()
    options.log_errors = False
    options.max_mem = max_mem
    return options


_SET_OPTIONS: Final[Any] = _options(32 << 20)
_RULE_OPTIONS: Final[Any] = _options(8 << 20)


def _escape(literal: str) -> str:
    """Escape a literal for RE2; runs of whitespace match any whitespace."""
    words = literal.split()
    return r"\s+".join(
        "".join("\\" + c if c.isascii() and not c.isalnum() else c for c in w) for w in words
    )


def _bounded(escaped_literal: str, literal: str) -> str:
    """Word boundaries on the sides of ``literal`` that start/end with a word character."""
    left = r"\b" if literal[:1].isalnum() or literal[:1] == "_" else ""
    right = r"\b" if literal[-1:].isalnum() or literal[-1:] == "_" else ""
    return left + escaped_literal + right


# --------------------------------------------------------------------------------------
# Validators (pure functions on candidate strings).

_PLACEHOLDER_VALUES: Final[frozenset[str]] = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "changeme",
        "change_me",
        "none",
        "null",
        "nil",
        "true",
        "false",
        "str",
        "string",
        "bytes",
        "int",
        "bool",
        "optional",
        "required",
        "undefined",
        "redacted",
        "hidden",
        "masked",
        "example",
        "dummy",
        "test",
        "todo",
        "tbd",
        "env",
        "secretstr",
        "field",
    }
)


def _is_placeholder(value: str) -> bool:
    v = value.strip("\"'`").lower()
    if not v or v in _PLACEHOLDER_VALUES:
        return True
    if v[0] in "$<{%*[(" or v.startswith(("your", "my_", "my-", "xxx", "...", "***", "os.")):
        return True
    if "xxxx" in v or "****" in v or "your_" in v or "your-" in v or "_here" in v:
        return True
    return len(set(v)) <= 2


_IDENT_PATH: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


_WORDY: Final = re.compile(r"[a-z]{9}|[A-Z]{9}")
"""Nine letters of one case in a row: a word or an identifier, not a random token."""


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _high_entropy(value: str) -> bool:
    """A token-like value: long, letters and digits, several bits per character."""
    v = value.strip("\"'`")
    if len(v) < 16 or _is_placeholder(v) or _IDENT_PATH.match(v):
        return False
    has_digit = any(c.isdigit() for c in v)
    has_alpha = any(c.isalpha() for c in v)
    if not (has_digit and has_alpha) or _WORDY.search(v):
        return False
    return _entropy(v) >= 3.0


_SK_PREFIX: Final = re.compile(r"\Ask-(?:ant-[a-z]+[0-9]{2}-|proj-|svcacct-|admin-)?")


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
    cc: int(n)
    for cc, n in (
        item.split(":")
        for item in [
            "AD:24",
            "AE:23",
            "AL:28",
            "AT:20",
            "AZ:28",
            "BA:20",
            "BE:16",
            "BG:22",
            "BH:22",
            "BI:27",
            "BR:29",
            "BY:28",
            "CH:21",
            "CR:22",
            "CY:28",
            "CZ:24",
            "DE:22",
            "DJ:27",
            "DK:18",
            "DO:28",
            "EE:20",
            "EG:29",
            "ES:24",
            "FI:18",
            "FK:18",
            "FO:18",
            "FR:27",
            "GB:22",
            "GE:22",
            "GI:23",
            "GL:18",
            "GR:27",
            "GT:28",
            "HR:21",
            "HU:28",
            "IE:22",
            "IL:23",
            "IQ:23",
            "IS:26",
            "IT:27",
            "JO:30",
            "KW:30",
            "KZ:20",
            "LB:28",
            "LC:32",
            "LI:21",
            "LT:20",
            "LU:20",
            "LV:21",
            "LY:25",
            "MC:27",
            "MD:24",
            "ME:22",
            "MK:19",
            "MN:20",
            "MR:27",
            "MT:31",
            "MU:30",
            "NI:28",
            "NL:18",
            "NO:15",
            "OM:23",
            "PK:24",
            "PL:28",
            "PS:29",
            "PT:25",
            "QA:29",
            "RO:24",
            "RS:22",
            "RU:33",
            "SA:24",
            "SC:31",
            "SD:18",
            "SE:24",
            "SI:19",
            "SK:24",
            "SM:27",
            "SO:23",
            "ST:25",
            "SV:28",
            "TL:23",
            "TN:24",
            "TR:26",
            "UA:29",
            "VA:22",
            "VG:24",
            "XK:20",
            "YE:30",
        ]
    )
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


def _jwt_ok(token: str) -> bool:
    """The first segment is base64url of a JSON object with an ``alg`` member."""
    header = token.split(".", 1)[0]
    if len(header) > 4096:
        return False
    try:
        raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        if not raw.lstrip().startswith(b"{") or b'"alg"' not in raw:
            return False
        obj = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "alg" in obj


_DATE_LIKE: Final = re.compile(
    r"(?:19|20)[0-9]{2}[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[1-9]|[12][0-9]|3[01])[-/.](?:0[1-9]|1[0-2])[-/.](?:19|20)[0-9]{2}"
)


def _phone_plus_ok(candidate: str) -> bool:
    number = "+" + candidate[2:] if candidate.startswith("00") else candidate
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)


def _phone_region_ok(candidate: str, region: str) -> bool:
    try:
        parsed = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


# --------------------------------------------------------------------------------------
# Health: medical terms and the "about a person" rule.

_HEALTH_TERMS: Final[tuple[str, ...]] = (
    # diagnosis, treatment and care words
    "diagnosed",
    "diagnosis",
    "misdiagnosed",
    "prescribed",
    "prescription",
    "medication",
    "medications",
    "meds",
    "chemotherapy",
    "chemo",
    "radiotherapy",
    "radiation therapy",
    "dialysis",
    "biopsy",
    "mastectomy",
    "surgery",
    "hospitalized",
    "hospitalised",
    "admitted to hospital",
    "psych ward",
    "rehab",
    "therapist",
    "psychiatrist",
    "oncologist",
    "cardiologist",
    "blood test",
    "blood pressure",
    "blood sugar",
    "mri",
    "ct scan",
    "test results",
    "lab results",
    "tested positive",
    "hiv positive",
    "hiv-positive",
    "pregnant",
    "pregnancy",
    "miscarriage",
    "abortion",
    "ivf",
    "infertility",
    "infertile",
    # conditions
    "hiv",
    "aids",
    "diabetes",
    "diabetic",
    "type 1 diabetes",
    "type 2 diabetes",
    "cancer",
    "tumor",
    "tumour",
    "leukemia",
    "leukaemia",
    "lymphoma",
    "melanoma",
    "depression",
    "depressed",
    "anxiety disorder",
    "panic attacks",
    "bipolar",
    "schizophrenia",
    "schizophrenic",
    "ptsd",
    "adhd",
    "autism",
    "autistic",
    "ocd",
    "eating disorder",
    "anorexia",
    "bulimia",
    "dementia",
    "alzheimer's",
    "alzheimers",
    "parkinson's",
    "parkinsons",
    "epilepsy",
    "epileptic",
    "seizures",
    "asthma",
    "copd",
    "hepatitis",
    "cirrhosis",
    "tuberculosis",
    "chlamydia",
    "gonorrhea",
    "syphilis",
    "herpes",
    "hpv",
    "std",
    "stds",
    "multiple sclerosis",
    "crohn's",
    "celiac",
    "coeliac",
    "lupus",
    "arthritis",
    "hypertension",
    "heart attack",
    "heart disease",
    "heart failure",
    "had a stroke",
    "migraines",
    "covid",
    "covid-19",
    "long covid",
    "addiction",
    "alcoholism",
    "overdose",
    "suicidal",
    "self-harm",
    "allergic",
    "allergy",
    "thyroid",
    "hypothyroidism",
    "insomnia",
    # medication names
    "insulin",
    "metformin",
    "ozempic",
    "semaglutide",
    "sertraline",
    "zoloft",
    "fluoxetine",
    "prozac",
    "escitalopram",
    "lexapro",
    "citalopram",
    "venlafaxine",
    "bupropion",
    "wellbutrin",
    "xanax",
    "alprazolam",
    "diazepam",
    "valium",
    "lorazepam",
    "adderall",
    "ritalin",
    "methylphenidate",
    "oxycodone",
    "methadone",
    "suboxone",
    "buprenorphine",
    "morphine",
    "fentanyl",
    "tramadol",
    "antidepressant",
    "antidepressants",
    "antipsychotic",
    "antipsychotics",
    "statins",
    "atorvastatin",
    "lisinopril",
    "warfarin",
    "levothyroxine",
    "prednisone",
    "truvada",
    "prep",
    "antiretroviral",
    "antiretrovirals",
    "birth control",
    "ibuprofen",
    "paracetamol",
    "acetaminophen",
    "lithium",
)
"""Medical terms; a person must be tied to one for a ``health`` finding (see module doc)."""

_CASE_SENSITIVE_TERMS: Final[frozenset[str]] = frozenset(
    {"aids", "std", "stds", "ocd", "prep", "mri", "hiv", "hpv", "copd", "ptsd", "adhd", "ivf"}
)
"""Acronyms that are ordinary words in lower case ("aids in", "prep time"): upper case only."""


def _words(*items: str) -> frozenset[str]:
    return frozenset(w for item in items for w in item.split())


_POSSESSIVES: Final = _words("my his her our")
_SUBJECTS: Final = _words("i he she")
_SUBJECT_WITH_VERB: Final = _words("i'm im i've ive i'd he's she's")
_HEALTH_VERBS: Final = _words(
    "has have had got gets is am was were been being tested test takes take took taking",
    "started starts suffers suffer suffered suffering diagnosed prescribed on living lives",
    "struggles struggling battling fighting recovering needs need uses use relapsed went",
    "goes developed caught contracted treated hospitalized hospitalised pregnant might may",
    "think thinks could just recently also still now currently 's 've 'm",
)
_NAME_VERBS: Final = _words("has had was is got takes took tested started suffers developed")
_OBJECTS: Final = _words("me him her")
_TOPIC_WORDS: Final = _words(
    "about regarding article essay blog post report paper presentation slide slides course",
    "class lecture project app model query code script database table dataset write writing",
    "explain explaining summarise summarize research researching study studying learn",
    "learning teach teaching company team startup product book thesis campaign website",
    "chatbot customer customers user users clinic's hospital's",
)
_TOPIC_AFTER: Final = _words(
    "dataset data model classifier classification prediction predictor research study studies",
    "article paper blog awareness charity foundation software pipeline detector benchmark app",
    "apps statistics rates market project course module campaign guidelines screening",
    "risk-model battery batteries ion cell cells polymer mine mining",
)
_NAME_STOP: Final = _words(
    "This That What Which There Here It Who How Why When Where Research Evidence Treatment",
    "Everyone Nobody Someone Anyone Type The Each Every One Nothing Data Science Medicine",
    "Screening Prevention Our My His Her He She I Is Can Could Does Do",
)
_ABBREVIATIONS: Final = ("Mr", "Mrs", "Ms", "Dr", "St", "vs", "e.g", "i.e", "approx", "No")
_PATIENT_AFTER: Final = re.compile(
    r"\s*(?:(?i:name|id|no\.?|number)\b|[#:])|\s+[A-Z][a-z]+\b(?!\s+(?:care|safety|data))"
)
_TITLE_NAME: Final = re.compile(r"M(?:r|rs|s|iss)\.?\s+[A-Z][a-z]+")
_RECORD_FIELD: Final = re.compile(r"\b(?:DOB|MRN|[Dd]ate of birth)\b")


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


def _health_about_person(text: str, start: int, end: int) -> bool:
    """The health rule of the module docstring, on the words of the term's sentence.

    Clinical records ("Patient: Jane Roe") are checked separately by :func:`_clinical_spots`.
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
    # the person right after the term: "prescribed me", "safe for me", "which he takes"
    if after and after[0] in _OBJECTS:
        return True
    for i, w in enumerate(after[:8]):
        if w == "for" and i + 1 < len(after) and (after[i + 1] in _OBJECTS or after[i + 1] == "my"):
            return True
        if w in _SUBJECTS and not _HEALTH_VERBS.isdisjoint(after[i + 1 : i + 3]):
            return True
    return False


def _clinical_spots(text: str) -> list[int]:
    """Positions of patient-record cues: "Patient: Jane Roe", "patient ID", "the patient",
    "Mrs. Alvarez", "DOB"/"MRN" fields. A medical term within 400 characters after or 200
    before one is about that patient."""
    spots: list[int] = []
    lowered = text.lower()
    i = lowered.find("patient")
    while i != -1:
        if _PATIENT_AFTER.match(text, i + 7) or lowered[max(0, i - 6) : i].endswith(
            ("the ", "this ", "our ", "my ")
        ):
            spots.append(i)
        i = lowered.find("patient", i + 7)
    spots.extend(m.start() for m in _TITLE_NAME.finditer(text))
    if "dob" in lowered or "mrn" in lowered or "date of birth" in lowered:
        spots.extend(m.start() for m in _RECORD_FIELD.finditer(text))
    spots.sort()
    return spots


_HEALTH_TERM_SET: Final = frozenset(_HEALTH_TERMS)

_PERSON_WORDS: Final = (
    _POSSESSIVES
    | _SUBJECTS
    | _OBJECTS
    | frozenset(w.translate(_SEPARATE).split()[0] for w in _SUBJECT_WITH_VERB)
)
"""Words one of which :func:`_health_about_person` needs in the term's sentence, unless a
name does it ("John has"); "i'm", "he's" ... count as "i", "he" ... (their first word once
punctuation separates words)."""


def _person_cue_pattern(terms: str | None = None) -> str:
    """RE2 pattern that matches wherever :func:`_health_about_person` could see a person
    in a medical term's sentence.

    Without ``terms``: for the joined windows of :func:`_people_near` (ASCII text, each
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
    verbs = "(?i:" + "|".join(sorted(_NAME_VERBS)) + ")"
    abbreviation = "(?:" + "|".join(_escape(a) for a in _ABBREVIATIONS) + r")\."
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
    before = f"(?:{cue}|{name}){inside}" + r"(?:\n[ \t]*|[.!?]+)?" + before_term
    after = after_term + inside + rf"(?:\n[ \t]*)?(?:[.!?]*{cue_after_stop}|{cue})"
    return f"{before}|{after}"


_PERSON_CUE: Final[Any] = re2.compile(_person_cue_pattern(), _options(1 << 20))


def _search(regex: Any, data: bytes, pos: int) -> int:
    """Where the first match of a compiled RE2 pattern in ``data[pos:]`` starts (-1: none);
    through google-re2's ``RE2::Match`` where it is there, as in :func:`_match_spans`."""
    raw = getattr(regex, "_regexp", None)
    if raw is None or _UNANCHORED is None:
        m = regex.search(data, pos)
        return -1 if m is None else int(m.start())
    return int(raw.Match(_UNANCHORED, data, pos, len(data))[0][0])


def _people_near(text: str, data: bytes, spans: Sequence[tuple[int, int]]) -> list[bool]:
    """For each medical term ``text[s:e]`` (ASCII text, ``data`` its bytes), whether
    :func:`_health_about_person` may find a person for it: False only where it cannot (a
    necessary condition of the rule, checked for all terms at once).

    The window the rule may look at for each term (160 characters before it, 100 after)
    is cut out with the term replaced by a NUL; the windows are joined with ``\x01\x01``
    between them and RE2 searches the result for :func:`_person_cue_pattern` (once, in the
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
        ms = _search(_PERSON_CUE, joined, pos)
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


_CLINICAL_CUES: Final = (
    r"(?i:patient)",
    r"M(?:r|rs|s|iss)\.?[\t-\r\x1c-\x1f\x85\pZ]+[A-Z][a-z]",
    r"\b(?:DOB|MRN|[Dd]ate of birth)\b",
)
r"""RE2 patterns in the set that fire whenever :func:`_clinical_spots` can find a cue (its
"patient" substring, its ``\s`` as Python's Unicode whitespace); when none fires, the
spots are not looked for."""

_WORD_BYTES: Final = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
r"""RE2's ``\b`` is ASCII: a word byte next to a non-word byte (or an end)."""


@dataclass(frozen=True, slots=True)
class _Term:
    """A medical term as the health rule looks for it in ASCII text (``_find_health``).

    ``rank`` is its place in the rule's alternation: at one position the regex takes the
    first alternative that matches, so the lowest rank wins.
    """

    rank: int
    cased: bool  # an acronym matched in upper case only ("AIDS", not "aids")
    needle: bytes  # lower case unless ``cased``
    words: re.Pattern[bytes] | None  # multi-word terms: the words with [\t\n\f\r ]+ between


def _health_alternatives() -> list[tuple[str, bool]]:
    """The medical terms in the order of the health rule's alternation, with whether each
    is matched in upper case only: case-insensitive terms first, longest first."""
    insensitive = [t for t in _HEALTH_TERMS if t not in _CASE_SENSITIVE_TERMS]
    sensitive = [t.upper() for t in _HEALTH_TERMS if t in _CASE_SENSITIVE_TERMS]
    return [(t, False) for t in sorted(insensitive, key=len, reverse=True)] + [
        (t, True) for t in sorted(sensitive, key=len, reverse=True)
    ]


def _term(rank: int, literal: str, cased: bool) -> _Term:
    words = literal.split()
    needle = literal.encode() if cased else literal.lower().encode()
    pattern = None
    if len(words) > 1:  # RE2's \s is [\t\n\f\r ]
        pattern = re.compile(rb"[\t\n\f\r ]+".join(re.escape(w) for w in needle.split()))
    return _Term(rank, cased, needle, pattern)


def _term_pattern(literal: str, cased: bool) -> str:
    """The RE2 pattern of one term (the health rule's alternative, alone)."""
    return r"\b" + (_escape(literal) if cased else "(?i:" + _escape(literal) + ")") + r"\b"


# --------------------------------------------------------------------------------------
# The rules: each is an RE2 pattern (added to the set and used for spans) and a handler.

_PREFIXED_RULE = (
    r"\b(?:"
    r"(?P<aws>(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16})"
    r"|(?P<gcp>AIza[0-9A-Za-z_\-]{35})"
    r"|(?P<github>gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"
    r"|(?P<gitlab>gl(?:pat|dt|rt|ptt|soat)-[A-Za-z0-9_\-]{20,})"
    r"|(?P<slack>xox[abposr]-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{10,})"
    r"|(?P<stripe>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})"
    r"|(?P<sk>sk-(?:ant-[a-z]{2,8}[0-9]{2}-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,})"
    r"|(?P<hf>hf_[A-Za-z0-9]{30,})"
    r"|(?P<npm>npm_[A-Za-z0-9]{36})"
    r"|(?P<gauth>ya29\.[0-9A-Za-z_\-]{20,})"
    r"|(?P<sendgrid>SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,})"
    r"|(?P<jwt>e[wy][A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*)"
    r")"
    r"|(?P<slackhook>hooks\.slack\.com/services/[A-Za-z0-9]+/[A-Za-z0-9]+/[A-Za-z0-9]+)"
    r"|(?P<sas>[?&]sig=[A-Za-z0-9%+/]{20,}={0,2})"
)

_PEM_RULE = r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File-[0-9]+:"

_KEYNAME = (
    r"(?:password|passwd|passphrase|pwd|secret|token|api[_\-]?key|apikey|access[_\-]?key|"
    r"private[_\-]?key|client[_\-]?secret|auth|credentials?|accountkey|sharedaccesskey)"
)
_ASSIGN_RULE = (
    r"(?i)(?P<key>[a-z0-9_.\-]*" + _KEYNAME + r"[a-z0-9_.\-]*)[\"']?\s{0,3}"
    r"(?::=|=>|=|:)\s{0,3}(?:[\"'`]|b[\"']|r[\"'])?(?P<scheme>(?:bearer|basic|token)\s+)?"
    r"(?P<val>[^\s\"'`,;<>(){}\[\]]{4,})"
    r"|(?P<says>\b(?:password|passcode|passphrase|pin|api\s+key|token|secret|secret\s+key)"
    r"(?:\s+(?:for|of|on)\s+\S+)?\s+(?:is|was)\s*:?\s+[\"'`]?(?P<sval>[^\s\"'`,;]{4,}))"
    r"|(?P<bearer>\bbearer\s+(?P<bval>[A-Za-z0-9\-._~+/]{16,}=*))"
    r"|(?P<cli>(?:\bmysql(?:dump|admin)?\b[^\n]*?\s-p|\bsshpass\s+-p\s*|--password[= ]|"
    r"--passwd[= ]|\blogin\b[^\n]*?\s-p\s+)[\"']?(?P<cval>[^\s\"'`-][^\s\"'`]{3,}))"
)

_AWS_SECRET: Final = re.compile(r"[A-Za-z0-9/+]{40}")
_AWS_ID: Final = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}")
_CONNECTION_KEYS: Final = re.compile(
    r"(?:server|data source|host|user id|uid|database|initial catalog|endpoint)\s*="
)

_URLCRED_RULE = (
    r"(?i)\b[a-z][a-z0-9+.\-]+://(?P<user>[^\s:/@\"'<>]+):"
    r"(?P<pw>[^\s@/\"'<>]+)@[^\s/\"'<>?#]+"
    r"|(?i)\b(?:https?|git|ssh|ftp)://(?P<tok>[A-Za-z0-9_\-]{20,})@[^\s/\"'<>?#]+"
)

_EMAIL_RULE = r"[\pL\pN._%+\-]+@[\pL\pN][\pL\pN\-]*(?:\.[\pL\pN][\pL\pN\-]*)*\.[A-Za-z]{2,}\b"

_LOGIN_WORDS: Final = re.compile(r"ssh|scp|sftp|rsync|mosh|telnet")
_LOGIN_BEFORE: Final = re.compile(
    r"\b(?:ssh|scp|sftp|rsync|mosh|telnet)\b(?:\s+-{1,2}[\w=-]+(?:\s+\S+)?)*\s+\Z"
)

_NUMBER_RULE = (
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

_PHONE_RULE = (
    r"(?P<intl>(?:\+|\b00)[1-9][0-9]{0,2}[ .\-]?(?:\(0?[0-9]{1,4}\)[ .\-]?)?[0-9]{1,5}"
    r"(?:[ .\-]?[0-9]{2,5}){1,4}\b)"
    r"|(?P<nanp>(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[\-.])[2-9][0-9]{2}[\-.][0-9]{4}\b)"
    r"|(?P<fr>\b0[1-9](?:[ .][0-9]{2}){4}\b)"
    r"|(?P<trunk>\(0[1-9][0-9]{0,3}\) ?[0-9]{3,4}[ .\-]?[0-9]{3,4}\b)"
    r"|(?i:\b(?:phone|office|landline|hotline|helpline|tel|telephone|mobile|mob|cell|cellphone|fax|call|ring|text|sms|"
    r"whatsapp|signal|contact|reach|handy|telefon|telefono|tel[eé]fono|t[eé]l|t[eé]l[eé]phone|"
    r"portable|m[oó]vil|cellulare|r[üu]ckruf|anrufen|erreichbar|telefonnummer|handynummer|"
    r"mobilnummer|appeler|rappeler|joindre|llamar|chiamare)\b)"
    r"[^0-9+\n]{0,48}?(?P<ctx>\+?\(?[0-9][0-9 ().\-]{5,18}[0-9])"
)

_IDKW_RULE = (
    r"(?i:\b(?P<kw>passport|passeport|pasaporte|passaporto|reisepass|social\s+security|ssn|"
    r"national\s+insurance|nino|steuer-?id|steueridentifikationsnummer|identifikationsnummer|"
    r"idnr|tax\s+id|driver'?s\s+licen[cs]e|driving\s+licen[cs]e|id\s+card|identity\s+card|"
    r"national\s+id|personalausweis|dni|nie|nif|codice\s+fiscale|nhs|medicare|"
    r"health\s+insurance|insurance\s+member|member\s+id|sozialversicherungsnummer|"
    r"s[eé]curit[eé]\s+sociale)\b)"
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


_STREET_SUFFIX_EN = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|"
    r"Terrace|Way|Parkway|Pkwy|Highway|Hwy|Square|Sq|Crescent|Circle|Cir|Close|Row|Gardens|"
    r"Mews|Loop|Trail|Walk|Hill)"
)
_ADDRESS_RULE = (
    r"(?P<en>\b[0-9]{1,5}[A-Za-z]?,? (?:(?:[A-Z][A-Za-z'\-]*\.?|[0-9]{1,3}(?:st|nd|rd|th)) ){1,4}"
    + _STREET_SUFFIX_EN
    + r"\b\.?)"
    r"|(?P<de>\b[A-ZÄÖÜ][a-zäöüß\-]+(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm|"
    r"ufer|straat|laan|gracht|plein|kade) ?[0-9]{1,4}[a-z]?\b)"
    r"|(?P<de2>\b[A-ZÄÖÜ][a-zäöüß\-]+ (?:Straße|Strasse|Str\.|Weg|Allee|Platz|Gasse|Ring) "
    r"[0-9]{1,4}[a-z]?\b)"
    r"|(?P<fr>\b[0-9]{1,4}(?: ?(?:bis|ter))?,? (?i:rue|avenue|av\.|boulevard|bd|place|all[ée]e|"
    r"chemin|impasse|quai|cours) (?:(?:de la|de l'|du|des|de|d'|la|le|l')\s?)?[A-ZÉÈ][\w'\-]+)"
    r"|(?P<es>\b(?:Calle|C/|Avenida|Avda\.|Plaza|Paseo|Via|Viale|Piazza|Corso) "
    r"(?:(?:de la|del|de|della|dei|di) )?[A-Z][\w'\-]+(?: [A-Z][\w'\-]+){0,2},? "
    r"(?:n\.? ?|nº ?|no\.? ?)?[0-9]{1,4}\b)"
)

_KEEP_BEFORE: Final = re.compile(
    r"\b(?:keep|kept|keeping|remain|remains|stay|stays|treat|treated|be)\b"
    r"(?:\s+[\w'-]+){0,4}\s*\Z"
)

_VERSION_BEFORE: Final = re.compile(
    r"\b(?:version|ver|release|firmware|fw|build|v)\.?\s*\Z", re.IGNORECASE
)

_PRIVATE_IP_RULE = (
    r"\b(?:10\.[0-9]{1,3}|192\.168|172\.(?:1[6-9]|2[0-9]|3[01]))\.[0-9]{1,3}\.[0-9]{1,3}\b"
)

_CODE_LABELS: Final = frozenset(
    {
        "self",
        "this",
        "cls",
        "os",
        "ctx",
        "threading",
        "obj",
        "request",
        "args",
        "config",
        "settings",
        "options",
        "opts",
        "env",
        "app",
        "torch",
        "np",
        "pd",
        "tf",
        "g",
        "st",
    }
)


class SensitivityDetector:
    """Classifies texts as public, internal or restricted. Thread-safe after construction."""

    def __init__(self, config: SensitivityConfig | None = None) -> None:
        self.config = config or SensitivityConfig()
        cfg = self.config
        # restricted rules first, cheapest first (stop_at_restricted skips the rest)
        rules: list[tuple[str, str, _Handler]] = [
            ("prefixed", _PREFIXED_RULE, self._on_prefixed),
            ("pem", _PEM_RULE, self._on_pem),
            ("urlcred", _URLCRED_RULE, self._on_urlcred),  # before email: "user:pw@host"
            ("email", _EMAIL_RULE, self._on_email),
            ("idkw", _IDKW_RULE, self._on_idkw),
            ("address", _ADDRESS_RULE, self._on_address),
            ("number", _NUMBER_RULE, self._on_number),
            ("assign", _ASSIGN_RULE, self._on_assign),
            ("phone", _PHONE_RULE, self._on_phone),
            ("health", self._health_pattern(), self._on_health),
        ]
        if cfg.internal_keywords:
            rules.append(("marker", self._marker_pattern(), self._on_marker))
        host_pattern = self._host_pattern()
        if host_pattern:
            rules.append(("host", host_pattern, self._on_host))
        if cfg.private_ips_internal:
            rules.append(("privip", _PRIVATE_IP_RULE, self._on_private_ip))

        # One RE2::Set holds every rule's pattern, except that the health rule is there
        # term by term (the set then says which terms occur, and in ASCII text plain
        # substring searches for those few find them, instead of a second regex pass over
        # the whole text), plus the patient-record cues and the end-of-text sentinel.
        self._rules: list[tuple[Any, tuple[tuple[str, int], ...], _Handler]] = []
        self._rule_names: list[str] = []
        self._set = re2.Set.SearchSet(_SET_OPTIONS)
        self._set_rule: dict[int, int] = {}  # set index -> rule index
        self._set_term: dict[int, _Term] = {}  # set index -> medical term
        self._health = -1  # the health rule's index (-1: disabled)
        for name, pattern, handler in rules:
            if name == "health" and "health" in cfg.disabled_categories:
                continue
            regex = re2.compile(pattern, _RULE_OPTIONS)
            names = tuple(sorted(regex.groupindex.items(), key=lambda item: item[1]))
            index = len(self._rules)
            self._rules.append((regex, names, handler))
            self._rule_names.append(name)
            if name == "health":
                self._health = index
                for rank, (literal, cased) in enumerate(_health_alternatives()):
                    term = _term(rank, literal, cased)
                    self._set_term[self._set.Add(_term_pattern(literal, cased))] = term
            else:
                self._set_rule[self._set.Add(pattern)] = index
        self._set_cues = frozenset(self._set.Add(cue) for cue in _CLINICAL_CUES)
        # a medical term with a person in its sentence: without it (and without a patient-
        # record cue) no term can be a health finding, and the health rule is skipped
        self._set_people = (
            self._set.Add(_person_cue_pattern(self._health_pattern())) if self._health >= 0 else -1
        )
        self._sentinel = self._set.Add(r"\z")
        self._set.Compile()

        self._extra: list[tuple[str, re.Pattern[str]]] = [
            (cat, re.compile(p)) for cat, p in cfg.extra_restricted_patterns.items()
        ] + [(cat, re.compile(p)) for cat, p in cfg.extra_internal_patterns.items()]
        self._levels: dict[str, Level] = dict(CATEGORY_LEVELS)
        for cat in cfg.extra_internal_patterns:
            self._levels[cat] = Level.INTERNAL
        for cat in cfg.extra_restricted_patterns:
            self._levels[cat] = Level.RESTRICTED
        self._disabled = frozenset(cfg.disabled_categories)
        self._stop = cfg.stop_at_restricted

    # -- public API ------------------------------------------------------------------

    def classify(self, text: str) -> Verdict:
        """Classify one text; the level is the highest level of any finding."""
        return self._verdict(self._scan(text, 0))

    def classify_messages(self, texts: Iterable[str]) -> Verdict:
        """Classify several texts (a chat): the maximum level, all findings merged.

        Each finding's ``message`` is the index of the text it was found in.
        """
        findings: list[Finding] = []
        for i, text in enumerate(texts):
            findings.extend(self._scan(text, i))
        return self._verdict(findings)

    # -- machinery -------------------------------------------------------------------

    def _verdict(self, findings: list[Finding]) -> Verdict:
        if not findings:
            return Verdict(Level.PUBLIC, ())
        levels = self._levels
        level = max(levels.get(f.category, Level.RESTRICTED) for f in findings)
        findings.sort(key=lambda f: (f.message, f.start, f.end, f.category))
        return Verdict(level, tuple(findings))

    def _rules_fired(self, text: str) -> list[str] | None:
        """Names of the rules whose pattern the set finds in ``text`` ("health" for any
        medical term); None when the set gave up (every rule would run)."""
        fired = self._set.Match(text.encode("utf-8", "replace")) or []
        if self._sentinel not in fired:
            return None
        names = {self._rule_names[self._set_rule[i]] for i in fired if i in self._set_rule}
        if any(i in self._set_term for i in fired):
            names.add("health")
        return sorted(names)

    def _scan(self, text: str, message: int) -> list[Finding]:
        sc = _Scan(text, message)
        fired = self._set.Match(sc.data) or []
        terms: list[_Term] = []
        if self._sentinel in fired:
            rules: list[int] = []
            cues = people = False
            for i in fired:
                rule = self._set_rule.get(i)
                if rule is not None:
                    rules.append(rule)
                elif i in self._set_term:
                    terms.append(self._set_term[i])
                elif i in self._set_cues:
                    cues = True
                elif i == self._set_people:
                    people = True
            sc.cues = cues
            sc.people = people
            if terms and (people or cues):
                rules.append(self._health)
            rules.sort()
        else:  # the DFA gave up (out of memory): run every rule, slower but complete
            rules = list(range(len(self._rules)))
        if not rules and not self._extra:
            return []  # the common case: ordinary text, done after one pass
        for i in rules:
            if i == self._health and terms and sc.ascii:
                self._find_health(sc, terms)
            else:
                self._run_rule(sc, i)
            if self._stop and self._restricted_found(sc.findings):
                return self._postprocess(sc.findings)
        for category, pattern in self._extra:
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    sc.add(category, m.start(), m.end())
        return self._postprocess(sc.findings)

    def _run_rule(self, sc: _Scan, rule: int) -> None:
        """A second RE2 pass of one rule for the spans of its matches, each to its handler."""
        regex, names, handler = self._rules[rule]
        for spans in _match_spans(regex, sc.data):
            handler(sc, _Hit(sc, spans, names))

    def _find_health(self, sc: _Scan, terms: list[_Term]) -> None:
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
        people = _people_near(text, data, spans) if sc.people else [False] * len(spans)
        for (s, e), near in zip(spans, people, strict=True):
            if (near and _health_about_person(text, s, e)) or (
                sc.cues and sc.near_clinical_record(s, e)
            ):
                sc.add("health", s, e)

    @staticmethod
    def _check_health(sc: _Scan, s: int, e: int) -> None:
        """The health rule for one medical term (regex path: non-ASCII text, or the set gave up)."""
        if (sc.people and sc.may_name_person(s, e) and _health_about_person(sc.text, s, e)) or (
            sc.near_clinical_record(s, e)
        ):
            sc.add("health", s, e)

    def _restricted_found(self, findings: list[Finding]) -> bool:
        return any(
            self._levels.get(f.category) is Level.RESTRICTED and f.category not in self._disabled
            for f in findings
        )

    def _postprocess(self, findings: list[Finding]) -> list[Finding]:
        if self._disabled:
            findings = [f for f in findings if f.category not in self._disabled]
        conn = [f for f in findings if f.category == "connection_string"]
        if conn:
            # "user:pass@db.example.com" inside a connection string is not also an e-mail.
            findings = [
                f
                for f in findings
                if f.category not in ("email", "password", "internal_host")
                or not any(c.start <= f.start and f.end <= c.end for c in conn)
            ]
        # one finding per (category, span)
        return list(dict.fromkeys(findings))

    # -- patterns built from the configuration ----------------------------------------

    def _health_pattern(self) -> str:
        alternatives = _health_alternatives()
        ci = "|".join(_escape(t) for t, cased in alternatives if not cased)
        cs = "|".join(_escape(t) for t, cased in alternatives if cased)
        return r"\b(?:(?i:" + ci + r")|" + cs + r")\b"

    def _marker_pattern(self) -> str:
        alts = [
            _bounded(_escape(k), k)
            for k in sorted(self.config.internal_keywords, key=len, reverse=True)
            if k.strip()
        ]
        return "(?i:" + "|".join(alts) + ")"

    def _host_pattern(self) -> str:
        cfg = self.config
        label = r"[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?"
        alts: list[str] = []
        suffixes = [s.strip(".").lower() for s in cfg.internal_host_suffixes if s.strip(".")]
        if suffixes:
            alts.append(r"(?:" + label + r"\.)+(?:" + "|".join(_escape(s) for s in suffixes) + r")")
        domains = [d.strip(".").lower() for d in cfg.internal_domains if d.strip(".")]
        if domains:
            alts.append(r"(?:" + label + r"\.)*(?:" + "|".join(_escape(d) for d in domains) + r")")
        if not alts:
            return ""
        return r"(?i)\b(?:" + "|".join(alts) + r")\b"

    # -- handlers -----------------------------------------------------------------------

    def _on_prefixed(self, sc: _Scan, m: _Hit) -> None:
        kind: str | None = m.kind
        s, e = m.span(kind)
        value = sc.text[s:e]
        if kind == "aws":
            sc.add("aws_access_key", s, e)
        elif kind == "jwt":
            if _jwt_ok(value):
                sc.add("jwt", s, e)
        elif kind == "sk":
            if s and (sc.text[s - 1] in "-_." or sc.text[s - 1].isalnum()):
                return
            body = _SK_PREFIX.sub("", value)
            if (
                len(body) >= 20
                and any(c.isdigit() for c in body)
                and any(c.isupper() for c in body)
                and any(c.islower() for c in body)
            ):
                sc.add("api_token", s, e)
        elif kind == "sas":
            sc.add("api_token", s + 1, e)
        elif kind is not None:
            sc.add("api_token", s, e)

    def _on_pem(self, sc: _Scan, m: _Hit) -> None:
        s, e = m.span()
        text = sc.text
        if text.startswith("PuTTY", s):
            mac = text.find("Private-MAC:", e)
            if mac != -1:
                eol = text.find("\n", mac)
                e = len(text) if eol == -1 else eol
        else:
            end_marker = text.find("-----END", e)
            if end_marker != -1:
                close = text.find("-----", end_marker + 8)
                e = close + 5 if close != -1 else end_marker + 8
        sc.add("private_key", s, e)

    def _on_assign(self, sc: _Scan, m: _Hit) -> None:
        text = sc.text
        if m.has("key"):
            ks, ke = m.span("key")
            vs, ve = m.span("val")
            key = text[ks:ke].lower()
            value = text[vs:ve]
            if m.has("scheme"):
                self._on_auth_scheme(sc, text[m.span("scheme")[0] : vs].strip().lower(), ks, vs, ve)
                return
            if text[ve : ve + 1] == "(" or _is_placeholder(value):
                return
            if "accountkey" in key or "sharedaccesskey" in key:
                if len(value) >= 20:
                    sc.add("connection_string", ks, ve)
                return
            if any(w in key for w in ("password", "passwd", "pwd", "passphrase")):
                self._on_password_value(sc, value, ks, ve)
                return
            if key.startswith("x-") or key.endswith(("_url", "_uri", "_file", "_path", "_name")):
                return
            if "aws" in key and _AWS_ID.fullmatch(value):
                return  # access key ids are reported by the prefixed-credential rule
            if "aws" in key and _AWS_SECRET.fullmatch(value):
                sc.add("aws_access_key", ks, ve)
                return
            if _high_entropy(value):
                sc.add("aws_access_key" if "aws" in key else "api_token", ks, ve)
        elif m.has("says"):
            s, _e = m.span("says")
            vs, ve = m.span("sval")
            value = text[vs:ve].rstrip(".!?")
            if _is_placeholder(value) or (value.isalpha() and value.islower()):
                return  # "the password is incorrect", "the token is expired"
            word = text[s:vs].lower()
            if word.startswith("pin"):
                if value.isdigit():
                    sc.add("password", s, vs + len(value))
            elif "pass" in word:
                sc.add("password", s, vs + len(value))
            elif _high_entropy(value):
                sc.add("api_token", s, vs + len(value))
        elif m.has("bearer"):
            s, _e = m.span("bearer")
            vs, ve = m.span("bval")
            self._on_auth_scheme(sc, "bearer", s, vs, ve)
        elif m.has("cli"):
            vs, ve = m.span("cval")
            if not _is_placeholder(text[vs:ve]):
                sc.add("password", vs, ve)

    def _on_auth_scheme(self, sc: _Scan, scheme: str, start: int, vs: int, ve: int) -> None:
        value = sc.text[vs:ve]
        if _is_placeholder(value):
            return
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return
            _user, sep, password = decoded.partition(":")
            if sep and password and not _is_placeholder(password):
                sc.add("api_token", start, ve)
        elif _high_entropy(value) or _jwt_ok(value):
            sc.add("api_token", start, ve)

    def _on_password_value(self, sc: _Scan, value: str, ks: int, ve: int) -> None:
        text = sc.text
        if _IDENT_PATH.match(value) or (value.startswith("/") and "/" in value[1:]):
            return
        if value.isdigit() and len(value) <= 3:
            return
        line_start = text.rfind("\n", 0, ks) + 1
        line_end = text.find("\n", ve)
        line = text[line_start : len(text) if line_end == -1 else line_end].lower()
        in_connection = "://" in line[: ks - line_start] or (
            ";" in line and _CONNECTION_KEYS.search(line) is not None
        )
        sc.add("connection_string" if in_connection else "password", ks, ve)

    def _on_urlcred(self, sc: _Scan, m: _Hit) -> None:
        if m.has("tok"):
            ts, te = m.span("tok")
            if not _high_entropy(sc.text[ts:te]):
                return
        else:
            ps, pe = m.span("pw")
            if _is_placeholder(sc.text[ps:pe]):
                return
        s, e = m.span()
        sc.add("connection_string", s, e)

    def _on_email(self, sc: _Scan, m: _Hit) -> None:
        s, e = m.span()
        text = sc.text
        local = text[s : text.index("@", s)]
        if local in ("git", "noreply") or local.startswith("."):
            return
        lead = text[max(0, s - 40) : s]
        if lead.endswith("://") or (_LOGIN_WORDS.search(lead) and _LOGIN_BEFORE.search(lead)):
            return  # user@host of a URL or an ssh/scp/rsync login, not a mailbox
        sc.add("email", s, e)

    def _on_number(self, sc: _Scan, m: _Hit) -> None:
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

    def _on_phone(self, sc: _Scan, m: _Hit) -> None:
        kind: str | None = m.kind
        if kind is None:
            return
        s, e = m.span(kind)
        text = sc.text
        value = text[s:e]
        if kind == "intl":
            before = text[max(0, s - 2) : s]
            if before[-1:].isalnum() or (before[-1:] == " " and before[:1].isdigit()):
                return  # "x+1 ..." or a group inside a longer number ("3704 0044 0532")
            if _phone_plus_ok(value):
                sc.add("phone", s, e)
        elif kind == "nanp":
            if text[s - 1 : s] in (".", "-") or (
                text[e : e + 1] in (".", "-") and text[e + 1 : e + 2].isdigit()
            ):
                return
            sc.add("phone", s, e)
        elif kind == "fr":
            if _phone_region_ok(value, "FR"):
                sc.add("phone", s, e)
        elif kind == "trunk":  # "(02) 9374 4000", "(030) 901820": a trunk code in brackets
            if 8 <= len(_digits(value)) <= 12:
                sc.add("phone", s, e)
        elif kind == "ctx":
            if s - m.span()[0] > 48:
                return  # the phone word is too far from the number
            digits = _digits(value)
            if not 7 <= len(digits) <= 15 or _DATE_LIKE.search(value):
                return
            if value.count(".") >= 3:
                return  # a dotted version or address, not a phone number
            if value.startswith("+") and not _phone_plus_ok(value):
                return
            sc.add("phone", s, e)

    def _on_idkw(self, sc: _Scan, m: _Hit) -> None:
        ks, ke = m.span("kw")
        s, e = m.span("id")
        text = sc.text
        value = text[s:e]
        keyword = " ".join(text[ks:ke].lower().split())
        compact = value.replace(" ", "").replace("-", "")
        digits = _digits(compact)
        if len(digits) < 2 or not 6 <= len(compact) <= 15 or _DATE_LIKE.fullmatch(compact):
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

    def _on_address(self, sc: _Scan, m: _Hit) -> None:
        kind: str | None = m.kind
        s, e = m.span(kind)
        if kind == "en":
            words = sc.text[s:e].split()
            if words[0].rstrip(",").isdigit() and int(words[0].rstrip(",")) == 0:
                return
            # "Dr"/"St" as the suffix needs a street-like word before it ("12 Oak Dr")
            if words[-1].rstrip(".") in ("Dr", "St") and len(words) < 3:
                return
        sc.add("street_address", s, e)

    def _on_health(self, sc: _Scan, m: _Hit) -> None:
        s, e = m.span()
        self._check_health(sc, s, e)

    def _on_marker(self, sc: _Scan, m: _Hit) -> None:
        s, e = m.span()
        text = sc.text
        if text[s - 1 : s] in ("'", '"', "`") and text[e : e + 1] == text[s - 1 : s]:
            return  # the word is mentioned ("the word 'confidential'"), not used as a marker
        if text[s:e].lower() == "confidential":
            before = text[max(0, s - 60) : s].lower()
            if _KEEP_BEFORE.search(before):
                return  # "keep customer data confidential": about secrecy, not a marker
        sc.add("internal_marker", s, e)

    def _on_host(self, sc: _Scan, m: _Hit) -> None:
        s, e = m.span()
        text = sc.text
        nxt = text[e : e + 1]
        if nxt in ("(", "_", "[", "=") or (nxt == "." and text[e + 1 : e + 2].isalpha()):
            return
        first_label = text[s:e].split(".", 1)[0].lower()
        if first_label in _CODE_LABELS and text[max(0, s - 3) : s] != "://":
            return
        if text[max(0, s - 1) : s] in (".", "_"):
            return
        sc.add("internal_host", s, e)

    def _on_private_ip(self, sc: _Scan, m: _Hit) -> None:
        s, e = m.span()
        text = sc.text
        prev = text[s - 1 : s] if s else ""
        if prev in (".", "v", "V") or prev.isalnum():
            return
        if text[e : e + 1] == "." and text[e + 1 : e + 2].isdigit():
            return
        address = text[s:e]
        if address.endswith(".0") and text[e : e + 1] == "/":
            return  # a network in CIDR notation, not a host
        if _VERSION_BEFORE.search(text, max(0, s - 24), s):
            return
        if all(0 <= int(p) <= 255 for p in address.split(".")):
            sc.add("internal_host", s, e)
