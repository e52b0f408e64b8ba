"""``/console/devices/{id}``: one device's health, latency, shadow, attestation and events."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.api.deps import DbDep, OptionalUser
from controller.console.render import not_found, page, to_login
from controller.devices.tables import Device, DevicePublic

router = APIRouter(include_in_schema=False)


@router.get("/console/devices/{device_id}")
def device_page(device_id: str, request: Request, db: DbDep, user: OptionalUser) -> Response:
    """The device's page; ``static/device.js`` draws its charts and keeps them live."""
    if user is None:
        return to_login()
    device = db.get(Device, device_id)
    if device is None:
        return not_found(request, user, f"Device {device_id!r} is not registered.")
    return page(
        request,
        user,
        "device.html",
        {"section": "fleet", "device": DevicePublic.model_validate(device, from_attributes=True)},
    )
