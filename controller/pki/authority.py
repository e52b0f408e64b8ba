"""Certificate authority operations, pure apart from the randomness of keys and serials.

One CA (ECDSA P-256, self-signed, path length 0) signs the broker's server certificate and
every device's client certificate, and publishes the revocation list the broker checks. The
CA never signs a CSR whose CN is not the device it is asked to certify; device certificates
carry clientAuth only, server certificates serverAuth only, so neither can pose as the other.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.certificates import CertificateError, common_name, new_private_key, read_csr

# Signed slightly in the past, so a device whose clock is a little behind accepts it.
BACKDATE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Authority:
    """The CA's key and certificate, held only while signing."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclass(frozen=True, slots=True)
class Revoked:
    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_id(key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


def new_authority(name: str, *, now: datetime, days: int) -> Authority:
    """A new CA named ``name``, valid for ``days`` from ``now``."""
    key = new_private_key()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_key_id(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def _leaf(
    ca: Authority,
    subject: str,
    public: ec.EllipticCurvePublicKey,
    *,
    now: datetime,
    days: int,
    usage: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    if now + timedelta(days=days) > ca.cert.not_valid_after_utc:
        raise CertificateError("the CA expires before the certificate would: renew the CA first")
    ca_public = ca.key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(_key_id(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
    )


def server_certificate(
    ca: Authority,
    hosts: Sequence[str],
    key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime,
    days: int,
) -> x509.Certificate:
    """A broker (or controller HTTPS) certificate for ``hosts``: DNS names and IP addresses
    as subject alternative names (clients verify those, not the CN)."""
    if not hosts:
        raise CertificateError("a server certificate needs at least one host name or address")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return (
        _leaf(
            ca,
            hosts[0],
            key.public_key(),
            now=now,
            days=days,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def device_certificate(
    ca: Authority, csr_pem: bytes, device_id: str, *, now: datetime, days: int
) -> x509.Certificate:
    """Sign a device's CSR; refused unless the CSR verifies and its CN is ``device_id``."""
    csr = read_csr(csr_pem)
    cn = common_name(csr.subject)
    if cn != device_id:
        raise CertificateError(f"the CSR names {cn!r}, not the device {device_id!r}")
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)  # read_csr checked it
    return _leaf(
        ca, device_id, public, now=now, days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    ).sign(ca.key, hashes.SHA256())


def revocation_list(
    ca: Authority, revoked: Iterable[Revoked], *, now: datetime, next_update: timedelta
) -> x509.CertificateRevocationList:
    """The CA's CRL listing ``revoked``, valid until ``now + next_update`` (the broker
    refuses every client once it expires, so it is re-signed well before)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + next_update)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for item in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(item.serial)
            .revocation_date(item.revoked_at)
            .add_extension(x509.CRLReason(item.reason), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256())
