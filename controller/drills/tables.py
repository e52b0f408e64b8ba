"""The ``drill_report`` table: one row per offline drill run, its report kept whole as JSON."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.db import utcnow


class DrillReport(SQLModel, table=True):
    """A stored drill report; the columns are what the list shows, ``report`` the rest."""

    __tablename__ = "drill_report"
    id: int | None = Field(default=None, primary_key=True)
    scenario: str = Field(max_length=32, index=True)
    devices: int = 0
    duration_s: float = 0.0
    # None: the drill was skipped (e.g. controller-crash against a remote controller).
    passed: bool | None = None
    started_at: datetime | None = None
    created_by: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    report: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


__all__ = ["DrillReport"]
