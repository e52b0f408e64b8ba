"""Context across routing boundaries: compaction with a real tokenizer, and the session store."""

import dataclasses
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import ContextSettings
from edge_agent.routing.context import (
    DEFAULT_CONSTRAINT_MARKERS,
    SUMMARY_PREFIX,
    CompactionPolicy,
    CompactionResult,
    ContextTooLarge,
    SessionStore,
    compact,
    policy_from_config,
    split_sentences,
    store_from_config,
    valid_session_id,
)
from edge_agent.runtimes.base import ChatMessage, Role
from edge_agent.runtimes.llama_cpp import llama_token_counter

MODEL = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

Counter = Callable[[str], int]


@pytest.fixture(scope="module")
def llama() -> Any:
    if not MODEL.is_file():
        pytest.fail(f"the tokenizer model {MODEL} is missing; it is part of the repository")
    from llama_cpp import Llama

    return Llama(model_path=str(MODEL), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def real_count(llama: Any) -> Counter:
    return llama_token_counter(llama)


def words(text: str) -> int:
    return len(text.split())


def cost(messages: Sequence[ChatMessage], count: Counter, policy: CompactionPolicy) -> int:
    """Independent recount of a prompt, by the accounting the module documents."""
    return policy.per_request_overhead_tokens + sum(
        count(m.content) + policy.per_message_overhead_tokens for m in messages
    )


SYSTEM = ChatMessage("system", "You are the in-car assistant of a delivery van. Be brief.")
CHATTER = [
    "The weather is lovely on the coast road today.",
    "I had a sandwich for lunch and it was fine.",
    "Traffic near the depot was heavy this morning.",
    "The radio is playing old songs again.",
    "My colleague says hello to everyone at dispatch.",
]


def conversation(turns: int = 24) -> list[ChatMessage]:
    """User/assistant turns with chatter and a few constraints buried in the middle."""
    history: list[ChatMessage] = []
    for i in range(turns):
        role: Role = "user" if i % 2 == 0 else "assistant"
        text = f"Turn {i}. {CHATTER[i % len(CHATTER)]} {CHATTER[(i + 2) % len(CHATTER)]}"
        if i == 4:
            text = f"{CHATTER[0]} You must not share the VIN with anyone. Thanks!"
        if i == 10:
            text = f"Noted. Deliveries are strictly before 18:00.\n{CHATTER[1]}"
        history.append(ChatMessage(role, text))
    return history


NEW = (ChatMessage("user", "What should I do at the next stop?"),)


def test_under_budget_is_returned_unchanged(real_count: Counter) -> None:
    """When everything fits, the messages come back exactly as given and nothing is compacted."""
    history = conversation(6)
    result = compact(SYSTEM, history, NEW, budget_tokens=4096, count=real_count)
    assert result.messages == (SYSTEM, *history, *NEW)
    assert not result.compacted
    assert result.tokens_before == result.tokens_after
    assert result.tokens_after == cost(result.messages, real_count, CompactionPolicy())
    assert result.dropped_turns == 0
    assert result.kept_constraints == 0


def over_budget(count: Counter) -> tuple[list[ChatMessage], CompactionResult, CompactionPolicy]:
    history = conversation(24)
    policy = CompactionPolicy(reserve_answer_tokens=64)
    result = compact(SYSTEM, history, NEW, budget_tokens=600, count=count, policy=policy)
    return history, result, policy


def test_over_budget_keeps_anchor_tail_and_constraints(real_count: Counter) -> None:
    """Over budget, the anchor and tail stay verbatim and only the middle's constraint sentences
    survive, in one system summary."""
    history, result, policy = over_budget(real_count)
    assert result.compacted
    assert result.tokens_before > 600 - policy.reserve_answer_tokens
    msgs = result.messages
    assert msgs[0] == SYSTEM
    assert msgs[-1] == NEW[0]
    assert msgs[1:3] == tuple(history[:2])
    summary = msgs[3]
    assert summary.role == "system"
    assert summary.content.startswith(SUMMARY_PREFIX)
    tail = msgs[4:-1]
    assert 1 <= len(tail) <= policy.tail_turns
    assert tail == tuple(history[-len(tail) :])
    assert result.dropped_turns == len(history) - 2 - len(tail)
    assert "user: You must not share the VIN with anyone." in summary.content
    assert "user: Deliveries are strictly before 18:00." in summary.content
    assert "Noted." not in summary.content
    assert result.kept_constraints == 2
    for chatter in CHATTER:
        assert chatter not in summary.content
    assert "Thanks!" not in summary.content
    assert sum(1 for m in msgs if m.content.startswith(SUMMARY_PREFIX)) == 1


def test_result_fits_the_budget_by_the_real_tokenizer(llama: Any, real_count: Counter) -> None:
    """The compacted prompt, recounted with the real tokenizer and rendered with the model's own
    chat template, stays within the budget minus the answer reserve."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    _, result, policy = over_budget(real_count)
    limit = 600 - policy.reserve_answer_tokens
    assert result.tokens_after == cost(result.messages, real_count, policy)
    assert result.tokens_after <= limit
    formatter = Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"], eos_token="", bos_token=""
    )
    chat: list[Any] = [{"role": m.role, "content": m.content} for m in result.messages]
    prompt = formatter(messages=chat).prompt
    assert real_count(prompt) <= limit


def test_deterministic(real_count: Counter, llama: Any) -> None:
    """The same inputs give the same result byte for byte, also with a fresh counter."""
    _, first, _ = over_budget(real_count)
    _, second, _ = over_budget(llama_token_counter(llama))
    assert first == second
    assert [m.content.encode() for m in first.messages] == [
        m.content.encode() for m in second.messages
    ]


def test_too_large_when_system_and_new_do_not_fit(real_count: Counter) -> None:
    """If the system prompt and new messages alone exceed the budget, ContextTooLarge (a
    ValueError) says by how much."""
    big = (ChatMessage("user", "Please summarise this report. " * 40),)
    policy = CompactionPolicy(reserve_answer_tokens=64)
    with pytest.raises(ContextTooLarge) as info:
        compact(SYSTEM, conversation(4), big, budget_tokens=200, count=real_count, policy=policy)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.needed == cost((SYSTEM, *big), real_count, policy)
    assert err.available == 136
    assert str(err.needed) in str(err)
    assert "136" in str(err)
    assert "200" in str(err)


def test_too_large_when_reserve_exceeds_budget() -> None:
    """A budget smaller than the answer reserve leaves no room at all and is rejected."""
    with pytest.raises(ContextTooLarge):
        compact(None, [], [ChatMessage("user", "hi")], budget_tokens=100, count=words)


def test_tail_shrinks_from_oldest_before_anchor() -> None:
    """When anchor plus tail do not fit, the tail loses its oldest turns first and the anchor is
    kept; the given-up turns' constraints move into the summary."""
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"m{i} " * 20) for i in range(10)]
    history[4] = ChatMessage("user", "You must always sign the form. " + "pad " * 14)
    policy = CompactionPolicy(
        anchor_turns=2,
        tail_turns=6,
        reserve_answer_tokens=0,
        per_message_overhead_tokens=0,
        per_request_overhead_tokens=0,
        summary_max_fraction=0.2,
    )
    result = compact(None, history, NEW, budget_tokens=140, count=words, policy=policy)
    msgs = result.messages
    assert msgs[:2] == tuple(history[:2])
    assert msgs[2].content.startswith(SUMMARY_PREFIX)
    tail = msgs[3:-1]
    assert 0 < len(tail) < 6
    assert tail == tuple(history[-len(tail) :])
    assert "user: You must always sign the form." in msgs[2].content
    assert result.tokens_after <= 140


