"""Reversible redaction's pure parts (edge_agent/routing/redaction.py), the sensitivity floor
in the policy, the X-Redact header, the new config keys and the session's placeholder map."""

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_agent.config import AgentConfig, RoutingConfig
from edge_agent.routing.context import SessionStore
from edge_agent.routing.headers import parse_route_headers
from edge_agent.routing.policy import RouteHints, Rule, TierView, decide
from edge_agent.routing.redaction import (
    PLACEHOLDER_TYPES,
    PlaceholderMap,
    RedactionRefused,
    StreamRestorer,
    redaction_blocker,
)
from edge_agent.routing.sensitivity import CATEGORY_LEVELS, Finding, Level

UP = {name: TierView(name, True) for name in ("local", "private", "cloud")}


def find(text: str, value: str, category: str, message: int = 0) -> Finding:
    """The finding of ``value``'s first occurrence in ``text``."""
    start = text.index(value)
    return Finding(category, start, start + len(value), message)


# --- redaction and restoring ------------------------------------------------------------
def test_each_category_gets_its_typed_numbered_placeholder() -> None:
    """Every redactable category is replaced by [TYPE_N], numbered per type from 1."""
    text = "a@b.io, +44 20 7946 0958, c@d.io, Jane Roe, DE89370400440532013000"
    findings = [
        find(text, "a@b.io", "email"),
        find(text, "+44 20 7946 0958", "phone"),
        find(text, "c@d.io", "email"),
        find(text, "Jane Roe", "person_name"),
        find(text, "DE89370400440532013000", "iban"),
    ]
    redacted = PlaceholderMap().redact([text], findings)
    assert redacted.texts == ("[EMAIL_1], [PHONE_1], [EMAIL_2], [PERSON_1], [IBAN_1]",)
    assert redacted.counts == {"email": 2, "phone": 1, "person_name": 1, "iban": 1}
    assert redacted.total == 5


def test_the_same_value_gets_the_same_placeholder_across_messages_and_calls() -> None:
    """A repeated value is one placeholder, in every message and in later calls on the map."""
    placeholders = PlaceholderMap()
    first = ["mail x@y.org", "again x@y.org and z@y.org"]
    redacted = placeholders.redact(
        first,
        [
            find(first[0], "x@y.org", "email", 0),
            find(first[1], "x@y.org", "email", 1),
            find(first[1], "z@y.org", "email", 1),
        ],
    )
    assert redacted.texts == ("mail [EMAIL_1]", "again [EMAIL_1] and [EMAIL_2]")
    later = ["z@y.org first now"]
    assert placeholders.redact(later, [find(later[0], "z@y.org", "email")]).texts == (
        "[EMAIL_2] first now",
    )
    assert len(placeholders) == 2


def test_restore_puts_back_issued_placeholders_and_leaves_every_other_one() -> None:
    """An echoed placeholder is restored (each time it appears); never-issued, lower-case or
    spaced look-alikes are left exactly as they are."""
    placeholders = PlaceholderMap()
    text = "call +1 202 555 0143"
    placeholders.redact([text], [find(text, "+1 202 555 0143", "phone")])
    answer = "Call [PHONE_1]. [PHONE_1]! Not [PHONE_2], [phone_1], [PHONE 1], [PHONE_01], [PHONE_1"
    assert placeholders.restore(answer) == (
        "Call +1 202 555 0143. +1 202 555 0143! Not [PHONE_2], [phone_1], [PHONE 1], "
        "[PHONE_01], [PHONE_1"
    )


def test_a_value_found_once_is_replaced_wherever_it_appears_whole() -> None:
    """An occurrence the detector did not report (its context differed) is replaced too, in
    every message and in later calls of a session's map; a value inside a longer word or
    number is not."""
    placeholders = PlaceholderMap()
    texts = ["call +49 30 2318 4467 today", "Noted: +49 30 2318 4467.", "x+49 30 2318 44671"]
    redacted = placeholders.redact(texts, [find(texts[0], "+49 30 2318 4467", "phone")])
    assert redacted.texts == ("call [PHONE_1] today", "Noted: [PHONE_1].", texts[2])
    assert redacted.counts == {"phone": 2}
    later = ["Jo Li asked; Jo Li again", "Jo Lisa is someone else"]
    again = placeholders.redact(
        [*later, "+49 30 2318 4467"], [find(later[0], "Jo Li", "person_name")]
    )
    assert again.texts == ("[PERSON_1] asked; [PERSON_1] again", later[1], "[PHONE_1]")


