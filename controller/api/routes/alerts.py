"""``/api/alerts``: drift (and future) alerts, open and closed."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from controller.api.deps import DbDep, Offset
from controller.telemetry.queries import list_alerts

router = APIRouter(prefix="/api/alerts", tags=["telemetry"])


@router.get("")
def alerts(
    db: DbDep,
    state: Literal["open", "closed", "all"] = "open",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Alerts, newest first."""
    return list_alerts(db, state=state, limit=limit, offset=offset)
