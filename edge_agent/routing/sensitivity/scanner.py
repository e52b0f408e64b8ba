"""The detector: one RE2::Set pass over a text, then the rules that fired.

:class:`SensitivityDetector` puts every rule's pattern (the health rule's term by term)
in one ``RE2::Set``; a scan runs the set once, then only the rules whose pattern it saw,
each through its handler in the detector-family modules (:mod:`.credentials`,
:mod:`.identifiers`, :mod:`.contact`, :mod:`.health`, :mod:`.internal`), then the
configured extra patterns; the findings become a :class:`Verdict`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

from edge_agent.routing.sensitivity import (
    contact,
    credentials,
    health,
    identifiers,
    internal,
    obfuscated,
    people,
    prose_credentials,
)
from edge_agent.routing.sensitivity.config import SensitivityConfig
from edge_agent.routing.sensitivity.matching import (
    RULE_OPTIONS,
    SET_OPTIONS,
    Handler,
    Hit,
    Scan,
    match_spans,
)
from edge_agent.routing.sensitivity.people import find_names
from edge_agent.routing.sensitivity.verdict import CATEGORY_LEVELS, Finding, Level, Verdict


def _rules(config: SensitivityConfig, health_pattern: str) -> list[tuple[str, str, Handler]]:
    """The rules for ``config`` as (name, RE2 pattern, handler): restricted rules first,
    family by family (each family module's ``RULES``), then the internal ones
    (``stop_at_restricted`` skips the rest once a restricted finding is made)."""
    rules: list[tuple[str, str, Handler]] = [
        *credentials.RULES,
        *prose_credentials.RULES,
        *contact.RULES,
        *obfuscated.RULES,
        *identifiers.RULES,
        *people.RULES,
        ("health", health_pattern, health.on_health),
    ]
    if config.internal_keywords:
        rules.append(("marker", internal.marker_pattern(config), internal.on_marker))
    host_pattern = internal.host_pattern(config)
    if host_pattern:
        rules.append(("host", host_pattern, internal.on_host))
    if config.private_ips_internal:
        rules.append(("privip", internal.PRIVATE_IP_RULE, internal.on_private_ip))
    return rules


class SensitivityDetector:
    """Classifies texts as public, internal or restricted. Thread-safe after construction."""

    def __init__(self, config: SensitivityConfig | None = None) -> None:
        self.config = config or SensitivityConfig()
        cfg = self.config
        health_pattern = health.health_pattern()
        # One RE2::Set holds every rule's pattern, except that the health rule is there
        # term by term (the set then says which terms occur, and in ASCII text plain
        # substring searches for those few find them, instead of a second regex pass over
        # the whole text), plus the patient-record cues and the end-of-text sentinel.
        self._rules: list[tuple[Any, tuple[tuple[str, int], ...], Handler]] = []
        self._rule_names: list[str] = []
        self._set = re2.Set.SearchSet(SET_OPTIONS)
        self._set_rule: dict[int, int] = {}  # set index -> rule index
        self._set_term: dict[int, health.Term] = {}  # set index -> medical term
        self._health = -1  # the health rule's index (-1: disabled)
        for name, pattern, handler in _rules(cfg, health_pattern):
            if name == "health" and "health" in cfg.disabled_categories:
                continue
            regex = re2.compile(pattern, RULE_OPTIONS)
            names = tuple(sorted(regex.groupindex.items(), key=lambda item: item[1]))
            index = len(self._rules)
            self._rules.append((regex, names, handler))
            self._rule_names.append(name)
            if name == "health":
                self._health = index
                for rank, (literal, cased) in enumerate(health.health_alternatives()):
                    term = health.make_term(rank, literal, cased)
                    self._set_term[self._set.Add(health.term_pattern(literal, cased))] = term
            else:
                self._set_rule[self._set.Add(pattern)] = index
        self._set_cues = frozenset(self._set.Add(cue) for cue in health.CLINICAL_CUES)
        # a medical term with a person in its sentence: without it (and without a patient-
        # record cue) no term can be a health finding, and the health rule is skipped
        self._set_people = (
            self._set.Add(health.person_cue_pattern(health_pattern)) if self._health >= 0 else -1
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

    def classify(self, text: str, *, every_finding: bool = False) -> Verdict:
        """Classify one text; the level is the highest level of any finding.

        ``every_finding`` reports every finding even where the configuration says
        ``stop_at_restricted`` (redaction must replace them all).
        """
        return self._verdict(self._scan(text, 0, self._stop and not every_finding))

    def classify_messages(self, texts: Iterable[str], *, every_finding: bool = False) -> Verdict:
        """Classify several texts (a chat): the maximum level, all findings merged.

        Each finding's ``message`` is the index of the text it was found in;
        ``every_finding`` as in :meth:`classify`.
        """
        stop = self._stop and not every_finding
        findings: list[Finding] = []
        for i, text in enumerate(texts):
            findings.extend(self._scan(text, i, stop))
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

    def _scan(self, text: str, message: int, stop: bool) -> list[Finding]:
        sc = Scan(text, message)
        fired = self._set.Match(sc.data) or []
        terms: list[health.Term] = []
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
            if terms and (people or cues or len(sc.data) <= health.RECORD_CHARS):
                rules.append(self._health)
            rules.sort()
        else:  # the DFA gave up (out of memory): run every rule, slower but complete
            rules = list(range(len(self._rules)))
        if self._health >= 0 and len(sc.data) <= health.RECORD_CHARS:
            health.find_shapes(sc, bool(terms))  # a short text: doses, drug stems ...
        if not rules and not self._extra and not sc.findings:
            return []  # the common case: ordinary text, done after one pass
        for i in rules:
            if i == self._health and terms and sc.ascii:
                health.find_health(sc, terms)
            else:
                self._run_rule(sc, i)
            if stop and self._restricted_found(sc.findings):
                return self._postprocess(sc.findings)
        for category, pattern in self._extra:
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    sc.add(category, m.start(), m.end())
        if sc.findings and "person_name" not in self._disabled:
            find_names(sc)  # person names next to the other findings (a names list)
        return self._postprocess(sc.findings)

    def _run_rule(self, sc: Scan, rule: int) -> None:
        """A second RE2 pass of one rule for the spans of its matches, each to its handler."""
        regex, names, handler = self._rules[rule]
        for spans in match_spans(regex, sc.data):
            handler(sc, Hit(sc, spans, names))

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
        if any(f.category == "person_name" for f in findings):
            # a name inside another finding ("mars" of a birth date read as an HL7 name
            # field) is that finding's part: the other one keeps the text restricted and
            # is the one redaction replaces
            others = [f for f in findings if f.category != "person_name"]
            findings = [
                f
                for f in findings
                if f.category != "person_name"
                or not any(
                    o.message == f.message and f.start < o.end and o.start < f.end for o in others
                )
            ]
        # one finding per (category, span)
        return list(dict.fromkeys(findings))


__all__ = ["SensitivityDetector"]
