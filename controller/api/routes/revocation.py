"""``POST /api/devices/{id}/revoke``: revoke a device over the API (admin only).

The API twin of ``edgefleet devices revoke`` (which runs on the controller host): the
device's certificates are revoked, its broker login dropped, the device decommissioned
(audited with the admin's name), and the CRL re-signed at once when this controller can open
the CA key, else by its ``crl-refresh`` job once it can. Ingest refuses the device's
messages from the commit on; the broker refuses its next connection once it reloads the
CRL (docs/tls.md).
"""

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from controller.api.deps import CurrentUser, DbDep, ServicesDep
from controller.pki.errors import PkiError
from controller.pki.revocation import (
    MAX_REASON,
    RevocationError,
    UnknownDevice,
    revoke_device,
)
from controller.pki.store import PkiStore

router = APIRouter(prefix="/api/devices", tags=["devices"])
log = logging.getLogger(__name__)


class RevokeRequest(BaseModel):
    """Why the device is revoked (audit log, certificate records)."""

    reason: str = Field(min_length=1, max_length=MAX_REASON)


class RevokeResult(BaseModel):
    """What the revocation changed, and whether the CRL file already lists it."""

    device_id: str
    serials: list[str]
    credential_dropped: bool
    already: bool
    crl: str  # "re-signed", "current", "no CA", or "pending: <why it could not be signed>"


@router.post("/{device_id}/revoke")
def revoke(
    device_id: str, body: RevokeRequest, db: DbDep, services: ServicesDep, user: CurrentUser
) -> RevokeResult:
    """Revoke a device; 404 for a device this controller never knew, 422 for a bad reason."""
    try:
        done = revoke_device(
            db, device_id, reason=body.reason, actor=f"user:{user.username}", now=datetime.now(UTC)
        )
    except UnknownDevice as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from e
    except RevocationError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(e)) from e
    db.commit()
    pki = services.settings.pki
    crl = "no CA"
    if PkiStore(pki.dir, None, pki).exists():
        try:
            crl = "re-signed" if services.refresh_crl() is not None else "current"
        except PkiError as e:
            log.error("CRL not re-signed after revoking %s: %s", device_id, e)
            crl = f"pending: {e}"
    return RevokeResult(
        device_id=device_id,
        serials=list(done.serials),
        credential_dropped=done.credential_dropped,
        already=done.already,
        crl=crl,
    )
