"""``/console/models``: the registry with signatures, compatibility and where each runs."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.api.deps import OptionalUser
from controller.console.render import page, to_login

router = APIRouter(include_in_schema=False)


@router.get("/console/models")
def models_page(request: Request, user: OptionalUser) -> Response:
    """The model registry; ``static/models.js`` joins the registry, the signed targets
    metadata and the device counts per target."""
    if user is None:
        return to_login()
    return page(request, user, "models.html", {"section": "models"})
