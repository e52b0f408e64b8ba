"""Bearer keys on the agent's local API (``api.keys_file``): 401 without a key or with a
wrong one, 200 with a right one, /healthz open, /metrics behind a key, the app's name (never
its key) in /metrics, a non-loopback bind refused without keys, and the keys file written by
``edge-agent api-key``."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from typer.testing import CliRunner

from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.api.auth import ApiKeyGuard
from edge_agent.api_keys import (
    ApiKeys,
    ApiKeysError,
    add_key,
    bearer_token,
    key_hash,
    read_keys_file,
)
from edge_agent.cli import app as agent_cli
from edge_agent.config import AgentConfig, ConfigError, load_config
from edge_agent.telemetry.prometheus import AgentMetrics, AgentState


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str, str]:
    """A keys file with two apps; their keys as `edge-agent api-key add` printed them."""
    path = tmp_path / "api-keys.yaml"
    return path, add_key(path, "dashboard"), add_key(path, "line-camera")


def _agent(tmp_path: Path, keys_file: Path | None, host: str = "127.0.0.1") -> Agent:
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-keys",
            "state_dir": str(tmp_path / "state"),
            "mqtt": None,
            "api": {"host": host, "keys_file": str(keys_file) if keys_file else None},
        }
    )
    return Agent(config, root=tmp_path)


@pytest.fixture
def client(tmp_path: Path, keys: tuple[Path, str, str]) -> Iterator[TestClient]:
    agent = _agent(tmp_path, keys[0])
    with TestClient(create_agent_app(agent)) as client:
        yield client
    agent.stop()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _assert_refused(response: object, code: str) -> None:
    assert getattr(response, "status_code", None) == 401
    headers = getattr(response, "headers", {})
    assert headers["www-authenticate"].startswith("Bearer")
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == code


def test_without_a_key_every_route_is_401(client: TestClient) -> None:
    """With api.keys_file set, a request without Authorization gets 401, an OpenAI-shaped
    error and a Bearer challenge, on the API, on /metrics and on the schema alike."""
    for path in ("/v1/models", "/metrics", "/openapi.json", "/v1/jobs/x"):
        _assert_refused(client.get(path), "missing_api_key")
    response = client.post("/v1/chat/completions", json={"messages": []})
    _assert_refused(response, "missing_api_key")


def test_a_wrong_key_is_401(client: TestClient, keys: tuple[Path, str, str]) -> None:
    """An unknown key, a key's hash, a right key under another scheme and a right key with
    a character changed are all refused as invalid."""
    _, dashboard, _ = keys
    wrong = [
        _bearer("efk_" + "A" * 43),
        _bearer(key_hash(dashboard)),
        {"Authorization": f"Basic {dashboard}"},
        _bearer(dashboard[:-1] + ("a" if dashboard[-1] != "a" else "b")),
        {"Authorization": "Bearer"},
    ]
    for headers in wrong:
        response = client.get("/v1/models", headers=headers)
        _assert_refused(response, "invalid_api_key")
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_right_key_is_200_and_healthz_stays_open(
    client: TestClient, keys: tuple[Path, str, str]
) -> None:
    """Each app's key opens the API, /metrics and the schema (which documents the bearer
    scheme and the 401s); /healthz answers without any key, or with a wrong one."""
    _, dashboard, camera = keys
    for key in (dashboard, camera):
        assert client.get("/v1/models", headers=_bearer(key)).status_code == 200
    assert client.get("/metrics", headers=_bearer(dashboard)).status_code == 200
    # No model is loaded here, so health says 503 "degraded": answered, not refused.
    for headers in ({}, _bearer("not a key")):
        health = client.get("/healthz", headers=headers)
        assert health.status_code in (200, 503) and health.json()["device_id"] == "dev-keys"
    schema = client.get("/openapi.json", headers=_bearer(dashboard)).json()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "401" in schema["paths"]["/v1/models"]["get"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_app_names_reach_metrics_and_keys_never_reach_logs(
    client: TestClient, keys: tuple[Path, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Requests are counted under the key's app name; refusals by reason; neither the keys
    nor their hashes appear in /metrics or in any log line, even at debug level."""
    path, dashboard, camera = keys
    caplog.set_level(logging.DEBUG)
    client.get("/v1/models", headers=_bearer(dashboard))
    client.get("/v1/models", headers=_bearer(dashboard))
    client.get("/v1/models", headers=_bearer(camera))
    client.get("/v1/models", headers=_bearer(camera + "x"))
    client.get("/v1/models")
    text = client.get("/metrics", headers=_bearer(camera)).text
    apps = _samples(text, "edge_agent_app_requests_total")
    assert apps[(("app", "dashboard"), ("route", "models"))] == 2
    assert apps[(("app", "line-camera"), ("route", "models"))] == 1
    refused = _samples(text, "edge_agent_auth_refused_requests_total")
    assert refused == {(("reason", "invalid"),): 1, (("reason", "missing"),): 1}
    stored = read_keys_file(path).hashes.values()
    for secret in (dashboard, camera, *stored, *(h.removeprefix("sha256:") for h in stored)):
        assert secret not in text
        assert secret not in caplog.text


