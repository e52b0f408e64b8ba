"""Signed MQTT payloads: what device and controller agree on (docs/protocol.md, "Signatures").

Every message either side publishes carries an Ed25519 signature over its topic and its
exact payload bytes, so a broker, a bridge or a stolen broker login can neither forge nor
alter one. Devices sign with their identity key (the one attestation enrolls), the
controller with its message key, whose public half devices hold (flashing writes it; an
unflashed device pins it on first use from a ``controller_keys`` message).

The wire form keeps a payload one JSON object: the signature and the signing key's id come
first, at fixed offsets, and the signed body follows::

    {"sig":"<88 base64 chars>","kid":"<16 hex chars>",<the body's members>}

The body is the message's canonical JSON (``{`` + its members). Splitting is a slice, not a
parse, and verification covers the very bytes received, so nothing is re-encoded on the
way. The signed bytes are ``domain NUL topic NUL body``: the domain keeps a device's
signature from ever passing as the controller's (and either from passing as a quote, which
has its own domain), the topic binds the payload to the device and kind it was sent for.

Session MACs: Ed25519 verification costs ~100 µs per message on a small controller, as much
as a third of what a one-record message costs to ingest. So a device that knows the
controller's X25519 exchange key puts a fresh X25519 session key in its (signed) birth and
authenticates the session's other messages with HMAC-SHA256 under a key both sides derive
(``session_mac_key``: X25519 of the session key and the controller's exchange key, through
HKDF bound to the device and the session key). Only the device and the controller can
compute it; a MAC costs ~2 µs to check. Wire form, the same layout::

    {"mac":"<44 base64 chars>","kid":"<16 hex chars: the session key's short id>",...}

Versions and sequence numbers are inside the body, so a replay can only repeat what was
said already; the receivers' own rules (newer versions only, sequence high-water marks,
nonces, the controller's age window) refuse it. Pure apart from the key objects' caches.
"""

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.attestation import key_id
from shared.errors import ProtocolError

DEVICE_DOMAIN = b"edgefleet/message/device/v1"
CONTROLLER_DOMAIN = b"edgefleet/message/controller/v1"

_SIG_PREFIX = b'{"sig":"'
_SIG_CHARS = 88  # standard base64 of 64 bytes, with its "==" padding
_KID_PREFIX = b'","kid":"'
_KID_CHARS = 16  # the first 16 hex digits of the key id (sha256 of the raw public key)
_BODY_SEPARATOR = b'",'
_KID_AT = len(_SIG_PREFIX) + _SIG_CHARS + len(_KID_PREFIX)
_BODY_AT = _KID_AT + _KID_CHARS + len(_BODY_SEPARATOR)
# How many bytes a signature adds to a payload.
SIGNATURE_OVERHEAD = _BODY_AT - 1
_HEX = frozenset(b"0123456789abcdef")

_MAC_PREFIX = b'{"mac":"'
_MAC_CHARS = 44  # standard base64 of a 32-byte HMAC-SHA256, with its "=" padding
_MAC_KID_AT = len(_MAC_PREFIX) + _MAC_CHARS + len(_KID_PREFIX)
_MAC_BODY_AT = _MAC_KID_AT + _KID_CHARS + len(_BODY_SEPARATOR)
SESSION_INFO = b"edgefleet/session/v1"


def short_key_id(public_key: bytes) -> str:
    """The 16 hex digits a signed payload names its key by."""
    return key_id(public_key)[:_KID_CHARS]


@dataclass(frozen=True, slots=True)
class SignedPayload:
    """A payload split into its signature (or MAC), the key's short id, and the signed body."""

    signature: bytes
    kid: str
    body: bytes
    mac: bool = False  # an HMAC under a session key (kid: the session key's short id)


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs payloads for one side (``domain``) with one key (``kid``); ``sign`` is the
    key's raw Ed25519 signing function, so a TPM-backed key fits as well as a file."""

    domain: bytes
    kid: str
    sign: Callable[[bytes], bytes]

    def __repr__(self) -> str:
        return f"Signer(domain={self.domain!r}, kid={self.kid!r})"

    def payload(self, topic: str, body: bytes) -> bytes:
        """The signed wire payload of ``body`` for ``topic``."""
        return wrap(self.sign(signed_bytes(self.domain, topic, body)), self.kid, body)


@dataclass(frozen=True, slots=True)
class SessionMac:
    """Authenticates a device's payloads for one session with HMAC-SHA256 under ``key``;
    ``kid`` names the session key the birth presented."""

    domain: bytes
    kid: str
    key: bytes

    def __repr__(self) -> str:  # the key is a secret
        return f"SessionMac(domain={self.domain!r}, kid={self.kid!r})"

    def payload(self, topic: str, body: bytes) -> bytes:
        mac = hmac.new(self.key, signed_bytes(self.domain, topic, body), hashlib.sha256).digest()
        return wrap_mac(mac, self.kid, body)


def session_mac_key(shared_secret: bytes, device_id: str, session_key: bytes) -> bytes:
    """The HMAC key of a device's session: HKDF-SHA256 of the X25519 shared secret, bound
    to the device and its session public key."""
    info = b"\0".join((SESSION_INFO, device_id.encode("utf-8"), session_key))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared_secret)


