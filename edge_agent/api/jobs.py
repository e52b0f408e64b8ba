"""``/v1/jobs/{id}``: chat requests queued with ``Prefer: respond-async`` (poll, cancel)."""

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from edge_agent.api.chat import completion_body
from edge_agent.api.errors import error
from edge_agent.routing.jobs import JobQueue


def job_routes(jobs: JobQueue) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> JSONResponse:
        """A queued chat job: its status, and the completion once it is done."""
        job = jobs.get(job_id)
        if job is None:
            return error(404, f"job {job_id!r} is unknown or expired", "job_not_found")
        body: dict[str, Any] = {"id": job.id, "status": job.status, "attempts": job.attempts}
        if job.result is not None:
            body["result"] = completion_body(f"chatcmpl-{job.id}", int(time.time()), job.result)
            body["route"] = job.result.outcome.tier
            body["route_reason"] = job.result.outcome.reason
        elif job.last_error:
            body["last_error"] = job.last_error
        return JSONResponse(body)

    @routes.delete("/v1/jobs/{job_id}", response_model=None)
    async def cancel_job(job_id: str) -> JSONResponse | Response:
        if jobs.cancel(job_id):
            return Response(status_code=204)
        if jobs.get(job_id) is None:
            return error(404, f"job {job_id!r} is unknown or expired", "job_not_found")
        return error(409, f"job {job_id!r} is no longer queued", "job_not_queued")

    return routes
