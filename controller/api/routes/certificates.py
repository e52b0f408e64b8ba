"""``/api/devices/{id}/certificate`` and ``/api/pki/ca``: the device CA over the API.

``edgefleet flash`` generates a device's TLS key on the target and sends only a CSR here;
the answer is the certificate the CA signed (CN = the device) and the CA certificate the
device verifies its broker with. Issuing is admin only (``controller/auth/access.py``), as a
broker login is: a certificate decides who may speak for a device. The CA certificate is
public material, readable by any logged-in user (flash fetches it first, so a controller
without a CA is refused before anything is registered).

Refusals: 422 for a CSR that is not a valid P-256 request or whose CN is not the device,
409 for a revoked (or, when provisioning is required, unprovisioned) device, 503 when the
controller has no CA (``edgefleet pki init``) or cannot open its key.
"""

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field

from controller.api.deps import CurrentUser, DbDep, ServicesDep
from controller.pki.errors import (
    CertificateRefused,
    DeviceNotProvisionedError,
    DeviceRevokedError,
    PkiError,
)
from controller.pki.message_keys import MessageKeyStore
from controller.pki.service import issue_device_certificate
from controller.pki.store import PkiStore
from controller.updates.errors import KeyStoreError
from controller.updates.keys import read_passphrase
from shared.attestation import encode_public_key
from shared.certificates import MAX_CSR_BYTES
from shared.message_signing import short_key_id

router = APIRouter(tags=["pki"])


class CertificateRequest(BaseModel):
    """A PEM certificate signing request made on the device (CN = the device id)."""

    csr: str = Field(max_length=MAX_CSR_BYTES)


class CertificateIssued(BaseModel):
    """The signed certificate and the CA certificate, both PEM."""

    device_id: str
    certificate: str
    ca: str
    serial: str
    not_after: datetime
    fingerprint: str


class CaCertificate(BaseModel):
    ca: str
    subject: str
    not_after: datetime


def _store(services: ServicesDep) -> PkiStore:
    try:
        return PkiStore.from_settings(services.settings)
    except PkiError as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e


@router.get("/api/pki/ca")
def ca_certificate(services: ServicesDep) -> CaCertificate:
    """The device CA's certificate; 503 when there is none yet."""
    store = _store(services)
    try:
        cert = store.ca_certificate()
    except PkiError as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e
    return CaCertificate(
        ca=store.ca_pem().decode("ascii"),
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
    )


class MessageKeys(BaseModel):
    """The controller message keys devices are to trust (raw Ed25519, base64), newest first."""

    keys: list[str]
    current: str
    # The X25519 key paired with the current one, for session MACs (docs/protocol.md).
    exchange_key: str


@router.get("/api/pki/message-keys")
def message_keys(services: ServicesDep) -> MessageKeys:
    """The public half of the key that signs the controller's messages to devices
    (``edgefleet flash`` writes it onto the device), created now if there is none yet; 503
    when it cannot be read or made."""
    settings = services.settings
    try:
        store = MessageKeyStore(settings.pki.dir, read_passphrase(settings.updates.passphrase_file))
        if store.current_kid() is None:
            store.generate()  # what serve would do at start; flashing may come first
        raw = store.current_public_key()
        exchange = store.exchange_public_key(short_key_id(raw))
    except (PkiError, KeyStoreError) as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e
    return MessageKeys(
        keys=[encode_public_key(raw)],
        current=short_key_id(raw),
        exchange_key=encode_public_key(exchange),
    )


@router.post("/api/devices/{device_id}/certificate", status_code=status.HTTP_201_CREATED)
def issue_certificate(
    device_id: str,
    body: CertificateRequest,
    response: Response,
    db: DbDep,
    services: ServicesDep,
    user: CurrentUser,
) -> CertificateIssued:
    """Sign the device's CSR; the certificate lives ``pki.device_cert_days``."""
    store = _store(services)
    try:
        issued = issue_device_certificate(
            db,
            store,
            device_id,
            body.csr.encode("utf-8"),
            datetime.now(UTC),
            require_provisioned=services.settings.require_provisioned_devices,
            actor=f"user:{user.username}",
        )
    except CertificateRefused as e:
        raise HTTPException(422, str(e)) from e
    except (DeviceRevokedError, DeviceNotProvisionedError) as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
    except PkiError as e:  # no CA, or its key cannot be opened
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e
    db.commit()
    response.headers["Cache-Control"] = "no-store"
    return CertificateIssued(
        device_id=device_id,
        certificate=issued.certificate_pem.decode("ascii"),
        ca=issued.ca_pem.decode("ascii"),
        serial=issued.serial,
        not_after=issued.not_after,
        fingerprint=issued.fingerprint,
    )
