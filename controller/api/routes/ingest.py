"""``/api/ingest``: what ingest accepted and rejected, and the dead letters."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlmodel import col, select

from controller.api.deps import CurrentUser, DbDep, ServicesDep
from controller.models import RejectedMessage

router = APIRouter(prefix="/api/ingest", tags=["ingest"])


class RejectedPublic(BaseModel):
    received_at: datetime
    topic: str
    reason: str
    detail: str
    size: int


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
    _user: CurrentUser,
    reason: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[RejectedPublic]:
    """The newest dead letters, newest first, optionally of one reason."""
    query = select(RejectedMessage).order_by(col(RejectedMessage.id).desc()).limit(limit)
    if reason is not None:
        query = query.where(col(RejectedMessage.reason) == reason)
    return [RejectedPublic.model_validate(r, from_attributes=True) for r in db.exec(query).all()]
