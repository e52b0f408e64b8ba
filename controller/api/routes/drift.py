"""``/api/drift``: drift scores per model and feature, and their reference windows."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from controller.api.deps import CurrentUser, DbDep, ServicesDep
from controller.telemetry.drift import NoDriftData, set_reference
from controller.telemetry.queries import drift_list, drift_model

router = APIRouter(prefix="/api/drift", tags=["telemetry"])
ModelName = Annotated[str, Path(min_length=1, max_length=64)]


class ReferenceBody(BaseModel):
    """The window to take the reference from (default: the reference window up to now),
    optionally one version's sketches only."""

    model_config = ConfigDict(extra="forbid")

    window_start: AwareDatetime | None = None
    window_end: AwareDatetime | None = None
    version: str | None = Field(default=None, min_length=1, max_length=64)


@router.get("")
def list_drift(db: DbDep, services: ServicesDep) -> dict[str, Any]:
    """The newest scored hour of every model and feature, with the alert thresholds."""
    return drift_list(db, services.settings.telemetry, now=datetime.now(UTC))


# ``:path`` routes: model names may hold "/" (shared.telemetry_windows.Label).
@router.get("/{model:path}")
def show(
    model: ModelName,
    db: DbDep,
    services: ServicesDep,
    hours: Annotated[int, Query(ge=1, le=24 * 90)] = 168,
) -> dict[str, Any]:
    """One model's reference and its hourly PSI / KS per feature."""
    return drift_model(db, services.settings.telemetry, model, now=datetime.now(UTC), hours=hours)


@router.post("/{model:path}/reference")
def reference(
    model: ModelName,
    body: ReferenceBody,
    db: DbDep,
    services: ServicesDep,
    user: CurrentUser,
) -> dict[str, Any] | None:
    """Set the model's reference from a window of its rolled-up sketches (audited); its
    recent hours are scored again against it."""
    cfg = services.settings.telemetry
    now = datetime.now(UTC)
    try:
        set_reference(
            db,
            cfg,
            model,
            now=now,
            actor=f"user:{user.username}",
            start=body.window_start,
            end=body.window_end,
            version=body.version,
        )
    except NoDriftData as e:
        db.rollback()
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from e
    except ValueError as e:
        db.rollback()
        raise HTTPException(422, str(e)) from e
    db.commit()
    view: dict[str, Any] | None = drift_model(db, cfg, model, now=now, hours=1)["reference"]
    return view
