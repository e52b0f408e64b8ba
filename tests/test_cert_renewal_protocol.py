"""The certificate renewal messages (``cert_request``, ``cert_issued``): they round-trip,
their sizes and shapes are bounded, hostile bytes are refused with a reason, and the
proof a request carries verifies only for the exact request and the current key."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.cert_renewal import fingerprint, request_payload, sign, verify
from shared.certificates import csr_for, load_private_key, new_private_key, read_certificate
from shared.errors import ProtocolError
from shared.messages import (
    MAX_CSR_PEM,
    CertIssued,
    CertRequest,
    decode_message,
    encode_message,
)
from shared.topics import CONTROLLER_TO_DEVICE, DEVICE_TO_CONTROLLER, MessageKind
from tests.pki_world import TestCa

TS = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, a device's current certificate and key, and a CSR for a new key."""
    ca = TestCa(tmp_path_factory.mktemp("ca"))
    files = ca.client("dev-1")
    current_key_pem = files.key_file.read_bytes()
    new_key = new_private_key()
    return {
        "ca": ca,
        "cert_pem": files.cert_file.read_text(),
        "current_key": load_private_key(current_key_pem),
        "csr": csr_for("dev-1", new_key).decode(),
        "ca_pem": ca.ca_file.read_text(),
    }


def request(world: dict[str, Any], **overrides: Any) -> CertRequest:
    cert = read_certificate(world["cert_pem"].encode())
    payload = request_payload(
        device_id="dev-1",
        request_id="a" * 32,
        requested_at=TS,
        current_fingerprint=fingerprint(cert),
        csr=world["csr"],
    )
    fields: dict[str, Any] = {
        "device_id": "dev-1",
        "ts": TS,
        "request_id": "a" * 32,
        "csr": world["csr"],
        "certificate": world["cert_pem"],
        "signature": sign(world["current_key"], payload),
    }
    return CertRequest(**{**fields, **overrides})


def raw(message: CertRequest | CertIssued) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(encode_message(message)[1])
    return doc


def test_the_new_kinds_have_one_direction_each() -> None:
    """A device publishes cert_request and reads cert_issued (the broker ACL is generated
    from these sets, so the device may subscribe to its own cert_issued topic)."""
    assert MessageKind.CERT_REQUEST in DEVICE_TO_CONTROLLER
    assert MessageKind.CERT_ISSUED in CONTROLLER_TO_DEVICE
    assert MessageKind.CERT_REQUEST not in CONTROLLER_TO_DEVICE
    assert MessageKind.CERT_ISSUED not in DEVICE_TO_CONTROLLER


def test_a_request_and_both_answers_round_trip(world: dict[str, Any]) -> None:
    """A request, a certificate answer and a refusal decode to what was encoded, on their
    own topics."""
    issued = CertIssued(
        device_id="dev-1",
        ts=TS,
        request_id="a" * 32,
        certificate=world["cert_pem"],
        ca=world["ca_pem"],
    )
    refusal = CertIssued(
        device_id="dev-1", ts=TS, request_id="a" * 32, refused="bad_proof", detail="no"
    )
    for message in (request(world), issued, refusal):
        topic, payload = encode_message(message)
        parsed, decoded = decode_message(topic, payload)
        assert decoded == message
        assert topic.endswith("/" + message.type)
        assert parsed.device_id == "dev-1"


def test_the_proof_verifies_only_for_this_request_and_the_current_key(
    world: dict[str, Any],
) -> None:
    """The signature covers device, request id, time, current certificate and CSR: any
    change, or another key, fails verification."""
    message = request(world)
    cert = read_certificate(world["cert_pem"].encode())
    base: dict[str, Any] = {
        "device_id": "dev-1",
        "request_id": message.request_id,
        "requested_at": message.ts,
        "current_fingerprint": fingerprint(cert),
        "csr": message.csr,
    }
    public = cert.public_key()
    assert verify(public, request_payload(**base), message.signature)
    for name, value in (
        ("device_id", "dev-2"),
        ("request_id", "b" * 32),
        ("requested_at", TS + timedelta(microseconds=1)),
        ("current_fingerprint", "0" * 64),
        ("csr", csr_for("dev-1", new_private_key()).decode()),
    ):
        assert not verify(public, request_payload(**{**base, name: value}), message.signature)
    assert not verify(new_private_key().public_key(), request_payload(**base), message.signature)
    assert not verify(public, request_payload(**base), "not base64!")


def _refused(topic: str, doc: dict[str, Any]) -> str:
    with pytest.raises(ProtocolError) as e:
        decode_message(topic, json.dumps(doc).encode())
    return e.value.reason


REQUEST_TOPIC = "ef/v1/dev-1/cert_request"
ISSUED_TOPIC = "ef/v1/dev-1/cert_issued"


