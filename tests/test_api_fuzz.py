"""Schemathesis fuzzes every operation of the controller's and the agent's OpenAPI schemas:
valid and invalid parameters and bodies never get a 5xx, documented answers match their
schema, and no supervised worker goes down. Bounded: few examples per operation, a fixed
seed, no example database."""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from controller.app import create_app
from controller.auth.credentials import create_api_token
from controller.auth.users import create_user
from controller.db import session_scope
from controller.devices.tables import Device
from controller.pki.store import PkiStore
from controller.services import Services
from controller.settings import load_settings
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.api_keys import add_key
from edge_agent.config import AgentConfig
from tests.conftest import MosquittoProcess, wait_for
from tests.tiny_models import build_tiny_classifier, build_tiny_genai_model

# A small, fixed budget: a few valid and a few invalid cases per operation, the same ones
# every run (derandomized, no example database), no shrinking: the file takes about a minute
# and a half on two cores, and a failure names its operation and a curl to replay it.
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
AGENT_CHECKS = [response_schema_conformance, content_type_conformance]
UNAVAILABLE_CODES = {"no_tier_available", "model_unavailable", "job_queue_full"}


def fuzz(
    schema: BaseSchema,
    call: Callable[[Case[Any]], object],
    *,
    examples: int,
    known: dict[str, str] | None = None,
) -> list[str]:
    """Run ``call`` on generated cases of every operation of ``schema``; the failures, one
    per operation and mode. Valid cases use the ``known`` path parameters (an existing
    device, say) so they get past the 404; invalid ones are generated whole.
    (Schemathesis' own pytest plugin does not run on pytest 9.2.)"""
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"an operation the schema cannot describe: {result.err()}")
            continue
        operation = result.ok()
        names = set(re.findall(r"{(\w+)", operation.path))
        modes = [GenerationMode.POSITIVE]
        # Invalid cases where there is something to get wrong: a string path parameter
        # accepts anything, and hypothesis would spend seconds failing to break it.
        if len(operation.query) or len(operation.body):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            fixed = {k: v for k, v in (known or {}).items() if k in names}
            strategy = operation.as_strategy(
                mode, path_parameters=fixed if mode is GenerationMode.POSITIVE else None
            )

            @settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                # Large generated bodies and filtered invalid cases trip the health checks
                # about slow or rejected data; the budget is fixed by max_examples anyway.
                suppress_health_check=list(HealthCheck),
            )
            @given(strategy)
            def run(case: Case[Any]) -> None:
                call(case)

            try:
                run()
            except Unsatisfiable:
                continue  # nothing in this operation can be made invalid
            except (Exception, FailureGroup) as e:  # a check failed, or the app raised
                failures.append(f"{operation.label} ({mode.value}): {e}")
    return failures


@dataclass
class FuzzedController:
    schema: BaseSchema
    services: Services
    auth: dict[str, str]


@pytest.fixture
def controller(tmp_path: Path, database_url: str) -> Iterator[FuzzedController]:
    """A real controller (ingest, scheduler, supervised workers) on a real broker and each
    supported database, with a registered device, a device CA and an admin token.
    Schemathesis runs the app's lifespan itself."""
    root = tmp_path
    broker = MosquittoProcess(root)
    broker.start()
    try:
        (root / "passphrase").write_text("fuzz tests passphrase")
        settings = load_settings(
            None,
            environment="development",
            database_url=database_url,
            broker={"mode": "external", "url": broker.broker.url},
            secure_cookies=False,
            updates={
                "repo_dir": str(root / "repo"),
                "keys_dir": str(root / "keys"),
                "passphrase_file": str(root / "passphrase"),
                "max_upload_bytes": 1024 * 1024,
            },
            pki={"dir": str(root / "pki")},
        )
        services = Services.create(settings)
        assert services.tuf is not None
        services.tuf.initialize(now=datetime.now(UTC))  # uploads are signed and published
        # A device CA, so certificate requests are judged on their merits.
        PkiStore.from_settings(settings).initialize(now=datetime.now(UTC))
        with session_scope(services.engine) as session:
            admin = create_user(session, username="admin", password="fuzz-pass-1234", role="admin")
            token = create_api_token(session, admin, name="fuzz")
            session.add(Device(id="dev-1"))
        schema = schemathesis.openapi.from_asgi(
            "/openapi.json", create_app(settings, services=services)
        )
        wait_for(lambda: services.ingest is not None and services.ingest.connected, 15)
        yield FuzzedController(schema, services, {"Authorization": f"Bearer {token}"})
    finally:
        shutdown_lifespans()  # the controller's services stop here
        broker.stop()


def test_controller_api_never_fails_on_any_input(controller: FuzzedController) -> None:
    """Every controller operation, called as an admin with generated (valid and invalid)
    parameters and bodies, answers without a 5xx and as its schema says, and every
    supervised worker keeps running."""

    def call(case: Case[Any]) -> None:
        case.call_and_validate(headers=controller.auth, checks=CHECKS)
        assert controller.services.supervisor.down() == []

    failures = fuzz(controller.schema, call, examples=8, known={"device_id": "dev-1"})
    assert failures == [], "\n\n".join(failures)


@dataclass
class FuzzedAgent:
    agent: Agent
    auth: dict[str, str]  # the Authorization header of a configured key, or nothing


@pytest.fixture(params=["open", "keys"])
def agent(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FuzzedAgent]:
    """An agent serving a tiny ORT GenAI chat model and a tiny ONNX classifier, with an
    open API or with api.keys_file (and the header of one of its keys)."""
    root = tmp_path
    keys_file, auth = None, {}
    if request.param == "keys":
        keys_file = root / "api-keys.yaml"
        auth = {"Authorization": f"Bearer {add_key(keys_file, 'fuzz')}"}
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-fuzz",
            "state_dir": str(root / "state"),
            "mqtt": None,
            "api": {"keys_file": str(keys_file) if keys_file else None},
            "models": [
                {
                    "name": "tiny",
                    "runtime": "ort-genai",
                    "path": str(build_tiny_genai_model(root / "tiny-genai")),
                }
            ],
            "perception": [{"name": "parts", "path": str(build_tiny_classifier(root / "c.onnx"))}],
        }
    )
    agent = Agent(config)
    agent.load_models()
    yield FuzzedAgent(agent, auth)
    agent.stop()


def test_agent_api_never_fails_on_any_input(agent: FuzzedAgent) -> None:
    """Every operation of the agent's local API (open, or with API keys and a right key)
    answers generated requests without a 5xx, as its schema says, and its workers stay up."""
    # Schemathesis runs the app's lifespan (the job worker) itself, until shutdown_lifespans.
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_agent_app(agent.agent), headers=agent.auth
    )
    try:

        def call(case: Case[Any]) -> None:
            response = case.call_and_validate(headers=agent.auth, checks=AGENT_CHECKS)
            if response.status_code == 401:  # only a generated (invalid) Authorization
                sent = response.request.headers.get("Authorization")
                assert agent.auth and sent != agent.auth["Authorization"], response.text
            if response.status_code >= 500:
                # The one 5xx by design: 503 with Retry-After while no tier allowed for the
                # request can answer (here: a prompt longer than the tiny model's context).
                assert response.status_code == 503, response.text
                assert "retry-after" in response.headers
                assert response.json()["error"]["code"] in UNAVAILABLE_CODES
            assert agent.agent.workers_down() == []

        failures = fuzz(schema, call, examples=25, known={"name": "parts"})
    finally:
        shutdown_lifespans()
    assert failures == [], "\n\n".join(failures)
