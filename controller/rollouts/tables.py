"""The rollout tables: one row per rollout (spec and engine state as JSON) and one per
member device (its wave, its previous model, its outcome).

"One active rollout per device" is a partial unique index on ``rollout_device.device_id``
over rows with ``active`` set: the service checks first to name the conflicting rollouts,
and the index makes two concurrent creations unable to both claim a device.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from controller.db import utcnow


class Rollout(SQLModel, table=True):
    """A staged rollout of one model version; ``state`` is the engine's, ``revision``
    guards it against two writers (a tick and an operator command) racing."""

    __tablename__ = "rollout"
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=64, index=True)
    version: str = Field(max_length=64)
    target_path: str = Field(max_length=255)
    status: str = Field(default="pending", max_length=16, index=True)
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    revision: int = 0
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class RolloutDevice(SQLModel, table=True):
    """A member device of a rollout: its wave and how far it got."""

    __tablename__ = "rollout_device"
    __table_args__ = (
        UniqueConstraint("rollout_id", "device_id", name="uq_rollout_device"),
        Index(
            "uq_rollout_device_active",
            "device_id",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", index=True)
    device_id: str = Field(max_length=63)
    wave: int
    # True while the rollout is active (the claim); NULL once it has finished.
    active: bool | None = True
    outcome: str = Field(default="pending", max_length=16)
    reason: str = Field(default="", max_length=512)
    # Why its install failed or timed out, kept when a rollback then reverts it.
    failure: str | None = Field(default=None, max_length=512)
    # What the device reported running when it was assigned: where a rollback takes it.
    previous_target: str | None = Field(default=None, max_length=255)
    previous_model: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    assigned_at: datetime | None = None
    installed_at: datetime | None = None
    outcome_at: datetime | None = None


__all__ = ["Rollout", "RolloutDevice"]
