"""``/console/audit``: the audit log, searchable and paged."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from controller.api.deps import OptionalUser
from controller.console.render import page, to_login

router = APIRouter(include_in_schema=False)


@router.get("/console/audit")
def audit_page(request: Request, user: OptionalUser) -> Response:
    """Search by actor, action prefix, target, text in the reason and time range; the
    form's fields are ``/api/audit``'s query parameters (``static/audit.js``)."""
    if user is None:
        return to_login()
    return page(request, user, "audit.html", {"section": "audit"})
