"""``/api/rollouts``: create staged rollouts, watch their waves and gates, steer them."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from controller.api.deps import MAX_ROW_ID, CurrentUser, DbDep, Offset, RowId, ServicesDep
from controller.audit import AuditEntry
from controller.rollouts.engine import CommandRefused, Outcome, RolloutError, Status
from controller.rollouts.queries import list_members, list_rollouts, rollout_view
from controller.rollouts.service import (
    ModelNotPublished,
    RolloutConflict,
    RolloutNotFound,
    RolloutRequest,
    command,
    create_rollout,
    get_rollout,
    step_one,
)

router = APIRouter(prefix="/api/rollouts", tags=["rollouts"])


class CommandBody(BaseModel):
    """Why the operator pauses, resumes, aborts or rolls back (lands in the audit log)."""

    reason: str = Field(default="", max_length=512)


def _actor(user: Any) -> str:
    return f"user:{user.username}"


@router.post("", status_code=status.HTTP_201_CREATED)
def create(
    request: RolloutRequest, db: DbDep, services: ServicesDep, user: CurrentUser
) -> dict[str, Any]:
    """Create a rollout (its cohort is fixed now, in hashed waves) and take its first step."""
    now = datetime.now(UTC)
    try:
        rollout = create_rollout(
            db, request, actor=_actor(user), now=now, settings=services.settings.rollouts
        )
        db.commit()
    except ModelNotPublished as e:
        db.rollback()
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from e
    except RolloutConflict as e:
        db.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
    except RolloutError as e:
        db.rollback()
        raise HTTPException(422, str(e)) from e
    assert rollout.id is not None
    step_one(db, rollout.id, now, services.publish_desired)
    return rollout_view(db, get_rollout(db, rollout.id))


@router.get("")
def list_all(
    db: DbDep,
    _user: CurrentUser,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Rollouts, newest first."""
    rows, count = list_rollouts(
        db, status=status_.value if status_ else None, limit=limit, offset=offset
    )
    return {"data": [rollout_view(db, r, detail=False) for r in rows], "count": count}


def _load(db: DbDep, rollout_id: int) -> Any:
    try:
        return get_rollout(db, rollout_id)
    except RolloutNotFound as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from e


@router.get("/{rollout_id}")
def get_one(rollout_id: RowId, db: DbDep, _user: CurrentUser) -> dict[str, Any]:
    """One rollout with per-wave progress and its latest gate evaluation."""
    return rollout_view(db, _load(db, rollout_id))


@router.get("/{rollout_id}/devices")
def devices(
    rollout_id: RowId,
    db: DbDep,
    _user: CurrentUser,
    wave: Annotated[int | None, Query(ge=0, le=MAX_ROW_ID)] = None,
    outcome: Outcome | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Member devices with their wave and outcome, by wave then id."""
    _load(db, rollout_id)
    rows, count = list_members(
        db,
        rollout_id,
        wave=wave,
        outcome=outcome.value if outcome else None,
        limit=limit,
        offset=offset,
    )
    data = [
        row.model_dump(
            include={"device_id", "wave", "outcome", "reason", "failure", "previous_target"}
        )
        | {"assigned_at": row.assigned_at, "installed_at": row.installed_at}
        for row in rows
    ]
    return {"data": data, "count": count}


class HistoryEntry(BaseModel):
    """One audited step of a rollout: a transition, with the gate findings behind it."""

    at: datetime
    action: str
    actor: str
    reason: str
    from_status: str | None
    to_status: str | None
    wave: int | None
    gates: list[dict[str, Any]] | None


@router.get("/{rollout_id}/history")
def history(
    rollout_id: RowId,
    db: DbDep,
    _user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    """The rollout's audited steps, oldest first (the newest ``limit``), with each gate's
    value and threshold where the step was a gate decision; the latest evaluation is
    under ``last_gate``, so a chart of gate values over time needs only this call."""
    rollout = _load(db, rollout_id)
    rows = db.exec(
        select(AuditEntry)
        .where(col(AuditEntry.target) == f"rollout:{rollout_id}")
        .order_by(col(AuditEntry.at).desc(), col(AuditEntry.id).desc())
        .limit(limit)
    ).all()
    data = []
    for row in reversed(rows):
        detail = row.detail if isinstance(row.detail, dict) else {}
        gates = detail.get("gates")
        wave = detail.get("gated_wave", detail.get("wave"))
        data.append(
            HistoryEntry(
                at=row.at,
                action=row.action,
                actor=row.actor,
                reason=row.reason,
                from_status=detail.get("from") if isinstance(detail.get("from"), str) else None,
                to_status=detail.get("to") if isinstance(detail.get("to"), str) else None,
                wave=wave if isinstance(wave, int) else None,
                gates=gates if isinstance(gates, list) else None,
            ).model_dump(mode="json")
        )
    view = rollout_view(db, rollout)
    return {"data": data, "count": len(data), "last_gate": view["gates"]}


def _command(
    rollout_id: RowId,
    kind: Literal["pause", "resume", "abort", "rollback"],
    body: CommandBody,
    db: DbDep,
    services: ServicesDep,
    user: Any,
) -> dict[str, Any]:
    _load(db, rollout_id)
    try:
        rollout = command(
            db,
            rollout_id,
            kind,
            actor=_actor(user),
            reason=body.reason,
            now=datetime.now(UTC),
            publish=services.publish_desired,
        )
    except CommandRefused as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
    return rollout_view(db, rollout)


_NO_BODY = Body(default_factory=CommandBody)


@router.post("/{rollout_id}/pause")
def pause(
    rollout_id: RowId,
    db: DbDep,
    services: ServicesDep,
    user: CurrentUser,
    body: CommandBody = _NO_BODY,
) -> dict[str, Any]:
    """Stop assigning devices and deciding gates until resumed."""
    return _command(rollout_id, "pause", body, db, services, user)


@router.post("/{rollout_id}/resume")
def resume(
    rollout_id: RowId,
    db: DbDep,
    services: ServicesDep,
    user: CurrentUser,
    body: CommandBody = _NO_BODY,
) -> dict[str, Any]:
    """Continue a paused rollout; a halted one gets a fresh soak with fresh telemetry."""
    return _command(rollout_id, "resume", body, db, services, user)


@router.post("/{rollout_id}/abort")
def abort(
    rollout_id: RowId,
    db: DbDep,
    services: ServicesDep,
    user: CurrentUser,
    body: CommandBody = _NO_BODY,
) -> dict[str, Any]:
    """End the rollout where it is; devices keep what they run, their claims are released."""
    return _command(rollout_id, "abort", body, db, services, user)


@router.post("/{rollout_id}/rollback")
def rollback(
    rollout_id: RowId,
    db: DbDep,
    services: ServicesDep,
    user: CurrentUser,
    body: CommandBody = _NO_BODY,
) -> dict[str, Any]:
    """Send every assigned device back to the model it ran before."""
    return _command(rollout_id, "rollback", body, db, services, user)
