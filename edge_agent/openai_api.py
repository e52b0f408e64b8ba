"""The agent's local OpenAI-compatible HTTP API: chat completions (plain and SSE) and health.

Prompt contents are never logged; only counts and timings leave this module.
"""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from edge_agent.agent import Agent
from edge_agent.runtimes import ChatMessage, ChatRequest, ChatRuntime, CompletionChunk

_DONE = object()


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[_TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionBody(BaseModel):
    """The subset of OpenAI's request this tier honours; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


def _error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_agent_app(agent: Agent) -> FastAPI:
    """Build the agent's HTTP app around an already loaded ``agent``."""
    app = FastAPI(title=f"edgefleet agent {agent.config.device_id}", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"{where}: {first.get('msg')}", "invalid_request")

    def _route_headers(runtime: ChatRuntime, started: float) -> dict[str, str]:
        return {
            "X-Edge-Route": "local",
            "X-Edge-Model": runtime.model_name,
            "X-Edge-Runtime": runtime.runtime_name,
            "X-Edge-Device": agent.config.device_id,
            "X-Edge-Queue-Ms": f"{(time.perf_counter() - started) * 1000:.0f}",
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body = {
            "status": "ok" if agent.local_tier_healthy else "degraded",
            "device_id": agent.config.device_id,
            "mqtt_connected": agent.link.connected if agent.link else None,
            "models": [m.model_dump() for m in agent.model_infos()],
        }
        return JSONResponse(body, status_code=200 if agent.local_tier_healthy else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "owned_by": f"edgefleet:{agent.config.device_id}"}
                for name in agent.runtimes
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionBody) -> JSONResponse | StreamingResponse:
        started = time.perf_counter()
        name = body.model or agent.default_model()
        if name is None or (name not in agent.runtimes and name not in agent.load_errors):
            agent.count_request(error=True)
            return _error(404, f"model {name!r} is not served on this device", "model_not_found")
        runtime = agent.runtimes.get(name)
        if runtime is None:
            agent.count_request(error=True)
            return _error(
                503,
                f"local tier unavailable: {agent.load_errors[name]}",
                "local_tier_unhealthy",
                headers={"Retry-After": "30"},
            )
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        model_cfg = next(m for m in agent.config.models if m.name == name)
        request = ChatRequest(
            messages=tuple(ChatMessage(m.role, m.text()) for m in body.messages),
            max_tokens=body.max_completion_tokens
            or body.max_tokens
            or model_cfg.max_tokens_default,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop,
        )
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def record(status: str, prompt_tokens: int, completion_tokens: int) -> None:
            agent.record_inference(
                model=runtime.model_name,
                runtime=runtime.runtime_name,
                latency_ms=(time.perf_counter() - started) * 1000,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                stream=body.stream,
                status=status,
            )

        if body.stream:
            agent.count_request()
            return StreamingResponse(
                _sse(
                    runtime, request, completion_id, created, lambda status, n: record(status, 0, n)
                ),
                media_type="text/event-stream",
                headers={**_route_headers(runtime, started), "Cache-Control": "no-cache"},
            )
        try:
            result = await run_in_threadpool(runtime.complete, request)
        except (RuntimeError, ValueError) as e:
            agent.count_request(error=True)
            record("error", 0, 0)
            return _error(500, f"local inference failed: {type(e).__name__}", "inference_error")
        agent.count_request()
        record("ok", result.prompt_tokens, result.completion_tokens)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": runtime.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                },
            },
            headers=_route_headers(runtime, started),
        )

    return app


async def _sse(
    runtime: ChatRuntime,
    request: ChatRequest,
    completion_id: str,
    created: int,
    on_done: Callable[[str, int], None],
) -> AsyncIterator[bytes]:
    """Stream chunks from a worker thread; a client that hangs up stops generation."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for chunk in runtime.stream(request):
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
                if cancelled.is_set():
                    break
        except Exception as e:  # surfaced to the client as an SSE error event
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    def frame(delta: dict[str, str], finish: str | None) -> bytes:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": runtime.model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    worker = threading.Thread(target=produce, name="sse-generate", daemon=True)
    worker.start()
    chunks = 0
    status = "cancelled"
    try:
        yield frame({"role": "assistant"}, None)
        while True:
            item = await queue.get()
            if item is _DONE:
                status = "ok"
                break
            if isinstance(item, Exception):
                status = "error"
                error = {"error": {"message": f"local inference failed: {type(item).__name__}"}}
                yield b"data: " + json.dumps(error).encode() + b"\n\n"
                break
            assert isinstance(item, CompletionChunk)
            chunks += 1 if item.text else 0
            yield frame({"content": item.text} if item.text else {}, item.finish_reason)
        yield b"data: [DONE]\n\n"
    finally:
        cancelled.set()
        on_done(status, chunks)
