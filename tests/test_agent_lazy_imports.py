"""A model-less agent loads what a feature needs when the feature is first used.

Pins down the lazy imports behind the agent's memory budget (docs/benchmarks.md, "Agent
memory without a model"): a fresh interpreter builds the agent as ``edge-agent run`` does,
connects it to a real Mosquitto and reports which heavy libraries it has loaded, before and
after each feature is first used. No memory size is asserted here: the benchmark measures
that; these tests say which import moved where, and that the deferred parts behave as the
eager ones did.
"""

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from pydantic import ValidationError

from edge_agent.chat_service import build_router
from edge_agent.config import AgentConfig
from edge_agent.model_registry import ModelRegistry
from edge_agent.routing.sensitivity import (
    DeferredDetector,
    SensitivityConfig,
    SensitivityDetector,
)
from edge_agent.telemetry.prometheus import LATENCY_BUCKETS_S, AgentMetrics, AgentState
from edge_agent.telemetry.windows import ChatObservation, PerceptionObservation
from shared.messages import CertIssued
from tests.conftest import Broker

ROOT = Path(__file__).resolve().parent.parent
# Libraries a model-less, connected agent must not hold until a feature asks for them.
DEFERRED = (
    "tuf",
    "securesystemslib",
    "prometheus_client",
    "httpx",
    "jsonschema",
    "re2",
    "phonenumbers",
    "stdnum",
    "numpy",
    "onnxruntime",
    "onnxruntime_genai",
    "llama_cpp",
)

_CHILD = """
import json, sys, time
from pathlib import Path

import edge_agent.cli  # what `edge-agent run` imports first, then (inside run) these:
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.config import load_config

WATCHED = json.loads(sys.argv[2])


def loaded():
    return sorted(m for m in WATCHED if m in sys.modules)


agent = Agent(load_config(Path(sys.argv[1])))
create_agent_app(agent)
agent.load_models()
agent.start_link()
agent.start_metrics()
report = {}
try:
    assert agent.link is not None and agent.link.wait_connected(30), "never connected"
    time.sleep(1.5)  # a heartbeat or two go out
    report["connected"] = loaded()
    text = agent.metrics.exposition().decode()
    report["scraped"] = "edge_agent_requests_total" in text
    report["after_scrape"] = loaded()
    verdict = agent.router.detector.classify("my card is 4111 1111 1111 1111")
    report["level"] = verdict.level.label
    report["after_classify"] = loaded()
    import edge_agent.updates.manager  # what updates.enabled builds at start

    report["with_update_manager"] = loaded()
finally:
    agent.stop()
print(json.dumps(report))
"""


def _agent_config(tmp_path: Path, broker: Broker) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "device_id: lazy-agent\n"
        f"state_dir: {tmp_path / 'state'}\n"
        "heartbeat_interval_s: 1\n"
        "mqtt:\n"
        f"  url: mqtt://{broker.host}:{broker.port}\n"
        '  protocol: "5"\n'
    )
    return path


