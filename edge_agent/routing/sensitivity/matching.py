"""RE2 plumbing shared by the rules: options, escaping, iterating over matches, and the
state of one scan (the text, its UTF-8 bytes, byte -> character offsets, the findings)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

from edge_agent.routing.sensitivity.verdict import Finding


class Scan:
    """One text being scanned: what the rules read and where their findings go."""

    __slots__ = (
        "_cp_bytes",
        "_cp_chars",
        "ascii",
        "clinical",
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
        # positions of patient-record cues, found when first needed (health.clinical_spots)
        self.clinical: list[int] | None = None
        self._cp_bytes = [0]
        self._cp_chars = [0]

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

    def add(self, category: str, start: int, end: int, certain: bool = True) -> None:
        self.findings.append(Finding(category, start, end, self.message, certain))


class Hit:
    """One RE2 match of a rule: group spans in bytes, read back in characters."""

    __slots__ = ("_names", "_sc", "_spans")

    def __init__(
        self, sc: Scan, spans: Sequence[tuple[int, int]], names: tuple[tuple[str, int], ...]
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


Handler = Callable[[Scan, Hit], None]
"""What a rule does with each match of its pattern (validates it, adds findings)."""

UNANCHORED: Final[Any] = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
"""google-re2's anchor value for ``RE2::Match`` (None: its internals are not there)."""


def match_spans(regex: Any, data: bytes) -> Iterator[Sequence[tuple[int, int]]]:
    """All matches of a compiled RE2 pattern, as lists of group spans (bytes offsets).

    Calls the C++ ``RE2::Match`` of google-re2 directly when its internals are there (one
    call and one list per match); otherwise goes through the public ``finditer``.
    """
    raw = getattr(regex, "_regexp", None)
    if raw is None or UNANCHORED is None:
        groups = range(regex.groups + 1)
        for m in regex.finditer(data):
            yield [m.span(i) for i in groups]
        return
    pos, n = 0, len(data)
    while pos <= n:
        spans = raw.Match(UNANCHORED, data, pos, n)
        start, end = spans[0]
        if start == -1:
            return
        yield spans
        pos = end if end > pos else pos + 1


def search(regex: Any, data: bytes, pos: int) -> int:
    """Where the first match of a compiled RE2 pattern in ``data[pos:]`` starts (-1: none);
    through google-re2's ``RE2::Match`` where it is there, as in :func:`match_spans`."""
    raw = getattr(regex, "_regexp", None)
    if raw is None or UNANCHORED is None:
        m = regex.search(data, pos)
        return -1 if m is None else int(m.start())
    return int(raw.Match(UNANCHORED, data, pos, len(data))[0][0])


def options(max_mem: int) -> Any:
    """RE2 options: quiet, with a memory budget for the compiled program and DFA cache.

    When a DFA exceeds its budget RE2 falls back to its (slower) NFA for that search, and
    the set reports no sentinel, so the budget bounds memory, never what is found.
    """
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = max_mem
    return opts


SET_OPTIONS: Final[Any] = options(32 << 20)
RULE_OPTIONS: Final[Any] = options(8 << 20)


def escape(literal: str) -> str:
    """Escape a literal for RE2; runs of whitespace match any whitespace."""
    words = literal.split()
    return r"\s+".join(
        "".join("\\" + c if c.isascii() and not c.isalnum() else c for c in w) for w in words
    )


def bounded(escaped_literal: str, literal: str) -> str:
    """Word boundaries on the sides of ``literal`` that start/end with a word character."""
    left = r"\b" if literal[:1].isalnum() or literal[:1] == "_" else ""
    right = r"\b" if literal[-1:].isalnum() or literal[-1:] == "_" else ""
    return left + escaped_literal + right


__all__ = [
    "RULE_OPTIONS",
    "SET_OPTIONS",
    "UNANCHORED",
    "Handler",
    "Hit",
    "Scan",
    "bounded",
    "escape",
    "match_spans",
    "options",
    "search",
]
