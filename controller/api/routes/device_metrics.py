"""``/api/devices/{id}/metrics``: one device's hourly health and request latency."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from controller.api.deps import DbDep
from controller.devices.tables import Device
from controller.telemetry.queries import device_metrics

router = APIRouter(prefix="/api/devices", tags=["telemetry"])


@router.get("/{device_id}/metrics")
def metrics(
    device_id: str, db: DbDep, hours: Annotated[int, Query(ge=1, le=720)] = 24
) -> dict[str, Any]:
    """Hourly CPU / memory / disk / temperature, latency p50/p95 per tier and task class
    (hourly and over the window), and the newest system sample."""
    if db.get(Device, device_id) is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    return device_metrics(db, device_id, now=datetime.now(UTC), hours=hours)