@pytest.mark.parametrize(
    ("case", "change"),
    [
        (
            "an oversized CSR",
            lambda d: d | {"csr": d["csr"].replace("\n", "\n" + "A" * 64 + "\n", 130)},
        ),
        (
            "a CSR with a PEM header line",
            lambda d: d | {"csr": d["csr"].replace("-\n", "-\nProc-Type: 4\n", 1)},
        ),
        (
            "a private key instead of a CSR",
            lambda d: d | {"csr": d["csr"].replace("CERTIFICATE REQUEST", "PRIVATE KEY")},
        ),
        ("two PEM blocks in certificate", lambda d: d | {"certificate": d["certificate"] * 2}),
        ("a short request id", lambda d: d | {"request_id": "abc"}),
        ("an oversized signature", lambda d: d | {"signature": "A" * 200}),
        ("a missing signature", lambda d: {k: v for k, v in d.items() if k != "signature"}),
        ("an extra field", lambda d: d | {"key": "-----BEGIN PRIVATE KEY-----"}),
    ],
)
def test_a_malformed_request_is_refused_as_schema(
    world: dict[str, Any], case: str, change: Any
) -> None:
    """Shapes outside the request's schema (sizes, PEM kinds, extra fields) are refused
    before any X.509 parser sees them."""
    assert _refused(REQUEST_TOPIC, change(raw(request(world)))) == "schema", case


def test_a_csr_over_the_limit_is_refused_unparsed(world: dict[str, Any]) -> None:
    """A CSR text longer than MAX_CSR_PEM is a schema refusal naming the csr field."""
    doc = raw(request(world))
    doc["csr"] = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + ("A" * 64 + "\n") * 140
        + ("-----END CERTIFICATE REQUEST-----\n")
    )
    assert len(doc["csr"]) > MAX_CSR_PEM
    with pytest.raises(ProtocolError) as e:
        decode_message(REQUEST_TOPIC, json.dumps(doc).encode())
    assert e.value.reason == "schema" and "csr" in e.value.detail


@pytest.mark.parametrize(
    ("case", "fields"),
    [
        ("neither certificate nor refusal", {}),
        ("a certificate without its CA", {"certificate": "cert"}),
        ("a refusal with a certificate", {"refused": "bad_proof", "certificate": "cert"}),
        ("a refusal reason that is not a code", {"refused": "Bad Proof!"}),
        ("an oversized detail", {"refused": "x", "detail": "d" * 257}),
    ],
)
def test_an_answer_is_a_certificate_or_a_refusal(
    world: dict[str, Any], case: str, fields: dict[str, Any]
) -> None:
    """cert_issued holds a certificate and its CA, or a refusal code: never both, never
    neither."""
    doc: dict[str, Any] = {
        "v": 1,
        "type": "cert_issued",
        "device_id": "dev-1",
        "ts": TS.isoformat(),
        "request_id": "a" * 32,
    }
    for name, value in fields.items():
        doc[name] = world["cert_pem"] if value == "cert" else value
    assert _refused(ISSUED_TOPIC, doc) == "schema", case


def test_a_request_on_another_devices_topic_is_spoofed(world: dict[str, Any]) -> None:
    """A request naming dev-1 on dev-2's topic is refused as spoofed."""
    assert _refused("ef/v1/dev-2/cert_request", raw(request(world))) == "spoofed_device_id"


def test_an_answer_on_the_request_topic_is_the_wrong_type(world: dict[str, Any]) -> None:
    """Each kind has its topic: a cert_issued published on cert_request is refused."""
    doc = raw(CertIssued(device_id="dev-1", ts=TS, request_id="a" * 32, refused="x", detail=None))
    assert _refused(REQUEST_TOPIC, doc) == "wrong_type_for_topic"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=4096), topic=st.sampled_from([REQUEST_TOPIC, ISSUED_TOPIC]))
def test_arbitrary_bytes_on_the_renewal_topics_only_raise_protocol_error(
    payload: bytes, topic: str
) -> None:
    """Whatever bytes arrive on the renewal topics, decoding returns a message or raises
    ProtocolError with a reason, nothing else."""
    try:
        decode_message(topic, payload)
    except ProtocolError as e:
        assert e.reason


_FIELDS = ["request_id", "csr", "certificate", "signature", "ts", "device_id", "v", "type"]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=300),
    st.lists(st.text(max_size=5), max_size=3),
)


@pytest.fixture(scope="module")
def valid_request(world: dict[str, Any]) -> dict[str, Any]:
    return raw(request(world))


@settings(
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(name=st.sampled_from(_FIELDS), value=_VALUES)
def test_any_one_field_replaced_is_accepted_or_refused_with_a_reason(
    valid_request: dict[str, Any], name: str, value: Any
) -> None:
    """A valid request with any one field replaced by an arbitrary JSON value decodes to a
    request whose strings fit their bounds, or is refused with a ProtocolError."""
    doc = {**valid_request, name: value}
    try:
        _, message = decode_message(REQUEST_TOPIC, json.dumps(doc).encode())
    except ProtocolError as e:
        assert e.reason
        return
    assert isinstance(message, CertRequest)
    assert len(message.csr) <= MAX_CSR_PEM and len(message.signature) <= 96


@settings(
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(cut=st.integers(min_value=0, max_value=2000), junk=st.binary(max_size=16))
def test_a_truncated_or_spliced_request_is_refused_with_a_reason(
    valid_request: dict[str, Any], cut: int, junk: bytes
) -> None:
    """A valid request cut anywhere and spliced with junk bytes is refused with a reason
    (or, if the splice happens to keep it valid, decodes)."""
    payload = json.dumps(valid_request).encode()
    try:
        decode_message(REQUEST_TOPIC, payload[:cut] + junk + payload[cut + len(junk) :])
    except ProtocolError as e:
        assert e.reason
