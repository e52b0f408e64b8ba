"""What device and controller agree on to renew a device's TLS certificate over MQTT.

- The bytes a renewal request's proof covers (``request_payload``): canonical JSON of the
  device id, the request id, the request's time, the fingerprint of the certificate the
  device holds now and the SHA-256 of the CSR, under a domain tag so the signature can never
  be mistaken for any other signed document. The device signs it with the key of its
  current certificate (the one the broker authenticated the session with), so whoever only
  rides a broker session, or replays an old request, gets no certificate for a key of theirs.
- ECDSA P-256 / SHA-256 signatures in standard base64 (DER inside).
- The device's checks of what comes back (``check_issued``): the certificate names this
  device, certifies the new key, was signed by the CA that signed the current certificate
  (and that CA is one the device trusts) and is valid now.

Pure: bytes, keys and a reference time in; no files, no clock.
"""

import base64
import binascii
import hashlib
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.attestation import stamp
from shared.canonical import canonical_json
from shared.certificates import CertificateError, common_name, read_certificate

RENEWAL_DOMAIN = "edgefleet/pki/renewal/v1"
# A DER ECDSA P-256 signature is at most 72 bytes.
MAX_SIGNATURE_BYTES = 72


def request_payload(
    *,
    device_id: str,
    request_id: str,
    requested_at: datetime,
    current_fingerprint: str,
    csr: str,
) -> bytes:
    """The exact bytes a renewal request's signature covers (canonical JSON: keys sorted)."""
    return canonical_json(
        {
            "domain": RENEWAL_DOMAIN,
            "device_id": device_id,
            "request_id": request_id,
            "requested_at": stamp(requested_at),
            "current_fingerprint": current_fingerprint,
            "csr_sha256": hashlib.sha256(csr.encode("ascii")).hexdigest(),
        }
    )


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    """Base64 ECDSA-SHA256 signature (DER) of ``payload``."""
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def verify(public_key: object, payload: bytes, signature: str) -> bool:
    """True if ``signature`` (base64 DER) is ``public_key``'s ECDSA-SHA256 signature of
    ``payload``; False for any other key type or a malformed signature."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        if len(raw) > MAX_SIGNATURE_BYTES:
            return False
        public_key.verify(raw, payload, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER (what ``certificate_info`` reports too)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def same_key(a: object, b: object) -> bool:
    """True if two public keys are the same key (compared by their DER encoding)."""
    if not isinstance(a, ec.EllipticCurvePublicKey) or not isinstance(b, ec.EllipticCurvePublicKey):
        return False
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(der, spki) == b.public_bytes(der, spki)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def check_issued(
    certificate_pem: str,
    ca_pem: str,
    *,
    device_id: str,
    new_key: ec.EllipticCurvePublicKey,
    current: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    now: datetime,
) -> x509.Certificate:
    """The renewed certificate, after the device's checks; ``CertificateError`` naming the
    first one that fails.

    ``trusted`` are the CA certificates the device trusts (its ``mqtt.ca_file``; empty when
    it uses the system store): the CA sent along must be one of them, when there are any,
    and must have signed both the device's current certificate and the new one, so a
    renewal can never move the device to another CA.
    """
    cert = read_certificate(certificate_pem.encode("ascii"))
    ca = read_certificate(ca_pem.encode("ascii"))
    cn = common_name(cert.subject)
    if cn != device_id:
        raise CertificateError(f"the certificate names {cn!r}, not this device {device_id!r}")
    if not same_key(cert.public_key(), new_key):
        raise CertificateError("the certificate is not for the key this device asked for")
    if trusted and not any(ca == anchor for anchor in trusted):
        raise CertificateError("the CA sent along is not in this device's CA file")
    if not _issued_by(current, ca):
        raise CertificateError("the CA sent along did not sign this device's current certificate")
    if not _issued_by(cert, ca):
        raise CertificateError("the certificate was not signed by the CA sent along")
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise CertificateError(
            f"the certificate is not valid now (valid {cert.not_valid_before_utc.isoformat()}"
            f" to {cert.not_valid_after_utc.isoformat()})"
        )
    return cert


def read_ca_file(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (a CA file); ``CertificateError`` if none parses."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise CertificateError(f"not a PEM certificate bundle: {e}") from e
    return certs


__all__ = [
    "RENEWAL_DOMAIN",
    "check_issued",
    "fingerprint",
    "read_ca_file",
    "request_payload",
    "same_key",
    "sign",
    "verify",
]
