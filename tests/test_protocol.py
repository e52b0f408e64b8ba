"""Protocol v1: topics, canonical JSON, envelopes and the decoder's refusals."""

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import (
    MAX_PAYLOAD_BYTES,
    Birth,
    Death,
    DeviceTopic,
    Heartbeat,
    MessageKind,
    ProtocolError,
    canonical_json,
    decode_message,
    encode_message,
)
from shared.messages import HardwareInfo, ModelInfo

TS = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


def birth(device_id: str = "dev-1", bd_seq: int = 3) -> Birth:
    return Birth(
        device_id=device_id,
        ts=TS,
        bd_seq=bd_seq,
        agent_version="0.1.0",
        hardware=HardwareInfo(
            device_class="x86_64-cpu", arch="x86_64", accelerator="cpu", cpu_count=2, memory_mb=1024
        ),
        runtimes=["llama.cpp"],
        models=[ModelInfo(name="m", runtime="llama.cpp", loaded=True)],
        heartbeat_interval_s=5,
    )


def heartbeat_doc(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "v": 1,
        "type": "heartbeat",
        "device_id": "dev-1",
        "ts": "2026-11-25T06:00:00Z",
        "bd_seq": 1,
        "seq": 7,
        "uptime_s": 1.5,
        "cpu_percent": 3.0,
        "memory_percent": 40.0,
        "requests_total": 0,
        "local_tier_healthy": True,
    }
    doc.update(overrides)
    return doc


def test_topic_round_trip() -> None:
    """A built topic parses back to the same device and kind."""
    topic = DeviceTopic("dev-1", MessageKind.STATUS)
    assert str(topic) == "ef/v1/dev-1/status"
    assert DeviceTopic.parse(str(topic)) == topic
    assert DeviceTopic.subscription(MessageKind.HEARTBEAT) == "ef/v1/+/heartbeat"


@pytest.mark.parametrize(
    "topic",
    [
        "ef/v2/dev-1/status",
        "ef/v1/dev-1",
        "ef/v1/dev-1/status/extra",
        "ef/v1/Dev 1/status",
        "ef/v1/dev-1/firmware",
        "other/v1/dev-1/status",
        "ef/v1/+/status",
    ],
)
def test_topic_parse_refuses_non_v1_shapes(topic: str) -> None:
    """Wrong version, depth, device id or kind is a bad_topic error, never a crash."""
    with pytest.raises(ProtocolError) as info:
        DeviceTopic.parse(topic)
    assert info.value.reason == "bad_topic"


def test_canonical_json_is_sorted_compact_and_refuses_nan() -> None:
    """Canonical JSON sorts keys, drops whitespace, keeps UTF-8 and refuses NaN."""
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_encode_decode_round_trip_for_every_type() -> None:
    """Every message type survives encode then decode unchanged, on its own topic."""
    for message in (
        birth(),
        Death(device_id="dev-1", ts=TS, bd_seq=3, reason="will"),
        Heartbeat.model_validate(heartbeat_doc()),
    ):
        topic, payload = encode_message(message)
        parsed_topic, decoded = decode_message(topic, payload)
        assert decoded == message
        assert parsed_topic.device_id == "dev-1"


