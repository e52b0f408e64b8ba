"""Certificate renewal over MQTT: a device's ``cert_request`` judged and answered.

Called by ingest's writer in the batch's transaction (``controller/ingest/apply.py``); the
``cert_issued`` answer it returns is published after that transaction commits, like acks
and attestation challenges. A certificate is issued only when every check passes, in this
order, each refusal with its own reason (sent back to the device and dead-lettered):

- ``stale_request``: the request's time is more than ``pki.renew_max_skew`` away from the
  controller's clock (a replay, or a device clock too far off for TLS anyway);
- ``bad_certificate`` / ``wrong_device``: the certificate the device presents as its
  current one is not one, or names another device;
- ``unknown_certificate``, ``certificate_revoked``, ``certificate_expired``: it is not a
  certificate this CA issued to this device (``issued_certificate``, by fingerprint), it
  was revoked, or it has expired (an expired device is re-provisioned, not renewed);
- ``bad_proof``: the request is not signed by that certificate's key, so whoever sent it
  does not hold the device's current key (a broker session alone is not enough);
- ``bad_csr`` / ``wrong_cn`` / ``same_key``: the CSR is not a valid P-256 request, names
  another device, or asks to certify the current key again;
- ``revoked`` / ``not_provisioned``: the device was revoked, or has no live credential
  while the controller requires provisioned devices;
- ``ca_unavailable``: the CA key cannot be used right now (no passphrase, unreadable key);
  the device asks again later.

The new certificate is recorded and audited by ``issue_device_certificate``
(``pki.certificate.issue``, actor ``device:<id>``) like one from flashing. A replayed
request (inside the skew window) can only get another certificate for the key in its CSR,
which is useless to anyone but the device that holds that key.
"""

import logging
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from controller.pki.errors import (
    CertificateRefused,
    DeviceNotProvisionedError,
    DeviceRevokedError,
    NoAuthorityError,
    PkiError,
)
from controller.pki.service import issue_device_certificate
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate
from shared.cert_renewal import fingerprint, request_payload, same_key, verify
from shared.certificates import CertificateError, common_name, read_certificate, read_csr
from shared.errors import ProtocolError
from shared.messages import CertIssued, CertRequest

log = logging.getLogger(__name__)

DEFAULT_MAX_SKEW = timedelta(minutes=15)


class RenewalService:
    """Answers renewal requests with certificates signed by ``store``'s CA."""

    def __init__(
        self,
        store: PkiStore,
        *,
        require_provisioned: bool = False,
        max_skew: timedelta = DEFAULT_MAX_SKEW,
        days: int | None = None,
    ) -> None:
        self.store = store
        self.require_provisioned = require_provisioned
        self.max_skew = max_skew
        self.days = days

    def on_request(
        self, session: Session, request: CertRequest, now: datetime
    ) -> tuple[CertIssued, ProtocolError | None]:
        """The answer to ``request`` and, when it is a refusal, the error to dead-letter.
        Database errors propagate (the batch is retried)."""
        try:
            self._check(session, request, now)
            issued = issue_device_certificate(
                session,
                self.store,
                request.device_id,
                request.csr.encode("ascii"),
                now,
                require_provisioned=self.require_provisioned,
                actor=f"device:{request.device_id}",
                days=self.days,
            )
        except ProtocolError as e:
            return self._refusal(request, e), e
        except PkiError as e:
            error = ProtocolError(_reason(e), str(e))
            if isinstance(e, NoAuthorityError):
                log.error(
                    "certificate renewal for %s: the CA is unavailable: %s", request.device_id, e
                )
            return self._refusal(request, error), error
        log.info(
            "certificate renewed for %s: serial %s valid until %s",
            request.device_id,
            issued.serial,
            issued.not_after.isoformat(),
        )
        answer = CertIssued(
            device_id=request.device_id,
            ts=now,
            request_id=request.request_id,
            certificate=issued.certificate_pem.decode("ascii"),
            ca=issued.ca_pem.decode("ascii"),
        )
        return answer, None

    @staticmethod
    def _refusal(request: CertRequest, error: ProtocolError) -> CertIssued:
        return CertIssued(
            device_id=request.device_id,
            request_id=request.request_id,
            refused=error.reason,
            detail=error.detail[:256],
        )

    def _check(self, session: Session, request: CertRequest, now: datetime) -> None:
        """Every check before signing; raises ``ProtocolError`` naming the first failure."""
        device_id = request.device_id
        skew = abs(request.ts - now)
        if skew > self.max_skew:
            raise ProtocolError(
                "stale_request",
                f"requested at {request.ts.isoformat()}, {int(skew.total_seconds())} s from the"
                f" controller's clock (at most {int(self.max_skew.total_seconds())} s)",
            )
        try:
            current = read_certificate(request.certificate.encode("ascii"))
            cn = common_name(current.subject)
        except CertificateError as e:
            raise ProtocolError("bad_certificate", f"current certificate: {e}") from e
        if cn != device_id:
            raise ProtocolError(
                "wrong_device", f"the current certificate names {cn!r}, not {device_id!r}"
            )
        row = _issued_row(session, device_id, fingerprint(current))
        if row.revoked_at is not None:
            raise ProtocolError(
                "certificate_revoked", f"the current certificate (serial {row.serial}) is revoked"
            )
        if _utc(row.not_after) <= now:
            raise ProtocolError(
                "certificate_expired",
                f"the current certificate expired at {row.not_after.isoformat()}: provision the"
                " device again",
            )
        payload = request_payload(
            device_id=device_id,
            request_id=request.request_id,
            requested_at=request.ts,
            current_fingerprint=row.fingerprint,
            csr=request.csr,
        )
        if not verify(current.public_key(), payload, request.signature):
            raise ProtocolError(
                "bad_proof", "the request is not signed by the current certificate's key"
            )
        try:
            csr = read_csr(request.csr.encode("ascii"))
            csr_cn = common_name(csr.subject)
        except CertificateError as e:
            raise ProtocolError("bad_csr", str(e)) from e
        if csr_cn != device_id:
            raise ProtocolError(
                "wrong_cn", f"the CSR names {csr_cn!r}, not the device {device_id!r}"
            )
        if same_key(csr.public_key(), current.public_key()):
            raise ProtocolError(
                "same_key", "the CSR certifies the current key again; make a new key"
            )


def _utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; they are stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _issued_row(session: Session, device_id: str, fp: str) -> IssuedCertificate:
    row = session.exec(
        select(IssuedCertificate).where(
            col(IssuedCertificate.device_id) == device_id,
            col(IssuedCertificate.fingerprint) == fp,
        )
    ).first()
    if row is None:
        raise ProtocolError(
            "unknown_certificate",
            f"the current certificate ({fp[:16]}...) was not issued to {device_id!r} by this CA",
        )
    return row


def _reason(error: PkiError) -> str:
    if isinstance(error, DeviceRevokedError):
        return "revoked"
    if isinstance(error, DeviceNotProvisionedError):
        return "not_provisioned"
    if isinstance(error, CertificateRefused):
        return "bad_csr"
    return "ca_unavailable"


__all__ = ["DEFAULT_MAX_SKEW", "RenewalService"]
