"""``/console/drift``: drift scores per model, and each model's scores over time."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.api.deps import OptionalUser
from controller.console.render import page, to_login

router = APIRouter(include_in_schema=False)


@router.get("/console/drift")
def drift_page(request: Request, user: OptionalUser) -> Response:
    """The latest drift score of every model and feature (``static/drift.js``)."""
    if user is None:
        return to_login()
    return page(request, user, "drift.html", {"section": "drift"})


# ``:path``: model names may hold "/" (shared.telemetry_windows.Label); links encode it.
@router.get("/console/drift/{model:path}")
def drift_model_page(model: str, request: Request, user: OptionalUser) -> Response:
    """One model's PSI and KS per feature over time against the thresholds, and its
    reference window (``static/drift_model.js``); an unknown model shows an empty state."""
    if user is None:
        return to_login()
    return page(request, user, "drift_model.html", {"section": "drift", "model": model})
