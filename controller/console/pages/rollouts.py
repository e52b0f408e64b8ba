"""``/console/rollouts``: rollouts with a form to start one, and each rollout's page."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.api.deps import DbDep, OptionalUser
from controller.console.render import not_found, page, to_login
from controller.rollouts.service import Rollout

router = APIRouter(include_in_schema=False)


@router.get("/console/rollouts")
def rollouts_page(request: Request, user: OptionalUser) -> Response:
    """Every rollout, newest first (``static/rollouts.js``), and the start form, which
    posts to ``/api/rollouts`` with the page's CSRF token."""
    if user is None:
        return to_login()
    return page(request, user, "rollouts.html", {"section": "rollouts"})


@router.get("/console/rollouts/{rollout_id}")
def rollout_page(rollout_id: int, request: Request, db: DbDep, user: OptionalUser) -> Response:
    """One rollout: waves, gates against thresholds, and the steering buttons
    (``static/rollout.js``)."""
    if user is None:
        return to_login()
    row = db.get(Rollout, rollout_id)
    if row is None:
        return not_found(request, user, f"There is no rollout {rollout_id}.")
    return page(
        request,
        user,
        "rollout.html",
        {
            "section": "rollouts",
            "rollout_id": rollout_id,
            "model": row.model,
            "version": row.version,
        },
    )
