"""``GET /v1/models``: the local chat models this device serves, OpenAI's list shape."""

from typing import Any

from fastapi import APIRouter

from edge_agent.model_registry import ModelRegistry


def model_routes(registry: ModelRegistry, device_id: str) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "owned_by": f"edgefleet:{device_id}"}
                for name in registry.chat
            ],
        }

    return routes
