"""Shadow merge, delta and versioning: pure rules checked with properties."""

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.shadow import delta, is_newer, merge_patch

keys = st.sampled_from(["a", "b", "c", "d"])
# No NUL: shadow documents refuse it (PostgreSQL stores none; see test_shadow_limits.py).
leaves = st.one_of(
    st.integers(-5, 5),
    st.text(st.characters(blacklist_characters="\x00"), max_size=3),
    st.booleans(),
)
docs = st.recursive(
    st.dictionaries(keys, leaves, max_size=4),
    lambda children: st.dictionaries(keys, st.one_of(leaves, children), max_size=4),
    max_leaves=12,
)
patches = st.recursive(
    st.dictionaries(keys, st.one_of(leaves, st.none()), max_size=4),
    lambda children: st.dictionaries(keys, st.one_of(leaves, st.none(), children), max_size=4),
    max_leaves=12,
)


def test_merge_patch_follows_rfc_7396() -> None:
    """None deletes, objects merge recursively, scalars and lists replace."""
    doc = {"a": 1, "n": {"x": 1, "y": 2}, "l": [1]}
    assert merge_patch(doc, {"a": None, "n": {"y": None, "z": 3}, "l": [2]}) == {
        "n": {"x": 1, "z": 3},
        "l": [2],
    }
    assert doc == {"a": 1, "n": {"x": 1, "y": 2}, "l": [1]}, "inputs are not mutated"


@given(docs, patches)
def test_merging_the_same_patch_twice_changes_nothing(
    doc: dict[str, Any], patch: dict[str, Any]
) -> None:
    """Re-delivering a patch is harmless: merge is idempotent."""
    once = merge_patch(doc, patch)
    assert merge_patch(once, patch) == once


@given(docs, docs)
def test_applying_the_delta_converges(desired: dict[str, Any], reported: dict[str, Any]) -> None:
    """A device that applies the delta to what it reports leaves no delta behind."""
    assert delta(desired, merge_patch(reported, delta(desired, reported))) == {}
    assert delta(desired, desired) == {}


@given(st.lists(st.integers(1, 20), min_size=1, max_size=30))
def test_out_of_order_and_repeated_versions_end_at_the_newest(versions: list[int]) -> None:
    """Whatever order and repetition desired versions arrive in, the applied one is the max."""
    applied: int | None = None
    for version in versions:
        if is_newer(version, applied):
            applied = version
    assert applied == max(versions)
