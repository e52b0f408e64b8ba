"""``/api/drills``: offline drill reports (``edgefleet drill offline`` posts them here)."""

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func
from sqlmodel import col, select

from controller.api.deps import CurrentUser, DbDep, Offset, RowId
from controller.audit import audit
from controller.drills.checks import verdict
from controller.drills.scenarios import SCENARIOS
from controller.drills.tables import DrillReport

router = APIRouter(prefix="/api/drills", tags=["drills"])
MAX_REPORT_BYTES = 2 * 1024 * 1024  # a 50-device, 1-hour drill's report is far below this


class CheckIn(BaseModel):
    """One check of a report: its name, verdict (None: not applicable) and numbers."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64)
    passed: bool | None
    measured: dict[str, Any] = Field(default_factory=dict)
    detail: str = Field(default="", max_length=2000)


class DrillReportIn(BaseModel):
    """A drill report as the runner writes it; keys beyond these are kept as they are."""

    model_config = ConfigDict(extra="allow")
    scenario: str
    devices: int = Field(ge=0, le=100_000)
    duration_s: float = Field(ge=0)
    passed: bool | None = None  # ignored: the controller recomputes it from ``checks``
    skipped: str | None = Field(default=None, max_length=2000)
    started_at: datetime | None = None
    checks: list[CheckIn] = Field(default_factory=list, max_length=64)
    events: list[dict[str, Any]] = Field(default_factory=list, max_length=100_000)
    fault_windows: list[dict[str, float]] = Field(default_factory=list, max_length=10_000)
    timeline: list[dict[str, Any]] = Field(default_factory=list, max_length=100_000)

    @field_validator("scenario")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SCENARIOS:
            raise ValueError(f"unknown scenario; one of {', '.join(SCENARIOS)}")
        return value


class DrillSummary(BaseModel):
    """A stored report as the list shows it."""

    id: int
    scenario: str
    devices: int
    duration_s: float
    passed: bool | None
    checks_passed: int
    checks_failed: int
    started_at: datetime | None
    created_by: str
    created_at: datetime


class DrillPage(BaseModel):
    data: list[DrillSummary]
    count: int


class DrillDetail(DrillSummary):
    """One stored report, whole."""

    report: dict[str, Any]


def report_verdict(body: DrillReportIn) -> bool | None:
    """The report's ``passed`` from its checks, by the runner's rule (``checks.overall``):
    None for a skipped drill without checks, else no check failed and at least one ran."""
    if body.skipped and not body.checks:
        return None
    return verdict(c.passed for c in body.checks)


def _summary(row: DrillReport) -> dict[str, Any]:
    checks = row.report.get("checks") or []
    assert row.id is not None
    return {
        "id": row.id,
        "scenario": row.scenario,
        "devices": row.devices,
        "duration_s": row.duration_s,
        "passed": row.passed,
        "checks_passed": sum(1 for c in checks if c.get("passed") is True),
        "checks_failed": sum(1 for c in checks if c.get("passed") is False),
        "started_at": row.started_at,
        "created_by": row.created_by,
        "created_at": row.created_at,
    }


@router.post("", status_code=status.HTTP_201_CREATED)
def store_report(body: DrillReportIn, db: DbDep, user: CurrentUser) -> DrillDetail:
    """Store a drill report (operator); audited as ``drill.report``. Its ``passed`` is
    recomputed from its checks, whatever the client sent."""
    passed = report_verdict(body)
    report = {**body.model_dump(mode="json"), "passed": passed}
    if len(json.dumps(report)) > MAX_REPORT_BYTES:
        raise HTTPException(413, f"report larger than {MAX_REPORT_BYTES} bytes")
    row = DrillReport(
        scenario=body.scenario,
        devices=body.devices,
        duration_s=body.duration_s,
        passed=passed,
        started_at=body.started_at,
        created_by=user.username,
        report=report,
    )
    db.add(row)
    db.flush()
    outcome = "skipped" if passed is None else ("passed" if passed else "failed")
    audit(
        db,
        actor=user.username,
        action="drill.report",
        target=f"drill:{row.id}",
        reason=f"{body.scenario} {outcome}",
        detail={"scenario": body.scenario, "devices": body.devices, "passed": passed},
    )
    return DrillDetail(**_summary(row), report=row.report)


@router.get("")
def list_reports(
    db: DbDep,
    scenario: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> DrillPage:
    """Stored drill reports, newest first."""
    where = [] if scenario is None else [col(DrillReport.scenario) == scenario]
    total = db.exec(select(func.count()).select_from(DrillReport).where(*where)).one()
    rows = db.exec(
        select(DrillReport)
        .where(*where)
        .order_by(col(DrillReport.created_at).desc(), col(DrillReport.id).desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return DrillPage(data=[DrillSummary(**_summary(r)) for r in rows], count=int(total))


@router.get("/{drill_id}")
def get_report(drill_id: RowId, db: DbDep) -> DrillDetail:
    """One stored drill report with its checks, events and timeline."""
    row = db.get(DrillReport, drill_id)
    if row is None:
        raise HTTPException(404, f"there is no drill report {drill_id}")
    return DrillDetail(**_summary(row), report=row.report)