def test_anchor_shrinks_from_newest_after_tail_is_gone() -> None:
    """With the tail gone and still no room, the anchor drops its newest turns, keeping the
    first one longest."""
    history = [ChatMessage("user", f"x{i} " * 30) for i in range(6)]
    policy = CompactionPolicy(
        anchor_turns=3,
        tail_turns=2,
        reserve_answer_tokens=0,
        per_message_overhead_tokens=0,
        per_request_overhead_tokens=0,
        summary_max_fraction=0.2,
    )
    result = compact(None, history, NEW, budget_tokens=60, count=words, policy=policy)
    assert result.messages[0] == history[0]
    assert result.messages[1].content.startswith(SUMMARY_PREFIX)
    assert result.messages[2:] == NEW
    assert result.dropped_turns == 5


def test_constraints_overflowing_the_summary_keep_the_newest() -> None:
    """When the constraint sentences exceed the summary allowance, the newest are kept (in
    original order) and the number left out is stated."""
    middle = [
        ChatMessage("user", f"Rule {i}: you must never do thing number {i}.") for i in range(30)
    ]
    history = [ChatMessage("user", "hello"), ChatMessage("assistant", "hi"), *middle]
    policy = CompactionPolicy(
        anchor_turns=2,
        tail_turns=0,
        reserve_answer_tokens=0,
        per_message_overhead_tokens=0,
        per_request_overhead_tokens=0,
        summary_max_fraction=0.5,
    )
    result = compact(None, history, NEW, budget_tokens=200, count=words, policy=policy)
    summary = result.messages[2].content
    assert words(summary) <= 100
    kept = [i for i in range(30) if f"Rule {i}:" in summary]
    assert kept == list(range(30 - len(kept), 30))
    assert 0 < len(kept) < 30
    assert result.kept_constraints == len(kept)
    assert f"({30 - len(kept)} older constraint sentences left out for space.)" in summary
    assert summary.index("Rule 28:") < summary.index("Rule 29:")
    assert result.tokens_after <= 200


