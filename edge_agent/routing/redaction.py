"""Reversible redaction: personal data out of a prompt before it leaves, back into the answer.

Pure and small. :func:`redaction_blocker` says whether a request's findings may be redacted
at all; a :class:`PlaceholderMap` replaces each finding's span with a typed, numbered
placeholder (``[EMAIL_1]``, ``[PHONE_2]``, ``[PERSON_1]`` ...) and restores the
placeholders in an answer; a :class:`StreamRestorer` does the same for an answer that
arrives in pieces, where a placeholder may be split across them.

Rules (docs/routing.md, "Reversible redaction"):

* Only the categories of :data:`PLACEHOLDER_TYPES` are redactable: contact, identity and
  financial data, whose value the remote model does not need to see to do the task.
  Credentials and private keys (the secret is the point) and health data (special-category
  data whose meaning is the point) are not, nor is any category this module does not know
  (an operator's ``extra_restricted_patterns``): such a request stays local. So does one
  with a finding the detector marked ``certain=False`` (kind or extent unsure).
* Internal findings (markers, internal hosts) are not replaced: they stay in the text and
  keep the request ``internal``.
* The same value (exact text) of the same type gets the same placeholder for the map's
  lifetime: one request, or one session (the session store holds its map and drops it with
  the session). Numbers that already appear literally in the conversation are skipped, so
  a placeholder the user typed is never mistaken for one this map issued.
* Restoring replaces exactly the placeholders this map issued. Anything else that looks
  like one -- ``[EMAIL_7]`` never issued, ``[email_1]``, ``[EMAIL 1]`` -- is left as it is:
  a guess could put one person's data into a sentence about another.

The map holds the original values: it never leaves the device and is never logged (its
``repr`` shows counts only).
"""

import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from edge_agent.routing.sensitivity import CATEGORY_LEVELS, Finding, Level

PLACEHOLDER_TYPES: Mapping[str, str] = {
    "email": "EMAIL",
    "phone": "PHONE",
    "person_name": "PERSON",
    "street_address": "ADDRESS",
    "iban": "IBAN",
    "payment_card": "CARD",
    "national_id": "ID",
    "passport": "PASSPORT",
    "date_of_birth": "DOB",
}
"""Redactable categories and the type word of their placeholders."""

NEVER_REDACTED: frozenset[str] = frozenset(
    {
        "aws_access_key",
        "api_token",
        "jwt",
        "private_key",
        "connection_string",
        "password",
        "health",
    }
)
"""Restricted categories that keep a request local even when redaction is asked for."""

# The placeholders this module issues, and every proper prefix of one (for streams). Type
# words are 2-8 capitals; numbers have no leading zero and at most MAX_DIGITS digits.
MAX_DIGITS = 6
_PLACEHOLDER = re.compile(rf"\[[A-Z]{{2,8}}_[1-9][0-9]{{0,{MAX_DIGITS - 1}}}\]")
_PREFIX = re.compile(rf"\[[A-Z]{{0,8}}(?:_(?:[1-9][0-9]{{0,{MAX_DIGITS - 1}}})?)?\Z")
# A session's map stops issuing placeholders here (the request then stays local).
MAX_ENTRIES = 1_000


class RedactionRefused(ValueError):
    """The map is full, or a finding's span is not inside its text: keep the request local."""


def redaction_blocker(findings: Iterable[Finding]) -> str | None:
    """Why these findings may not be redacted (``uncertain:<category>``,
    ``not_redactable:<category>``), or None when every restricted one may be."""
    for finding in findings:
        if not finding.certain:
            return f"uncertain:{finding.category}"
        level = CATEGORY_LEVELS.get(finding.category, Level.RESTRICTED)
        if level is Level.RESTRICTED and finding.category not in PLACEHOLDER_TYPES:
            return f"not_redactable:{finding.category}"
    return None


@dataclass(frozen=True, slots=True)
class Redacted:
    """Texts with their findings replaced, and how many spans of each category were."""

    texts: tuple[str, ...]
    counts: Mapping[str, int]
    changed: tuple[int, ...] = ()  # indices of the texts with something replaced

    @property
    def total(self) -> int:
        """Spans replaced, all categories together."""
        return sum(self.counts.values())


