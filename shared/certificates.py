"""X.509 pieces both sides need: a device makes its TLS key and a certificate signing request
(at flash time, and again to renew), the controller reads CSRs and both read certificates.

Keys are ECDSA P-256 (what AWS IoT and Mosquitto's docs use; small and fast to handshake on
a device). A device's certificate names the device in its subject CN and nowhere else: the
broker takes the CN as the MQTT user name (``use_identity_as_username``) and ACLs key on it.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# A request larger than this is not a CSR for one P-256 key with a CN: refused unread.
MAX_CSR_BYTES = 8 * 1024


class CertificateError(ValueError):
    """A key, CSR or certificate that cannot be used; the text says why."""


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with ``passphrase`` when given (a device's key is not: it lives
    on the device, readable by the agent's user only, like its identity key)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key(pem: bytes, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"not a usable private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the private key is not an EC key")
    return key


def csr_for(device_id: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM certificate signing request with subject CN = ``device_id``, signed by ``key``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def read_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """Parse and check a CSR: size, PEM, a valid self-signature, a P-256 key, exactly one CN."""
    if len(pem) > MAX_CSR_BYTES:
        raise CertificateError(f"CSR of {len(pem)} bytes is over {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(pem)
    except ValueError as e:
        raise CertificateError(f"not a PEM certificate signing request: {e}") from e
    if not csr.is_signature_valid:
        raise CertificateError("the CSR's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError("the CSR's key is not ECDSA P-256")
    common_name(csr.subject)
    return csr


def common_name(name: x509.Name) -> str:
    """The one CN of a subject; CertificateError if there is none or several."""
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        raise CertificateError(f"expected one subject CN, found {len(values)}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the agent and the console need to know of a certificate."""

    subject_cn: str
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str

    def remaining_fraction(self, now: datetime) -> float:
        """How much of its lifetime is left at ``now`` (1.0 at issue, 0.0 at expiry)."""
        total = (self.not_after - self.not_before).total_seconds()
        if total <= 0:
            return 0.0
        left = (self.not_after - now).total_seconds()
        return max(0.0, min(1.0, left / total))


def read_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise CertificateError(f"not a PEM certificate: {e}") from e


def certificate_info(pem: bytes) -> CertificateInfo:
    cert = read_certificate(pem)
    return CertificateInfo(
        subject_cn=common_name(cert.subject),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc.astimezone(UTC),
        not_after=cert.not_valid_after_utc.astimezone(UTC),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
