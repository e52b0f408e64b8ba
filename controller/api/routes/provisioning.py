"""``/api/devices/{id}/broker-credential``: issue a device's broker login over the API.

The API twin of ``edgefleet devices provision`` (which writes the database directly on the
controller host), for ``edgefleet flash`` run from an operator's machine. Admin only
(``controller/auth/access.py``): a broker login decides who may speak for a device.

The caller may send the ``$7$`` hash of a password it generated itself (the flasher does):
then the password never crosses the network and the controller keeps only the hash, as
always. Without one, the controller generates a password and returns it once.
An external Mosquitto picks new credentials up when ``edgefleet broker mosquitto-config``
is run again (and the broker reloaded); the embedded broker does not authenticate.
"""

import base64
import binascii
import re
from datetime import datetime

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field

from controller.api.deps import CurrentUser, DbDep, ServicesDep
from controller.audit import audit
from controller.broker.mosquitto_auth import (
    DEFAULT_ITERATIONS,
    DIGEST_BYTES,
    SALT_BYTES,
    generate_password,
    hash_password,
)
from controller.broker.tables import BrokerCredential
from controller.db import utcnow
from controller.devices.tables import Device
from controller.pki.revocation import recommission
from shared.topics import is_valid_device_id

router = APIRouter(prefix="/api/devices", tags=["provisioning"])

_HASH = re.compile(r"^\$7\$([1-9][0-9]{0,6})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


def is_password_hash(text: str) -> bool:
    """True if ``text`` is a well-formed ``$7$`` hash (what Mosquitto's password file takes)
    with at least the iteration count ``hash_password`` uses (a weaker hash is refused)."""
    match = _HASH.match(text)
    if match is None or int(match[1]) < DEFAULT_ITERATIONS:
        return False
    try:
        salt = base64.b64decode(match[2], validate=True)
        digest = base64.b64decode(match[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(salt) == SALT_BYTES and len(digest) == DIGEST_BYTES


class CredentialRequest(BaseModel):
    """Issue (or, with ``rotate``, replace) a device's broker credential."""

    # ``$7$`` PBKDF2-SHA512 hash (mosquitto_passwd format) of a caller-generated password.
    password_hash: str | None = Field(default=None, max_length=256)
    rotate: bool = False


class CredentialIssued(BaseModel):
    """The issued credential; ``password`` only when the controller generated it."""

    device_id: str
    username: str
    created_at: datetime
    password: str | None = None


@router.post("/{device_id}/broker-credential", status_code=status.HTTP_201_CREATED)
def issue_credential(
    device_id: str,
    body: CredentialRequest,
    response: Response,
    db: DbDep,
    services: ServicesDep,
    user: CurrentUser,
) -> CredentialIssued:
    """Issue the device's broker login (registering the device if it is new); 409 if it
    has one already and ``rotate`` is not set."""
    if not is_valid_device_id(device_id):
        raise HTTPException(
            422,
            f"invalid device id {device_id!r}: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit",
        )
    if device_id == services.settings.broker.username:
        raise HTTPException(422, f"device id {device_id!r} is the controller's broker user name")
    if body.password_hash is not None and not is_password_hash(body.password_hash):
        raise HTTPException(
            422,
            "password_hash is not a $7$ (mosquitto_passwd) hash with at least"
            f" {DEFAULT_ITERATIONS} iterations",
        )
    credential = db.get(BrokerCredential, device_id)
    if credential is not None and not body.rotate:
        raise HTTPException(
            409, f"device {device_id!r} already has a broker credential; set rotate to replace it"
        )
    password = None if body.password_hash is not None else generate_password()
    if credential is None:
        credential = BrokerCredential(device_id=device_id, username=device_id, password_hash="")
    credential.password_hash = body.password_hash or hash_password(password or "")
    credential.created_at = utcnow()
    credential.revoked_at = None
    db.add(credential)
    if db.get(Device, device_id) is None:
        db.add(Device(id=device_id, state="unknown"))
    # Provisioning a revoked device again (flash --rotate) takes it back into the fleet.
    recommission(db, device_id, actor=f"user:{user.username}", now=utcnow())
    audit(
        db,
        actor=f"user:{user.username}",
        action="broker.credential.issue",
        target=f"device:{device_id}",
        detail={"rotate": body.rotate, "caller_hashed": password is None},
    )
    db.commit()
    db.refresh(credential)
    response.headers["Cache-Control"] = "no-store"  # may carry a password
    return CredentialIssued(
        device_id=device_id,
        username=credential.username,
        created_at=credential.created_at,
        password=password,
    )