def test_without_keys_the_loopback_api_is_open(tmp_path: Path) -> None:
    """No api.keys_file: the API (and /metrics) answer without a key, as before, on
    loopback only."""
    agent = _agent(tmp_path, None)
    with TestClient(create_agent_app(agent)) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/metrics").status_code == 200
    agent.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "edge.local"])
def test_a_non_loopback_bind_without_keys_is_refused(tmp_path: Path, host: str) -> None:
    """api.host beyond loopback without api.keys_file is a configuration error that says
    how to add keys; with a keys file it is accepted."""
    with pytest.raises(ValidationError, match=r"not a loopback address and api\.keys_file"):
        _agent(tmp_path, None, host=host)
    (tmp_path / "keys.yaml").write_text("keys: {}\n")
    config = AgentConfig.model_validate(
        {"device_id": "d", "api": {"host": host, "keys_file": str(tmp_path / "keys.yaml")}}
    )
    assert config.api.host == host


def test_run_refuses_a_non_loopback_bind_without_keys(tmp_path: Path) -> None:
    """`edge-agent run` with api.host 0.0.0.0 and no keys stops with status 2 and the
    reason, before loading anything."""
    path = tmp_path / "agent.yaml"
    path.write_text("device_id: dev-1\nmqtt: null\napi: {host: 0.0.0.0}\n")
    result = CliRunner().invoke(agent_cli, ["run", "-c", str(path)])
    assert result.exit_code == 2
    assert "api.host '0.0.0.0' is not a loopback address" in result.output


def test_keys_file_resolves_against_the_config_and_bad_files_fail_at_load(
    tmp_path: Path,
) -> None:
    """api.keys_file is relative to the config file; a missing file, a plain key where a
    hash belongs (not echoed back) and a bad app name fail at load, naming the file."""
    path = tmp_path / "agent.yaml"
    path.write_text("device_id: dev-1\nmqtt: null\napi: {keys_file: keys.yaml}\n")
    with pytest.raises(ConfigError, match=f"api.keys_file {tmp_path / 'keys.yaml'}: cannot read"):
        load_config(path)
    key = "efk_plain-key-pasted-by-mistake"
    (tmp_path / "keys.yaml").write_text(f"keys:\n  dashboard: {key}\n")
    with pytest.raises(ConfigError, match="is not 'sha256:' and 64 hex digits") as caught:
        load_config(path)
    assert key not in str(caught.value)
    (tmp_path / "keys.yaml").write_text(f"keys:\n  Bad Name: {key_hash('x')}\n")
    with pytest.raises(ConfigError, match="'Bad Name' is not a valid app name"):
        load_config(path)
    (tmp_path / "keys.yaml").write_text(f"keys:\n  dashboard: {key_hash('x')}\n")
    assert load_config(path).api.keys_file == tmp_path / "keys.yaml"


def test_api_key_cli_prints_the_key_once_and_stores_its_hash(tmp_path: Path) -> None:
    """`api-key add` prints a new key on stdout and stores only its SHA-256 (file mode
    0600); a second add of the name is refused unless --replace; list shows names only;
    remove drops one."""
    path = tmp_path / "keys.yaml"
    runner = CliRunner()
    added = runner.invoke(agent_cli, ["api-key", "add", "dashboard", "--keys-file", str(path)])
    assert added.exit_code == 0, added.output
    key = added.stdout.strip()
    assert key.startswith("efk_") and len(key) > 40
    assert key not in path.read_text() and key_hash(key) in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_keys_file(path).app_for(key) == "dashboard"
    again = runner.invoke(agent_cli, ["api-key", "add", "dashboard", "--keys-file", str(path)])
    assert again.exit_code == 2 and "already has a key named 'dashboard'" in again.output
    rotated = runner.invoke(
        agent_cli, ["api-key", "add", "dashboard", "--replace", "--keys-file", str(path)]
    )
    assert rotated.exit_code == 0
    assert read_keys_file(path).app_for(key) is None
    assert read_keys_file(path).app_for(rotated.stdout.strip()) == "dashboard"
    runner.invoke(agent_cli, ["api-key", "add", "camera", "--keys-file", str(path)])
    listed = runner.invoke(agent_cli, ["api-key", "list", "--keys-file", str(path)])
    assert listed.stdout.split() == ["camera", "dashboard"]
    bad = runner.invoke(agent_cli, ["api-key", "add", "No Spaces", "--keys-file", str(path)])
    assert bad.exit_code == 2 and "app name 'No Spaces'" in bad.output
    removed = runner.invoke(agent_cli, ["api-key", "remove", "camera", "--keys-file", str(path)])
    assert removed.exit_code == 0
    assert sorted(read_keys_file(path).hashes) == ["dashboard"]


