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
  name verb) with no sentence boundary between them" (:func:`.health.person_cue_pattern`). When
  neither of the latter fires, no term can be a finding and the rule does not run at all.
  Otherwise, in ASCII text, the terms the set saw are found by substring search (no second
  regex pass over the text), one RE2 search of their joined windows (:func:`.health.people_near`)
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

Layout: :mod:`.scanner` (the detector: the set, the rules, the verdict), one module per
detector family with its RE2 patterns and handlers (:mod:`.credentials`,
:mod:`.identifiers`, :mod:`.contact`, :mod:`.health`, :mod:`.internal`), :mod:`.matching`
(RE2 plumbing and the scan state), :mod:`.verdict` and :mod:`.config` (the public types),
and :mod:`.terms`, which reads the term lists, keyword tables and cue words from the
package's ``data/`` folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_agent.routing.sensitivity.config import (
    DEFAULT_INTERNAL_KEYWORDS,
    DEFAULT_INTERNAL_SUFFIXES,
    SensitivityConfig,
)
from edge_agent.routing.sensitivity.deferred import DeferredDetector
from edge_agent.routing.sensitivity.verdict import CATEGORY_LEVELS, Finding, Level, Verdict

if TYPE_CHECKING:
    from edge_agent.routing.sensitivity.scanner import SensitivityDetector


def __getattr__(name: str) -> Any:
    # SensitivityDetector (and with it RE2, phonenumbers, python-stdnum) loads when it is
    # first named: importing the package for its types (Level, Verdict) stays light.
    if name == "SensitivityDetector":
        from edge_agent.routing.sensitivity.scanner import SensitivityDetector

        return SensitivityDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CATEGORY_LEVELS",
    "DEFAULT_INTERNAL_KEYWORDS",
    "DEFAULT_INTERNAL_SUFFIXES",
    "DeferredDetector",
    "Finding",
    "Level",
    "SensitivityConfig",
    "SensitivityDetector",
    "Verdict",
]
