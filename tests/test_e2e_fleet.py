"""The fleet end to end with real processes: controller + Mosquitto + two llama.cpp agents."""

import json
import signal
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import Broker, free_port, port_open, wait_for
from tests.procs import Proc, processes, run_cli

pytestmark = pytest.mark.e2e


def agent_yaml(tmp_path: Path, device_id: str, broker: Broker, model: Path) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / f"{device_id}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "device_id": device_id,
                "state_dir": str(tmp_path / device_id),
                "mqtt": {"url": broker.url, "keepalive_s": 5},
                "api": {"host": "127.0.0.1", "port": port},
                "heartbeat_interval_s": 1.0,
                "models": [
                    {"name": "smollm2-135m", "path": str(model), "n_ctx": 512, "n_threads": 1}
                ],
            }
        )
    )
    return path, port


def test_fleet_online_inference_and_last_will(
    mosquitto: Broker, model_path: Path, tmp_path: Path
) -> None:
    """Two agents come online in the API and CLI, one answers a chat completion with real
    tokens, SIGKILL shows the other offline by its Last Will, SIGTERM the first by shutdown."""
    config = tmp_path / "controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
                "broker": {"mode": "external", "url": mosquitto.url},
                "liveness_sweep_s": 0.5,
                "secure_cookies": False,
            }
        )
    )
    made = run_cli(["-m", "controller", "db", "init", "--config", str(config)])
    assert made.returncode == 0, made.stderr
    created = run_cli(
        [
            "-m",
            "controller",
            "admin",
            "create",
            "--username",
            "ops",
            "--password-stdin",
            "--config",
            str(config),
        ],
        stdin="a-long-enough-password\n",
    )
    assert created.returncode == 0, created.stderr
    issued = run_cli(
        ["-m", "controller", "token", "create", "--username", "ops", "--config", str(config)]
    )
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def device(device_id: str) -> dict[str, object] | None:
        response = api.get(f"/api/devices/{device_id}")
        return response.json() if response.status_code == 200 else None

    with processes(tmp_path) as procs:
        controller = Proc(
            "controller",
            ["-m", "controller", "serve", "--config", str(config), "--port", str(http_port)],
            tmp_path,
        )
        procs.append(controller)
        wait_for(lambda: port_open(http_port), 30, what="controller HTTP")
        cfg_a, port_a = agent_yaml(tmp_path, "edge-a", mosquitto, model_path)
        cfg_b, _ = agent_yaml(tmp_path, "edge-b", mosquitto, model_path)
        agent_a = Proc("edge-a", ["-m", "edge_agent", "run", "--config", str(cfg_a)], tmp_path)
        agent_b = Proc("edge-b", ["-m", "edge_agent", "run", "--config", str(cfg_b)], tmp_path)
        procs.extend([agent_a, agent_b])

        for device_id in ("edge-a", "edge-b"):
            online = wait_for(
                lambda d=device_id: (x := device(d)) and x["state"] == "online" and x,
                120,
                interval=0.5,
                what=f"{device_id} online",
            )
            assert online["runtimes"][0] == "llama.cpp"
            assert online["models"][0]["loaded"] is True
            assert online["device_class"] == "x86_64-cpu"

        listed = run_cli(
            ["-m", "controller", "devices", "list", "--json", "--url", base, "--token", token]
        )
        assert listed.returncode == 0, listed.stderr
        page = json.loads(listed.stdout)
        assert (page["online"], sorted(d["id"] for d in page["data"])) == (2, ["edge-a", "edge-b"])

        wait_for(lambda: port_open(port_a), 30, what="agent API")
        chat = httpx.post(
            f"http://127.0.0.1:{port_a}/v1/chat/completions",
            timeout=120,
            json={"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8},
        )
        assert chat.status_code == 200
        assert chat.json()["usage"]["completion_tokens"] >= 1
        assert chat.headers["x-edge-device"] == "edge-a"
        wait_for(
            lambda: (device("edge-a") or {}).get("requests_total") == 1,
            15,
            what="the request count in a heartbeat",
        )

        agent_b.stop(signal.SIGKILL)
        dead = wait_for(
            lambda: (x := device("edge-b")) and x["state"] == "offline" and x, 30, what="will"
        )
        assert dead["state_reason"] == "will"
        assert device("edge-a")["state"] == "online"  # type: ignore[index]

        assert agent_a.stop(signal.SIGTERM) == 0, agent_a.log()
        stopped = wait_for(
            lambda: (x := device("edge-a")) and x["state"] == "offline" and x, 30, what="shutdown"
        )
        assert stopped["state_reason"] == "shutdown"
        assert api.get("/healthz").status_code == 200
        assert "Traceback" not in controller.log()
        assert "Name three" not in agent_a.log() and "Hello!" not in agent_a.log(), (
            "prompts never logged"
        )
