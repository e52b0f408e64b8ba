"""Context across routing boundaries: per-session history and budgeted compaction.

A session (``X-Session-Id``) keeps its chat history in a bounded in-memory
:class:`SessionStore`. Before a request goes to a tier, :func:`compact` fits
``system + history + new`` into the target model's context window, counted with that
model's real tokenizer (a :data:`TokenCounter`).

The sizes, the markers and the session store's bounds come from ``routing.context`` in
the agent config (:func:`policy_from_config`, :func:`store_from_config`).

Accounting. A prompt costs ``per_request_overhead_tokens`` plus, per message,
``count(content) + per_message_overhead_tokens`` (the chat template's framing). The
prompt may use ``budget_tokens - reserve_answer_tokens``; the rest is left for the
answer. Since the cost is a sum over messages, the final check (recounting every kept
message with ``count``) is exact with respect to this accounting.

Compaction rules (all deterministic; same inputs give the same output byte for byte):

1. The system prompt (first) and the new messages (last) are always kept verbatim. If
   they alone do not fit, :class:`ContextTooLarge` is raised.
2. If everything fits, the messages are returned unchanged (``compacted=False``).
3. Otherwise the history is split into an *anchor* (its first ``anchor_turns``
   messages), a *tail* (its last ``tail_turns`` messages) and the *middle* in between.
   Anchor and tail stay verbatim, never split; the middle is replaced by ONE
   system-role message ``"Summary of earlier conversation: ..."``.
4. The summary is extractive: every sentence of the middle that contains a constraint
   marker (case-insensitive, whole words, any whitespace between the words of a
   multi-word marker, ``'`` also matching U+2019), in original order, prefixed by its
   role, deduplicated (by sentence text, case- and whitespace-insensitively, across
   roles; the first occurrence wins).
   Other sentences are dropped (all of them when there are no markers). The header
   counts the condensed turns and the turns omitted entirely (no sentence of theirs kept).
5. The summary may use at most ``summary_max_fraction`` of the prompt budget (and
   never more than what the verbatim parts leave). Constraints are preferred over
   verbatim history: while the complete summary does not fit, and its allowance is
   below that share, verbatim turns are given up -- first the tail from its oldest
   side, then the anchor from its newest side -- and each given-up turn joins the
   middle (so its own constraints are summarised rather than lost).
6. If the complete summary still exceeds its allowance, constraint sentences are
   chosen newest first (first fit: a sentence that does not fit is skipped and older,
   shorter ones are still tried), then printed in original order, with a line saying
   how many constraint sentences were left out. Newest first because a later
   statement is the one most likely to still hold. If not even the bare header fits,
   there is no summary message.
"""

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from edge_agent.config import ContextSettings
from edge_agent.routing.redaction import PlaceholderMap
from edge_agent.runtimes.base import ChatMessage

TokenCounter = Callable[[str], int]
"""The target model's real tokenizer: text -> number of tokens."""

SUMMARY_PREFIX = "Summary of earlier conversation:"

DEFAULT_CONSTRAINT_MARKERS: tuple[str, ...] = (
    "must not",
    "must",
    "do not",
    "don't",
    "does not",
    "never",
    "should not",
    "shouldn't",
    "cannot",
    "can't",
    "required",
    "requires",
    "mandatory",
    "forbidden",
    "prohibited",
    "strictly",
    "always",
    "only",
)

