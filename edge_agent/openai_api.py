"""The agent's local OpenAI-compatible HTTP API: chat completions (plain and SSE) and health.

Prompt contents are never logged; only counts and timings leave this module.
"""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import jsonschema
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

from edge_agent.agent import Agent
from edge_agent.routing.context import ContextTooLarge, compact, valid_session_id
from edge_agent.routing.headers import parse_route_headers
from edge_agent.routing.jobs import JobQueue, QueueFull
from edge_agent.routing.policy import RouteHints
from edge_agent.routing.router import (
    NoTierAvailable,
    RoutedRequest,
    RoutedResult,
    RouteOutcome,
    Router,
)
from edge_agent.runtimes import ChatMessage, ChatRequest, CompletionChunk
from shared.http_guard import BodyGuard, BodyLimits

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


class _JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = "output"
    schema_: dict[str, Any] = Field(alias="schema")


class _ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "_ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is json_schema")
        if self.json_schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(self.json_schema.schema_)
            except jsonschema.SchemaError as e:
                raise ValueError(f"invalid JSON schema: {e.message}") from e
        return self


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
    response_format: _ResponseFormat | None = None

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the answer must follow (``json_object`` means any JSON object)."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        assert fmt.json_schema is not None
        return fmt.json_schema.schema_

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


class PerceptionBody(BaseModel):
    """One input tensor as nested lists, in the model's input shape."""

    inputs: list[Any]
    dtype: Literal["float32", "float16", "uint8", "int8", "int64"] = "float32"


def _error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# What /openapi.json says besides the JSON answer: the SSE stream of ``stream: true``, and
# 503 with Retry-After while no tier allowed for the request can answer.
_UNAVAILABLE: dict[str, Any] = {
    "description": "No tier (or model) can answer now; retry after Retry-After seconds",
    "content": {"application/json": {}},
}
_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; with stream: true, server-sent chunks and [DONE]",
        "content": {
            "application/json": {},
            # Each event: "data: <chunk JSON>", the last "data: [DONE]".
            "text/event-stream": {
                "schema": {"type": "object", "properties": {"data": {"type": "string"}}}
            },
        },
    },
    202: {"description": "Queued (Prefer: respond-async); poll the job's Location"},
    503: _UNAVAILABLE,
}


def _guard_error(status: int, reason: str, message: str) -> tuple[bytes, str]:
    """The body guard's refusals in this API's OpenAI error shape."""
    body = {"error": {"message": message, "type": "invalid_request_error", "code": reason}}
    return json.dumps(body).encode(), "application/json"


_OPENAI_ERROR: dict[str, Any] = {
    "description": "Invalid request: an OpenAI-shaped error saying what is wrong",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "code": {"type": "string"},
                        },
                    }
                },
            }
        }
    },
}


