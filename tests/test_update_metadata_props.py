"""The agent's readers of controller-supplied documents (a target's custom metadata, the
desired ``model`` value, a whole desired document) raise only their own errors, whatever
the document holds."""

import contextlib
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edge_agent.shadow import evaluate
from edge_agent.updates.decisions import (
    DesiredModel,
    DeviceFacts,
    UpdateError,
    check_compatibility,
    parse_desired_model,
    parse_target_meta,
    version_key,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["llama.cpp", "ort-genai", "onnx", "tiny", "1.2.3", "9" * 5000, "x86-cpu"]),
)
meta_keys = st.sampled_from(
    ["model", "version", "runtime", "quantization", "device_classes", "min_agent_version",
     "expected_latency_ms", "name", "target", "rollout", "factory", "edgefleet"]
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(meta_keys, children, max_size=6)
    ),
    max_leaves=30,
)
DEVICE = DeviceFacts(device_class="x86-cpu", agent_version="0.1.0", runtimes=("llama.cpp",))
DESIRED = DesiredModel(name="tiny", target="tiny/1.2.3/tiny.gguf", version="1.2.3", rollout=None)


@given(documents)
@example(
    {"model": "tiny", "version": "1.2.3", "runtime": "llama.cpp", "min_agent_version": "9" * 5000}
)
def test_target_metadata_raises_only_update_errors(custom: Any) -> None:
    """Any custom metadata either parses and is checked for compatibility, or is refused
    with an UpdateError; nothing else escapes (a 5,000-digit version included)."""
    try:
        meta = parse_target_meta({"edgefleet": custom})
        check_compatibility(meta, desired=DESIRED, configured_runtime="llama.cpp", device=DEVICE)
    except UpdateError:
        pass


@given(documents)
def test_desired_model_raises_only_value_errors(value: Any) -> None:
    """Any desired ``model`` value is a model, the factory marker, None or a ValueError."""
    with contextlib.suppress(ValueError):
        parse_desired_model(value)


SETTINGS = ["model", "labels", "quarantine", "heartbeat_interval_s", "telemetry_interval_s", "x"]


@given(st.dictionaries(st.sampled_from(SETTINGS), documents, max_size=6))
def test_any_desired_document_is_applied_or_rejected_per_key(desired: dict[str, Any]) -> None:
    """Every key of any desired document ends up either a setting or a rejection, never an
    exception out of evaluate."""
    applied = evaluate(desired, {"heartbeat_interval_s": 15.0})
    for key in desired:
        assert key in applied.rejected or key in applied.settings


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1.2.0", (1, 2)), ("v2", (2,)), ("1.10.0rc1", (1, 10)), ("9" * 5000, ())],
    ids=["plain", "v-prefix", "pre-release", "5000-digits"],
)
def test_version_keys(version: str, expected: tuple[int, ...]) -> None:
    """Release segments are compared numerically; a segment too long to be a version
    number counts as none (it used to raise ValueError from int())."""
    assert version_key(version) == expected
