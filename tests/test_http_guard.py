"""The request-body guard (shared/http_guard.py): sizes, JSON depth and element counts are
refused with a 4xx that says why, on an app of its own and on the controller and the agent,
and every other body reaches the route unchanged."""

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import Body, FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.updates.repository import TufRepository
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from shared.http_guard import BodyGuard, BodyLimits
from tests.access_world import AccessWorld, access_world

MAX_BYTES = 4096
MAX_DEPTH = 4
MAX_ELEMENTS = 60
UPLOAD_LIMIT = 16_384


def _echo_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        BodyGuard,
        limits=BodyLimits(
            max_bytes=MAX_BYTES,
            max_depth=MAX_DEPTH,
            max_elements=MAX_ELEMENTS,
            streamed={("POST", "/upload"): UPLOAD_LIMIT},
        ),
    )

    @app.post("/echo")
    async def echo(body: Any = Body(None)) -> Any:  # noqa: B008
        # A body that is not JSON arrives as bytes (FastAPI's rule): echo only its size.
        return {"body": len(body) if isinstance(body, bytes) else body}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
        return {"received": received}

    return app


ECHO = TestClient(_echo_app())


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _count(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_count(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_count(v) for v in value)
    return 1


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=80,
)
CONTENT_TYPES = [
    None,
    "application/json",
    "application/merge-patch+json",
    "text/plain",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=MAX_BYTES + 600), st.sampled_from(CONTENT_TYPES))
def test_random_bytes_never_get_a_server_error(data: bytes, content_type: str | None) -> None:
    """Any bytes with any content type: never a 5xx; over the limit 413; a refusal says why."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = ECHO.post("/echo", content=data, headers=headers)
    assert response.status_code < 500, response.text
    if len(data) > MAX_BYTES:
        assert response.status_code == 413
        assert f"limit of {MAX_BYTES} bytes" in response.json()["detail"]
    elif response.status_code >= 400:
        assert response.json()["detail"]


def _nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_nul(v) for v in value)
    return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_json_within_limits_passes_and_beyond_is_refused(value: Any) -> None:
    """A JSON body within the limits reaches the route unchanged; one nested deeper,
    holding more values or a NUL character (no database stores it) is refused with 422
    problem details naming one of its faults."""
    response = ECHO.post(
        "/echo", content=json.dumps(value), headers={"Content-Type": "application/json"}
    )
    faults = {
        f"nested deeper than {MAX_DEPTH} levels": _depth(value) > MAX_DEPTH,
        f"more than {MAX_ELEMENTS} values": _count(value) > MAX_ELEMENTS,
        "holds a NUL character": _nul(value),
    }
    if not any(faults.values()):
        assert response.status_code == 200, response.text
        assert response.json() == {"body": value}
        return
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert any(text in detail for text, applies in faults.items() if applies), detail


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=MAX_DEPTH + 1, max_value=MAX_BYTES), st.booleans())
def test_deep_nesting_of_any_depth_is_too_deep(depth: int, objects: bool) -> None:
    """Arrays or objects nested past the limit, as deep as the byte limit allows, are 422
    ``too_deep`` (never RecursionError)."""
    opener, leaf, closer = ('{"a":', "1", "}") if objects else ("[", "", "]")
    depth = min(depth, (MAX_BYTES - 1) // len(opener + closer))
    text = opener * depth + leaf + closer * depth
    response = ECHO.post("/echo", content=text, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "nested deeper" in response.json()["detail"]


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def test_a_chunked_body_is_counted_as_it_arrives() -> None:
    """Without Content-Length the guard counts the bytes: past the limit is 413, within it
    the route gets every byte."""
    fits = ECHO.post("/raw", content=_chunks(MAX_BYTES), headers={"Content-Type": "text/plain"})
    assert fits.status_code == 200 and fits.json() == {"received": MAX_BYTES}
    over = ECHO.post("/raw", content=_chunks(MAX_BYTES + 1), headers={"Content-Type": "text/plain"})
    assert over.status_code == 413


def test_a_streamed_route_has_its_own_limit() -> None:
    """An upload route gets its body as it arrives under its larger limit, declared or
    counted, and is refused with 413 past it."""
    body = _chunks(UPLOAD_LIMIT)
    assert ECHO.post("/upload", content=body).json() == {"received": UPLOAD_LIMIT}
    assert ECHO.post("/upload", content=b"x" * UPLOAD_LIMIT).json() == {"received": UPLOAD_LIMIT}
    counted = ECHO.post("/upload", content=_chunks(UPLOAD_LIMIT + 1))
    assert counted.status_code == 413 and "limit of 16384 bytes" in counted.json()["detail"]
    declared = ECHO.post("/upload", content=b"x" * (UPLOAD_LIMIT + 1))
    assert declared.status_code == 413


def _drive(
    app: Any, headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Call the ASGI app directly with raw headers and receive messages; what it sent."""
    sent: list[dict[str, Any]] = []
    incoming = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(incoming, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_content_length_that_is_no_number_is_400() -> None:
    """``Content-Length: 12abc`` (a server in front may let it through) is 400, not a crash."""
    sent = _drive(
        ECHO.app, [(b"content-length", b"12abc")], [{"type": "http.request", "body": b"[]"}]
    )
    assert sent[0]["status"] == 400
    assert b"Content-Length" in sent[1]["body"]


def test_a_client_gone_mid_body_gets_no_answer() -> None:
    """A client that disconnects before its body is complete is not answered and the route
    is not called with half a body."""
    sent = _drive(
        ECHO.app,
        [(b"content-type", b"application/json")],
        [{"type": "http.request", "body": b"[1,", "more_body": True}, {"type": "http.disconnect"}],
    )
    assert sent == []


DEEP = "[" * 3000 + "]" * 3000  # 6 KB: json.loads raises RecursionError on it


@pytest.fixture
def world(tmp_path: Path) -> Iterator[AccessWorld]:
    with access_world(tmp_path, http_limits={"max_body_bytes": 64 * 1024}) as w:
        yield w


def test_controller_refuses_deep_and_oversized_bodies(world: AccessWorld) -> None:
    """On the controller a 3,000-deep body is 422 problem details (it used to reach
    ``json.loads``), an oversized one 413, both before authentication; the API still
    answers after them."""
    client = world.client()
    for path, method in (("/api/devices/dev-1/shadow/desired", "PATCH"), ("/api/rollouts", "POST")):
        deep = client.request(
            method,
            path,
            content=DEEP,
            headers={**world.bearer("admin"), "Content-Type": "application/json"},
        )
        assert deep.status_code == 422, deep.text
        assert deep.headers["content-type"] == "application/problem+json"
        assert deep.json()["detail"] == "request body: nested deeper than 32 levels"
    anonymous = client.post("/api/rollouts", content=DEEP)
    assert anonymous.status_code == 422
    big = client.post(
        "/api/rollouts",
        content=b"[" + b"0," * 40_000 + b"0]",
        headers={**world.bearer("admin"), "Content-Type": "application/json"},
    )
    assert big.status_code == 413 and "65536 bytes" in big.json()["detail"]
    assert client.get("/api/devices", headers=world.bearer("admin")).status_code == 200


def test_a_nul_in_the_url_is_400_on_every_database(tmp_path: Path, database_url: str) -> None:
    """A ``%00`` in a path or query (which PostgreSQL refuses in any text parameter, a 500
    from each route that looked it up) is 400 on the controller, on either database."""
    with access_world(tmp_path, database_url=database_url) as world:
        client = world.client()
        for path in ("/api/devices/a%00b", "/api/models?name=a%00", "/api/audit?actor=%00"):
            refused = client.get(path, headers=world.bearer("admin"))
            assert refused.status_code == 400, (path, refused.text)
            assert refused.json()["detail"] == "the URL holds a NUL character (%00)"
        assert (
            client.get("/api/models?name=a%2500", headers=world.bearer("admin")).status_code == 200
        )


@pytest.fixture
def bare_agent(tmp_path: Path) -> Iterator[Agent]:
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-guard",
            "state_dir": str(tmp_path),
            "mqtt": None,
            "api": {"max_body_bytes": 64 * 1024, "max_json_elements": 1000},
        }
    )
    agent = Agent(config, root=tmp_path)
    yield agent
    agent.stop()