def test_known_values_are_findings_wherever_they_appear() -> None:
    """A session's map reports whole occurrences of its values as findings (what keeps a
    later request restricted when the detector does not see them there); none when empty."""
    placeholders = PlaceholderMap()
    assert placeholders.findings(["Maria Garcia"]) == ()
    text = "Call Maria Garcia at +49 30 2318 4467."
    placeholders.redact([text], [find(text, "Maria Garcia", "person_name")])
    later = ["Agenda", "Bring cake for Maria Garcia; not for Maria Garcias."]
    assert placeholders.findings(later) == (find(later[1], "Maria Garcia", "person_name", 1),)


def test_a_placeholder_the_user_typed_is_never_issued() -> None:
    """Numbers that already appear literally in the conversation are skipped, so restoring
    cannot turn the user's own text into someone's data."""
    text = "Use [EMAIL_1] as a template field; send it to ann@x.org"
    placeholders = PlaceholderMap()
    redacted = placeholders.redact([text], [find(text, "ann@x.org", "email")])
    assert redacted.texts == ("Use [EMAIL_1] as a template field; send it to [EMAIL_2]",)
    assert placeholders.restore(redacted.texts[0]) == text


def test_overlapping_findings_become_one_placeholder_of_the_longest() -> None:
    """Overlapping spans are merged; the placeholder's type is that of the longest finding."""
    text = "Ship to Jane Roe, 12 High Street, Leeds"
    address = "Jane Roe, 12 High Street, Leeds"
    findings = [find(text, "Jane Roe", "person_name"), find(text, address, "street_address")]
    placeholders = PlaceholderMap()
    redacted = placeholders.redact([text], findings)
    assert redacted.texts == ("Ship to [ADDRESS_1]",)
    assert placeholders.restore(redacted.texts[0]) == text


def test_only_redactable_findings_are_replaced() -> None:
    """Internal findings stay in the text (they keep the request internal)."""
    text = "host build.corp, mail a@b.io"
    findings = [find(text, "build.corp", "internal_host"), find(text, "a@b.io", "email")]
    assert PlaceholderMap().redact([text], findings).texts == ("host build.corp, mail [EMAIL_1]",)


def test_a_span_outside_its_text_or_a_full_map_refuses() -> None:
    """Findings that do not fit their text, or more values than the map holds, refuse."""
    with pytest.raises(RedactionRefused):
        PlaceholderMap().redact(["short"], [Finding("email", 2, 40)])
    with pytest.raises(RedactionRefused):
        PlaceholderMap().redact(["short"], [Finding("email", 0, 2, message=3)])
    text = "a@b.io c@d.io"
    small = PlaceholderMap(max_entries=1)
    with pytest.raises(RedactionRefused):
        small.redact([text], [find(text, "a@b.io", "email"), find(text, "c@d.io", "email")])


def test_the_map_never_shows_its_values() -> None:
    """repr (what a log line or a traceback would show) has counts only."""
    placeholders = PlaceholderMap()
    placeholders.redact(["a@b.io"], [Finding("email", 0, 6)])
    assert "a@b.io" not in repr(placeholders) and "1" in repr(placeholders)


def test_blocker_names_what_keeps_a_request_local() -> None:
    """Credentials, private keys and health data, unknown categories and uncertain findings
    block redaction; redactable and internal findings do not."""
    assert redaction_blocker([Finding("email", 0, 1), Finding("internal_host", 2, 3)]) is None
    for category in ("password", "api_token", "aws_access_key", "jwt", "private_key"):
        assert redaction_blocker([Finding(category, 0, 1)]) == f"not_redactable:{category}"
    assert redaction_blocker([Finding("connection_string", 0, 1)]) is not None
    assert redaction_blocker([Finding("health", 0, 1)]) == "not_redactable:health"
    assert redaction_blocker([Finding("employee_id", 0, 1)]) == "not_redactable:employee_id"
    assert redaction_blocker([Finding("phone", 0, 1, certain=False)]) == "uncertain:phone"