def test_marker_matching_is_whole_word_case_insensitive_and_configurable() -> None:
    """Markers match as whole words regardless of case (and curly apostrophes), duplicates are
    kept once, and a custom marker list replaces the default."""
    middle = [
        ChatMessage("user", "Pass the mustard please. YOU MUST NOT honk."),
        ChatMessage("assistant", "Understood, I don\u2019t honk. you must not honk."),
        ChatMessage("user", "Keep it confidential. Park anywhere. " + " ".join(CHATTER)),
    ]
    history = [ChatMessage("user", "a"), *middle, ChatMessage("user", "z")]
    base = CompactionPolicy(
        anchor_turns=1,
        tail_turns=1,
        reserve_answer_tokens=0,
        per_message_overhead_tokens=0,
        per_request_overhead_tokens=0,
        summary_max_fraction=1.0,
    )
    result = compact(None, history, [], budget_tokens=40, count=words, policy=base)
    summary = result.messages[1].content
    assert "user: YOU MUST NOT honk." in summary
    assert "assistant: Understood, I don\u2019t honk." in summary
    assert summary.lower().count("must not honk") == 1
    assert "mustard" not in summary
    assert "confidential" not in summary

    custom = dataclasses.replace(base, constraint_markers=("confidential",))
    result = compact(None, history, [], budget_tokens=40, count=words, policy=custom)
    summary = result.messages[1].content
    assert "user: Keep it confidential." in summary
    assert "MUST" not in summary


def test_no_markers_keep_no_sentence() -> None:
    """An empty marker list summarises the middle as a bare header: no sentence matches (an
    empty alternation would otherwise match every one)."""
    middle = msg("You must not honk. Park anywhere near the depot and wait there.")
    history = [msg("a"), middle, msg("z")]
    policy = CompactionPolicy(
        anchor_turns=1,
        tail_turns=1,
        reserve_answer_tokens=0,
        per_message_overhead_tokens=0,
        per_request_overhead_tokens=0,
        summary_max_fraction=1.0,
        constraint_markers=(),
    )
    # 2 + 14 words do not fit 13; the anchor, the tail and the 10-word header do.
    result = compact(None, history, [], budget_tokens=13, count=words, policy=policy)
    assert result.compacted and result.kept_constraints == 0
    header = f"{SUMMARY_PREFIX} 1 earlier turn condensed, 1 omitted entirely."
    assert result.messages[1].content == header


