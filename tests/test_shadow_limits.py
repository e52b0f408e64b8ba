"""Shadow merge patches are bounded: hostile patches raise ShadowError, merges never recurse."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.db import session_scope
from controller.devices.tables import Device
from shared.messages import Desired, decode_message, encode_message
from shared.shadow import (
    MAX_SHADOW_BYTES,
    MAX_SHADOW_DEPTH,
    MAX_SHADOW_ELEMENTS,
    ShadowError,
    check_document,
    delta,
    merge_patch,
)
from tests.access_world import access_world


def nested(depth: int) -> dict[str, Any]:
    """``{"k": {"k": ... {}}}`` holding ``depth`` objects, built without recursion."""
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"k": doc}
    return doc


def nested_list(depth: int) -> list[Any]:
    """``[[...[]...]]`` holding ``depth`` lists, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


# name -> (document, patch, reason): ways a PATCH body could break the shadow or the device.
HOSTILE: dict[str, tuple[dict[str, Any], Any, str]] = {
    "patch 3000 deep": ({}, nested(3000), "too_deep"),
    "patch one past the limit": ({}, nested(MAX_SHADOW_DEPTH + 1), "too_deep"),
    "deep list in a patch": ({}, {"a": nested_list(40)}, "too_deep"),
    "many elements": ({}, {"a": list(range(MAX_SHADOW_ELEMENTS + 1))}, "too_many_elements"),
    "larger than a message": ({}, {"a": "x" * MAX_SHADOW_BYTES}, "too_large"),
    "grows past the size": ({"a": "x" * (MAX_SHADOW_BYTES - 100)}, {"b": "y" * 200}, "too_large"),
    "infinity": ({}, {"a": float("inf")}, "not_json"),
    "nan": ({}, {"a": float("nan")}, "not_json"),
    "NUL character": ({}, {"a": "x\x00y"}, "nul_character"),
    "not an object": ({}, ["a"], "not_object"),
    "python object": ({}, {"a": object()}, "not_json"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_patches_raise_shadow_error(case: str) -> None:
    """Each hostile patch raises ShadowError with its reason and leaves the document as is."""
    document, patch, reason = HOSTILE[case]
    before = repr(document)
    with pytest.raises(ShadowError) as caught:
        merge_patch(document, patch)
    assert caught.value.reason == reason
    assert repr(document) == before


def test_a_document_at_the_limits_merges_and_travels() -> None:
    """A merged document at the depth limit still fits a desired message the device decodes."""
    merged = merge_patch({}, nested(MAX_SHADOW_DEPTH))
    message = Desired(device_id="d-1", version=1, state=merged)
    topic, payload = encode_message(message)
    assert decode_message(topic, payload)[1] == message


def test_delta_of_documents_3000_deep_does_not_recurse() -> None:
    """delta walks iteratively: documents nested far past any limit compare without error."""
    deep_a, deep_b = nested(3000), nested(3000)
    assert delta(deep_a, deep_b) == {}
    assert delta({"x": deep_a}, {}) == {"x": deep_a}


def reference_merge(document: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396 written the recursive way, to compare the iterative merge against."""
    result = dict(document)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            result[key] = reference_merge(current if isinstance(current, dict) else {}, value)
        else:
            result[key] = value
    return result


def reference_delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    """The delta written the recursive way, to compare the iterative one against."""
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = reference_delta(want, have)
            if sub:
                out[key] = sub
        elif key not in reported or have != want:
            out[key] = want
    return out


keys = st.sampled_from(["a", "b", "c", "model", "labels"])
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_characters="\x00"), max_size=5),
)
json_docs = st.recursive(
    st.dictionaries(keys, leaves, max_size=4),
    lambda children: st.dictionaries(
        keys, st.one_of(leaves, children, st.lists(leaves, max_size=3)), max_size=4
    ),
    max_leaves=25,
)
any_values = st.recursive(
    leaves | st.just(float("inf")) | st.just(float("nan")) | st.just("\x00"),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=40,
)


@given(json_docs, json_docs)
def test_merge_matches_the_recursive_rfc_7396(
    document: dict[str, Any], patch: dict[str, Any]
) -> None:
    """Within the limits the iterative merge gives what the recursive RFC 7396 merge gives."""
    document = reference_merge({}, document)  # stored documents hold no nulls
    assert merge_patch(document, patch) == reference_merge(document, patch)


@given(json_docs, json_docs)
def test_merge_is_idempotent_and_does_not_mutate(
    document: dict[str, Any], patch: dict[str, Any]
) -> None:
    """Merging a patch twice equals merging it once, and neither input is changed."""
    before_doc, before_patch = repr(document), repr(patch)
    once = merge_patch(document, patch)
    assert merge_patch(once, patch) == once
    assert (repr(document), repr(patch)) == (before_doc, before_patch)


@given(json_docs, json_docs)
def test_delta_matches_the_recursive_delta(
    desired: dict[str, Any], reported: dict[str, Any]
) -> None:
    """The iterative delta gives what the recursive delta gives."""
    assert delta(desired, reported) == reference_delta(desired, reported)


@settings(max_examples=200)
@given(st.dictionaries(keys, any_values, max_size=4), any_values)
def test_merge_raises_only_shadow_error_and_results_are_bounded(
    document: dict[str, Any], patch: Any
) -> None:
    """Any patch either merges into a document within every limit or raises ShadowError."""
    try:
        merged = merge_patch(document, patch)
    except ShadowError:
        return
    check_document(merged, "merged document")  # raises if the result broke a limit


@settings(deadline=None, max_examples=25)
@given(st.integers(MAX_SHADOW_DEPTH + 1, 5000))
def test_any_depth_past_the_limit_is_too_deep(depth: int) -> None:
    """A patch of any depth past the limit is too_deep, never a RecursionError."""
    with pytest.raises(ShadowError) as caught:
        merge_patch({}, nested(depth))
    assert caught.value.reason == "too_deep"


def test_api_answers_422_for_a_patch_past_the_shadow_limits(tmp_path: Path) -> None:
    """PATCH .../shadow/desired with a patch deeper than the shadow holds (but within the
    body guard's limits) is 422 saying why, the desired version does not move, and a good
    patch still applies."""
    with access_world(tmp_path) as world:
        with session_scope(world.engine) as session:
            session.add(Device(id="dev-1"))
        client = world.client()
        url = "/api/devices/dev-1/shadow/desired"
        headers = world.bearer("operator")
        good = client.patch(url, json={"labels": {"site": "a"}}, headers=headers)
        assert good.status_code == 200 and good.json()["desired_version"] == 1
        deep = client.patch(url, json={"labels": nested(MAX_SHADOW_DEPTH + 2)}, headers=headers)
        assert deep.status_code == 422, deep.text
        assert "shadow patch refused: too_deep" in deep.text
        after = client.get("/api/devices/dev-1/shadow", headers=headers).json()
        assert after["desired_version"] == 1 and after["desired"] == {"labels": {"site": "a"}}


def test_cli_set_value_nested_too_deep_is_refused_without_traceback() -> None:
    """`edgefleet devices desire DEV --set k=<3000-deep JSON>` exits 2 naming the problem,
    before contacting any controller."""
    deep = "k=" + "[" * 3000
    argv = ["devices", "desire", "dev-1", "--set", deep, "--url", "http://127.0.0.1:9"]
    result = subprocess.run(
        [sys.executable, "-m", "controller", *argv, "--token", "t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--set k: nested deeper than" in result.stderr
    assert "Traceback" not in result.stderr