def test_every_restricted_category_is_decided() -> None:
    """Each built-in restricted category is either redactable or blocks redaction: a new
    category cannot slip through unnoticed."""
    for category, level in CATEGORY_LEVELS.items():
        if level is Level.RESTRICTED:
            blocked = redaction_blocker([Finding(category, 0, 1)]) is not None
            assert blocked != (category in PLACEHOLDER_TYPES), category


# Texts rich in brackets, capitals, underscores and digits: placeholder look-alikes.
_TEXT = st.text(alphabet="[]EMAILPHONE_0123 ab@.\n", max_size=60)


@st.composite
def _texts_and_findings(draw: st.DrawFn) -> tuple[list[str], list[Finding]]:
    texts = draw(st.lists(_TEXT, min_size=1, max_size=4))
    findings: list[Finding] = []
    for index, text in enumerate(texts):
        if not text:
            continue
        for _ in range(draw(st.integers(0, 4))):
            start = draw(st.integers(0, len(text) - 1))
            end = draw(st.integers(start + 1, len(text)))
            category = draw(st.sampled_from([*PLACEHOLDER_TYPES, "internal_host"]))
            findings.append(Finding(category, start, end, index))
    return texts, findings


@settings(max_examples=300, deadline=None)
@given(_texts_and_findings(), _texts_and_findings())
def test_restore_of_redact_is_the_original_for_any_text_and_findings(
    first: tuple[list[str], list[Finding]], second: tuple[list[str], list[Finding]]
) -> None:
    """For any texts (look-alike placeholders included) and any findings, overlapping or
    not, restoring a redacted text gives the original back, message by message, also on
    the second request of a session's map (earlier values swept into it; texts that hold a
    placeholder the map already issued are left out, as those refer to its value)."""
    placeholders = PlaceholderMap()
    for texts, findings in (first, second):
        assume(all(placeholders.restore(t) == t for t in texts))
        redacted = placeholders.redact(texts, findings)
        assert [placeholders.restore(t) for t in redacted.texts] == texts


# --- streams -------------------------------------------------------------------------
def _issued() -> PlaceholderMap:
    placeholders = PlaceholderMap()
    text = "a@b.io +44 20 7946 0958 Jane Roe"
    placeholders.redact(
        [text],
        [
            find(text, "a@b.io", "email"),
            find(text, "+44 20 7946 0958", "phone"),
            find(text, "Jane Roe", "person_name"),
        ],
    )
    return placeholders


def _stream(restorer: StreamRestorer, pieces: list[str]) -> str:
    return "".join(restorer.feed(p) for p in pieces) + restorer.flush()


def test_a_placeholder_split_across_chunks_is_restored() -> None:
    """[PH|ONE_|1] arrives in three chunks and leaves as the phone number; a held-back
    prefix that turns out to be no placeholder goes out unchanged."""
    placeholders = _issued()
    restorer = placeholders.restorer()
    assert restorer.feed("Call [PH") == "Call "
    assert restorer.feed("ONE_") == ""
    assert restorer.feed("1] now") == "+44 20 7946 0958 now"
    assert restorer.feed(" see [EMA") == " see "
    assert restorer.feed("x]") == "[EMAx]"
    assert restorer.feed(" tail [EMAIL_1") == " tail "
    assert restorer.flush() == "[EMAIL_1"


_ANSWER_PART = st.sampled_from(
    ["[EMAIL_1]", "[PHONE_1]", "[PERSON_1]", "[EMAIL_2]", "[email_1]", "[EMAIL 1]", "[", "]"]
) | st.text(alphabet="[]EMAIL_12 x", max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ANSWER_PART, max_size=12), st.data())
def test_any_chunking_of_an_answer_restores_as_the_whole_answer(
    parts: list[str], data: st.DataObject
) -> None:
    """However an answer is cut into chunks, the restorer's output joined is restore(answer)."""
    answer = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(answer)), max_size=10)))
    pieces = [answer[a:b] for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True)]
    placeholders = _issued()
    assert _stream(placeholders.restorer(), pieces) == placeholders.restore(answer)