def test_policy_from_config_replaces_or_extends_the_markers() -> None:
    """``routing.context`` sets the sizes; ``constraint_markers`` replaces the built-in
    markers, ``extra_constraint_markers`` adds to whichever list is in force."""
    default = policy_from_config(ContextSettings())
    assert default == CompactionPolicy()
    sized = policy_from_config(
        ContextSettings(
            anchor_turns=0, tail_turns=3, reserve_answer_tokens=99, summary_max_fraction=0.5
        )
    )
    assert (sized.anchor_turns, sized.tail_turns) == (0, 3)
    assert (sized.reserve_answer_tokens, sized.summary_max_fraction) == (99, 0.5)
    extended = policy_from_config(ContextSettings(extra_constraint_markers=["house rule"]))
    assert extended.constraint_markers == (*DEFAULT_CONSTRAINT_MARKERS, "house rule")
    replaced = policy_from_config(
        ContextSettings(constraint_markers=["house rule"], extra_constraint_markers=["whenever"])
    )
    assert replaced.constraint_markers == ("house rule", "whenever")


def test_store_from_config_applies_its_bounds() -> None:
    """``routing.context.max_turns`` bounds the turns a session keeps."""
    store = store_from_config(ContextSettings(max_turns=3, anchor_turns=1, tail_turns=1))
    store.append("s", [msg(str(i)) for i in range(5)])
    assert [m.content for m in store.history("s")] == ["2", "3", "4"]


def test_sentence_split_is_deterministic() -> None:
    """Sentences end at . ! ? followed by whitespace and at line breaks; decimals stay whole."""
    text = "Version 3.5 is required!  Really?\nnext line\n\n  And  more.Tail"
    assert split_sentences(text) == [
        "Version 3.5 is required!",
        "Really?",
        "next line",
        "And more.Tail",
    ]


def test_policy_rejects_nonsense() -> None:
    """Negative counts, a fraction outside [0, 1] and empty markers are refused."""
    with pytest.raises(ValueError, match="tail_turns"):
        CompactionPolicy(tail_turns=-1)
    with pytest.raises(ValueError, match="summary_max_fraction"):
        CompactionPolicy(summary_max_fraction=1.5)
    with pytest.raises(ValueError, match="markers"):
        CompactionPolicy(constraint_markers=("must", " "))


VOCAB = ["must", "not", "never", "only", "the", "van", "stop.", "go!", "why?", "ok", "\n", "VIN"]
message_st = st.builds(
    ChatMessage,
    st.sampled_from(["user", "assistant"]),
    st.lists(st.sampled_from(VOCAB), max_size=25).map(" ".join),
)


@given(
    system=st.one_of(st.none(), message_st.map(lambda m: ChatMessage("system", m.content))),
    history=st.lists(message_st, max_size=30),
    new=st.lists(message_st, min_size=1, max_size=3),
    budget=st.integers(min_value=0, max_value=600),
    anchor=st.integers(min_value=0, max_value=4),
    tail=st.integers(min_value=0, max_value=8),
    reserve=st.integers(min_value=0, max_value=50),
    overhead=st.integers(min_value=0, max_value=6),
    fraction=st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
)
def test_property_fits_or_raises(
    system: ChatMessage | None,
    history: list[ChatMessage],
    new: list[ChatMessage],
    budget: int,
    anchor: int,
    tail: int,
    reserve: int,
    overhead: int,
    fraction: float,
) -> None:
    """For any history and budget: either ContextTooLarge, or a result within budget with the
    system prompt first, the new messages last verbatim, and verbatim history as a prefix and
    suffix of the original around at most one summary."""
    policy = CompactionPolicy(
        anchor_turns=anchor,
        tail_turns=tail,
        reserve_answer_tokens=reserve,
        per_message_overhead_tokens=overhead,
        per_request_overhead_tokens=overhead,
        summary_max_fraction=fraction,
    )
    head = [system] if system else []
    try:
        result = compact(system, history, new, budget_tokens=budget, count=words, policy=policy)
    except ContextTooLarge:
        assert cost([*head, *new], words, policy) > budget - reserve
        return
    again = compact(system, history, new, budget_tokens=budget, count=words, policy=policy)
    assert again == result
    msgs = list(result.messages)
    assert result.tokens_after == cost(msgs, words, policy) <= budget - reserve
    assert msgs[: len(head)] == head
    assert msgs[len(msgs) - len(new) :] == new
    middle = msgs[len(head) : len(msgs) - len(new)]
    if not result.compacted:
        assert middle == history
        return
    summaries = [i for i, m in enumerate(middle) if m.content.startswith(SUMMARY_PREFIX)]
    assert len(summaries) <= 1
    verbatim = [m for m in middle if not m.content.startswith(SUMMARY_PREFIX)]
    # The verbatim history is an anchor (a prefix) then a tail (a suffix); the summary, when
    # there is one, sits between them.
    cuts = [summaries[0]] if summaries else range(len(verbatim) + 1)
    assert any(
        verbatim[:cut] == history[:cut]
        and verbatim[cut:] == history[len(history) - (len(verbatim) - cut) :]
        and cut <= anchor
        and len(verbatim) - cut <= tail
        for cut in cuts
    )
    assert result.dropped_turns == len(history) - len(verbatim)