def test_agent_refuses_deep_large_and_crowded_bodies(bare_agent: Agent) -> None:
    """On the agent's API the refusals are OpenAI-shaped: 3,000-deep JSON is 400
    ``too_deep``, too many values 400 ``too_many_elements``, too many bytes 413."""
    with TestClient(create_agent_app(bare_agent)) as client:
        deep = client.post(
            "/v1/chat/completions", content=DEEP, headers={"Content-Type": "application/json"}
        )
        assert deep.status_code == 400, deep.text
        assert deep.json()["error"]["code"] == "too_deep"
        crowded = client.post("/v1/perception/cls", json={"inputs": [0.5] * 2000})
        assert crowded.status_code == 400
        assert crowded.json()["error"]["code"] == "too_many_elements"
        assert "more than 1000 values" in crowded.json()["error"]["message"]
        big = client.post("/v1/chat/completions", content=b" " * (64 * 1024 + 1))
        assert big.status_code == 413 and big.json()["error"]["code"] == "oversized"
        assert client.get("/v1/models").status_code == 200


def test_model_uploads_keep_their_own_larger_limit(tmp_path: Path) -> None:
    """With API bodies limited to 64 KiB, a 200 KB model upload (streamed, no
    Content-Length) is still published, and one past ``updates.max_upload_bytes`` is 413."""
    (tmp_path / "passphrase").write_text("guard tests passphrase")
    updates = {
        "repo_dir": str(tmp_path / "repo"),
        "keys_dir": str(tmp_path / "keys"),
        "passphrase_file": str(tmp_path / "passphrase"),
        "max_upload_bytes": 256 * 1024,
    }
    with access_world(
        tmp_path, http_limits={"max_body_bytes": 64 * 1024}, updates=updates
    ) as world:
        services = world.app.state.services
        services.tuf = TufRepository.from_settings(services.settings)
        services.tuf.initialize(now=datetime.now(UTC))
        client = world.client()
        params = {"name": "big", "version": "1", "runtime": "onnx", "filename": "m.onnx"}
        headers = {**world.bearer("operator"), "Content-Type": "application/octet-stream"}
        published = client.post(
            "/api/models", params=params, content=_chunks(200_000, 8192), headers=headers
        )
        assert published.status_code == 201, published.text
        assert published.json()["length"] == 200_000
        too_big = client.post(
            "/api/models",
            params={**params, "version": "2"},
            content=_chunks(256 * 1024 + 1, 8192),
            headers=headers,
        )
        assert too_big.status_code == 413
