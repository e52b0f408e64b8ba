"""``POST /v1/chat/completions``: OpenAI's chat completions, plain and streamed (SSE).

The request body and headers become a ``ChatCall`` of the chat service (built once with
the agent); the answer goes back in OpenAI's shape with the ``X-Edge-*`` route headers.
A request no allowed tier can answer is a 503 with Retry-After, or with
``Prefer: respond-async`` a queued job (202, see ``jobs.py``).

Prompt contents are never logged; only counts and timings leave this module.
"""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

from edge_agent.api.errors import UNAVAILABLE, error
from edge_agent.chat_service import (
    ChatCall,
    ChatRefused,
    ChatService,
    SamplingParams,
    StreamTally,
)
from edge_agent.routing.context import valid_session_id
from edge_agent.routing.headers import parse_route_headers
from edge_agent.routing.jobs import JobQueue, QueueFull
from edge_agent.routing.router import NoTierAvailable, RoutedResult, RouteOutcome
from edge_agent.runtimes.base import ChatMessage, CompletionChunk

_DONE = object()

# What /openapi.json says besides the JSON answer: the SSE stream of ``stream: true``, and
# 503 with Retry-After while no tier allowed for the request can answer.
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
    503: UNAVAILABLE,
}


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
            import jsonschema  # loaded by the first request that asks for a JSON schema

            try:
                jsonschema.Draft202012Validator.check_schema(self.json_schema.schema_)
            except jsonschema.SchemaError as e:
                raise ValueError(f"invalid JSON schema: {e.message}") from e
        return self


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # A last chunk with ``choices: []`` and the request's ``usage`` before [DONE].
    include_usage: bool = False


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
    stream_options: _StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    response_format: _ResponseFormat | None = None

    @property
    def include_usage(self) -> bool:
        """A streamed answer ends with a usage chunk (ignored without ``stream``)."""
        return self.stream and self.stream_options is not None and self.stream_options.include_usage

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


def sampling(body: ChatCompletionBody) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop,
        json_schema=body.json_schema(),
    )


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


def route_headers(outcome: RouteOutcome, started: float, device_id: str) -> dict[str, str]:
    headers = {
        "X-Edge-Route": outcome.tier,
        "X-Edge-Route-Reason": outcome.reason,
        "X-Edge-Model": outcome.model,
        "X-Edge-Runtime": outcome.runtime,
        "X-Edge-Device": device_id,
        "X-Edge-Sensitivity": outcome.level.label,
        "X-Edge-Queue-Ms": f"{(time.perf_counter() - started) * 1000:.0f}",
    }
    if outcome.degraded:
        headers["X-Edge-Degraded"] = "true"
    if outcome.redaction is not None:  # asked for: spans replaced in what the tier got
        headers["X-Edge-Redacted"] = str(outcome.redacted_count)
    return headers


def chat_routes(service: ChatService, jobs: JobQueue, device_id: str) -> APIRouter:
    routes = APIRouter()

    @routes.post("/v1/chat/completions", response_model=None, responses=_CHAT_RESPONSES)
    async def chat_completions(
        body: ChatCompletionBody, raw: Request
    ) -> JSONResponse | StreamingResponse:
        started = time.perf_counter()
        try:
            hints = parse_route_headers(raw.headers)
        except ValueError as e:
            service.refuse("invalid_header")
            return error(400, str(e), "invalid_header")
        session_id = raw.headers.get("x-session-id")
        if session_id is not None and not valid_session_id(session_id):
            service.refuse("invalid_header")
            return error(400, "X-Session-Id: 1-128 of A-Z a-z 0-9 . _ : -", "invalid_header")
        try:
            # Counting tokens waits for the model's thread: never on the event loop.
            call = await run_in_threadpool(
                service.admit,
                model=body.model,
                messages=tuple(ChatMessage(m.role, m.text()) for m in body.messages),
                params=sampling(body),
                hints=hints,
                session_id=session_id,
                stream=body.stream,
                started=started,
                app=getattr(raw.state, "app", None),
            )
        except ChatRefused as refused:
            return error(refused.status, refused.message, refused.code)
        answer = _Answer(service, call, device_id)
        if body.stream:
            return await answer.stream(include_usage=body.include_usage)
        return await answer.complete(
            jobs, respond_async="respond-async" in raw.headers.get("prefer", "")
        )

    return routes