def _spans(texts: Sequence[str], findings: Iterable[Finding]) -> list[tuple[int, int, int, str]]:
    """Redactable findings as (message, start, end, category), overlaps merged (the merged
    span takes the category of its longest finding), sorted by position."""
    raw = sorted(
        (f.message, f.start, f.end, f.category) for f in findings if f.category in PLACEHOLDER_TYPES
    )
    merged: list[tuple[int, int, int, str]] = []
    longest = 0
    for message, start, end, category in raw:
        if not (0 <= message < len(texts) and 0 <= start < end <= len(texts[message])):
            raise RedactionRefused("a finding's span is outside its text")
        if merged and merged[-1][0] == message and start < merged[-1][2]:
            m, s, e, c = merged[-1]
            if end - start > longest:
                c, longest = category, end - start
            merged[-1] = (m, s, max(e, end), c)
        else:
            merged.append((message, start, end, category))
            longest = end - start
    return merged


_CATEGORY_OF_TYPE = {kind: category for category, kind in PLACEHOLDER_TYPES.items()}


def _repeats(
    texts: Sequence[str], spans: list[tuple[int, int, int, str]], values: Iterable[tuple[str, str]]
) -> list[tuple[int, int, int, str]]:
    """Occurrences of known (type, value) pairs that no span covers, as spans: a value the
    detector found once is replaced wherever it appears, also where its context did not
    make the detector find it again ("Noted: +49 30 ..." in the model's own earlier answer).
    Only whole occurrences count (no letter or digit right before or after)."""
    starts = {(message, start) for message, start, _, _ in spans}  # the usual hit: skip
    covered: dict[int, list[tuple[int, int]]] = {}
    for message, start, end, _ in spans:
        covered.setdefault(message, []).append((start, end))
    extra: list[tuple[int, int, int, str]] = []
    for kind, value in sorted(values, key=lambda pair: -len(pair[1])):  # longest first
        size = len(value)
        if size < 2:
            continue
        for message, text in enumerate(texts):
            at = text.find(value)
            while at >= 0:
                end = at + size
                if (message, at) not in starts and _whole(text, at, end):
                    taken = covered.setdefault(message, [])
                    if all(end <= s or at >= e for s, e in taken):
                        extra.append((message, at, end, _CATEGORY_OF_TYPE[kind]))
                        taken.append((at, end))
                        starts.add((message, at))
                at = text.find(value, end)
    return extra


def _whole(text: str, start: int, end: int) -> bool:
    """No letter or digit right before ``start`` or right at ``end``."""
    return (start == 0 or not text[start - 1].isalnum()) and (
        end == len(text) or not text[end].isalnum()
    )


