"""``/api/ingest``: what ingest accepted and rejected, and the dead letters."""

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlmodel import col, select

from controller.api.deps import CurrentUser, DbDep, ServicesDep
from controller.ingest.tables import RejectedMessage

router = APIRouter(prefix="/api/ingest", tags=["ingest"])
log = logging.getLogger(__name__)


class RejectedPublic(BaseModel):
    """One dead letter: ``count`` rejections of one device and reason (topic, detail and
    size are the first one's), from ``received_at`` to ``last_at``."""

    received_at: datetime
    last_at: datetime | None
    device_id: str | None
    topic: str
    reason: str
    detail: str
    size: int
    count: int


@router.get("/stats")
def ingest_stats(services: ServicesDep, _user: CurrentUser) -> dict[str, Any]:
    """Counters since this controller process started, and the broker link state."""
    return {
        **services.stats.snapshot(),
        "broker_connected": bool(services.ingest and services.ingest.connected),
    }


@router.get("/rejected")
def rejected_messages(
    db: DbDep,
    services: ServicesDep,
    _user: CurrentUser,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    device: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RejectedPublic]:
    """The newest dead letters, newest first, optionally of one reason or one device.
    Rejections are aggregated and capped: ``/api/ingest/stats`` counts every one."""
    if services.ingest is not None:
        # Rows gathered since the dead-letter worker's last run are shown too; a failure
        # there is the worker's to report (logged, counted), never this read's.
        try:
            services.ingest.flush_dead_letters()
        except Exception:
            log.exception("could not store the gathered dead letters")
    query = select(RejectedMessage).order_by(col(RejectedMessage.id).desc()).limit(limit)
    if reason is not None:
        query = query.where(col(RejectedMessage.reason) == reason)
    if device is not None:
        query = query.where(col(RejectedMessage.device_id) == device)
    return [RejectedPublic.model_validate(r, from_attributes=True) for r in db.exec(query).all()]
