"""Defects met by one input or one step of an agent worker stay with that input or step.

Real threads under real supervisors: a chat job whose attempt raises is finished as
failed while the worker goes on; a session setup that raises is dropped and redone on a
fresh connection (real Mosquitto); the simulator's appender resumes after a crash.
"""

import io
import threading
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.routing.jobs import JobQueue
from edge_agent.routing.router import RoutedRequest, RoutedResult, RouteOutcome
from edge_agent.routing.sensitivity import Level
from edge_agent.runtimes.base import ChatMessage, ChatRequest, Completion
from edge_agent.simulate import Simulation, SimulationPlan
from shared.messages import Birth
from shared.supervision import Supervisor
from tests.conftest import Broker, wait_for


def _request(text: str) -> RoutedRequest:
    return RoutedRequest(ChatRequest(messages=(ChatMessage("user", text),), max_tokens=4))


def _answer(text: str) -> RoutedResult:
    return RoutedResult(
        Completion(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1),
        RouteOutcome(
            tier="local",
            model="m",
            runtime="test",
            reason="local_first",
            degraded=False,
            level=Level.PUBLIC,
            categories=(),
            plan=("local",),
        ),
    )


def test_a_job_whose_attempt_raises_fails_alone_and_the_worker_goes_on() -> None:
    """A chat job whose attempt raises (a defect, not a busy tier) is finished as failed
    with the kind of error only, and the next job is answered by the same worker."""

    def run(routed: RoutedRequest) -> RoutedResult:
        text = routed.request.messages[0].content
        if text == "poison":
            raise ValueError("secret prompt text must not reach the client")
        return _answer(text.upper())

    supervisor = Supervisor()
    jobs = JobQueue(run, supervisor=supervisor)
    jobs.start()
    try:
        bad = jobs.submit(_request("poison"), retry_after_s=0)
        good = jobs.submit(_request("fine"), retry_after_s=0)
        assert bad.finished.wait(10) and good.finished.wait(10)
        assert bad.status == "failed" and bad.last_error == "internal error (ValueError)"
        assert good.status == "done" and good.result is not None
        assert good.result.completion.text == "FINE"
        assert jobs.failed == 1
        assert supervisor.restarts() == {"chat-jobs": 0}, "the worker never died"
    finally:
        jobs.stop()
        supervisor.stop()


def test_a_failed_session_setup_is_counted_and_redone_on_a_new_connection(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When setting up a session raises (here: building the birth message, once), the
    connect callback counts it, drops the connection, and the next session comes up with
    its birth; the network worker never dies."""
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-setup",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"url": mosquitto.url, "keepalive_s": 5, "reconnect_min_s": 0.1},
        }
    )
    agent = Agent(config)
    birth = agent.birth
    failures = [RuntimeError("injected defect in the birth")]

    def birth_failing_once(bd_seq: int) -> Birth:
        if failures:
            raise failures.pop()
        return birth(bd_seq)

    monkeypatch.setattr(agent, "birth", birth_failing_once)
    try:
        agent.start_link()
        link = agent.link
        assert link is not None
        assert link.wait_connected(20), "a later session came up"
        assert link.stats.handler_errors.snapshot() == {"connect": 1}
        assert link.births_sent >= 1
        assert agent.supervisor.restarts()["mqtt-network"] == 0
    finally:
        agent.stop()


def test_the_simulators_appender_resumes_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash of the simulator's appender is counted by its supervisor and the appender
    resumes at the record it was at: every planned record is appended exactly once."""
    template = AgentConfig.model_validate(
        {"device_id": "sim", "state_dir": str(tmp_path / "sim"), "mqtt": None}
    )
    sim = Simulation(template, SimulationPlan(devices=2, records=20), out=io.StringIO())
    append = sim._append
    crashed = threading.Event()

    def append_crashing_once(agent: Agent, n: int) -> None:
        if n == 7 and not crashed.is_set():
            crashed.set()
            raise RuntimeError("injected defect in the appender")
        append(agent, n)

    monkeypatch.setattr(sim, "_append", append_crashing_once)
    try:
        done = threading.Thread(target=sim.run, kwargs={"should_stop": lambda: sim.appended >= 40})
        done.start()
        wait_for(lambda: not done.is_alive(), 30, what="the simulation to append everything")
        assert sim.supervisor.restarts() == {"sim-append": 1}
        assert sim.appended == 40
        for agent in sim.agents:
            stored = agent.outbox.read_batch(None, max_records=1000, max_bytes=1 << 20)
            numbers = [r.body["n"] for r in stored if r.name == "sim"]
            assert numbers == list(range(20)), "each record once, in order"
        assert sim.workers_down() == []
    finally:
        sim.close()
