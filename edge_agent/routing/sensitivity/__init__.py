"""Sensitivity detection: is this request ``public``, ``internal`` or ``restricted``?

The router calls :meth:`SensitivityDetector.classify` on every request, on the device, before
any routing decision. ``restricted`` requests may only run locally, ``internal`` ones locally
or on a private tier, ``public`` ones anywhere (the policy lives in the router; this module
only labels).

What is restricted (category names in parentheses, all at :attr:`Level.RESTRICTED`), in
English, German, French, Spanish and Dutch text alike:

* credentials: AWS access key ids and secret keys (``aws_access_key``), GitHub, GitLab,
  Slack, Stripe, OpenAI/Anthropic, Hugging Face, npm, Google API/OAuth, SendGrid tokens,
  Azure SAS signatures, authorization headers (Bearer, Basic, Digest, ``X-Api-Key``),
  ``api_key=`` / ``token:`` / ``secret=`` assignments and .env/YAML keys named like a
  secret, HAR/Postman name/value pairs, and tokens after a token word in prose
  (``api_token``); JWTs whose first segment decodes to a JSON object with an ``alg``
  member (``jwt``); PEM/OpenSSH/PGP/PuTTY private keys and private JWKs (``private_key``);
  URLs of any scheme with ``user:password@``, ADO/JDBC strings with a password, Azure
  ``AccountKey=`` (``connection_string``); passwords, PINs, Wi-Fi keys and access codes in
  ``key=value`` form or in prose ("my password is ...", "das Passwort lautet ...", "le mot
  de passe c'est ...", "la contraseña es ...", "user admin / pass ...": :mod:`.prose_credentials`)
  unless the value is a placeholder (``password``);
* payment cards: 13-19 digits, consistently grouped, plausible issuer prefix, Luhn-valid
  (``payment_card``); IBANs with a valid mod-97 check and country format (``iban``);
* national IDs: US SSN, UK NINO, French NIR, Spanish DNI/NIE, Italian codice fiscale by
  format and checksum; Dutch BSN, German Steuer-ID and other IDs after a word that names
  them (``national_id``); passport numbers after a passport word, and ICAO 9303
  machine-readable zones with valid check digits (``passport``, :mod:`.mrz`);
* personal contact data: e-mail addresses, also written to dodge scrapers (``jane [at]
  acme [dot] com``; addresses at reserved example domains are placeholders) (``email``),
  phone numbers (``phone``, :mod:`.phones`), street addresses of many countries
  (``street_address``, :mod:`.addresses`; an organisation's public address is not one);
* dates of birth announced as such or next to a person's name (``date_of_birth``), and
  person names next to health, contact, identity or financial data (``person_name``,
  :mod:`.people`, :mod:`.names`);
* health information about a person (``health``), see the rule below.

Fail closed. Where the detector cannot be sure what a value is but it could be restricted
data -- a number libphonenumber calls *possible* but not *valid* after a contact word, a
plain word after "my password is", a value of an ID's shape after its name that fails
its check digits -- it still reports a finding, with ``certain=False``: the request stays
on the device, and reversible redaction (``edge_agent/routing/redaction.py``) never
replaces such a finding.

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
  number, Dutch BSN); ``phonenumbers`` (the ``phonenumberslite`` distribution, 5 MB
  instead of 48 MB without geocoder/carrier data) only for phone candidates that a format
  or a context rule found: a parse costs about 30 us, so it never sees the text itself.
  Luhn, ICAO check digits, JWT header decoding, entropy and the health rule are local.
* Person names come from lists (:mod:`.names`, a few thousand given names and surnames)
  held in Python sets and read only around other findings, never put into the RE2 set:
  ordinary text still costs one pass.
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
detector family with its RE2 patterns and handlers, each exposing ``RULES``
(:mod:`.credentials`, :mod:`.prose_credentials`, :mod:`.contact`, :mod:`.phones`,
:mod:`.addresses`, :mod:`.obfuscated`, :mod:`.identifiers`, :mod:`.mrz`, :mod:`.people`
with :mod:`.names`, :mod:`.health`, :mod:`.internal`), :mod:`.matching` (RE2 plumbing and
the scan state), :mod:`.verdict` and :mod:`.config` (the public types), and :mod:`.terms`,
which reads the term lists, keyword tables and cue words from the package's ``data/``
folder. Quality is measured on ``tests/data/sensitivity_eval/`` (a tuning part and a
held-out part, ``python -m benchmarks.eval_privacy``) and the older labelled set
(``python -m benchmarks.eval_sensitivity``); docs/benchmarks.md has the figures.
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
