"""``/api/devices/{id}/shadow``: desired and reported state, and the delta between them."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Body, HTTPException

from controller.api.deps import CurrentUser, DbDep, ServicesDep
from controller.devices.shadows import DeviceShadow, OwnedKeyError, set_desired, view
from controller.devices.tables import Device
from shared.shadow import ShadowError

router = APIRouter(prefix="/api/devices", tags=["shadow"])


@router.get("/{device_id}/shadow")
def get_shadow(device_id: str, db: DbDep, _user: CurrentUser) -> dict[str, Any]:
    """Desired (the controller's), reported (the device's), and what is still to apply."""
    if db.get(Device, device_id) is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    row = db.get(DeviceShadow, device_id) or DeviceShadow(device_id=device_id)
    return view(row)


@router.patch("/{device_id}/shadow/desired")
def patch_desired(
    device_id: str,
    db: DbDep,
    services: ServicesDep,
    user: CurrentUser,
    patch: dict[str, Any] = Body(..., description="RFC 7396 merge patch; null deletes a key"),  # noqa: B008
) -> dict[str, Any]:
    """Merge into the desired document, bump its version and publish it (retained); the
    change is audited with its keys before and after. Keys a controller service owns
    (``quarantine``, ``model``, ``policy``, ``drill``) are refused with 403 naming them."""
    if db.get(Device, device_id) is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    now = datetime.now(UTC)
    try:
        row = set_desired(db, device_id, patch, now=now, actor=f"user:{user.username}")
    except OwnedKeyError as e:
        raise HTTPException(403, str(e)) from e
    except ShadowError as e:  # too deep, too large or not JSON: the device could not take it
        raise HTTPException(422, f"shadow patch refused: {e}") from e
    db.commit()
    if services.publish_desired(row):
        row.desired_published_at = now
        db.add(row)
        db.commit()
    return view(row)
