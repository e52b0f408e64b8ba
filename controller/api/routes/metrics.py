"""``/metrics``: the controller's Prometheus metrics (a viewer's bearer token scrapes)."""

from datetime import UTC, datetime

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from controller.api.deps import ServicesDep
from controller.metrics import ControllerCollector, render

router = APIRouter(tags=["telemetry"])


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Devices by state, quarantined, ingest counters, rejects by reason, rollouts by
    status, open alerts, newest drift PSI / KS per model and feature, rollup lag,
    whether the TUF timestamp can be re-signed before it expires, forged attestation
    quotes and takeovers of ingest's broker session."""
    collector = ControllerCollector(
        services.engine,
        services.stats.snapshot,
        cfg=services.settings.telemetry,
        workers=services.supervisor.statuses,
        tuf=lambda: services.tuf_signing(datetime.now(UTC)),
        forged_quotes=services.attestation.forgeries.counts,
        broker_session=lambda: (
            services.ingest.transport.session_health() if services.ingest else None
        ),
    )
    return Response(render(collector), media_type=CONTENT_TYPE_LATEST)