def wrap_mac(mac: bytes, kid: str, body: bytes) -> bytes:
    """The wire payload for ``body`` and its session MAC."""
    if len(mac) != 32 or len(kid) != _KID_CHARS or not body.startswith(b"{") or body == b"{}":
        raise ValueError("a 32-byte MAC, a 16-digit key id and a non-empty JSON object body")
    return b"".join(
        (_MAC_PREFIX, base64.b64encode(mac), _KID_PREFIX, kid.encode("ascii"),
         _BODY_SEPARATOR, body[1:])
    )  # fmt: skip


def verify_mac(key: bytes, domain: bytes, topic: str, signed: SignedPayload) -> bool:
    """True when ``signed`` carries the HMAC of its body under session key ``key``."""
    expected = hmac.new(key, signed_bytes(domain, topic, signed.body), hashlib.sha256).digest()
    return signed.mac and hmac.compare_digest(expected, signed.signature)


def signed_bytes(domain: bytes, topic: str, body: bytes) -> bytes:
    """The bytes a signature covers: ``domain NUL topic NUL body``."""
    return b"".join((domain, b"\0", topic.encode("utf-8"), b"\0", body))


def is_signed(payload: bytes) -> bool:
    """True when ``payload`` starts the way a signed one does (it may still be malformed)."""
    return payload.startswith((_SIG_PREFIX, _MAC_PREFIX))


def wrap(signature: bytes, kid: str, body: bytes) -> bytes:
    """The wire payload for ``body`` (canonical JSON of an object) and its signature."""
    if len(signature) != 64 or len(kid) != _KID_CHARS or not body.startswith(b"{"):
        raise ValueError("a 64-byte signature, a 16-digit key id and a JSON object body")
    if body == b"{}":
        raise ValueError("an empty object has no members to follow the signature")
    return b"".join(
        (
            _SIG_PREFIX,
            base64.b64encode(signature),
            _KID_PREFIX,
            kid.encode("ascii"),
            _BODY_SEPARATOR,
            body[1:],
        )
    )


def split(payload: bytes) -> SignedPayload | None:
    """The parts of a signed (or MACed) payload; None when it is neither; ``ProtocolError``
    (``bad_signature_format``) when it starts like one but is not laid out like one."""
    if payload.startswith(_MAC_PREFIX):
        return _split_mac(payload)
    if not payload.startswith(_SIG_PREFIX):
        return None
    if len(payload) <= _BODY_AT or (
        payload[_KID_AT - len(_KID_PREFIX) : _KID_AT] != _KID_PREFIX
        or payload[_BODY_AT - len(_BODY_SEPARATOR) : _BODY_AT] != _BODY_SEPARATOR
    ):
        raise ProtocolError("bad_signature_format", "the signature header is not laid out right")
    kid = payload[_KID_AT : _KID_AT + _KID_CHARS]
    if not set(kid) <= _HEX:
        raise ProtocolError("bad_signature_format", "the key id is not 16 lowercase hex digits")
    try:
        signature = base64.b64decode(
            payload[len(_SIG_PREFIX) : len(_SIG_PREFIX) + _SIG_CHARS], validate=True
        )
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("bad_signature_format", "the signature is not base64") from e
    if len(signature) != 64:
        raise ProtocolError("bad_signature_format", "the signature is not 64 bytes")
    return SignedPayload(signature, kid.decode("ascii"), b"{" + payload[_BODY_AT:])


def _split_mac(payload: bytes) -> SignedPayload:
    if len(payload) <= _MAC_BODY_AT or (
        payload[_MAC_KID_AT - len(_KID_PREFIX) : _MAC_KID_AT] != _KID_PREFIX
        or payload[_MAC_BODY_AT - len(_BODY_SEPARATOR) : _MAC_BODY_AT] != _BODY_SEPARATOR
    ):
        raise ProtocolError("bad_signature_format", "the MAC header is not laid out right")
    kid = payload[_MAC_KID_AT : _MAC_KID_AT + _KID_CHARS]
    if not set(kid) <= _HEX:
        raise ProtocolError("bad_signature_format", "the key id is not 16 lowercase hex digits")
    try:
        mac = base64.b64decode(
            payload[len(_MAC_PREFIX) : _MAC_KID_AT - len(_KID_PREFIX)], validate=True
        )
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("bad_signature_format", "the MAC is not base64") from e
    if len(mac) != 32:
        raise ProtocolError("bad_signature_format", "the MAC is not 32 bytes")
    return SignedPayload(mac, kid.decode("ascii"), b"{" + payload[_MAC_BODY_AT:], mac=True)


@lru_cache(maxsize=65536)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(public_key: bytes, domain: bytes, topic: str, signed: SignedPayload) -> bool:
    """True when ``signed`` was signed by ``public_key`` (raw 32 bytes) for ``topic``."""
    if signed.mac:
        return False
    try:
        _public_key(public_key).verify(signed.signature, signed_bytes(domain, topic, signed.body))
    except (InvalidSignature, ValueError):
        return False
    return True
