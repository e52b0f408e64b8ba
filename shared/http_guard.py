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

Two more middlewares share this module, as both apps need them:

- ``HostGuard`` refuses (``400``) a request whose ``Host`` header names a host the app does
  not answer to (``HostPolicy``): DNS rebinding points an attacker's name at a loopback
  server, and a browser then sends the attacker's name as ``Host``. Loopback names and the
  literal address the connection arrived at are always accepted; other names only when
  configured.
- ``SecurityHeaders`` adds fixed headers (a Content-Security-Policy, ``nosniff``, a
  Referrer-Policy...) to every response that does not set its own, and
  ``Cache-Control: no-store`` to every response outside the cacheable path prefixes.
"""

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from shared.json_guard import MAX_DEPTH, MAX_ELEMENTS, JsonShapeError, loads_bounded

__all__ = [
    "LOOPBACK_NAMES",
    "BodyGuard",
    "BodyLimits",
    "ErrorRenderer",
    "HostGuard",
    "HostPolicy",
    "SecurityHeaders",
    "check_host_pattern",
    "host_of",
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
    # (METHOD, exact path) -> byte limit, for routes whose (buffered, JSON-checked) body may
    # be larger than ``max_bytes`` (a drill report).
    larger: Mapping[tuple[str, str], int] = field(default_factory=dict)
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
        route = (scope["method"], scope["path"])
        streamed = self.limits.streamed.get(route)
        if streamed is not None:
            limit = streamed
        else:
            limit = self.limits.larger.get(route, self.limits.max_bytes)
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
        complete = False

        async def counted() -> Message:
            nonlocal received, complete
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not complete:
                    # Answered before the body was read (a 401 before an upload): close the
                    # connection rather than let the server drain gigabytes to keep it.
                    message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as e:
            if started:
                raise  # too late for a status: the server drops the connection
            await self._refuse(send, _too_large(e.limit))

    async def _refuse(self, send: Send, refused: _Refused) -> None:
        # The rest of the body is not read: this connection cannot carry another request.
        await _send_error(send, self.render, refused)


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


# --- Host header -------------------------------------------------------------------------------
# Names a browser resolves to this machine without asking DNS, so no rebinding can use them.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_REG_NAME = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]{0,252})$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def host_of(header: str) -> str | None:
    """The host of a ``Host`` header value (RFC 9110: ``host [":" port]``), lowercased,
    without the port, IPv6 brackets or a trailing dot; None when it is not one."""
    value = header.strip().lower()
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.match(rest[1:]))):
            return None
        try:
            return str(ipaddress.IPv6Address(inside))
        except ValueError:
            return None
    name, colon, port = value.partition(":")
    if colon and not _PORT.match(port):
        return None
    if name.endswith(".") and len(name) > 1:
        name = name[:-1]
    if not _REG_NAME.match(name) or ".." in name:
        return None
    return name


def check_host_pattern(value: str) -> str:
    """An ``allowed_hosts`` entry, normalized: ``*`` (any host), ``*.example.com`` (any name
    under example.com), or a host name or IP address (no port); ValueError saying why not."""
    text = value.strip().lower()
    if text == "*":
        return text
    wildcard = text.startswith("*.")
    bare = text[2:] if wildcard else text
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = None
    if address is not None:
        if wildcard:
            raise ValueError(f"{value!r}: '*.' goes before a name, not an address")
        return str(address)
    name = host_of(bare)
    if name is None or name != bare.rstrip("."):
        raise ValueError(
            f"{value!r} is not a host name or address (no scheme, port or path; '*' for any)"
        )
    return f"*.{name}" if wildcard else name


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` headers an app answers: the loopback names, the literal address the
    connection arrived at (an IP address cannot be rebound to another server, and a client
    typing it means this server), and ``names`` (entries of ``check_host_pattern``)."""

    names: tuple[str, ...] = ()
    # The setting that lists more names, for the refusal's text.
    setting: str = "allowed_hosts"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(check_host_pattern(n) for n in self.names))

    def allows(self, host: str, server_host: str | None) -> bool:
        """Whether the (``host_of``-normalized) ``host`` is answered on a connection that
        arrived at ``server_host`` (the ASGI ``server`` address)."""
        if "*" in self.names or host in LOOPBACK_NAMES:
            return True
        if server_host is not None and host == _normal_address(server_host):
            return True
        for name in self.names:
            if host == name or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False


def _normal_address(server_host: str) -> str:
    text = server_host.strip().lower().strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


class HostGuard:
    """ASGI middleware refusing (400) requests whose ``Host`` the policy does not allow,
    before anything else reads them. A request without ``Host`` (HTTP/1.0) passes: browsers
    always send one, and rebinding needs a browser."""

    def __init__(
        self, app: ASGIApp, *, policy: HostPolicy, render: ErrorRenderer = problem_details
    ) -> None:
        self.app = app
        self.policy = policy
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # neither app serves websockets
            await self.app(scope, receive, send)
            return
        raw = _header(scope, b"host")
        if raw is not None:
            text = raw.decode("latin-1")
            host = host_of(text)
            server = scope.get("server")
            server_host = str(server[0]) if server else None
            if host is None or not self.policy.allows(host, server_host):
                shown = text if len(text) <= 80 else text[:80] + "..."
                message = (
                    f"the Host header {shown!r} names no host this server answers to;"
                    f" its operator lists the names it is reached by in {self.policy.setting}"
                )
                await _send_error(send, self.render, _Refused(400, "host_not_allowed", message))
                return
        await self.app(scope, receive, send)


# --- response headers ----------------------------------------------------------------------------
class SecurityHeaders:
    """ASGI middleware adding ``headers`` (name, value) to every HTTP response that does not
    set that header itself, ``Cache-Control: no-store`` to every response without a
    ``Cache-Control`` whose path is outside ``cacheable_prefixes``, and HSTS on HTTPS."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        headers: Iterable[tuple[str, str]],
        cacheable_prefixes: tuple[str, ...] = (),
        hsts_max_age_s: int | None = 31_536_000,
    ) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.cacheable_prefixes = cacheable_prefixes
        self.hsts = (
            None if hsts_max_age_s is None else f"max-age={hsts_max_age_s}".encode("latin-1")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(self.headers)
        if not (self.cacheable_prefixes and scope["path"].startswith(self.cacheable_prefixes)):
            extra.append((b"cache-control", b"no-store"))
        if self.hsts is not None and scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", self.hsts))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {bytes(k).lower() for k, _ in headers}
                headers.extend((k, v) for k, v in extra if k not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


async def _send_error(send: Send, render: ErrorRenderer, refused: _Refused) -> None:
    """Answer ``refused`` and close the connection (its request may not have been read)."""
    body, content_type = render(refused.status, refused.reason, refused.message)
    await send(
        {
            "type": "http.response.start",
            "status": refused.status,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
