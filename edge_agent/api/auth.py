"""Bearer keys on the agent's local API (``api.keys_file``, edge_agent/api_keys.py).

With keys configured, every request but ``GET /healthz`` presents ``Authorization: Bearer
<key>``; a missing or unknown key is answered 401 with an OpenAI-shaped error and
``WWW-Authenticate: Bearer`` before any route (or the body guard) sees the request. The
matching key's app name, never the key, is counted in ``/metrics`` and kept in the request's
``state.app`` for the routes. Without keys the API is open, as on loopback it may be.
"""

import json
import logging
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_agent.api_keys import ApiKeys, bearer_token
from edge_agent.telemetry.prometheus import AgentMetrics

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz"})
REALM = 'Bearer realm="edge-agent"'

# What /openapi.json says of every operation when keys are configured.
UNAUTHORIZED: dict[str, Any] = {
    "description": "No API key, or not one of api.keys_file's: an OpenAI-shaped error",
    "content": {"application/json": {}},
}


def route_kind(path: str) -> str:
    """A bounded label for the route a path belongs to (paths carry ids and names)."""
    for prefix, kind in (
        ("/v1/chat/", "chat"),
        ("/v1/perception/", "perception"),
        ("/v1/models", "models"),
        ("/v1/jobs/", "jobs"),
        ("/metrics", "metrics"),
    ):
        if path.startswith(prefix):
            return kind
    return "other"


class ApiKeyGuard:
    """ASGI middleware: refuse requests without a configured key, name the ones with one."""

    def __init__(self, app: ASGIApp, *, keys: ApiKeys, metrics: AgentMetrics) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        token = bearer_token(header)
        app_name = None if token is None else self.keys.app_for(token)
        if app_name is None:
            reason = "missing" if header is None else "invalid"
            self.metrics.observe_auth_refused(reason)
            log.debug("refused %s %s: %s API key", scope["method"], scope["path"], reason)
            await _unauthorized(send, missing=header is None)
            return
        scope.setdefault("state", {})["app"] = app_name
        self.metrics.observe_app_request(app_name, route_kind(scope["path"]))
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, *, missing: bool) -> None:
    if missing:
        message, code, challenge = "an API key is required", "missing_api_key", REALM
    else:
        message, code = "the API key is not valid", "invalid_api_key"
        challenge = f'{REALM}, error="invalid_token"'
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def document_keys(app: FastAPI) -> None:
    """/openapi.json as the API answers with keys: a bearer security scheme on every
    operation but /healthz, each of which may answer 401."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A key of api.keys_file (edge-agent api-key add NAME)",
        }
        for path, path_item in schema.get("paths", {}).items():
            if path in OPEN_PATHS:
                continue
            for operation in path_item.values():
                operation["security"] = [{"apiKey": []}]
                operation.setdefault("responses", {})["401"] = UNAUTHORIZED
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
