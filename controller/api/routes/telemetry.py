"""``/api/devices/{id}/telemetry``: the records a device sent, newest first."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import col, select

from controller.api.deps import CurrentUser, DbDep, Offset
from controller.devices.tables import Device
from controller.telemetry.tables import TelemetryRecord

router = APIRouter(prefix="/api/devices", tags=["telemetry"])


class RecordPublic(BaseModel):
    epoch: int
    seq: int
    kind: str
    name: str
    at: datetime
    body: dict[str, Any]


class RecordPage(BaseModel):
    data: list[RecordPublic]
    count: int


@router.get("/{device_id}/telemetry")
def device_telemetry(
    device_id: str,
    db: DbDep,
    _user: CurrentUser,
    name: str | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    offset: Offset = 0,
) -> RecordPage:
    """Records of one device (optionally one name or kind), newest first, with the total."""
    if db.get(Device, device_id) is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    where = [col(TelemetryRecord.device_id) == device_id]
    if name is not None:
        where.append(col(TelemetryRecord.name) == name)
    if kind is not None:
        where.append(col(TelemetryRecord.kind) == kind)
    total = db.exec(select(func.count()).select_from(TelemetryRecord).where(*where)).one()
    rows = db.exec(
        select(TelemetryRecord)
        .where(*where)
        .order_by(col(TelemetryRecord.epoch).desc(), col(TelemetryRecord.seq).desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return RecordPage(
        data=[RecordPublic.model_validate(r, from_attributes=True) for r in rows], count=int(total)
    )