def test_a_connected_model_less_agent_loads_each_library_on_first_use(
    tmp_path: Path, mosquitto: Broker
) -> None:
    """Connected and beating, a model-less agent holds none of the deferred libraries; the
    first /metrics scrape loads prometheus_client only, the first classification the
    detector's (RE2, phonenumbers, stdnum), and the update manager httpx but not TUF."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(_agent_config(tmp_path, mosquitto)),
            json.dumps(DEFERRED),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["connected"] == []
    assert report["scraped"]
    assert report["after_scrape"] == ["prometheus_client"]
    assert report["level"] == "restricted"
    assert report["after_classify"] == ["phonenumbers", "prometheus_client", "re2", "stdnum"]
    added = set(report["with_update_manager"]) - set(report["after_classify"])
    assert added == {"httpx"}, "TUF loads when the first update is installed, not before"


def _observe(metrics: AgentMetrics, reference: dict[str, Any]) -> None:
    """The same observations, into the agent's tallies and into prometheus_client's own
    Counter/Histogram objects (``reference``), in the order AgentMetrics feeds them."""
    chats = [
        ChatObservation(
            tier=tier,
            task_class=None,
            model="m",
            status=status,
            escalated=lat > 10,
            cascaded=lat > 3,
            fallback=lat < 0,
            prompt_tokens=7 if tier == "local" else 0,
            completion_tokens=int(abs(lat)) % 5,
            latency_ms=lat,
        )
        for tier, status, lat in [
            ("local", "ok", 0.0),
            ("local", "ok", 3.2),
            ("cloud", "error", 17.0),
            ("local", "ok", 250.0),
            ("local", "ok", 1e9),
            ("private", "ok", -5.0),
            ("local", "ok", 44.4),
        ]
    ]
    for obs in chats:
        metrics.observe_chat(obs)
        reference["requests"].labels("chat", obs.tier, obs.status).inc()
        reference["latency"].labels("chat", obs.tier).observe(max(0.0, obs.latency_ms) / 1000)
        if obs.prompt_tokens > 0:
            reference["tokens"].labels(obs.tier, "prompt").inc(obs.prompt_tokens)
        if obs.completion_tokens > 0:
            reference["tokens"].labels(obs.tier, "completion").inc(obs.completion_tokens)
        for flag, name in ((obs.escalated, "escalations"), (obs.cascaded, "cascades")):
            if flag:
                reference[name].labels(obs.tier).inc()
        if obs.fallback:
            reference["fallbacks"].labels(obs.tier).inc()
    perception = PerceptionObservation(model="p", status="ok", latency_ms=2.5)
    metrics.observe_perception(perception)
    reference["requests"].labels("perception", perception.tier, "ok").inc()
    reference["latency"].labels("perception", perception.tier).observe(0.0025)
    for code in ("too_long", "too_long", "bad_header"):
        metrics.observe_rejected(code)
        reference["rejected"].labels(code).inc()
    metrics.observe_app_request("app1", "/v1/chat/completions")
    reference["app_requests"].labels("app1", "/v1/chat/completions").inc()
    metrics.observe_auth_refused("missing")
    reference["auth_refused"].labels("missing").inc()


def _reference() -> tuple[CollectorRegistry, dict[str, Any]]:
    """prometheus_client's own metrics with AgentMetrics' names, help texts and labels."""
    registry = CollectorRegistry()
    own = AgentMetrics(lambda: AgentState(0, 0))
    metrics: dict[str, Any] = {}
    for attr in (
        "requests",
        "rejected",
        "latency",
        "tokens",
        "escalations",
        "cascades",
        "fallbacks",
        "app_requests",
        "auth_refused",
        "redactions",
    ):
        tally = getattr(own, attr)
        if attr == "latency":
            metrics[attr] = Histogram(
                tally.name,
                tally.documentation,
                list(tally.labels),
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            )
        else:
            metrics[attr] = Counter(
                tally.name, tally.documentation, list(tally.labels), registry=registry
            )
    return registry, metrics


def _without_created_values(text: str) -> str:
    return re.sub(r"^(\w+_created\{[^}]*\}) \S+$", r"\1 T", text, flags=re.MULTILINE)


@pytest.mark.parametrize("created", [True, False], ids=["created_series", "created_disabled"])
def test_the_counters_render_as_prometheus_client_renders_its_own(
    created: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept in plain numbers until the first scrape, the request counters and the latency
    histogram expose the same text prometheus_client's Counter and Histogram do, sample for
    sample (``_created`` series included, or left out as PROMETHEUS_DISABLE_CREATED_SERIES
    asks), followed by the gauges read from the agent."""
    if not created:
        # The variable is read by us at each scrape, by prometheus_client at its import.
        monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "true")
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
    before = time.time()
    state = AgentState(outbox_records=3, outbox_bytes=1234, tiers_healthy={"local": True})
    metrics = AgentMetrics(lambda: state)
    try:
        registry, reference = _reference()
        _observe(metrics, reference)
        ours = metrics.exposition().decode()
        theirs = generate_latest(registry).decode()
    finally:
        enable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
    counters, gauges = ours.split("# HELP edge_agent_outbox_pending_records", 1)
    assert _without_created_values(counters) == _without_created_values(theirs)
    assert "edge_agent_outbox_pending_records 3.0" in gauges
    created_values = [float(v) for v in re.findall(r"^\w+_created\{[^}]*\} (\S+)$", ours, re.M)]
    assert all(before <= v <= time.time() for v in created_values)
    assert bool(created_values) is created
    assert metrics.content_type.startswith("text/plain; version=")


