"""``/console/drills``: stored offline drill reports, and each report's page."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.api.deps import DbDep, OptionalUser
from controller.console.render import not_found, page, to_login
from controller.drills.tables import DrillReport

router = APIRouter(include_in_schema=False)


@router.get("/console/drills")
def drills_page(request: Request, user: OptionalUser) -> Response:
    """Every stored drill report, newest first (``static/drills.js``)."""
    if user is None:
        return to_login()
    return page(request, user, "drills.html", {"section": "drills"})


@router.get("/console/drills/{drill_id}")
def drill_page(drill_id: int, request: Request, db: DbDep, user: OptionalUser) -> Response:
    """One report: its checks with the measured numbers and a timeline chart of requests
    per second with the fault windows (``static/drills.js``)."""
    if user is None:
        return to_login()
    row = db.get(DrillReport, drill_id)
    if row is None:
        return not_found(request, user, f"There is no drill report {drill_id}.")
    return page(
        request,
        user,
        "drill.html",
        {"section": "drills", "drill_id": drill_id, "scenario": row.scenario, "passed": row.passed},
    )