_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A sentence ends at . ! or ? followed by whitespace, or at a line break; "3.5" and
# "v1.2" are therefore not split, "e.g. this" is.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """How :func:`compact` fits a conversation into a budget.

    Turn counts are in messages. The overhead defaults match ChatML with SmolLM2's
    tokenizer: ``<|im_start|>role\\n ... <|im_end|>\\n`` costs 5-6 tokens per message and
    the generation prompt ``<|im_start|>assistant\\n`` 4 tokens per request.
    """

    anchor_turns: int = 2
    tail_turns: int = 6
    reserve_answer_tokens: int = 256
    per_message_overhead_tokens: int = 6
    per_request_overhead_tokens: int = 4
    constraint_markers: tuple[str, ...] = DEFAULT_CONSTRAINT_MARKERS
    summary_max_fraction: float = 0.25

    def __post_init__(self) -> None:
        for name in (
            "anchor_turns",
            "tail_turns",
            "reserve_answer_tokens",
            "per_message_overhead_tokens",
            "per_request_overhead_tokens",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.summary_max_fraction <= 1.0:
            raise ValueError(
                f"summary_max_fraction must be within [0, 1], got {self.summary_max_fraction}"
            )
        if any(not m.strip() for m in self.constraint_markers):
            raise ValueError("constraint markers must not be empty")


def policy_from_config(settings: ContextSettings) -> CompactionPolicy:
    """The policy ``routing.context`` configures: a ``constraint_markers`` list replaces the
    built-in markers, ``extra_constraint_markers`` are added to them (or to the list)."""
    base = (
        DEFAULT_CONSTRAINT_MARKERS
        if settings.constraint_markers is None
        else tuple(settings.constraint_markers)
    )
    return CompactionPolicy(
        anchor_turns=settings.anchor_turns,
        tail_turns=settings.tail_turns,
        reserve_answer_tokens=settings.reserve_answer_tokens,
        constraint_markers=(*base, *settings.extra_constraint_markers),
        summary_max_fraction=settings.summary_max_fraction,
    )


def store_from_config(settings: ContextSettings) -> "SessionStore":
    """The session store ``routing.context`` sizes."""
    return SessionStore(
        max_sessions=settings.max_sessions,
        max_turns=settings.max_turns,
        ttl_s=settings.idle_ttl_s,
    )


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What :func:`compact` produced.

    ``tokens_before``/``tokens_after`` are prompt costs (content, per-message and
    per-request overhead), without the answer reserve. ``dropped_turns`` is the number of
    history messages not kept verbatim; ``kept_constraints`` the number of constraint
    sentences in the summary.
    """

    messages: tuple[ChatMessage, ...]
    compacted: bool
    tokens_before: int
    tokens_after: int
    dropped_turns: int
    kept_constraints: int


class ContextTooLarge(ValueError):
    """The system prompt and the new messages alone exceed the budget."""

    def __init__(self, needed: int, available: int, budget: int, reserve: int) -> None:
        self.needed = needed
        self.available = available
        self.budget = budget
        self.reserve = reserve
        super().__init__(
            f"system prompt and new messages need {needed} tokens, but only {available} "
            f"of the {budget}-token context are available after reserving {reserve} "
            f"for the answer"
        )


_NEVER = re.compile(r"(?!)")


