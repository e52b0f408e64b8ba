"""Bounded HTTP request bodies: a raw ASGI middleware for the controller and the agent.

Starlette's ``request.json()`` is ``json.loads``, which recurses once per nesting level, and
the parsed value then meets more recursive code (pydantic, ``json.dumps``, SQLAlchemy's JSON
type, Jinja). A body is therefore checked here, before any route sees it:

- its size, from ``Content-Length`` and by counting the bytes as they arrive (a chunked
  body has no length): over the limit is ``413``;
- a NUL character in the path or query (``%00``) is ``400``;
- a JSON body (``application/json``, ``*/*+json``, or no content type, which FastAPI also
  parses as JSON) is parsed with ``shared.json_guard.loads_bounded`` (no Python recursion)
  within a depth and element-count limit: a refusal is ``shape_status`` (400/422) saying
  what is wrong. The route then parses the same bytes itself; parsing twice costs a few
  milliseconds per MiB and keeps this guard independent of any framework.

A body within the limits is buffered (at most ``max_bytes``) and replayed to the app. Routes
listed in ``streamed`` (an artifact upload) get their bytes as they arrive, counted against
their own, larger limit and never JSON-checked. Errors are rendered by the app's own
``render`` so each API keeps its error shape. No framework is imported: the ASGI types are
declared here as Starlette declares them.
"""

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from shared.json_guard import MAX_DEPTH, MAX_ELEMENTS, JsonShapeError, loads_bounded

__all__ = [
    "BodyGuard",
    "BodyLimits",
    "ErrorRenderer",
    "problem_details",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# (status, reason code, readable message) -> (body, content type)
ErrorRenderer = Callable[[int, str, str], tuple[bytes, str]]


@dataclass(frozen=True)
class BodyLimits:
    """How large and how deeply nested a request body may be."""

    max_bytes: int = 1024 * 1024
    max_depth: int = MAX_DEPTH
    max_elements: int = MAX_ELEMENTS
    # (METHOD, exact path) -> byte limit, for routes that stream their body (uploads).
    streamed: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # The status of a JSON body that is malformed, too deep or too large in elements: each
    # app answers as its own validation errors do (the controller 422, the agent 400).
    shape_status: int = 422

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_depth < 1 or self.max_elements < 1:
            raise ValueError("body limits must be positive")


def problem_details(status: int, reason: str, message: str) -> tuple[bytes, str]:
    """RFC 9457 problem details, as the controller's API answers every error."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {"type": "about:blank", "title": title, "status": status, "detail": message}
    return json.dumps(body).encode(), "application/problem+json"


class BodyTooLarge(Exception):
    """Raised into a streaming route by ``receive`` once its body passed the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {limit} bytes")
        self.limit = limit


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class BodyGuard:
    """ASGI middleware refusing oversized and over-nested request bodies (see module doc)."""

    def __init__(
        self, app: ASGIApp, *, limits: BodyLimits, render: ErrorRenderer = problem_details
    ) -> None:
        self.app = app
        self.limits = limits
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streamed = self.limits.streamed.get((scope["method"], scope["path"]))
        limit = self.limits.max_bytes if streamed is None else streamed
        try:
            _check_url(scope)
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                raise _too_large(limit)
            if streamed is not None:
                await self._stream(scope, receive, send, limit)
                return
            body = await _read_body(receive, limit)
            if body is None:
                return  # the client hung up before its body was complete: no one to answer
            if body.strip() and _is_json(scope):
                self._check_json(body, limit)
        except _Refused as refused:
            await self._refuse(send, refused)
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_json(self, body: bytes, limit: int) -> None:
        try:
            loads_bounded(
                body,
                max_bytes=limit,
                max_depth=self.limits.max_depth,
                max_elements=self.limits.max_elements,
            )
        except JsonShapeError as e:
            raise _Refused(
                self.limits.shape_status, e.reason, f"request body: {e.detail}"
            ) from None

    async def _stream(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as e:
            if started:
                raise  # too late for a status: the server drops the connection
            await self._refuse(send, _too_large(e.limit))

    async def _refuse(self, send: Send, refused: _Refused) -> None:
        body, content_type = self.render(refused.status, refused.reason, refused.message)
        await send(
            {
                "type": "http.response.start",
                "status": refused.status,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode("latin-1")),
                    # The rest of the body is not read: this connection cannot carry another.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _too_large(limit: int) -> _Refused:
    return _Refused(413, "oversized", f"the request body is larger than the limit of {limit} bytes")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _check_url(scope: Scope) -> None:
    """No NUL in the path or query: no name or filter holds one, and PostgreSQL refuses it
    in any text parameter (a 500 from every route that looks the value up)."""
    query = bytes(scope.get("query_string", b"")).lower()
    if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query:
        raise _Refused(400, "nul_character", "the URL holds a NUL character (%00)")


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    text = raw.decode("latin-1").strip()
    if not text.isdigit() or not text.isascii():
        raise _Refused(400, "bad_length", "Content-Length is not a number of bytes")
    return int(text)


def _is_json(scope: Scope) -> bool:
    """FastAPI's rule: no content type, ``application/json`` or ``application/*+json``."""
    raw = _header(scope, b"content-type")
    if raw is None:
        return True
    media = raw.decode("latin-1").split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, refusing it as soon as it passes ``limit``; None on disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body as one message, then the server's own messages (a disconnect,
    which streaming responses listen for)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
