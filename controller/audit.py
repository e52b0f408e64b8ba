"""The audit log: who did what to which object, when and why.

Every operator action and every automatic decision (a rollout gate, a quarantine) lands
here through ``audit()``, in the caller's transaction, so the log and the change commit
together or not at all.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel

from controller.db import utcnow


class AuditEntry(SQLModel, table=True):
    """One audited action."""

    __tablename__ = "audit_entry"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=64, index=True)  # "user:alice", "system:rollouts", ...
    action: str = Field(max_length=64, index=True)  # "rollout.advance", "device.quarantine"
    target: str = Field(max_length=128, index=True)  # "rollout:12", "device:dev-1"
    reason: str = Field(default="", max_length=1024)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


def audit(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    reason: str = "",
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Add an entry to the caller's transaction (committed with the change it explains)."""
    entry = AuditEntry(
        actor=actor[:64],
        action=action[:64],
        target=target[:128],
        reason=reason[:1024],
        detail=detail or {},
        at=at or utcnow(),
    )
    session.add(entry)
    return entry


__all__ = ["AuditEntry", "audit"]
