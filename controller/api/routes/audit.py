"""``/api/audit``: the audit log (who did what to which object, when and why), filterable.

Every role may read it, but client addresses (the ``client_ip`` of login entries and the
``ip:ADDRESS`` actor of refused logins) are personal data an operator or viewer does not
need: only admins see them; others see ``(hidden)`` in their place and may not search by them.
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import col, select

from controller.api.deps import CurrentUser, DbDep, Offset
from controller.audit import AuditEntry

router = APIRouter(prefix="/api/audit", tags=["audit"])
HIDDEN = "(hidden)"
_IP_ACTOR = "ip:"


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
    user: CurrentUser,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="exact, or a prefix ending in '.'")
    ] = None,
    target: Annotated[str | None, Query(max_length=128)] = None,
    q: Annotated[str | None, Query(max_length=128, description="text in the reason")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> AuditPage:
    """Audit entries, newest first. ``action=rollout.`` matches every rollout action.
    Client addresses are shown to admins only."""
    admin = user.role == "admin"
    if not admin and actor is not None and actor.startswith(_IP_ACTOR):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "only admins may search the audit log by client address"
        )
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
    entries = [AuditEntryPublic.model_validate(r, from_attributes=True) for r in rows]
    return AuditPage(
        data=entries if admin else [_without_addresses(e) for e in entries], count=count
    )


def _without_addresses(entry: AuditEntryPublic) -> AuditEntryPublic:
    """The entry as a non-admin sees it: no client address in the actor or the detail."""
    actor = f"{_IP_ACTOR}{HIDDEN}" if entry.actor.startswith(_IP_ACTOR) else entry.actor
    detail = {k: HIDDEN if k == "client_ip" else v for k, v in entry.detail.items()}
    return entry.model_copy(update={"actor": actor, "detail": detail})