@lru_cache(maxsize=32)
def _marker_pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    if not markers:
        return _NEVER  # an empty alternation would match every sentence
    alternatives = []
    # Longest first so the alternation reads naturally; matching is a yes/no anyway.
    for marker in sorted({m.strip().lower() for m in markers}, key=lambda m: (-len(m), m)):
        words = [re.escape(w).replace("'", "['\u2019]") for w in marker.split()]
        alternatives.append(r"\s+".join(words))
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Deterministic sentence split: on . ! ? followed by whitespace, and on line breaks."""
    return [s for s in (_WHITESPACE.sub(" ", p).strip() for p in _SENTENCE_BREAK.split(text)) if s]


@dataclass(frozen=True, slots=True)
class _Line:
    turn: int  # index of the message within the middle
    text: str  # "role: sentence"


def _constraint_lines(middle: Sequence[ChatMessage], pattern: re.Pattern[str]) -> list[_Line]:
    seen: set[str] = set()
    lines: list[_Line] = []
    for i, message in enumerate(middle):
        for sentence in split_sentences(message.content):
            if not pattern.search(sentence):
                continue
            key = sentence.casefold()
            if key in seen:
                continue
            seen.add(key)
            lines.append(_Line(turn=i, text=f"{message.role}: {sentence}"))
    return lines


def _render_summary(n_middle: int, lines: Sequence[_Line], left_out: int) -> str:
    represented = len({line.turn for line in lines})
    omitted = n_middle - represented
    turns = "turn" if n_middle == 1 else "turns"
    parts = [f"{SUMMARY_PREFIX} {n_middle} earlier {turns} condensed, {omitted} omitted entirely."]
    if lines:
        parts.append("Constraints stated there:")
        parts.extend(f"- {line.text}" for line in lines)
    if left_out:
        word = "sentence" if left_out == 1 else "sentences"
        parts.append(f"({left_out} older constraint {word} left out for space.)")
    return "\n".join(parts)


class _Costs:
    """Per-call memo of ``count`` plus the per-message overhead."""

    def __init__(self, count: TokenCounter, overhead: int) -> None:
        self._count = count
        self._overhead = overhead
        self._memo: dict[str, int] = {}

    def raw(self, text: str) -> int:
        """``count(text)``, memoised."""
        cached = self._memo.get(text)
        if cached is None:
            cached = int(self._count(text))
            if cached < 0:
                raise ValueError(f"token counter returned a negative count ({cached})")
            self._memo[text] = cached
        return cached

    def text(self, text: str) -> int:
        """The cost of a message with this content."""
        return self.raw(text) + self._overhead

    def messages(self, messages: Sequence[ChatMessage]) -> int:
        return sum(self.text(m.content) for m in messages)


def _fit_summary(
    n_middle: int, lines: Sequence[_Line], allowance: int, costs: _Costs
) -> tuple[ChatMessage | None, int]:
    """The summary within ``allowance`` by rule 6; returns it and its number of lines.

    Lines are tried newest first; one is added when the summary with it, recounted
    exactly, still fits. A line whose own token count exceeds the room left is skipped
    without a recount (that keeps this linear in practice on long histories).
    """
    complete = _render_summary(n_middle, lines, 0)
    if costs.text(complete) <= allowance:
        return ChatMessage("system", complete), len(lines)
    text = _render_summary(n_middle, [], len(lines))
    used = costs.text(text)
    if used > allowance:
        return None, 0
    chosen: list[int] = []  # indices into lines
    for index in range(len(lines) - 1, -1, -1):
        if costs.raw(f"- {lines[index].text}") > allowance - used:
            continue
        trial = sorted([*chosen, index])
        trial_text = _render_summary(n_middle, [lines[i] for i in trial], len(lines) - len(trial))
        trial_cost = costs.text(trial_text)
        if trial_cost <= allowance:
            chosen, text, used = trial, trial_text, trial_cost
    return ChatMessage("system", text), len(chosen)


def compact(
    system: ChatMessage | None,
    history: Sequence[ChatMessage],
    new: Sequence[ChatMessage],
    *,
    budget_tokens: int,
    count: TokenCounter,
    policy: CompactionPolicy = CompactionPolicy(),
) -> CompactionResult:
    """Fit ``system + history + new`` into ``budget_tokens`` (see the module docstring)."""
    costs = _Costs(count, policy.per_message_overhead_tokens)
    head: tuple[ChatMessage, ...] = (system,) if system is not None else ()
    new_t = tuple(new)
    hist = tuple(history)
    limit = budget_tokens - policy.reserve_answer_tokens

    fixed = policy.per_request_overhead_tokens + costs.messages(head) + costs.messages(new_t)
    if fixed > limit:
        raise ContextTooLarge(fixed, max(limit, 0), budget_tokens, policy.reserve_answer_tokens)
    hist_costs = [costs.text(m.content) for m in hist]
    before = fixed + sum(hist_costs)
    if before <= limit:
        return CompactionResult(
            messages=head + hist + new_t,
            compacted=False,
            tokens_before=before,
            tokens_after=before,
            dropped_turns=0,
            kept_constraints=0,
        )

    n = len(hist)
    pattern = _marker_pattern(policy.constraint_markers)
    cap = int(policy.summary_max_fraction * limit)
    a0 = min(policy.anchor_turns, n)
    t0 = min(policy.tail_turns, n - a0)
    # Rule 5: give up the tail from its oldest side, then the anchor from its newest.
    configs = [(a0, t) for t in range(t0, -1, -1)] + [(a, 0) for a in range(a0 - 1, -1, -1)]
    for step, (a, t) in enumerate(configs):
        last = step == len(configs) - 1
        room = limit - fixed - sum(hist_costs[:a]) - sum(hist_costs[n - t :])
        if room < 0:
            continue
        middle = hist[a : n - t]
        summary: ChatMessage | None = None
        kept = 0
        if middle:
            lines = _constraint_lines(middle, pattern)
            allowance = min(cap, room)
            complete = _render_summary(len(middle), lines, 0)
            if costs.text(complete) <= allowance:
                summary, kept = ChatMessage("system", complete), len(lines)
            elif room >= cap or last:
                summary, kept = _fit_summary(len(middle), lines, allowance, costs)
            else:
                continue
        kept_messages = head + hist[:a] + ((summary,) if summary else ()) + hist[n - t :] + new_t
        after = policy.per_request_overhead_tokens + sum(
            int(count(m.content)) + policy.per_message_overhead_tokens for m in kept_messages
        )
        if after > limit:  # cannot happen: every part was counted with the same counter
            raise RuntimeError(f"compaction produced {after} tokens for a limit of {limit}")
        return CompactionResult(
            messages=kept_messages,
            compacted=True,
            tokens_before=before,
            tokens_after=after,
            dropped_turns=len(middle),
            kept_constraints=kept,
        )
    raise RuntimeError("unreachable: the last configuration always fits")  # pragma: no cover


def valid_session_id(value: str) -> bool:
    """1-128 characters of ``[A-Za-z0-9._:-]``; the HTTP layer rejects others with 400."""
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


@dataclass(slots=True)
class _Session:
    messages: list[ChatMessage] = field(default_factory=list)
    last_used: float = 0.0
    # Redaction's placeholders for this session (values on the device only): the same
    # value keeps its placeholder across the session's requests; dropped with the session.
    placeholders: PlaceholderMap | None = None


class SessionStore:
    """Per-session chat history in memory: bounded and thread-safe.

    At most ``max_sessions`` sessions (the least recently used is evicted), at most
    ``max_turns`` messages per session (the oldest are dropped), and a session idle for
    more than ``ttl_s`` seconds of ``clock`` is forgotten. Reading a session counts as
    using it.
    """

    def __init__(
        self,
        *,
        max_sessions: int = 1000,
        max_turns: int = 200,
        ttl_s: float = 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self._max_sessions = max_sessions
        self._max_turns = max_turns
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        # Ordered by last use, least recent first.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used <= self._ttl_s:
                break
            self._sessions.popitem(last=False)

    @staticmethod
    def _check(session_id: str) -> None:
        if not valid_session_id(session_id):
            raise ValueError(f"invalid session id {session_id!r}")

    def history(self, session_id: str) -> tuple[ChatMessage, ...]:
        """The session's messages, oldest first; empty for an unknown or expired one."""
        self._check(session_id)
        with self._lock:
            now = self._clock()
            self._expire(now)
            session = self._sessions.get(session_id)
            if session is None:
                return ()
            session.last_used = now
            self._sessions.move_to_end(session_id)
            return tuple(session.messages)

    def append(self, session_id: str, messages: Sequence[ChatMessage]) -> None:
        """Add messages to a session (creating it), keeping the newest ``max_turns``."""
        self._check(session_id)
        with self._lock:
            now = self._clock()
            self._expire(now)
            session = self._sessions.get(session_id)
            if session is None:
                if not messages:
                    return
                session = self._sessions[session_id] = _Session()
            session.messages.extend(messages)
            if len(session.messages) > self._max_turns:
                del session.messages[: len(session.messages) - self._max_turns]
            session.last_used = now
            self._sessions.move_to_end(session_id)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)

    def placeholders(self, session_id: str) -> PlaceholderMap:
        """The session's redaction map, created (with the session) if need be."""
        found = self._placeholders(session_id, create=True)
        assert found is not None
        return found

    def existing_placeholders(self, session_id: str) -> PlaceholderMap | None:
        """The session's redaction map if it has one (nothing is created)."""
        return self._placeholders(session_id, create=False)

    def _placeholders(self, session_id: str, *, create: bool) -> PlaceholderMap | None:
        """The session's map, created with ``create``; using it counts as using the session."""
        self._check(session_id)
        with self._lock:
            now = self._clock()
            self._expire(now)
            session = self._sessions.get(session_id)
            if session is None or session.placeholders is None:
                if not create:
                    return None
                if session is None:
                    session = self._sessions[session_id] = _Session()
                session.placeholders = PlaceholderMap()
            session.last_used = now
            self._sessions.move_to_end(session_id)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
            return session.placeholders

    def forget(self, session_id: str) -> None:
        """Drop a session's history (no error if it does not exist)."""
        self._check(session_id)
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._sessions)
