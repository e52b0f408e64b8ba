"""``/api/fleet``: the fleet at a glance (devices, request mix, rates, cost estimates)."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from controller.api.deps import DbDep, ServicesDep
from controller.rollouts.queries import count_active_rollouts
from controller.telemetry.queries import fleet_summary

router = APIRouter(prefix="/api/fleet", tags=["telemetry"])


@router.get("/summary")
def summary(
    db: DbDep, services: ServicesDep, hours: Annotated[int, Query(ge=1, le=720)] = 24
) -> dict[str, Any]:
    """Device counts, requests by tier, escalation / cascade / fallback / error rates
    (fractions, null without requests), estimated cloud cost saved and spent at the
    configured prices, an hourly series, open alerts and active rollouts."""
    summary = fleet_summary(db, services.settings.telemetry, now=datetime.now(UTC), hours=hours)
    return {**summary, "rollouts_active": count_active_rollouts(db)}
