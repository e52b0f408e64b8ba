"""What every console page shares: the templates, the login redirect and the page context.

Pages are server-rendered shells: the server fills in what identifies the page (the
device, the rollout, the user), and each page's script under ``static/`` fetches the JSON
API and redraws in place, so the console needs no reload and no second data path.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from controller.auth.csrf import csrf_token_for
from controller.auth.tables import User

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

# Roles that may change the fleet; the console only uses this to grey out buttons (the
# access policy on the API is what refuses a viewer).
CHANGERS = frozenset({"operator", "admin"})


def to_login() -> RedirectResponse:
    """Where a page sends a visitor without a session."""
    return RedirectResponse("/login", status_code=303)


def page(
    request: Request,
    user: User,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> Response:
    """Render ``template`` with what ``base.html`` needs: the user, whether they may change
    things, the CSRF token for unsafe requests, and the current section for the nav bar."""
    full: dict[str, Any] = {
        "user": user,
        "can_change": user.role in CHANGERS,
        "csrf_token": csrf_token_for(request),
    }
    full.update(context or {})
    return templates.TemplateResponse(request, template, full, status_code=status_code)


def not_found(request: Request, user: User, what: str) -> Response:
    """A console page for something that does not exist (a 404 the operator can read)."""
    return page(request, user, "not_found.html", {"what": what}, status_code=404)


__all__ = ["CHANGERS", "not_found", "page", "templates", "to_login"]