def test_a_deferred_detector_builds_once_on_first_use_and_answers_as_the_detector() -> None:
    """The router's detector is built by its first classification (not before), and then
    gives the verdicts a SensitivityDetector of the same configuration gives."""
    config = SensitivityConfig(stop_at_restricted=True)
    deferred = DeferredDetector(config)
    assert not deferred.built
    texts = ["the weather is fine", "mail me at ana@posteo.de", "card 4111 1111 1111 1111"]
    eager = SensitivityDetector(config)
    for text in texts:
        assert deferred.classify(text) == eager.classify(text)
    assert deferred.built
    first = deferred.detector()
    assert deferred.classify_messages(texts) == eager.classify_messages(texts)
    assert deferred.detector() is first


def test_a_bad_operator_pattern_still_stops_the_agent_at_start(tmp_path: Path) -> None:
    """An extra restricted pattern Python's re refuses fails the router's construction (the
    agent's start), as the eager detector did; configured rules build the detector then."""
    config = AgentConfig.model_validate(
        {
            "device_id": "d",
            "state_dir": str(tmp_path),
            "routing": {"sensitivity": {"extra_restricted_patterns": {"bad": "("}}},
        }
    )
    with pytest.raises(re.error):
        _router(config, tmp_path)
    good = config.model_copy(
        update={
            "routing": config.routing.model_copy(
                update={
                    "sensitivity": config.routing.sensitivity.model_copy(
                        update={"extra_restricted_patterns": {"ticket": r"TICKET-\d+"}}
                    )
                }
            )
        }
    )
    detector = _router(good, tmp_path).detector
    assert isinstance(detector, DeferredDetector) and detector.built
    assert detector.classify("see TICKET-42").level.label == "restricted"
    plain = _router(AgentConfig(device_id="d", state_dir=tmp_path), tmp_path).detector
    assert isinstance(plain, DeferredDetector) and not plain.built


def _router(config: AgentConfig, tmp_path: Path) -> Any:
    from edge_agent.hardware import probe

    profile = probe(
        tmp_path, execution_providers=[], cpu_count=1, memory_bytes=1 << 30, machine="x86_64"
    )
    models = ModelRegistry(
        config, profile, on_load_failed=lambda name, reason: None, stopping=threading.Event()
    )
    return build_router(
        config,
        models,
        on_alert=lambda name, body: None,
        tier_veto=lambda tier: None,
    )


PEM = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("name", "certificate", "accepted"),
    [
        ("one block", PEM, True),
        ("a newline after the end line", PEM + "\n", False),
        ("no newline after the end line", PEM[:-1], False),
        ("text before the block", "x" + PEM, False),
        ("a line of 77 characters", PEM.replace("QUJD", "Q" * 77), False),
    ],
)
def test_certificate_patterns_keep_their_meaning_under_python_re(
    name: str, certificate: str, accepted: bool
) -> None:
    """The PEM patterns of shared/messages.py, now compiled with Python's re (Rust's regex
    crate held 4.8 MiB per pattern), accept and refuse what they did: ``\\Z`` as the end,
    as Rust's ``$`` was, so no newline may follow the end line."""
    doc = {"device_id": "d", "request_id": "0" * 32, "certificate": certificate, "ca": PEM}
    if accepted:
        assert CertIssued.model_validate(doc).certificate == certificate
    else:
        with pytest.raises(ValidationError, match="String should match pattern"):
            CertIssued.model_validate(doc)