BAD_INPUTS = {
    "oversized": ("ef/v1/dev-1/heartbeat", b"{" + b" " * MAX_PAYLOAD_BYTES + b"}"),
    "bad_topic": ("ef/v1/dev-1/nope", json.dumps(heartbeat_doc()).encode()),
    "empty_payload": ("ef/v1/dev-1/status", b""),
    "bad_json": ("ef/v1/dev-1/heartbeat", b"{not json"),
    "not_utf8": ("ef/v1/dev-1/heartbeat", b"\xff\xfe{}"),
    "not_object": ("ef/v1/dev-1/heartbeat", b"[1, 2]"),
    "unsupported_version": ("ef/v1/dev-1/heartbeat", json.dumps(heartbeat_doc(v=2)).encode()),
    "schema_missing_field": (
        "ef/v1/dev-1/heartbeat",
        json.dumps({**heartbeat_doc(), "seq": None}).encode(),
    ),
    "schema_negative_seq": ("ef/v1/dev-1/heartbeat", json.dumps(heartbeat_doc(seq=-1)).encode()),
    "schema_extra_field": (
        "ef/v1/dev-1/heartbeat",
        json.dumps(heartbeat_doc(prompt="secret")).encode(),
    ),
    "schema_naive_ts": (
        "ef/v1/dev-1/heartbeat",
        json.dumps(heartbeat_doc(ts="2026-11-25T06:00:00")).encode(),
    ),
    "wrong_type_for_topic": ("ef/v1/dev-1/status", json.dumps(heartbeat_doc()).encode()),
    "missing_version": (
        "ef/v1/dev-1/heartbeat",
        json.dumps({k: v for k, v in heartbeat_doc().items() if k != "v"}).encode(),
    ),
    "nan_number": (
        "ef/v1/dev-1/heartbeat",
        json.dumps(heartbeat_doc()).replace('"cpu_percent": 3.0', '"cpu_percent": NaN').encode(),
    ),
    "overflowing_number": (
        "ef/v1/dev-1/heartbeat",
        json.dumps(heartbeat_doc()).replace('"cpu_percent": 3.0', '"cpu_percent": 1e400').encode(),
    ),
    "spoofed_device_id": ("ef/v1/dev-2/heartbeat", json.dumps(heartbeat_doc()).encode()),
}
EXPECTED_REASON = {
    "missing_version": "unsupported_version",
    "nan_number": "bad_json",
    "overflowing_number": "bad_json",
    "not_utf8": "bad_json",
    "not_object": "schema",
    "schema_missing_field": "schema",
    "schema_negative_seq": "schema",
    "schema_extra_field": "schema",
    "schema_naive_ts": "schema",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_decoder_refuses_bad_input_with_a_reason(case: str) -> None:
    """Each kind of bad message raises ProtocolError with its own reason and a readable text."""
    topic, payload = BAD_INPUTS[case]
    with pytest.raises(ProtocolError) as info:
        decode_message(topic, payload)
    assert info.value.reason == EXPECTED_REASON.get(case, case)
    assert str(info.value).startswith(info.value.reason + ": ")
    assert len(info.value.detail) < 600


@given(
    bd_seq=st.integers(min_value=0, max_value=2**40),
    seq=st.integers(min_value=0, max_value=2**53),
    cpu=st.floats(min_value=0, max_value=800, allow_nan=False),
    device=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True),
)
def test_heartbeat_round_trip_property(bd_seq: int, seq: int, cpu: float, device: str) -> None:
    """Any valid heartbeat encodes to canonical bytes that decode to an equal message."""
    message = Heartbeat.model_validate(
        heartbeat_doc(device_id=device, bd_seq=bd_seq, seq=seq, cpu_percent=cpu)
    )
    topic, payload = encode_message(message)
    assert decode_message(topic, payload)[1] == message
    assert encode_message(decode_message(topic, payload)[1])[1] == payload


def test_broker_url_parsing() -> None:
    """mqtt:// and tcp:// URLs give host and port (1883 by default), mqtts:// and ssl://
    the same with TLS (8883 by default); other schemes, paths and credentials are refused."""
    from shared.broker_url import BrokerAddress, parse_broker_url

    assert parse_broker_url("mqtt://broker.local") == BrokerAddress("broker.local", 1883)
    assert parse_broker_url("tcp://10.0.0.2:0") == BrokerAddress("10.0.0.2", 0)
    assert parse_broker_url("mqtts://broker.local") == BrokerAddress("broker.local", 8883, True)
    assert parse_broker_url("ssl://[::1]:9883") == BrokerAddress("::1", 9883, True)
    assert parse_broker_url("mqtt://127.0.0.1").loopback
    assert parse_broker_url("mqtts://localhost").loopback
    assert not parse_broker_url("mqtt://broker.example.com").loopback
    for bad in (
        "http://x:1883",
        "mqtt://",
        "mqtt://h:70000",
        "broker:1883",
        "mqtt://u:p@h:1883",
        "mqtts://h:8883/path",
    ):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


def _telemetry_payload(value: str) -> bytes:
    record = (
        '{"epoch":1,"seq":0,"kind":"metric","name":"inference",'
        '"at":"2026-11-25T06:00:00+00:00","body":{"latency_ms":' + value + "}}"
    )
    return (
        '{"v":1,"type":"telemetry","device_id":"dev-1","ts":"2026-11-25T06:00:00+00:00",'
        '"records":[' + record + "]}"
    ).encode()


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("1e300", True),
        ("12.5e2", True),
        ("1e400", False),
        ("-1E+999", False),
        ("9" * 400 + ".5", False),
    ],
)
def test_numbers_beyond_a_double_are_refused_anywhere(value: str, accepted: bool) -> None:
    """A number that would overflow to infinity, even inside a free-form record body, is
    refused as bad_json (databases cannot store it); large finite numbers pass."""
    payload = _telemetry_payload(value)
    if accepted:
        _, message = decode_message("ef/v1/dev-1/telemetry", payload)
        assert message.records[0].body["latency_ms"] == float(value)  # type: ignore[union-attr]
    else:
        with pytest.raises(ProtocolError) as info:
            decode_message("ef/v1/dev-1/telemetry", payload)
        assert info.value.reason == "bad_json"
        assert "out of range" in str(info.value)
