"""Revoking a device: its certificates into the CRL, its broker login dropped, the device
decommissioned, in the caller's transaction (docs/tls.md).

``edgefleet devices revoke`` (on the controller host), ``POST /api/devices/{id}/revoke``
(admin) and attestation with ``on_fail: revoke`` all come here. The revocation list itself
is signed after the commit (``controller.pki.crl.refresh_crl``): the table is the truth, the
file follows it. Ingest refuses a decommissioned device's messages (``revoked``) at once,
also over a connection the broker opened before the revocation.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from controller.audit import audit
from controller.broker.tables import BrokerCredential
from controller.devices.tables import Device
from controller.pki.tables import IssuedCertificate

MAX_REASON = 256


class RevocationError(ValueError):
    """The revocation cannot be made as asked (unknown device, no reason); the text says why."""


class UnknownDevice(RevocationError):
    """No registry row, broker login or certificate names the device."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """What one revocation changed."""

    device_id: str
    serials: tuple[str, ...]  # certificates revoked now (hex serials)
    credential_dropped: bool  # a live broker password login was revoked now
    already: bool  # the device was decommissioned before: nothing left to revoke


def check_reason(reason: str) -> str:
    """The reason, stripped; RevocationError when it is empty or does not fit one line."""
    text = reason.strip()
    if not text:
        raise RevocationError("give a reason (--reason): it goes to the audit log and the CRL")
    if len(text) > MAX_REASON or any(c in text for c in "\r\n\0"):
        raise RevocationError(f"the reason must be one line of at most {MAX_REASON} characters")
    return text


def revoke_device(
    session: Session, device_id: str, *, reason: str, actor: str, now: datetime
) -> Revocation:
    """Revoke every unrevoked certificate of ``device_id``, drop its broker login and mark it
    decommissioned (audited). Revoking a decommissioned device again revokes whatever was
    issued since (nothing, normally). RevocationError for a device the controller never
    knew (no registry row, login or certificate)."""
    reason = check_reason(reason)
    device = session.get(Device, device_id)
    credential = session.get(BrokerCredential, device_id)
    certificates = session.exec(
        select(IssuedCertificate).where(
            col(IssuedCertificate.device_id) == device_id,
            col(IssuedCertificate.revoked_at).is_(None),
        )
    ).all()
    if device is None and credential is None and not certificates:
        known = session.exec(
            select(IssuedCertificate.serial).where(col(IssuedCertificate.device_id) == device_id)
        ).first()
        if known is None:
            raise UnknownDevice(f"device {device_id!r} is not known to this controller")
    already = device is not None and device.decommissioned
    for row in certificates:
        row.revoked_at = now
        row.revoke_reason = reason[:256]
        session.add(row)
    dropped = credential is not None and credential.revoked_at is None
    if credential is not None and dropped:
        credential.revoked_at = now
        session.add(credential)
    if device is None:
        device = Device(id=device_id, state="unknown", first_seen=now)
    if not device.decommissioned:
        device.decommissioned = True
        device.decommissioned_at = now
        device.decommission_reason = reason
    session.add(device)
    result = Revocation(
        device_id=device_id,
        serials=tuple(sorted(row.serial for row in certificates)),
        credential_dropped=dropped,
        already=already and not certificates and not dropped,
    )
    if not result.already:
        audit(
            session,
            actor=actor,
            action="device.revoke",
            target=f"device:{device_id}",
            reason=reason,
            detail={"serials": list(result.serials), "credential_dropped": dropped},
            at=now,
        )
    return result


def recommission(session: Session, device_id: str, *, actor: str, now: datetime) -> bool:
    """Clear a device's decommissioned mark (it is being provisioned again, with a new
    login or certificate; the revoked certificates stay in the CRL). True if it was set."""
    device = session.get(Device, device_id)
    if device is None or not device.decommissioned:
        return False
    audit(
        session,
        actor=actor,
        action="device.recommission",
        target=f"device:{device_id}",
        reason="provisioned again",
        detail={"was": device.decommission_reason},
        at=now,
    )
    device.decommissioned = False
    device.decommissioned_at = None
    device.decommission_reason = None
    session.add(device)
    return True


__all__ = [
    "MAX_REASON",
    "Revocation",
    "RevocationError",
    "UnknownDevice",
    "check_reason",
    "recommission",
    "revoke_device",
]
