"""Telemetry end to end with real processes: a llama.cpp agent's windows travel over
Mosquitto to the controller, are rolled up, and show on the fleet, device, drift and
Prometheus endpoints."""

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Broker, free_port, port_open, wait_for
from tests.procs import Proc, processes, run_cli

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"


def _setup(tmp_path: Path, broker: Broker, model: Path) -> tuple[Path, Path, int]:
    config = tmp_path / "controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
                "broker": {"mode": "external", "url": broker.url},
                "secure_cookies": False,
                # Fold quickly: the test waits for the rollup, not for the defaults.
                "telemetry": {"rollup_interval_s": 0.5, "commit_lag_s": 0.5},
            }
        )
    )
    api_port = free_port()
    agent = tmp_path / "edge-t.yaml"
    agent.write_text(
        yaml.safe_dump(
            {
                "device_id": "edge-t",
                "state_dir": str(tmp_path / "edge-t"),
                "mqtt": {"url": broker.url, "keepalive_s": 5},
                "api": {"host": "127.0.0.1", "port": api_port},
                "heartbeat_interval_s": 1.0,
                "telemetry_interval_s": 1.0,
                "telemetry": {"window_s": 5},
                "models": [{"name": MODEL, "path": str(model), "n_ctx": 512, "n_threads": 1}],
            }
        )
    )
    return config, agent, api_port


def test_agent_windows_reach_the_fleet_device_and_drift_views(
    mosquitto: Broker, model_path: Path, tmp_path: Path
) -> None:
    """Chat requests with two task classes on a real agent become inference and drift
    windows that the controller rolls up: the device's metrics count them per task class
    with latency quantiles, the fleet summary counts them as local, an operator's drift
    reference from them scores the model, and both /metrics endpoints expose counters."""
    config, agent_config, api_port = _setup(tmp_path, mosquitto, model_path)
    made = run_cli(["-m", "controller", "db", "init", "--config", str(config)])
    assert made.returncode == 0, made.stderr
    created = run_cli(
        [
            *("-m", "controller", "admin", "create", "--username", "ops"),
            *("--password-stdin", "--config", str(config)),
        ],
        stdin="a-long-enough-password\n",
    )
    assert created.returncode == 0, created.stderr
    issued = run_cli(
        ["-m", "controller", "token", "create", "--username", "ops", "--config", str(config)]
    )
    assert issued.returncode == 0, issued.stderr
    http_port = free_port()
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{http_port}",
        headers={"Authorization": f"Bearer {issued.stdout.strip()}"},
        timeout=30,
    )
    with processes(tmp_path) as procs:
        procs.append(
            Proc(
                "controller",
                ["-m", "controller", "serve", "--config", str(config), "--port", str(http_port)],
                tmp_path,
            )
        )
        wait_for(lambda: port_open(http_port), 30, what="controller HTTP")
        procs.append(
            Proc("edge-t", ["-m", "edge_agent", "run", "--config", str(agent_config)], tmp_path)
        )
        wait_for(lambda: port_open(api_port), 120, interval=0.5, what="agent API")
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120) as agent:
            for task_class in ("chat", "chat", "summarize"):
                response = agent.post(
                    "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                    headers={"X-Task-Class": task_class},
                )
                assert response.status_code == 200, response.text
            agent_metrics = agent.get("/metrics").text

        def totals() -> dict[Any, Any] | None:
            body = api.get("/api/devices/edge-t/metrics", params={"hours": 2}).json()
            by_class = {(t["tier"], t["task_class"]): t for t in body["totals"]}
            counted = sum(t["count"] for t in by_class.values())
            return by_class if counted == 3 else None

        by_class = wait_for(totals, 60, interval=0.5, what="the device's rolled-up requests")
        assert by_class[("local", "chat")]["count"] == 2
        assert by_class[("local", "summarize")]["count"] == 1
        assert by_class[("local", "chat")]["p95_ms"] > 0

        summary = api.get("/api/fleet/summary", params={"hours": 2}).json()
        assert summary["requests"]["by_tier"] == {"local": 3}
        assert summary["devices"]["online"] == 1
        assert summary["cloud_cost_saved_usd"] > 0

        reference = wait_for(
            lambda: (
                (r := api.post(f"/api/drift/{MODEL}/reference", json={})).status_code == 200
                and r.json()
            ),
            30,
            interval=0.5,
            what="a drift reference from the agent's sketches",
        )
        assert reference["samples"] >= 3
        drift = api.get("/api/drift").json()
        scored = {(d["model"], d["feature"]): d for d in drift["data"]}
        assert scored[(MODEL, "prompt_tokens")]["psi"] == pytest.approx(0.0, abs=1e-9)

        controller_metrics = api.get("/metrics").text
    controller_samples = [
        s for family in text_string_to_metric_families(controller_metrics) for s in family.samples
    ]
    online = [
        s.value
        for s in controller_samples
        if s.name == "edgefleet_devices" and s.labels.get("state") == "online"
    ]
    assert online == [1.0]
    psi = [
        s.labels["feature"]
        for s in controller_samples
        if s.name == "edgefleet_drift_psi" and s.labels.get("model") == MODEL
    ]
    assert "prompt_tokens" in psi
    local_requests = [
        s.value
        for family in text_string_to_metric_families(agent_metrics)
        for s in family.samples
        if s.name == "edge_agent_requests_total" and s.labels.get("tier") == "local"
    ]
    assert sum(local_requests) == 3