def test_held_back_text_is_bounded() -> None:
    """A stream of brackets and capitals never holds back more than one placeholder's length."""
    restorer = _issued().restorer()
    sent = "".join(restorer.feed(c) for c in "[ABCDEFGHIJ_123456789]" * 3)
    assert len(sent) >= 3 * 22 - 16


# --- the floor and the header ----------------------------------------------------------
def test_the_floor_raises_every_request_and_says_so() -> None:
    """minimum internal keeps a public request off the cloud, with floor: reasons; a request
    already at or above the floor keeps its sensitivity: reasons."""
    rules = [Rule("planning", "cloud")]
    hints = RouteHints(task_class="planning")
    public = decide(Level.PUBLIC, hints, UP, rules, floor=Level.INTERNAL)
    assert public.level is Level.INTERNAL and "cloud" not in public.plan
    assert public.reason == "rule_blocked:floor:internal"
    assert dict(public.excluded)["cloud"] == "floor:internal"
    restricted = decide(Level.RESTRICTED, hints, UP, rules, floor=Level.INTERNAL)
    assert restricted.reason == "rule_blocked:sensitivity:restricted"
    everything = decide(Level.PUBLIC, RouteHints(), UP, floor=Level.RESTRICTED)
    assert (everything.plan, everything.reason) == (("local",), "floor:restricted")
    assert decide(Level.PUBLIC, hints, UP, rules).plan[0] == "cloud"


def test_x_redact_parses_strictly() -> None:
    """X-Redact is true, false or absent (None: the config decides); anything else is refused."""
    assert parse_route_headers({"x-redact": "true"}).redact is True
    assert parse_route_headers({"x-redact": " FALSE "}).redact is False
    assert parse_route_headers({}).redact is None
    with pytest.raises(ValueError, match="X-Redact must be true or false"):
        parse_route_headers({"x-redact": "maybe"})


# --- configuration ---------------------------------------------------------------------
def test_config_accepts_the_new_keys_and_explains_bad_values() -> None:
    """routing.redact.task_classes and routing.sensitivity.minimum load; a bad class, an
    unknown level or an unknown key is refused naming the key."""
    config = RoutingConfig.model_validate(
        {"redact": {"task_classes": ["planning"]}, "sensitivity": {"minimum": "internal"}}
    )
    assert config.redact.task_classes == ["planning"]
    assert config.sensitivity.minimum == "internal"
    assert RoutingConfig().sensitivity.minimum == "public"
    with pytest.raises(ValidationError) as bad_level:
        AgentConfig.model_validate(
            {"device_id": "d1", "routing": {"sensitivity": {"minimum": "secret"}}}
        )
    message = str(bad_level.value)
    assert "routing.sensitivity.minimum" in message
    assert re.search(r"'public', 'internal' or 'restricted'", message), message
    with pytest.raises(ValidationError, match=r"redact\.task_classes\.0"):
        RoutingConfig.model_validate({"redact": {"task_classes": ["Planning!"]}})
    with pytest.raises(ValidationError, match=r"redact\.classes"):
        RoutingConfig.model_validate({"redact": {"classes": ["planning"]}})


# --- the session's map -------------------------------------------------------------------
def test_a_session_keeps_its_map_and_drops_it_with_the_session() -> None:
    """The same session gets the same map; forget and expiry drop it (a new one is empty);
    asking for an existing map creates none."""
    now = [0.0]
    store = SessionStore(ttl_s=10, clock=lambda: now[0])
    assert store.existing_placeholders("s1") is None and len(store) == 0
    first = store.placeholders("s1")
    first.redact(["a@b.io"], [Finding("email", 0, 6)])
    assert store.placeholders("s1") is first
    assert store.existing_placeholders("s1") is first
    assert store.placeholders("s2") is not first
    store.forget("s1")
    assert len(store.placeholders("s1")) == 0
    store.placeholders("s1").redact(["a@b.io"], [Finding("email", 0, 6)])
    now[0] = 100.0
    assert len(store.placeholders("s1")) == 0