# --- the session store --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def msg(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def test_store_evicts_least_recently_used() -> None:
    """Beyond max_sessions the least recently used session (reads count as use) is evicted."""
    store = SessionStore(max_sessions=2, clock=FakeClock())
    store.append("a", [msg("1")])
    store.append("b", [msg("2")])
    assert store.history("a") == (msg("1"),)
    store.append("c", [msg("3")])
    assert len(store) == 2
    assert store.history("b") == ()
    assert store.history("a") == (msg("1"),)
    assert store.history("c") == (msg("3"),)


def test_store_keeps_only_the_newest_turns() -> None:
    """A session holds at most max_turns messages, dropping the oldest."""
    store = SessionStore(max_turns=3, clock=FakeClock())
    store.append("s", [msg("1"), msg("2")])
    store.append("s", [msg("3"), msg("4"), msg("5")])
    assert store.history("s") == (msg("3"), msg("4"), msg("5"))


def test_store_expires_idle_sessions() -> None:
    """A session idle for longer than ttl_s (by the injected clock) is gone; use refreshes it."""
    clock = FakeClock()
    store = SessionStore(ttl_s=60, clock=clock)
    store.append("s", [msg("1")])
    store.append("t", [msg("2")])
    clock.now += 50
    assert store.history("s") == (msg("1"),)
    clock.now += 50
    assert store.history("s") == (msg("1"),)
    assert store.history("t") == ()
    clock.now += 61
    assert store.history("s") == ()
    assert len(store) == 0


def test_store_forget_and_empty_append() -> None:
    """forget drops a session, and appending nothing does not create one."""
    store = SessionStore(clock=FakeClock())
    store.append("s", [msg("1")])
    store.forget("s")
    store.forget("never-existed")
    assert store.history("s") == ()
    store.append("e", [])
    assert len(store) == 0


def test_store_thread_safety_smoke() -> None:
    """Several threads appending concurrently lose no messages and keep each session's order."""
    store = SessionStore(max_turns=10_000)
    threads_n, per_thread = 8, 200

    def work(n: int) -> None:
        for i in range(per_thread):
            store.append(f"own-{n}", [msg(str(i))])
            store.append("shared", [msg(f"{n}:{i}")])
            store.history("shared")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(threads_n):
        assert store.history(f"own-{n}") == tuple(msg(str(i)) for i in range(per_thread))
    shared = [m.content for m in store.history("shared")]
    assert len(shared) == threads_n * per_thread
    for n in range(threads_n):
        mine = [int(c.split(":")[1]) for c in shared if c.startswith(f"{n}:")]
        assert mine == list(range(per_thread))


@pytest.mark.parametrize(
    "value", ["a", "abc-123", "A.b_c:d-e", "0" * 128, "550e8400-e29b-41d4-a716-446655440000"]
)
def test_valid_session_ids_accepted(value: str) -> None:
    """Ids of 1-128 characters from [A-Za-z0-9._:-] are valid."""
    assert valid_session_id(value)


@pytest.mark.parametrize(
    "value", ["", "0" * 129, "a b", "a/b", "a\n", "é", "a;b", "../x", "id\x00"]
)
def test_invalid_session_ids_rejected(value: str) -> None:
    """Empty, overlong or out-of-alphabet ids are invalid, and the store refuses them."""
    assert not valid_session_id(value)
    store = SessionStore()
    with pytest.raises(ValueError, match="invalid session id"):
        store.append(value, [msg("x")])
    with pytest.raises(ValueError, match="invalid session id"):
        store.history(value)