class _Answer:
    """One admitted request's way back to the client."""

    def __init__(self, service: ChatService, call: ChatCall, device_id: str) -> None:
        self.service = service
        self.call = call
        self.device_id = device_id
        self.completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def unavailable(self, e: NoTierAvailable) -> JSONResponse:
        self.service.unavailable(self.call)
        return error(
            503,
            str(e),
            "no_tier_available",
            headers={"Retry-After": str(e.retry_after_s), "X-Edge-Route": "none"},
        )

    async def stream(self, *, include_usage: bool) -> JSONResponse | StreamingResponse:
        call = self.call
        try:
            outcome, chunks = await run_in_threadpool(self.service.stream, call)
        except NoTierAvailable as e:
            return self.unavailable(e)
        tally = StreamTally()

        def on_done(status: str) -> None:
            self.service.stream_done(call, outcome, status, tally)

        frames = _Frames(self.completion_id, self.created, outcome.model, include_usage)
        return StreamingResponse(
            _sse(chunks, frames, tally, on_done),
            media_type="text/event-stream",
            headers={
                **route_headers(outcome, call.started, self.device_id),
                "Cache-Control": "no-cache",
            },
        )

    async def complete(self, jobs: JobQueue, *, respond_async: bool) -> JSONResponse:
        try:
            result = await run_in_threadpool(self.service.complete, self.call)
        except NoTierAvailable as e:
            if not respond_async:
                return self.unavailable(e)
            return self.queue(jobs, e)
        return JSONResponse(
            completion_body(self.completion_id, self.created, result),
            headers=route_headers(result.outcome, self.call.started, self.device_id),
        )

    def queue(self, jobs: JobQueue, e: NoTierAvailable) -> JSONResponse:
        """Prefer: respond-async: the request waits as a job until an allowed tier answers."""
        try:
            job = jobs.submit(self.call.routed, e.retry_after_s)
        except QueueFull as full:
            return error(
                503, str(full), "job_queue_full", headers={"Retry-After": str(e.retry_after_s)}
            )
        self.service.queued(self.call)
        return JSONResponse(
            {"id": job.id, "object": "chat.completion.job", "status": job.status},
            status_code=202,
            headers={
                "Location": f"/v1/jobs/{job.id}",
                "Retry-After": str(e.retry_after_s),
                "Preference-Applied": "respond-async",
            },
        )


@dataclass(frozen=True, slots=True)
class _Frames:
    """The SSE events of one streamed answer, in OpenAI's chunk shape."""

    completion_id: str
    created: int
    model: str
    include_usage: bool

    def _event(self, payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def _base(self) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def delta(self, delta: dict[str, str], finish: str | None) -> bytes:
        payload = {
            **self._base(),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if self.include_usage:  # OpenAI: every other chunk says usage null
            payload["usage"] = None
        return self._event(payload)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return self._event({**self._base(), "choices": [], "usage": usage})

    def error(self, e: Exception) -> bytes:
        return self._event({"error": {"message": f"inference failed: {type(e).__name__}"}})


async def _sse(
    chunks: Iterator[CompletionChunk],
    frames: _Frames,
    tally: StreamTally,
    on_done: Callable[[str], None],
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

    worker = threading.Thread(target=produce, name="sse-generate", daemon=True)
    worker.start()
    status = "cancelled"
    try:
        yield frames.delta({"role": "assistant"}, None)
        while True:
            item = await queue.get()
            if item is _DONE:
                status = "ok"
                break
            if isinstance(item, Exception):
                status = "error"
                yield frames.error(item)
                break
            assert isinstance(item, CompletionChunk)
            tally.add(item)
            if item.text or item.finish_reason:
                delta = {"content": item.text} if item.text else {}
                yield frames.delta(delta, item.finish_reason)
        if status == "ok" and frames.include_usage:
            yield frames.usage(*tally.tokens())
        yield b"data: [DONE]\n\n"
    finally:
        cancelled.set()
        on_done(status)
