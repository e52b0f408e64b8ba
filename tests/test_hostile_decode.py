"""The MQTT decoder against hostile bytes: it refuses with a reason and never raises anything
else, and what it accepts can always be stored (a message the database refuses would be a
poison message that fails its whole ingest batch)."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.canonical import canonical_json
from shared.errors import ProtocolError
from shared.json_guard import JsonShapeError, check_shape, loads_bounded
from shared.messages import (
    MAX_DOCUMENT_DEPTH,
    MAX_INT64,
    MAX_PAYLOAD_BYTES,
    TelemetryBatch,
    decode_message,
)
from shared.topics import MessageKind

TS = "2026-11-25T06:00:00+00:00"
KINDS = [k.value for k in MessageKind]


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def telemetry(body: str, *, seq: str = "0", at: str = TS, device: str = "dev-1") -> bytes:
    record = (
        f'{{"epoch":1,"seq":{seq},"kind":"metric","name":"inference","at":"{at}","body":{body}}}'
    )
    return (
        f'{{"v":1,"type":"telemetry","device_id":"{device}","ts":"{TS}","records":[{record}]}}'
    ).encode()


def heartbeat(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "type": "heartbeat",
        "device_id": "dev-1",
        "ts": TS,
        "bd_seq": 1,
        "seq": 1,
        "uptime_s": 1.0,
        "cpu_percent": 1.0,
        "memory_percent": 1.0,
        "requests_total": 0,
        "local_tier_healthy": True,
    }
    return {**doc, **overrides}


# Each hostile case: (topic, payload, the reason it must be refused with).
HOSTILE: dict[str, tuple[str, bytes, str]] = {
    "issue-19 repro: 3,000 levels of [ on heartbeat": (
        "ef/v1/dev-1/heartbeat",
        nested(3000).encode(),
        "too_deep",
    ),
    "3,000 levels of { inside a heartbeat": (
        "ef/v1/dev-1/heartbeat",
        json.dumps(heartbeat())
        .replace('"seq": 1', '"seq": ' + '{"a":' * 3000 + "1" + "}" * 3000)
        .encode(),
        "too_deep",
    ),
    "a record body nested past the document limit": (
        "ef/v1/dev-1/telemetry",
        telemetry('{"x":' + nested(MAX_DOCUMENT_DEPTH + 20) + "}"),
        "too_deep",
    ),
    "a record body nested one past the limit": (
        "ef/v1/dev-1/telemetry",
        telemetry('{"x":' + nested(MAX_DOCUMENT_DEPTH) + "}"),
        "schema",
    ),
    "a NUL character in a model name of a birth": (
        "ef/v1/dev-1/status",
        json.dumps(
            {
                "v": 1,
                "type": "birth",
                "device_id": "dev-1",
                "ts": TS,
                "bd_seq": 0,
                "agent_version": "1.0",
                "hardware": {
                    "device_class": "x86_64-cpu",
                    "arch": "x86_64",
                    "accelerator": "cpu",
                    "cpu_count": 2,
                    "memory_mb": 1024,
                },
                "models": [{"name": "m\x00", "runtime": "llama.cpp", "loaded": True}],
                "heartbeat_interval_s": 5,
            }
        ).encode(),
        "nul_character",
    ),
    "a NUL character in a reported rejection key": (
        "ef/v1/dev-1/reported",
        json.dumps(
            {
                "v": 1,
                "type": "reported",
                "device_id": "dev-1",
                "ts": TS,
                "version": 1,
                "applied_desired_version": 0,
                "state": {},
                "rejected": {"k\x00": "why"},
            }
        ).encode(),
        "nul_character",
    ),
    "a lone surrogate escape": (
        "ef/v1/dev-1/telemetry",
        telemetry('{"x":"\\ud800"}'),
        "bad_json",
    ),
    "a seq beyond a BIGINT": (
        "ef/v1/dev-1/telemetry",
        telemetry("{}", seq=str(MAX_INT64 + 1)),
        "schema",
    ),
    "an integer of 5,000 digits": (
        "ef/v1/dev-1/telemetry",
        telemetry('{"x":' + "9" * 5000 + "}"),
        "bad_json",
    ),
    "a time whose UTC value is before year 1": (
        "ef/v1/dev-1/telemetry",
        telemetry("{}", at="0001-01-01T00:00:00+05:00"),
        "schema",
    ),
    "NaN in a body": ("ef/v1/dev-1/telemetry", telemetry('{"x":NaN}'), "bad_json"),
    "-Infinity in a body": ("ef/v1/dev-1/telemetry", telemetry('{"x":-Infinity}'), "bad_json"),
    "1e400 in a body": ("ef/v1/dev-1/telemetry", telemetry('{"x":1e400}'), "bad_json"),
    "random bytes": ("ef/v1/dev-1/status", bytes(range(256)) * 4, "bad_json"),
    "one byte over the size limit": (
        "ef/v1/dev-1/heartbeat",
        b" " * (MAX_PAYLOAD_BYTES + 1),
        "oversized",
    ),
    "a controller-only kind from a device topic": (
        "ef/v1/dev-1/heartbeat",
        b'{"v":1,"type":"ack","device_id":"dev-1","ts":"' + TS.encode() + b'","epoch":1,'
        b'"first_seq":0,"hwm":0}',
        "wrong_type_for_topic",
    ),
    "a spoofed device id": (
        "ef/v1/dev-2/heartbeat",
        json.dumps(heartbeat()).encode(),
        "spoofed_device_id",
    ),
    "a topic with a wildcard": ("ef/v1/+/heartbeat", b"{}", "bad_topic"),
    "a topic of another protocol version": ("ef/v2/dev-1/heartbeat", b"{}", "bad_topic"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_each_hostile_payload_is_refused_with_its_reason(case: str) -> None:
    """Each named hostile payload raises ProtocolError with its own reason, never another error."""
    topic, payload, reason = HOSTILE[case]
    with pytest.raises(ProtocolError) as info:
        decode_message(topic, payload)
    assert info.value.reason == reason, str(info.value)
    assert str(info.value).startswith(reason)


def test_a_nul_inside_a_free_form_document_is_accepted() -> None:
    """Record bodies are stored as JSON text and their readers skip such records, so a NUL
    there does not cost the batch's other records; only typed fields refuse it."""
    _, message = decode_message("ef/v1/dev-1/telemetry", telemetry('{"x":"a\\u0000b"}'))
    assert isinstance(message, TelemetryBatch)
    assert message.records[0].body == {"x": "a\x00b"}


