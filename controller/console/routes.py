"""The console's pages under one router (login and logout are in ``auth_routes``).

Every page is a server-rendered shell behind login (a visitor without a session is sent
to ``/login``) whose script polls the JSON API; see docs/console.md.
"""

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from controller.console.pages import audit, devices, drift, drills, fleet, models, rollouts

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> RedirectResponse:
    return RedirectResponse("/console", status_code=303)


for _pages in (fleet, devices, models, rollouts, drift, drills, audit):
    router.include_router(_pages.router)

__all__ = ["router"]