# --- the Authorization header parser, fuzzed ----------------------------------------------------
@settings(max_examples=300, derandomize=True, database=None)
@given(st.one_of(st.none(), st.text(max_size=600), st.from_regex(r"(?i)bearer +\S{0,80}")))
def test_bearer_token_parser_never_fails(header: str | None) -> None:
    """Any header value yields None or a token68 that the value ends with; never an error."""
    token = bearer_token(header)
    if token is not None:
        assert header is not None and header.strip().endswith(token)
        assert " " not in token and 0 < len(token) <= 512


def _guard_answer(keys: ApiKeys, headers: list[tuple[bytes, bytes]], path: str) -> int:
    import asyncio

    sent: list[dict[str, object]] = []

    async def inner(scope: object, receive: object, send: object) -> None:
        sent.append({"type": "http.response.start", "status": 200})

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    metrics = AgentMetrics(lambda: AgentState(0, 0))
    guard = ApiKeyGuard(inner, keys=keys, metrics=metrics)
    scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
    asyncio.run(guard(scope, receive, send))  # type: ignore[arg-type]
    status = sent[0]["status"]
    assert isinstance(status, int)
    return status


KEY = "efk_" + "k" * 43


@settings(max_examples=300, derandomize=True, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"authorization", b"x-other", b"Authorization"]),
            st.binary(max_size=200),
        ),
        max_size=4,
    ),
    st.sampled_from(["/v1/models", "/metrics", "/healthz", "/", "/healthz/"]),
)
def test_guard_answers_401_or_passes_for_any_headers(
    headers: list[tuple[bytes, bytes]], path: str
) -> None:
    """For arbitrary header bytes the guard never raises: /healthz passes, every other
    path passes only with the right key in its first Authorization header, else 401."""
    keys = ApiKeys({"app": key_hash(KEY)})
    status = _guard_answer(keys, headers, path)
    first = next((v for n, v in headers if n == b"authorization"), None)
    right = first is not None and bearer_token(first.decode("latin-1")) == KEY
    assert status == (200 if path == "/healthz" or right else 401)
    assert _guard_answer(keys, [(b"authorization", f"bearer  {KEY} ".encode())], path) == 200


def test_keys_repr_and_errors_hold_no_hash(keys: tuple[Path, str, str]) -> None:
    """The parsed keys show names only; a refused name never echoes a stored value."""
    path, dashboard, _ = keys
    parsed = read_keys_file(path)
    assert "sha256" not in repr(parsed) and dashboard not in repr(parsed)
    with pytest.raises(ApiKeysError, match="already has a key named 'dashboard'"):
        add_key(path, "dashboard")


def test_the_app_name_reaches_the_inference_record_sent_to_the_controller(
    tmp_path: Path, keys: tuple[Path, str, str]
) -> None:
    """A chat request made with an app's key is recorded (for the controller's telemetry)
    under that app's name, never its key."""
    _, dashboard, _ = keys
    agent = _agent(tmp_path, keys[0])
    try:
        with TestClient(create_agent_app(agent)) as client:
            answer = client.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}]},
                headers=_bearer(dashboard),
            )
            assert answer.status_code == 503  # no model here: recorded as unavailable
        assert agent.outbox is not None
        rows = agent.outbox.read_batch(None, max_records=100, max_bytes=10**6)
        inference = [r.body for r in rows if r.name == "inference"]
        assert [(b["app"], b["status"]) for b in inference] == [("dashboard", "unavailable")]
        assert dashboard not in str(inference)
    finally:
        agent.stop()