def test_a_body_at_the_depth_limit_is_accepted_and_re_encodes() -> None:
    """A body exactly at the document depth limit decodes and re-encodes (no downstream
    consumer of the canonical form can recurse out)."""
    body = '{"x":' + nested(MAX_DOCUMENT_DEPTH - 2) + "}"
    _, message = decode_message("ef/v1/dev-1/telemetry", telemetry(body))
    assert isinstance(message, TelemetryBatch)
    assert canonical_json(message.model_dump(mode="json"))


def test_an_unexpected_error_inside_decoding_becomes_a_malformed_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last-resort guard: any exception a decode step raises (a defect of ours, simulated
    here) is refused as ``malformed`` with the exception named, not raised to the caller."""
    import shared.messages as messages

    def broken(payload: bytes) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(messages, "_validate", broken)
    with pytest.raises(ProtocolError) as info:
        decode_message("ef/v1/dev-1/heartbeat", json.dumps(heartbeat()).encode())
    assert info.value.reason == "malformed"
    assert "RecursionError" in str(info.value)


topics = st.one_of(
    st.builds(
        "ef/v1/{}/{}".format,
        st.sampled_from(["dev-1", "dev-2", "x" * 70, "+", "#", ""]),
        st.sampled_from([*KINDS, "nope"]),
    ),
    st.text(max_size=80),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)


def _deep(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=st.binary(max_size=2048))
def test_arbitrary_bytes_on_any_topic_only_ever_raise_protocol_error(
    topic: str, payload: bytes
) -> None:
    """For any topic and any bytes, decoding returns a message or raises ProtocolError."""
    try:
        decode_message(topic, payload)
    except ProtocolError as e:
        assert e.reason and e.detail


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.dictionaries(st.text(max_size=8), json_values, max_size=6),
    depth=st.integers(min_value=0, max_value=60),
)
def test_any_json_body_is_accepted_bounded_or_refused_with_a_reason(
    body: dict[str, Any], depth: int
) -> None:
    """A telemetry body of any JSON (any depth, NaN, huge numbers, odd strings) is either
    refused with ProtocolError or accepted within the depth limit and re-encodable."""
    doc = {"x": _deep(body, depth)}
    try:
        text = json.dumps(doc, allow_nan=True)
    except (ValueError, RecursionError):
        return
    try:
        _, message = decode_message("ef/v1/dev-1/telemetry", telemetry(text))
    except ProtocolError as e:
        assert e.reason in {"bad_json", "too_deep", "schema", "nul_character", "oversized"}
        return
    assert isinstance(message, TelemetryBatch)
    check_shape(message.records[0].body, max_depth=MAX_DOCUMENT_DEPTH, allow_nul=True)
    canonical_json(message.model_dump(mode="json"))


@given(
    data=st.one_of(
        st.binary(max_size=512),
        st.recursive(json_scalars, lambda c: st.lists(c, max_size=3), max_leaves=20).map(
            lambda v: json.dumps(_deep(v, 40), allow_nan=True).encode()
        ),
    )
)
def test_loads_bounded_raises_only_its_own_error(data: bytes) -> None:
    """loads_bounded returns a value within its limits or raises JsonShapeError, nothing else."""
    try:
        value = loads_bounded(data, max_bytes=4096, max_depth=10, max_elements=100)
    except JsonShapeError as e:
        assert e.reason in {"bad_json", "oversized", "too_deep", "too_many_elements"} or (
            e.reason == "nul_character"
        )
        return
    check_shape(value, max_depth=10, max_elements=100)


def test_loads_bounded_names_each_limit() -> None:
    """Size, depth, element count and NUL refusals each carry their own reason."""
    cases = {
        "oversized": b"[" + b"1," * 3000 + b"1]",
        "too_deep": nested(1500).encode(),
        "too_many_elements": b"[" + b"1," * 200 + b"1]",
        "nul_character": b'["\\u0000"]',
        "bad_json": b"{",
    }
    for reason, data in cases.items():
        with pytest.raises(JsonShapeError) as info:
            loads_bounded(data, max_bytes=4096, max_depth=10, max_elements=100)
        assert info.value.reason == reason


def test_a_time_at_the_edge_of_the_storable_range_is_accepted() -> None:
    """Year 9999 in UTC is storable and accepted; only times beyond it are refused."""
    _, message = decode_message(
        "ef/v1/dev-1/telemetry", telemetry("{}", at="9999-12-31T23:59:59+00:00")
    )
    assert isinstance(message, TelemetryBatch)
    assert message.records[0].at == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
