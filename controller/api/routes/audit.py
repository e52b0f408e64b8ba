"""``/api/audit``: the audit log (who did what to which object, when and why), filterable."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import col, select

from controller.api.deps import CurrentUser, DbDep
from controller.audit import AuditEntry

router = APIRouter(prefix="/api/audit", tags=["audit"])


class AuditEntryPublic(BaseModel):
    """One audited action."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    reason: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    """A page of audit entries, newest first, and how many match in all."""

    data: list[AuditEntryPublic]
    count: int


@router.get("")
def list_audit(
    db: DbDep,
    _user: CurrentUser,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="exact, or a prefix ending in '.'")
    ] = None,
    target: Annotated[str | None, Query(max_length=128)] = None,
    q: Annotated[str | None, Query(max_length=128, description="text in the reason")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    """Audit entries, newest first. ``action=rollout.`` matches every rollout action."""
    query = select(AuditEntry)
    if actor is not None:
        query = query.where(col(AuditEntry.actor) == actor)
    if action is not None:
        if action.endswith("."):
            query = query.where(col(AuditEntry.action).startswith(action, autoescape=True))
        else:
            query = query.where(col(AuditEntry.action) == action)
    if target is not None:
        query = query.where(col(AuditEntry.target) == target)
    if q:
        query = query.where(col(AuditEntry.reason).contains(q, autoescape=True))
    if since is not None:
        query = query.where(col(AuditEntry.at) >= since)
    if until is not None:
        query = query.where(col(AuditEntry.at) < until)
    count = db.exec(select(func.count()).select_from(query.subquery())).one()
    rows = db.exec(
        query.order_by(col(AuditEntry.at).desc(), col(AuditEntry.id).desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return AuditPage(
        data=[AuditEntryPublic.model_validate(r, from_attributes=True) for r in rows], count=count
    )
