"""Signed payloads (shared/message_signing.py): the wire form, verification, and the
decoder's handling of hostile signature headers."""

import contextlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from shared.attestation import public_key_of
from shared.errors import ProtocolError
from shared.message_signing import (
    CONTROLLER_DOMAIN,
    DEVICE_DOMAIN,
    SIGNATURE_OVERHEAD,
    is_signed,
    split,
    verify,
)
from shared.messages import (
    MAX_PAYLOAD_BYTES,
    Heartbeat,
    decode_message,
    decode_signed,
    encode_message,
)
from tests.signing import controller_signer, device_signer

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def heartbeat(seq: int = 1, device_id: str = "dev-1") -> Heartbeat:
    return Heartbeat(
        device_id=device_id,
        bd_seq=1,
        seq=seq,
        uptime_s=1.0,
        cpu_percent=1.0,
        memory_percent=1.0,
        requests_total=0,
        local_tier_healthy=True,
    )


def test_signed_payload_is_json_and_verifies_with_the_signers_key_only() -> None:
    """A signed payload stays one JSON object, decodes to the same message, and verifies
    with the signing key for its topic and domain, and with nothing else."""
    beat = heartbeat()
    topic, payload = encode_message(beat, device_signer(KEY))
    document = json.loads(payload)
    assert set(document) >= {"sig", "kid", "seq"}
    _parsed, message, signed = decode_signed(topic, payload)
    assert message == beat == decode_message(topic, payload)[1]
    assert signed is not None and is_signed(payload)
    assert verify(public_key_of(KEY), DEVICE_DOMAIN, topic, signed)
    assert not verify(public_key_of(OTHER), DEVICE_DOMAIN, topic, signed)
    assert not verify(public_key_of(KEY), CONTROLLER_DOMAIN, topic, signed)
    assert not verify(public_key_of(KEY), DEVICE_DOMAIN, "ef/v1/dev-2/heartbeat", signed)
    assert len(payload) == len(encode_message(beat)[1]) + SIGNATURE_OVERHEAD


def test_a_changed_byte_or_a_moved_signature_does_not_verify() -> None:
    """Altering the body (a higher seq) under the original signature fails verification,
    and a controller signature is never a device's."""
    topic, payload = encode_message(heartbeat(seq=1), device_signer(KEY))
    forged = payload.replace(b'"seq":1', b'"seq":9')
    signed = split(forged)
    assert signed is not None
    assert not verify(public_key_of(KEY), DEVICE_DOMAIN, topic, signed)
    _, as_controller = encode_message(heartbeat(seq=1), controller_signer(KEY))
    moved = split(as_controller)
    assert moved is not None and not verify(public_key_of(KEY), DEVICE_DOMAIN, topic, moved)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sig":"',
        b'{"sig":"' + b"A" * 88 + b'","kid":"' + b"0" * 16 + b'"}',
        b'{"sig":"' + b"!" * 88 + b'","kid":"' + b"0" * 16 + b'","v":1}',
        b'{"sig":"' + b"A" * 88 + b'","kid":"' + b"Z" * 16 + b'","v":1}',
        b'{"sig":"' + b"A" * 88 + b'","kix":"' + b"0" * 16 + b'","v":1}',
    ],
)
def test_malformed_signature_headers_are_refused_by_name(payload: bytes) -> None:
    """A payload that starts like a signed one but is not laid out like one is refused as
    ``bad_signature_format`` by the decoder (never an exception of another kind)."""
    with pytest.raises(ProtocolError) as e:
        decode_signed("ef/v1/dev-1/heartbeat", payload)
    assert e.value.reason in {"bad_signature_format", "schema", "bad_json"}


def test_oversized_signed_payload_is_refused_before_splitting() -> None:
    """The size limit counts the signature's bytes on top of the message's limit only."""
    payload = b'{"sig":"' + b"A" * (MAX_PAYLOAD_BYTES + SIGNATURE_OVERHEAD)
    with pytest.raises(ProtocolError) as e:
        decode_signed("ef/v1/dev-1/heartbeat", payload)
    assert e.value.reason == "oversized"


@given(st.binary(max_size=400))
def test_split_and_decode_never_raise_anything_but_protocol_errors(tail: bytes) -> None:
    """Whatever follows a signature or MAC prefix, decoding ends in a message or a
    ProtocolError."""
    for payload in (b'{"sig":"' + tail, b'{"mac":"' + tail, tail):
        with contextlib.suppress(ProtocolError):
            decode_signed("ef/v1/dev-1/heartbeat", payload)
