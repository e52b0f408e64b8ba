"""The fast telemetry decoder (controller/ingest/telemetry_decode.py) against the full one
(``shared.messages.decode_signed``): whatever it accepts, the full decoder accepts with the
same values; everything else it hands back (None) for the full decoder to judge."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.ingest.apply import Received, classify
from controller.ingest.telemetry_decode import RecordFrame, decode_telemetry
from shared.errors import ProtocolError
from shared.message_signing import DEVICE_DOMAIN, SessionMac
from shared.messages import MAX_INT64, Record, TelemetryBatch, decode_signed, encode_message
from tests.test_hostile_decode import HOSTILE

TOPIC = "ef/v1/dev-1/telemetry"
BASE = datetime(2026, 11, 25, tzinfo=UTC)


def agent_batch(n: int = 50) -> bytes:
    """A batch as an agent encodes it (canonical JSON of ``TelemetryBatch``)."""
    records = [
        Record(
            epoch=3,
            seq=100 + i,
            kind="metric",
            name="inference",
            at=BASE + timedelta(milliseconds=i),
            body={"route": "local", "latency_ms": 412.37, "stream": False, "status": None},
        )
        for i in range(n)
    ]
    topic, payload = encode_message(TelemetryBatch(device_id="dev-1", ts=BASE, records=records))
    assert topic == TOPIC
    return payload


def assert_same_as_full_decoder(topic: str, payload: bytes) -> bool:
    """If the fast decoder accepts ``payload``, the full one does too, with equal values;
    returns whether the fast one accepted it."""
    fast = decode_telemetry(topic, payload)
    if fast is None:
        return False
    message, signed = fast
    _, full, full_signed = decode_signed(topic, payload)
    assert isinstance(full, TelemetryBatch)
    assert signed == full_signed
    assert (message.v, message.type, message.device_id, message.ts) == (
        full.v,
        full.type,
        full.device_id,
        full.ts,
    )
    assert len(message.records) == len(full.records)
    for got, want in zip(message.records, full.records, strict=True):
        assert isinstance(got, RecordFrame)
        for name in Record.model_fields:
            a, b = getattr(got, name), getattr(want, name)
            assert a == b and type(a) is type(b), (name, a, b)
        # Bodies: equal values of equal types all the way down (1 vs 1.0, True vs 1).
        assert json.dumps(got.body) == json.dumps(want.body)
    return True


def test_an_agent_batch_takes_the_fast_path_with_the_full_decoders_values() -> None:
    """A batch as agents send it, unsigned and MACed, is decoded by the fast path, with
    exactly the values the full decoder gives (else the fast path would never run)."""
    payload = agent_batch()
    assert assert_same_as_full_decoder(TOPIC, payload)
    mac = SessionMac(DEVICE_DOMAIN, "0123456789abcdef", b"k" * 32)
    assert assert_same_as_full_decoder(TOPIC, mac.payload(TOPIC, payload))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_each_hostile_payload_goes_to_the_full_decoder(case: str) -> None:
    """Every payload the full decoder refuses (each hostile case of test_hostile_decode) is
    left to it, so its refusal keeps its reason and detail."""
    topic, payload, _ = HOSTILE[case]
    assert decode_telemetry(topic, payload) is None
    for t in (topic, TOPIC):
        with pytest.raises(ProtocolError) as info:
            classify(Received(t, payload, BASE), known_devices=None, attestation_on=False)
        with pytest.raises(ProtocolError) as full:
            decode_signed(t, payload)
        assert (info.value.reason, info.value.detail) == (full.value.reason, full.value.detail)


def record(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "epoch": 1,
        "seq": 5,
        "kind": "metric",
        "name": "inference",
        "at": "2026-11-25T06:00:00+00:00",
        "body": {"a": 1},
    }
    return {**doc, **overrides}


def batch(*records: dict[str, Any], **overrides: Any) -> bytes:
    doc: dict[str, Any] = {
        "v": 1,
        "type": "telemetry",
        "device_id": "dev-1",
        "ts": "2026-11-25T06:00:00+00:00",
        "records": list(records) or [record()],
    }
    return json.dumps({**doc, **overrides}).encode()


# Payloads near the edges of what pydantic accepts, each: (payload, does the fast path
# take it). Whether accepted or not, the values must agree with the full decoder.
EDGES: dict[str, tuple[bytes, bool]] = {
    "plain": (batch(), True),
    "a name ending in a newline": (batch(record(name="inference\n")), False),
    "7 fractional digits (pydantic truncates, msgspec rounds)": (
        batch(record(at="2026-11-25T06:00:00.1234567Z")),
        False,
    ),
    "a body float with 7 decimals": (batch(record(body={"x": 0.1234567})), True),
    "a time without seconds": (batch(record(at="2026-11-25T06:00Z")), False),
    "a time with an offset": (batch(record(at="2026-11-25T06:00:00.5-07:30")), True),
    "a lowercase t and z": (batch(record(at="2026-11-25t06:00:00z")), True),
    "a naive time": (batch(record(at="2026-11-25T06:00:00")), False),
    "a time that leaves the storable range in UTC": (
        batch(record(at="0001-01-01T00:00:00+01:00")),
        False,
    ),
    "the largest seq": (batch(record(seq=MAX_INT64)), True),
    "a seq beyond 64 bits": (batch(record(seq=MAX_INT64 + 1)), False),
    "a float seq": (batch(record(seq=5.0)), False),
    "a bool seq": (batch(record(seq=True)), False),
    "no v": (
        json.dumps({"type": "telemetry", "device_id": "dev-1", "records": []}).encode(),
        False,
    ),
    "no ts": (
        json.dumps(
            {"v": 1, "type": "telemetry", "device_id": "dev-1", "records": [record()]}
        ).encode(),
        False,
    ),
    "an extra field": (batch(record(), extra=1), False),
    "an extra record field": (batch(record(extra=1)), False),
    "two epochs": (batch(record(), record(epoch=2, seq=6)), False),
    "seqs out of order": (batch(record(seq=6), record(seq=5)), False),
    "a nested body": (batch(record(body={"a": {"b": [1, 2]}})), False),
    "a body beyond a double": (
        batch(record(body={"x": 1})).replace(b'"x": 1}', b'"x": 1e400}'),
        False,
    ),
    "a huge integer in a body": (batch(record(body={"x": 10**30})), True),
    "a NUL in a body": (batch(record(body={"x": "a\x00b"})), False),
    "duplicate keys": (
        b'{"v":1,"type":"telemetry","device_id":"dev-1","device_id":"dev-1",'
        b'"ts":"2026-11-25T06:00:00Z","records":[{"epoch":1,"seq":1,"seq":2,'
        b'"kind":"metric","name":"x","at":"2026-11-25T06:00:00Z"}]}',
        True,
    ),
    "no body": (batch({k: v for k, v in record().items() if k != "body"}), True),
    "an empty name": (batch(record(name="")), False),
    "an event": (batch(record(kind="event")), True),
    "another kind": (batch(record(kind="log")), False),
    "another device": (batch(device_id="dev-2"), False),
}


@pytest.mark.parametrize("case", sorted(EDGES))
def test_edge_payloads_take_the_fast_path_only_when_it_gives_the_same_values(case: str) -> None:
    """Each edge case is either decoded by the fast path with the full decoder's values, or
    left to the full decoder; which one is pinned, so a change is seen."""
    payload, fast = EDGES[case]
    assert assert_same_as_full_decoder(TOPIC, payload) is fast


def test_a_fast_batch_is_refused_the_same_way_on_a_wrong_topic() -> None:
    """A valid batch on a status topic or another device's topic is left to the full
    decoder (wrong_type_for_topic, spoofed_device_id)."""
    payload = agent_batch(2)
    assert decode_telemetry("ef/v1/dev-1/status", payload) is None
    assert decode_telemetry("ef/v1/dev-2/telemetry", payload) is None
    assert decode_telemetry("ef/v1/DEV/telemetry", payload) is None


_times = st.sampled_from(
    [
        "2026-11-25T06:00:00Z",
        "2026-11-25T06:00:00.5Z",
        "2026-11-25T06:00:00.000001-00:00",
        "2026-11-25T06:00:00.123456+02:00",
        "2026-11-25T06:00:00.1234567Z",
        "2026-11-25 06:00:00Z",
        "2026-11-25_06:00:00Z",
        "2026-11-25T06:00Z",
        "2026-02-30T06:00:00Z",
        "2026-11-25T24:00:00Z",
        "2026-11-25T06:00:60Z",
        "9999-12-31T23:59:59.999999-01:00",
        "2026-11-25T06:00:00+24:00",
        "1764050400",
    ]
)
# Half of the times valid, so that many generated batches are.
_times = st.one_of(st.just("2026-11-25T06:00:00.25+01:00"), _times)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_bodies = st.dictionaries(
    st.text(max_size=6),
    st.one_of(_scalars, _scalars, _scalars, st.lists(_scalars, max_size=3)),
    max_size=4,
)
_records = st.fixed_dictionaries(
    {
        "epoch": st.one_of(st.integers(min_value=-1, max_value=3), st.just(MAX_INT64)),
        "seq": st.integers(min_value=-1, max_value=MAX_INT64 + 1),
        "kind": st.sampled_from(["metric", "event", "metric", "Metric"]),
        "name": st.sampled_from(["inference", "a.b_c9", "n" * 64, "inference", "x\n", "UP", ""]),
        "at": _times,
        "body": _bodies,
    }
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(_records, min_size=0, max_size=3),
    ts=_times,
    device=st.sampled_from(["dev-1", "dev-1", "dev-2"]),
    renumber=st.booleans(),
)
def test_generated_batches_agree_with_the_full_decoder(
    records: list[dict[str, Any]], ts: str, device: str, renumber: bool
) -> None:
    """On generated batches, valid and not, the fast path never accepts what the full
    decoder refuses or decodes to other values."""
    if renumber:  # one epoch, increasing seqs: more of the batches are valid
        records = [{**r, "epoch": 1, "seq": i} for i, r in enumerate(records)]
    doc = {"v": 1, "type": "telemetry", "device_id": device, "ts": ts, "records": records}
    assert_same_as_full_decoder(TOPIC, json.dumps(doc).encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_agent_batches_agree_with_the_full_decoder(data: st.DataObject) -> None:
    """Bytes of an agent's batch overwritten at random places: the fast path agrees with
    the full decoder or leaves the payload to it."""
    payload = bytearray(agent_batch(3))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
        payload[at] = data.draw(st.sampled_from(b'0123456789.:-+Z"{}[],e\\ \nazT'))
    assert_same_as_full_decoder(TOPIC, bytes(payload))