class PlaceholderMap:
    """Values <-> placeholders for one request or one session; thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._by_value: dict[tuple[str, str], str] = {}  # (type, value) -> placeholder
        self._by_placeholder: dict[str, str] = {}  # placeholder -> value
        self._next: dict[str, int] = {}  # type -> next number to try

    def __len__(self) -> int:
        return len(self._by_placeholder)

    def __repr__(self) -> str:  # never the values
        return f"PlaceholderMap({len(self._by_placeholder)} placeholders)"

    def _issue(self, kind: str, value: str, taken: Collection[str]) -> str:
        """A new placeholder for ``value``; lock held. Placeholders in ``taken`` (those
        that appear literally in the conversation) are skipped."""
        if len(self._by_placeholder) >= self._max_entries:
            raise RedactionRefused(f"more than {self._max_entries} values to redact")
        number = self._next.get(kind, 1)
        placeholder = f"[{kind}_{number}]"
        while placeholder in taken:  # typed by the user: never issue it
            number += 1
            placeholder = f"[{kind}_{number}]"
        if number >= 10**MAX_DIGITS:
            raise RedactionRefused("placeholder numbers exhausted")
        self._next[kind] = number + 1
        self._by_value[(kind, value)] = placeholder
        self._by_placeholder[placeholder] = value
        return placeholder

    def redact(self, texts: Sequence[str], findings: Iterable[Finding]) -> Redacted:
        """``texts`` with every redactable finding replaced by its value's placeholder,
        numbered in reading order, and so is every other whole occurrence of a value this
        map knows (found now or earlier in the session).

        Findings of other categories are left in place (check :func:`redaction_blocker`
        first). Raises :class:`RedactionRefused` for a span outside its text or a full map.
        """
        spans = _spans(texts, findings)
        with self._lock:
            values = {(PLACEHOLDER_TYPES[c], texts[m][s:e]) for m, s, e, c in spans}
            values.update(self._by_value)  # a session's earlier values too
        spans = sorted(spans + _repeats(texts, spans, values))
        if not spans:
            return Redacted(tuple(texts), {})
        # Placeholder look-alikes already in the texts (one search for all of them).
        taken = {m for text in texts if "[" in text for m in _PLACEHOLDER.findall(text)}
        pieces: list[list[str]] = [[] for _ in texts]
        done = [0] * len(texts)  # how far each text has been copied
        counts: dict[str, int] = {}
        known = self._by_value
        with self._lock:
            for message, start, end, category in spans:  # sorted by position
                kind = PLACEHOLDER_TYPES[category]
                text = texts[message]
                value = text[start:end]
                placeholder = known.get((kind, value)) or self._issue(kind, value, taken)
                pieces[message] += (text[done[message] : start], placeholder)
                done[message] = end
                counts[category] = counts.get(category, 0) + 1
        out = tuple(
            "".join(parts) + text[done[i] :] if parts else text
            for i, (text, parts) in enumerate(zip(texts, pieces, strict=True))
        )
        return Redacted(out, counts, tuple(i for i, parts in enumerate(pieces) if parts))

    def findings(self, texts: Sequence[str]) -> tuple[Finding, ...]:
        """Whole occurrences in ``texts`` of the values this map holds, as findings: a
        value once found personal in a session stays personal wherever it appears again,
        whether the detector recognises it there or not."""
        with self._lock:
            values = list(self._by_value)
        if not values:
            return ()
        return tuple(
            Finding(category, start, end, message)
            for message, start, end, category in _repeats(texts, [], values)
        )

    def restore(self, text: str) -> str:
        """``text`` with every placeholder this map issued replaced by its value; anything
        else, placeholder-like or not, unchanged."""
        if "[" not in text or not self._by_placeholder:
            return text
        # Entries are only ever added, and dict.get is atomic: no lock, no copy.
        values = self._by_placeholder
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), text)

    def restorer(self) -> "StreamRestorer":
        """A :class:`StreamRestorer` over this map."""
        return StreamRestorer(self.restore)


class StreamRestorer:
    """Restores placeholders in an answer that arrives in pieces.

    :meth:`feed` returns what can be sent now: a possible placeholder prefix at the end of
    a piece (``[EMA``) is held back until the next piece completes or breaks it (at most
    16 characters). :meth:`flush` returns what is held at the end. For any split of an
    answer, the joined outputs equal ``restore(answer)``.
    """

    def __init__(self, restore: Callable[[str], str]) -> None:
        self._restore = restore
        self._held = ""

    def feed(self, piece: str) -> str:
        """The restored text that can be sent after ``piece``."""
        if not self._held and "[" not in piece:
            return piece  # the common case: nothing held, nothing to restore
        text = self._held + piece
        cut = text.rfind("[")
        if cut >= 0 and _PREFIX.match(text, cut):
            self._held = text[cut:]
            text = text[:cut]
        else:
            self._held = ""
        return self._restore(text) if text else ""

    def flush(self) -> str:
        """What is held back, restored (it cannot be a whole placeholder, so unchanged)."""
        text, self._held = self._held, ""
        return self._restore(text) if text else ""


__all__ = [
    "MAX_ENTRIES",
    "NEVER_REDACTED",
    "PLACEHOLDER_TYPES",
    "PlaceholderMap",
    "Redacted",
    "RedactionRefused",
    "StreamRestorer",
    "redaction_blocker",
]
