"""``POST /v1/perception/{name}``: classify one input with a local ONNX model.

Perception never leaves the device; the inputs are never logged or recorded.
"""

import time
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from edge_agent.agent import Agent
from edge_agent.api.errors import UNAVAILABLE, error


class PerceptionBody(BaseModel):
    """One input tensor as nested lists, in the model's input shape."""

    inputs: list[Any]
    dtype: Literal["float32", "float16", "uint8", "int8", "int64"] = "float32"


def perception_routes(agent: Agent) -> APIRouter:
    routes = APIRouter()
    device_id = agent.config.device_id

    @routes.post("/v1/perception/{name}", responses={503: UNAVAILABLE})
    async def perceive(name: str, body: PerceptionBody) -> JSONResponse:
        """Classify one input with a local ONNX model (perception never leaves the device)."""
        started = time.perf_counter()

        def record(
            status: str, label_index: int | None = None, confidence: float | None = None
        ) -> None:
            agent.record_perception(
                model=name,
                status=status,
                latency_ms=(time.perf_counter() - started) * 1000,
                label_index=label_index,
                confidence=confidence,
            )

        classifier = agent.perception.get(name)
        if classifier is None:
            if name in agent.load_errors:
                record("unavailable")
                return error(
                    503,
                    f"perception model unavailable: {agent.load_errors[name]}",
                    "model_unavailable",
                    headers={"Retry-After": "30"},
                )
            return error(404, f"perception model {name!r} is not served here", "model_not_found")
        import numpy as np  # only perception needs it: not loaded with the agent

        try:
            inputs = np.asarray(body.inputs, dtype=np.dtype(body.dtype))
            result = await run_in_threadpool(classifier.classify, inputs)
        except (ValueError, TypeError) as e:
            record("invalid_inputs")
            return error(400, f"inputs: {e}", "invalid_inputs")
        except Exception:
            record("error")
            raise
        record("ok", result.label_index, result.confidence)
        return JSONResponse(
            {
                "model": name,
                "label": result.label,
                "label_index": result.label_index,
                "confidence": result.confidence,
                "probabilities": list(result.probabilities),
            },
            headers={"X-Edge-Route": "local", "X-Edge-Device": device_id},
        )

    return routes