def _document_errors(app: FastAPI) -> None:
    """/openapi.json as this API answers: invalid requests are 400 with an OpenAI error
    (the handler above and the body guard), never FastAPI's 422 validation document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses["400"] = _OPENAI_ERROR
            schemas = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def completion_body(completion_id: str, created: int, result: RoutedResult) -> dict[str, Any]:
    completion, outcome = result.completion, result.outcome
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": outcome.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def remote_models(router: Router) -> set[str]:
    return {remote.model_name for remote in router.remotes.values()} | {
        rule.model for rule in router.rules if rule.model
    }


def _with_history(
    agent: Agent,
    router: Router,
    local_name: str | None,
    session_id: str | None,
    new: tuple[ChatMessage, ...],
) -> tuple[ChatMessage, ...]:
    """The request's messages with the session's history, compacted to fit every tier.

    The budget is the smaller of the local model's context and ``remote_context_tokens``,
    counted with the local model's tokenizer (remote tokenizers are not on the device).
    """
    if session_id is None:
        return new
    history = agent.sessions.history(session_id)
    system = next((m for m in new if m.role == "system"), None)
    fresh = [m for m in new if m.role != "system"]
    budget = router.config.remote_context_tokens
    model_cfg = next((m for m in agent.config.models if m.name == local_name), None)
    if model_cfg is not None:
        budget = min(budget, model_cfg.n_ctx)
    runtime = agent.runtimes.get(local_name or "")
    count_tokens = getattr(runtime, "count_tokens", None)
    counter = count_tokens if callable(count_tokens) else (lambda text: len(text) // 3 + 1)
    result = compact(system, history, fresh, budget_tokens=budget, count=counter)
    return result.messages


def create_agent_app(agent: Agent) -> FastAPI:
    """Build the agent's HTTP app around an already loaded ``agent``."""
    jobs = JobQueue(
        lambda routed: (agent.router or agent.build_router()).complete(routed),
        supervisor=agent.supervisor,
    )

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
    # Bodies are bounded before any route parses them (shared/http_guard.py).
    api = agent.config.api
    app.add_middleware(
        BodyGuard,
        limits=BodyLimits(
            max_bytes=api.max_body_bytes,
            max_depth=api.max_json_depth,
            max_elements=api.max_json_elements,
            shape_status=400,
        ),
        render=_guard_error,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"{where}: {first.get('msg')}", "invalid_request")

    @app.get("/healthz")
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

    @app.get("/metrics", response_class=Response)  # documented as text, not JSON
    async def metrics() -> Response:
        """Prometheus text format; no authentication, like the rest of this API: it is
        bound to loopback unless api.host says otherwise (see docs/telemetry.md)."""
        body = await run_in_threadpool(agent.metrics.exposition)  # reads the outbox
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "owned_by": f"edgefleet:{agent.config.device_id}"}
                for name in agent.runtimes
            ],
        }

    @app.post("/v1/perception/{name}", responses={503: _UNAVAILABLE})
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
                return _error(
                    503,
                    f"perception model unavailable: {agent.load_errors[name]}",
                    "model_unavailable",
                    headers={"Retry-After": "30"},
                )
            return _error(404, f"perception model {name!r} is not served here", "model_not_found")
        import numpy as np  # only perception needs it: not loaded with the agent

        try:
            inputs = np.asarray(body.inputs, dtype=np.dtype(body.dtype))
            result = await run_in_threadpool(classifier.classify, inputs)
        except (ValueError, TypeError) as e:
            record("invalid_inputs")
            return _error(400, f"inputs: {e}", "invalid_inputs")
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
            headers={"X-Edge-Route": "local", "X-Edge-Device": agent.config.device_id},
        )

    def _hints(request: Request) -> RouteHints | JSONResponse:
        try:
            return parse_route_headers(request.headers)
        except ValueError as e:
            return _error(400, str(e), "invalid_header")

    @app.post("/v1/chat/completions", response_model=None, responses=_CHAT_RESPONSES)
    async def chat_completions(
        body: ChatCompletionBody, raw: Request
    ) -> JSONResponse | StreamingResponse:
        started = time.perf_counter()
        router = agent.router or agent.build_router()
        hints = _hints(raw)
        if isinstance(hints, JSONResponse):
            agent.count_request(error=True, rejected="invalid_header")
            return hints
        session_id = raw.headers.get("x-session-id")
        if session_id is not None and not valid_session_id(session_id):
            agent.count_request(error=True, rejected="invalid_header")
            return _error(400, "X-Session-Id: 1-128 of A-Z a-z 0-9 . _ : -", "invalid_header")
        known = set(agent.runtimes) | set(agent.load_errors) | remote_models(router)
        if body.model is not None and body.model not in known:
            agent.count_request(error=True, rejected="model_not_found")
            return _error(
                404, f"model {body.model!r} is not served by this device", "model_not_found"
            )
        local_name = router.local_model(body.model)
        max_default = next(
            (m.max_tokens_default for m in agent.config.models if m.name == local_name), 128
        )
        new = tuple(ChatMessage(m.role, m.text()) for m in body.messages)
        try:
            # Counting tokens waits for the model's thread: never on the event loop.
            messages = await run_in_threadpool(
                _with_history, agent, router, local_name, session_id, new
            )
        except ContextTooLarge as e:
            agent.count_request(error=True, rejected="context_length_exceeded")
            return _error(400, str(e), "context_length_exceeded")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        request = ChatRequest(
            messages=messages,
            max_tokens=body.max_completion_tokens or body.max_tokens or max_default,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop,
            json_schema=body.json_schema(),
        )
        routed = RoutedRequest(request, hints, body.model)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def record(
            outcome: RouteOutcome | None, status: str, prompt_tokens: int, completion_tokens: int
        ) -> None:
            agent.record_inference(
                outcome=outcome.telemetry() if outcome else {"route": None},
                latency_ms=(time.perf_counter() - started) * 1000,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                stream=body.stream,
                status=status,
                task_class=hints.task_class,
                local_model=local_name,
            )

        def unavailable(e: NoTierAvailable) -> JSONResponse:
            agent.count_request(error=True)
            record(None, "unavailable", 0, 0)
            return _error(
                503,
                str(e),
                "no_tier_available",
                headers={"Retry-After": str(e.retry_after_s), "X-Edge-Route": "none"},
            )

        if body.stream:
            try:
                outcome, chunks = await run_in_threadpool(router.stream, routed)
            except NoTierAvailable as e:
                return unavailable(e)
            agent.count_request()
            collected: list[str] = []

            def on_done(status: str, n: int) -> None:
                record(outcome, status, 0, n)
                if status == "ok" and session_id is not None:
                    agent.sessions.append(
                        session_id, [*new, ChatMessage("assistant", "".join(collected))]
                    )

            return StreamingResponse(
                _sse(chunks, outcome.model, completion_id, created, on_done, collected),
                media_type="text/event-stream",
                headers={**_route_headers(outcome, started), "Cache-Control": "no-cache"},
            )
        try:
            result = await run_in_threadpool(router.complete, routed)
        except NoTierAvailable as e:
            if "respond-async" not in raw.headers.get("prefer", ""):
                return unavailable(e)
            try:
                job = jobs.submit(routed, e.retry_after_s)
            except QueueFull as full:
                return _error(
                    503, str(full), "job_queue_full", headers={"Retry-After": str(e.retry_after_s)}
                )
            record(None, "queued", 0, 0)
            return JSONResponse(
                {"id": job.id, "object": "chat.completion.job", "status": job.status},
                status_code=202,
                headers={
                    "Location": f"/v1/jobs/{job.id}",
                    "Retry-After": str(e.retry_after_s),
                    "Preference-Applied": "respond-async",
                },
            )
        agent.count_request()
        completion, outcome = result.completion, result.outcome
        record(outcome, "ok", completion.prompt_tokens, completion.completion_tokens)
        if session_id is not None:
            agent.sessions.append(session_id, [*new, ChatMessage("assistant", completion.text)])
        return JSONResponse(
            completion_body(completion_id, created, result),
            headers=_route_headers(outcome, started),
        )

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> JSONResponse:
        """A queued chat job: its status, and the completion once it is done."""
        job = jobs.get(job_id)
        if job is None:
            return _error(404, f"job {job_id!r} is unknown or expired", "job_not_found")
        body: dict[str, Any] = {"id": job.id, "status": job.status, "attempts": job.attempts}
        if job.result is not None:
            body["result"] = completion_body(f"chatcmpl-{job.id}", int(time.time()), job.result)
            body["route"] = job.result.outcome.tier
            body["route_reason"] = job.result.outcome.reason
        elif job.last_error:
            body["last_error"] = job.last_error
        return JSONResponse(body)

    @app.delete("/v1/jobs/{job_id}", response_model=None)
    async def cancel_job(job_id: str) -> JSONResponse | Response:
        if jobs.cancel(job_id):
            return Response(status_code=204)
        if jobs.get(job_id) is None:
            return _error(404, f"job {job_id!r} is unknown or expired", "job_not_found")
        return _error(409, f"job {job_id!r} is no longer queued", "job_not_queued")

    def _route_headers(outcome: RouteOutcome, started: float) -> dict[str, str]:
        headers = {
            "X-Edge-Route": outcome.tier,
            "X-Edge-Route-Reason": outcome.reason,
            "X-Edge-Model": outcome.model,
            "X-Edge-Runtime": outcome.runtime,
            "X-Edge-Device": agent.config.device_id,
            "X-Edge-Sensitivity": outcome.level.label,
            "X-Edge-Queue-Ms": f"{(time.perf_counter() - started) * 1000:.0f}",
        }
        if outcome.degraded:
            headers["X-Edge-Degraded"] = "true"
        return headers

    _document_errors(app)
    return app


async def _sse(
    chunks: Iterator[CompletionChunk],
    model: str,
    completion_id: str,
    created: int,
    on_done: Callable[[str, int], None],
    collected: list[str],
) -> AsyncIterator[bytes]:
    """Stream chunks from a worker thread; a client that hangs up stops generation."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
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
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    worker = threading.Thread(target=produce, name="sse-generate", daemon=True)
    worker.start()
    chunks_sent = 0
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
                error = {"error": {"message": f"inference failed: {type(item).__name__}"}}
                yield b"data: " + json.dumps(error).encode() + b"\n\n"
                break
            assert isinstance(item, CompletionChunk)
            if item.text:
                chunks_sent += 1
                collected.append(item.text)
            yield frame({"content": item.text} if item.text else {}, item.finish_reason)
        yield b"data: [DONE]\n\n"
    finally:
        cancelled.set()
        on_done(status, chunks_sent)
