"""Issuing device certificates: the checks around a signature, the record of what was
issued, and the audit entry, in the caller's transaction.

``edgefleet flash`` (through ``POST /api/devices/{id}/certificate``) and ``edgefleet devices
provision --cert-out`` (straight on the controller host) both come here. A certificate is
refused for a CSR that is not a valid P-256 request naming exactly the device (CN), for a
revoked device, and, when ``require_provisioned_devices`` is set, for a device without a
live broker credential.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from controller.audit import audit
from controller.broker.tables import BrokerCredential
from controller.devices.tables import Device
from controller.pki.errors import (
    CertificateRefused,
    DeviceNotProvisionedError,
    DeviceRevokedError,
)
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate, serial_text
from shared.certificates import certificate_info, certificate_pem
from shared.topics import is_valid_device_id


@dataclass(frozen=True, slots=True)
class IssuedDeviceCertificate:
    """A signed device certificate, the CA that signed it, and its table row's facts."""

    device_id: str
    certificate_pem: bytes
    ca_pem: bytes
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint: str


def device_is_revoked(session: Session, device_id: str) -> bool:
    """Whether the device was revoked (``edgefleet devices revoke``) and not provisioned
    again since: decommissioned in the registry, or its broker credential revoked."""
    device = session.get(Device, device_id)
    # getattr: the registry's revocation columns come with the revocation feature.
    if device is not None and bool(getattr(device, "decommissioned", False)):
        return True
    credential = session.get(BrokerCredential, device_id)
    return credential is not None and credential.revoked_at is not None


def _check_device(session: Session, device_id: str, *, require_provisioned: bool) -> None:
    if not is_valid_device_id(device_id):
        raise CertificateRefused(
            f"invalid device id {device_id!r}: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    if device_is_revoked(session, device_id):
        raise DeviceRevokedError(
            f"device {device_id!r} is revoked; provision it again (edgefleet devices provision"
            f" {device_id} --rotate, or flash --rotate) before it gets a certificate"
        )
    if require_provisioned and session.get(BrokerCredential, device_id) is None:
        raise DeviceNotProvisionedError(
            f"device {device_id!r} is not provisioned and the controller requires provisioned"
            f" devices: run 'edgefleet devices provision {device_id}' (or flash it) first"
        )


def issue_device_certificate(
    session: Session,
    store: PkiStore,
    device_id: str,
    csr_pem: bytes,
    now: datetime,
    *,
    require_provisioned: bool = False,
    actor: str = "system:pki",
    days: int | None = None,
) -> IssuedDeviceCertificate:
    """Sign ``csr_pem`` for ``device_id`` (CN must be the device), record the certificate
    in ``issued_certificate`` and audit it; the caller commits. Raises a ``PkiError``
    (``CertificateRefused``, ``DeviceRevokedError``, ``DeviceNotProvisionedError``,
    ``NoAuthorityError``) saying what is wrong."""
    _check_device(session, device_id, require_provisioned=require_provisioned)
    cert = store.sign_device(csr_pem, device_id, now=now, days=days)
    pem = certificate_pem(cert)
    info = certificate_info(pem)
    row = IssuedCertificate(
        serial=serial_text(info.serial),
        device_id=device_id,
        not_before=info.not_before,
        not_after=info.not_after,
        fingerprint=info.fingerprint_sha256,
        issued_at=now,
    )
    session.add(row)
    if session.get(Device, device_id) is None:
        session.add(Device(id=device_id, state="unknown"))
    audit(
        session,
        actor=actor,
        action="pki.certificate.issue",
        target=f"device:{device_id}",
        detail={
            "serial": row.serial,
            "not_after": info.not_after.isoformat(),
            "fingerprint": info.fingerprint_sha256,
        },
        at=now,
    )
    return IssuedDeviceCertificate(
        device_id=device_id,
        certificate_pem=pem,
        ca_pem=store.ca_pem(),
        serial=row.serial,
        not_before=info.not_before,
        not_after=info.not_after,
        fingerprint=info.fingerprint_sha256,
    )


__all__ = [
    "IssuedDeviceCertificate",
    "device_is_revoked",
    "issue_device_certificate",
]
