"""``/healthz`` (the agent's own health) and ``/metrics`` (Prometheus text format)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from edge_agent.agent import Agent


def health_routes(agent: Agent) -> APIRouter:
    routes = APIRouter()

    @routes.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while the local tier serves and every supervised worker runs; otherwise 503,
        with the models' load errors and the names of the workers that are down."""
        down = agent.workers_down()
        healthy = agent.local_tier_healthy and not down
        body = {
            "status": "ok" if healthy else "degraded",
            "device_id": agent.config.device_id,
            "mqtt_connected": agent.link.connected if agent.link else None,
            "models": [m.model_dump() for m in agent.model_infos()],
            "workers_down": down,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @routes.get("/metrics", response_class=Response)  # documented as text, not JSON
    async def metrics() -> Response:
        """Prometheus text format; like every route but /healthz it takes an API key when
        api.keys_file is set (docs/tls.md), and is open on a loopback-only API otherwise."""
        body = await run_in_threadpool(agent.metrics.exposition)  # reads the outbox
        return Response(body, media_type=agent.metrics.content_type)

    return routes
