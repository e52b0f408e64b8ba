"""The agent's local OpenAI-compatible HTTP API, put together from one module per resource.

- ``health``: ``/healthz`` and ``/metrics``;
- ``models``: ``GET /v1/models``;
- ``perception``: ``POST /v1/perception/{name}``;
- ``chat``: ``POST /v1/chat/completions`` (plain and SSE), over the agent's chat service;
- ``jobs``: ``/v1/jobs/{id}``, chat requests queued with ``Prefer: respond-async``;
- ``errors``: OpenAI-shaped error bodies for every refusal;
- ``auth``: bearer keys (``api.keys_file``), checked before anything else.

Bodies are bounded before any route parses them (shared/http_guard.py).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from edge_agent.agent import Agent
from edge_agent.api.auth import ApiKeyGuard, document_keys
from edge_agent.api.chat import chat_routes
from edge_agent.api.errors import guard_error, install_errors
from edge_agent.api.health import health_routes
from edge_agent.api.jobs import job_routes
from edge_agent.api.models import model_routes
from edge_agent.api.perception import perception_routes
from edge_agent.api_keys import read_keys_file
from edge_agent.routing.jobs import JobQueue
from shared.http_guard import BodyGuard, BodyLimits, HostGuard, HostPolicy, SecurityHeaders

# The API serves JSON and event streams to programs, never pages: nothing may be loaded,
# framed or sniffed from it, and no answer is cached (``SecurityHeaders`` adds no-store).
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


def create_agent_app(agent: Agent) -> FastAPI:
    """Build the agent's HTTP app around an already constructed ``agent`` (and its chat
    service, router included, built once with it). ApiKeysError when ``api.keys_file``
    cannot be read."""
    jobs = JobQueue(agent.chat.router.complete, supervisor=agent.supervisor)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        yield
        jobs.stop()

    app = FastAPI(
        title=f"edgefleet agent {agent.config.device_id}",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.jobs = jobs
    api = agent.config.api
    app.add_middleware(
        BodyGuard,
        limits=BodyLimits(
            max_bytes=api.max_body_bytes,
            max_depth=api.max_json_depth,
            max_elements=api.max_json_elements,
            shape_status=400,
        ),
        render=guard_error,
    )
    device_id = agent.config.device_id
    app.include_router(health_routes(agent))
    app.include_router(model_routes(agent.models, device_id))
    app.include_router(perception_routes(agent))
    app.include_router(chat_routes(agent.chat, jobs, device_id))
    app.include_router(job_routes(jobs))
    install_errors(app)
    if api.keys_file is not None:
        # Added last, so it runs first: a request without a key is refused before the body
        # guard reads its body. The file was checked by load_config; read it again here.
        app.add_middleware(ApiKeyGuard, keys=read_keys_file(api.keys_file), metrics=agent.metrics)
        document_keys(app)
    # Outermost: the Host check (a web page rebinding its name to this loopback API is
    # refused before a key or a body is looked at), then headers on every answer.
    app.add_middleware(
        HostGuard,
        policy=HostPolicy(tuple(api.allowed_hosts), setting="api.allowed_hosts"),
        render=guard_error,
    )
    app.add_middleware(SecurityHeaders, headers=SECURITY_HEADERS)
    return app
