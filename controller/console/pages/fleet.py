"""``/console``: fleet counts, tier utilisation, rates, alerts, rollouts and the device table."""

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import func
from sqlmodel import col, select

from controller.api.deps import DbDep, OptionalUser
from controller.console.render import page, to_login
from controller.devices.tables import Device, DevicePublic

router = APIRouter(include_in_schema=False)

# Rows per page of the device table: the browser never gets the whole fleet at once.
PAGE_SIZE = 50


@router.get("/console")
def fleet_page(request: Request, db: DbDep, user: OptionalUser) -> Response:
    """The fleet at a glance: counts and the first page of devices are rendered here (the
    page reads without JavaScript), then kept live by ``static/fleet.js`` polling
    ``/api/fleet/summary`` and ``/api/devices``."""
    if user is None:
        return to_login()
    by_state = dict(db.exec(select(Device.state, func.count()).group_by(col(Device.state))).all())
    quarantined = db.exec(
        select(func.count()).select_from(Device).where(col(Device.quarantined))
    ).one()
    first = db.exec(select(Device).order_by(col(Device.id)).limit(PAGE_SIZE)).all()
    return page(
        request,
        user,
        "fleet.html",
        {
            "section": "fleet",
            "total": sum(by_state.values()),
            "online": by_state.get("online", 0),
            "offline": by_state.get("offline", 0),
            "quarantined": quarantined,
            "page_size": PAGE_SIZE,
            "devices": [DevicePublic.model_validate(d, from_attributes=True) for d in first],
        },
    )
