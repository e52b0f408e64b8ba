"""``/api/devices``: the fleet registry and each device's status history."""

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import func
from sqlmodel import col, select

from controller.api.deps import CurrentUser, DbDep, Offset
from controller.devices.tables import (
    Device,
    DeviceList,
    DevicePublic,
    DeviceStatusEvent,
    DeviceStatusEventPublic,
)

router = APIRouter(prefix="/api/devices", tags=["devices"])


@router.get("")
def list_devices(
    db: DbDep,
    _user: CurrentUser,
    state: Literal["online", "offline", "unknown"] | None = None,
    quarantined: bool | None = None,
    decommissioned: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> DeviceList:
    """Devices ordered by id, optionally filtered by state, quarantine or revocation
    (decommissioned), with fleet-wide counts (quarantined: devices attestation does not
    trust)."""
    query = select(Device).order_by(col(Device.id))
    if state is not None:
        query = query.where(col(Device.state) == state)
    if quarantined is not None:
        query = query.where(col(Device.quarantined) == quarantined)
    if decommissioned is not None:
        query = query.where(col(Device.decommissioned) == decommissioned)
    rows = db.exec(query.offset(offset).limit(limit)).all()
    counts = dict(db.exec(select(Device.state, func.count()).group_by(col(Device.state))).all())
    held = db.exec(select(func.count()).select_from(Device).where(col(Device.quarantined))).one()
    return DeviceList(
        data=[DevicePublic.model_validate(row, from_attributes=True) for row in rows],
        count=sum(counts.values()),
        online=counts.get("online", 0),
        offline=counts.get("offline", 0),
        quarantined=held,
    )


@router.get("/{device_id}")
def get_device(device_id: str, db: DbDep, _user: CurrentUser) -> DevicePublic:
    device = db.get(Device, device_id)
    if device is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    return DevicePublic.model_validate(device, from_attributes=True)


@router.get("/{device_id}/events")
def device_events(
    device_id: str,
    db: DbDep,
    _user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[DeviceStatusEventPublic]:
    """The newest status events of one device, newest first."""
    if db.get(Device, device_id) is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    rows = db.exec(
        select(DeviceStatusEvent)
        .where(col(DeviceStatusEvent.device_id) == device_id)
        .order_by(col(DeviceStatusEvent.id).desc())
        .limit(limit)
    ).all()
    return [DeviceStatusEventPublic.model_validate(r, from_attributes=True) for r in rows]
