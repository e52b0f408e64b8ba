"""``GET /v1/models``: the local chat models this device serves, OpenAI's list shape.

Besides each loaded model, the list holds every name a request may use for one: the
aliases (``models[].aliases``, ``routing.model_aliases``) and ``auto``. Those entries say
what they stand for in ``alias_for``: a model's name, or ``auto`` (the router picks).
"""

from typing import Any

from fastapi import APIRouter

from edge_agent.model_registry import ModelRegistry


def model_routes(registry: ModelRegistry, device_id: str) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/models")
    async def models() -> dict[str, Any]:
        owner = f"edgefleet:{device_id}"
        data: list[dict[str, Any]] = []
        for name, alias_for in registry.listed():
            entry: dict[str, Any] = {"id": name, "object": "model", "owned_by": owner}
            if alias_for is not None:
                entry["alias_for"] = alias_for
            data.append(entry)
        return {"object": "list", "data": data}

    return routes
