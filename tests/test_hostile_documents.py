"""JSON documents read from files or storage (manifests, TUF roots, image.json, model configs,
stored record bodies, structured answers) are bounded: hostile ones give a clear error."""

import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.images.manifest import MANIFEST, ImageError, parse_manifest
from controller.telemetry.fold import RawRecord, fold
from controller.telemetry.rollup import _decode
from controller.updates.errors import PublishError
from controller.updates.repository import MAX_ROOT_DRAFT_BYTES, read_root_draft
from edge_agent.attestation.measure import IMAGE_FILE, INVALID_IMAGE, image_id
from edge_agent.routing.cascade import schema_valid
from edge_agent.runtimes.base import RuntimeLoadError
from edge_agent.runtimes.ort_genai import OrtGenaiRuntime
from edge_agent.updates.client import UPDATER_CONFIG, read_trusted_root
from edge_agent.updates.decisions import UpdateError
from shared.telemetry_windows import DRIFT_WINDOW, INFERENCE_WINDOW, SYSTEM

DEEP = b"[" * 3000 + b"]" * 3000
DEEP_OBJECT = b'{"a":' * 3000 + b"1" + b"}" * 3000

# name -> bytes: the hostile JSON documents every file reader below is fed.
HOSTILE_JSON: dict[str, bytes] = {
    "3000-deep array": DEEP,
    "3000-deep object": DEEP_OBJECT,
    "not UTF-8": b'{"a": "\xff\xfe"}',
    "NaN": b'{"a": NaN}',
    "1e400": b'{"a": 1e400}',
    "truncated": b'{"signed": {',
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_manifests_are_image_errors(case: str) -> None:
    """A hostile manifest.json is an ImageError naming the manifest, not a RecursionError."""
    with pytest.raises(ImageError, match=MANIFEST):
        parse_manifest(HOSTILE_JSON[case])


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_trusted_roots_are_update_errors(tmp_path: Path, case: str) -> None:
    """A device's trusted root file that is hostile JSON is an UpdateError naming the file,
    raised before python-tuf parses it."""
    path = tmp_path / "tuf-root.json"
    path.write_bytes(HOSTILE_JSON[case])
    with pytest.raises(UpdateError, match=str(path)):
        read_trusted_root(path)


def test_oversized_and_non_tuf_trusted_roots_are_refused(tmp_path: Path) -> None:
    """A root larger than ngclient's root limit, or JSON without 'signed', is refused."""
    path = tmp_path / "tuf-root.json"
    path.write_bytes(b'{"signed": {}, "pad": "' + b"x" * UPDATER_CONFIG.root_max_length + b'"}')
    with pytest.raises(UpdateError, match="oversized"):
        read_trusted_root(path)
    path.write_bytes(b'{"signatures": []}')
    with pytest.raises(UpdateError, match="not TUF metadata"):
        read_trusted_root(path)


def test_updater_lengths_are_bounded() -> None:
    """Every metadata length python-tuf downloads has an explicit, finite bound."""
    lengths = [
        UPDATER_CONFIG.root_max_length,
        UPDATER_CONFIG.timestamp_max_length,
        UPDATER_CONFIG.snapshot_max_length,
        UPDATER_CONFIG.targets_max_length,
    ]
    assert all(0 < n <= 5_000_000 for n in lengths)
    assert 0 < UPDATER_CONFIG.max_root_rotations <= 32


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_image_json_measures_as_invalid(tmp_path: Path, case: str) -> None:
    """A flashed device's image.json that is hostile JSON measures as 'invalid', no crash."""
    path = tmp_path / IMAGE_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(HOSTILE_JSON[case])
    assert image_id(tmp_path) == INVALID_IMAGE


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_genai_config_is_a_load_error(tmp_path: Path, case: str) -> None:
    """A model archive's hostile genai_config.json is a RuntimeLoadError naming the file."""
    (tmp_path / "genai_config.json").write_bytes(HOSTILE_JSON[case])
    with pytest.raises(RuntimeLoadError, match=r"genai_config\.json"):
        OrtGenaiRuntime("m", tmp_path)


def test_hostile_root_drafts_are_publish_errors(tmp_path: Path) -> None:
    """A root draft brought back from offline signing that is deep or oversized is a
    PublishError naming the file."""
    path = tmp_path / "root-draft.json"
    path.write_bytes(DEEP)
    with pytest.raises(PublishError, match="not TUF metadata"):
        read_root_draft(path)
    path.write_bytes(b" " * (MAX_ROOT_DRAFT_BYTES + 1))
    with pytest.raises(PublishError, match="larger than"):
        read_root_draft(path)


NOT_JSON_TEXT = sorted(set(HOSTILE_JSON) - {"not UTF-8"})  # as text, that one is valid JSON


@pytest.mark.parametrize("case", NOT_JSON_TEXT)
def test_hostile_structured_answers_are_invalid(case: str) -> None:
    """A model answer of hostile JSON is judged not schema-valid instead of raising."""
    text = HOSTILE_JSON[case].decode("utf-8", "replace")
    assert schema_valid(text, {"type": "object"}) is False


@pytest.mark.parametrize("case", NOT_JSON_TEXT)
def test_hostile_stored_bodies_decode_to_nothing(case: str) -> None:
    """A stored record body that is hostile JSON decodes to None (counted as malformed)."""
    assert _decode(HOSTILE_JSON[case].decode("utf-8", "replace")) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)
window_keys = st.sampled_from(
    ["start", "window_s", "groups", "tier", "count", "latency_ms", "model", "kind", "features",
     "classes", "cpu_percent", "task_class", "version"]
)  # fmt: skip
window_like = st.recursive(
    json_values,
    lambda children: st.dictionaries(window_keys, children, max_size=6),
    max_leaves=40,
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@given(st.lists(st.tuples(st.sampled_from([INFERENCE_WINDOW, DRIFT_WINDOW, SYSTEM]), window_like)))
def test_fold_counts_any_body_as_folded_or_malformed(records: list[tuple[str, Any]]) -> None:
    """Whatever bodies stored records hold, the rollup fold never raises: each record is
    either folded or counted as malformed."""
    raw = [
        RawRecord(i, "d-1", name, NOW - timedelta(minutes=1), body, NOW)
        for i, (name, body) in enumerate(records)
    ]
    out = fold(raw)
    assert out.folded + sum(out.malformed.values()) == len(raw)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_manifest_parser_raises_only_image_error(data: bytes) -> None:
    """Random bytes as manifest.json raise ImageError and nothing else."""
    with pytest.raises(ImageError):
        parse_manifest(data)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(json_values)
def test_trusted_root_reader_raises_only_update_error(tmp_path: Path, value: Any) -> None:
    """Any JSON document (or none) as a trusted root is returned or an UpdateError."""
    path = tmp_path / "root.json"
    path.write_text(json.dumps(value))
    with contextlib.suppress(UpdateError):
        assert read_trusted_root(path) == path.read_bytes()
