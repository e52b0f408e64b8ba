"""The agent's long-lived workers under its supervisor: a crash shows, counts and heals.

A real agent (the demo model, a real Mosquitto, its HTTP app) with one worker's step made
to raise (a defect, injected by monkeypatching that step) until the test lets it go:
``/healthz`` answers 503 naming the worker, ``/metrics`` counts the restart, and once the
defect is gone the worker runs its real step again and health is back to 200.
"""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import AgentConfig
from edge_agent.routing.jobs import JobQueue
from shared.supervision import Supervisor
from tests.conftest import Broker, MosquittoProcess, wait_for


class Fault:
    """A worker's step that raises while ``on`` (the injected defect), then runs the real one."""

    def __init__(self, step: Callable[..., Any]) -> None:
        self.step = step
        self.on = True
        self.raised = 0
        self.ran_after = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.on:
            self.raised += 1
            raise RuntimeError("injected worker defect")
        self.ran_after += 1
        return self.step(*args, **kwargs)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    server = MosquittoProcess(tmp_path_factory.mktemp("broker"))
    server.start()
    try:
        yield server.broker
    finally:
        server.stop()


@pytest.fixture(scope="module")
def agent(
    broker: Broker, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    state = tmp_path_factory.mktemp("agent")
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-supervised",
            "state_dir": str(state),
            "mqtt": {"url": broker.url, "keepalive_s": 5, "reconnect_min_s": 0.2},
            "heartbeat_interval_s": 0.2,
            "telemetry_interval_s": 1,
            "models": [
                {"name": "smollm2-135m", "path": str(model_path), "n_ctx": 256, "n_threads": 1}
            ],
        }
    )
    # Short backoffs: a crashed worker is back quickly once its defect is gone.
    agent = Agent(config, root=state, supervisor=Supervisor(backoff_min_s=0.2, backoff_max_s=0.4))
    agent.load_models()
    agent.start_link()
    agent.start_metrics()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def client(agent: Agent) -> Iterator[TestClient]:
    with TestClient(create_agent_app(agent)) as client:
        yield client


def restarts(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "edgefleet_worker_restarts"
        for sample in family.samples
        if sample.name == "edgefleet_worker_restarts_total"
    }


def inject(agent: Agent, client: TestClient, worker: str, monkeypatch: pytest.MonkeyPatch) -> Fault:
    """Make ``worker``'s step raise (a defect in it) and return the fault."""
    link = agent.link
    assert link is not None
    if worker == "mqtt-network":
        client = link.transport._client  # the network loop calls loop_misc every round
        fault = Fault(client.loop_misc)
        monkeypatch.setattr(client, "loop_misc", fault)
    elif worker == "heartbeat":
        fault = Fault(link.publish_heartbeat)
        monkeypatch.setattr(link, "publish_heartbeat", fault)
    elif worker == "outbox-publisher":
        fault = Fault(link._resend_overdue)
        monkeypatch.setattr(link, "_resend_overdue", fault)
    elif worker == "system-metrics":
        fault = Fault(agent.record_system_metrics)
        monkeypatch.setattr(agent, "record_system_metrics", fault)
    else:
        jobs = client.app.state.jobs  # type: ignore[attr-defined]
        assert isinstance(jobs, JobQueue) and worker == "chat-jobs"
        fault = Fault(jobs.run_due)
        monkeypatch.setattr(jobs, "run_due", fault)
        monkeypatch.setattr(jobs, "_next_wait", lambda: 0.05)  # no idle 5 s between steps
        jobs._wake.set()
    return fault


@pytest.mark.parametrize(
    "worker", ["heartbeat", "outbox-publisher", "mqtt-network", "system-metrics", "chat-jobs"]
)
def test_a_crashing_worker_shows_in_health_counts_in_metrics_and_recovers(
    agent: Agent, client: TestClient, worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a worker's step raises, /healthz is 503 naming it and /metrics counts its
    restarts; once the defect is gone it runs its real step again and /healthz is 200."""
    assert agent.link is not None and agent.link.wait_connected(15)
    wait_for(lambda: client.get("/healthz").status_code == 200, 15, what="a healthy start")
    counted = restarts(client)
    before = counted.get(worker, 0.0)

    fault = inject(agent, client, worker, monkeypatch)

    def down_and_named() -> bool:
        health = client.get("/healthz")
        return health.status_code == 503 and worker in health.json()["workers_down"]

    wait_for(down_and_named, 20, interval=0.02, what=f"/healthz to name {worker}")
    health = client.get("/healthz").json()
    assert health["models"][0]["loaded"] is True, "the model semantics are unchanged"
    wait_for(lambda: restarts(client)[worker] >= before + 1, 10, what="the restart counted")
    others = {name: n for name, n in restarts(client).items() if name != worker}
    assert others == {name: n for name, n in counted.items() if name != worker}, "only it"

    fault.on = False
    wait_for(lambda: fault.ran_after > 0, 20, what=f"{worker} to run its real step again")
    wait_for(lambda: client.get("/healthz").status_code == 200, 20, what="health back to 200")
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["workers_down"] == []
    assert agent.link is not None
    wait_for(lambda: agent.link is not None and agent.link.connected, 20, what="link up")
    assert fault.raised >= 1
