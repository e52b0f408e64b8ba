"""Attestation end to end: a real Mosquitto, a real controller process (`edgefleet serve`)
and real agent processes (`edge-agent run`), each device judged by the quotes it sends."""

import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from controller.drills.openai_server import FakeProvider, start_provider
from shared.attestation import encode_public_key, installed_agent_code, public_key_of, tree_hash
from shared.messages import Birth, HardwareInfo, Heartbeat, encode_message
from tests.conftest import Broker, free_port, port_open, wait_for
from tests.procs import run_cli
from tests.signing import device_signer
from tests.sync_harness import ControllerProcess, agent_yaml

pytestmark = pytest.mark.e2e

TIMEOUT_S = 2.0  # attestation.timeout_s: a device silent this long is quarantined


class AgentProcess:
    """`python -m edge_agent run` from a chosen code folder (cwd and PYTHONPATH), so a test
    can run a modified copy of the agent; logs to a file, always stopped."""

    def __init__(self, workdir: Path, config: Path, *, code: Path | None = None) -> None:
        self.workdir = workdir
        self.config = config
        self.code = code
        self.runs = 0
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.config.stem}-{self.runs}.log"

    def start(self) -> None:
        env = dict(os.environ)
        if self.code is not None:
            env["PYTHONPATH"] = str(self.code)
        self.runs += 1
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(self.config),
                 "--log-level", "info"],
                cwd=self.code or self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def cloud() -> Iterator[FakeProvider]:
    """A cloud tier on loopback that records every request it gets."""
    provider = start_provider("cloud")
    yield provider
    assert provider.server is not None
    provider.server.shutdown()


@pytest.fixture
def controller(tmp_path: Path, mosquitto: Broker) -> Iterator[ControllerProcess]:
    """`edgefleet serve` in development (tofu enrollment, local agent code golden) with a
    short attestation timeout; its log is printed if the test fails."""
    process = ControllerProcess(
        tmp_path,
        "controller",
        broker_url=mosquitto.url,
        database_url=f"sqlite:///{tmp_path / 'controller.db'}",
        attestation={"timeout_s": TIMEOUT_S, "nonce_ttl_s": 30.0},
    )
    process.bootstrap()
    process.start()
    try:
        yield process
    except BaseException:
        assert process.proc is not None
        print(f"----- controller log -----\n{process.proc.log()[-6000:]}")
        raise
    finally:
        if process.proc is not None:
            process.proc.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """Collects the agents a test starts; stops them and prints their logs on failure."""
    started: list[AgentProcess] = []
    try:
        yield started
    except BaseException:
        for agent in started:
            print(f"----- {agent.config.stem} log -----\n{agent.log()[-4000:]}")
        raise
    finally:
        for agent in started:
            agent.stop(signal.SIGKILL)


def start_agent(
    tmp_path: Path,
    broker: Broker,
    device_id: str,
    agents: list[AgentProcess],
    cloud: FakeProvider,
    *,
    code: Path | None = None,
) -> tuple[AgentProcess, int]:
    port = free_port()
    config = agent_yaml(
        tmp_path,
        device_id,
        broker.url,
        api={"host": "127.0.0.1", "port": port},
        tiers={"cloud": {"base_url": cloud.base_url, "model": "frontier"}},
    )
    agent = AgentProcess(tmp_path, config, code=code)
    agents.append(agent)
    agent.start()
    wait_for(lambda: port_open(port), 30, what=f"{device_id}'s API")
    return agent, port


def attestation(controller: ControllerProcess, device_id: str) -> dict[str, Any]:
    with controller.api() as api:
        response = api.get(f"/api/devices/{device_id}/attestation")
    return dict(response.json()) if response.status_code == 200 else {}


def device(controller: ControllerProcess, device_id: str) -> dict[str, Any]:
    with controller.api() as api:
        response = api.get(f"/api/devices/{device_id}")
    return dict(response.json()) if response.status_code == 200 else {}


def results(controller: ControllerProcess, device_id: str) -> list[dict[str, Any]]:
    return list(attestation(controller, device_id).get("results", []))


def utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def quarantined(controller: ControllerProcess, device_id: str) -> dict[str, Any] | None:
    """The device's attestation state once it is quarantined, else None."""
    state = attestation(controller, device_id)
    return state if state.get("quarantined") else None


def codes(result: dict[str, Any]) -> list[str]:
    return [reason["code"] for reason in result["reasons"]]


def chat(port: int) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        timeout=30,
    )


def test_healthy_agent_attests_and_may_use_the_cloud(
    tmp_path: Path,
    mosquitto: Broker,
    controller: ControllerProcess,
    agents: list[AgentProcess],
    cloud: FakeProvider,
) -> None:
    """An unmodified agent is enrolled on first birth, answers its challenge with a quote the
    controller accepts (agent code equal to the code installed here), stays trusted past the
    silence timeout, passes an operator's challenge from the CLI, and may use the cloud."""
    _, port = start_agent(tmp_path, mosquitto, "dev-good", agents, cloud)
    first = wait_for(lambda: results(controller, "dev-good"), 30, what="a verdict")[0]
    assert first["ok"], first["reasons"]
    assert first["measurements"]["agent_code"] == installed_agent_code()
    assert first["measurements"]["image_id"] == "none"
    config_bytes = (tmp_path / "dev-good.yaml").read_bytes()
    assert first["measurements"]["config"] == hashlib.sha256(config_bytes).hexdigest()
    state = attestation(controller, "dev-good")
    assert state["identity"]["how"] == "tofu" and not state["quarantined"]

    time.sleep(TIMEOUT_S + 2.5)  # several silence sweeps run meanwhile
    env = {**os.environ, "EDGEFLEET_URL": controller.base_url, "EDGEFLEET_TOKEN": controller.token}
    sent = run_cli(["-m", "controller", "attest", "challenge", "dev-good"], env=env)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: len(results(controller, "dev-good")) >= 2, 30, what="the second verdict")
    shown = run_cli(["-m", "controller", "attest", "history", "dev-good", "--json"], env=env)
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)
    assert not history["quarantined"]
    assert [r["ok"] for r in history["results"]] == [True, True]
    assert history["results"][0]["nonce"] != history["results"][1]["nonce"]

    answer = chat(port)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-edge-route"] == "cloud" and cloud.count() == 1


def test_modified_agent_code_is_quarantined_and_refused_the_cloud(
    tmp_path: Path,
    mosquitto: Broker,
    controller: ControllerProcess,
    agents: list[AgentProcess],
    cloud: FakeProvider,
) -> None:
    """An agent run from a copy of the code with one file changed measures a different
    agent_code: the controller quarantines it (reason agent_code), the device applies the
    quarantine from its desired shadow, and its router refuses the cloud tier."""
    code = tmp_path / "code"
    for package in ("edge_agent", "shared"):
        shutil.copytree(
            Path(str(importlib.import_module(package).__file__)).parent,
            code / package,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    with (code / "edge_agent" / "backoff.py").open("a") as f:
        f.write("\n# a single changed line is enough\n")
    _, port = start_agent(tmp_path, mosquitto, "dev-tampered", agents, cloud, code=code)

    state = wait_for(
        lambda: quarantined(controller, "dev-tampered"),
        30,
        what="the tampered device to be quarantined",
    )
    assert state["quarantine_reason"] == "agent_code"
    verdict = state["results"][0]
    assert not verdict["ok"] and codes(verdict) == ["agent_code"]
    measured = verdict["measurements"]["agent_code"]
    assert measured != installed_agent_code()
    assert measured == tree_hash({p: code / p for p in ("edge_agent", "shared")})

    shadow = controller.wait_in_sync("dev-tampered", 1)
    assert shadow["desired"]["quarantine"] == {"reason": "agent_code"}
    assert shadow["reported"]["quarantine"] == {"reason": "agent_code"}
    refused = chat(port)
    assert refused.status_code == 503, refused.text
    assert "quarantined" in refused.text
    assert cloud.count() == 0, "a quarantined device reached the cloud tier"


def test_replayed_quote_is_refused_and_quarantines(
    tmp_path: Path,
    mosquitto: Broker,
    controller: ControllerProcess,
    agents: list[AgentProcess],
    cloud: FakeProvider,
) -> None:
    """A real quote captured from the wire and published again later, for a new challenge,
    is refused as a replay and quarantines the device; the real agent's next birth
    re-attests it and lifts the quarantine."""
    captured: list[bytes] = []
    spy = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="spy")
    spy.on_message = lambda _c, _u, msg: captured.append(bytes(msg.payload))
    spy.connect(mosquitto.host, mosquitto.port)
    spy.subscribe("ef/v1/dev-replay/quote", qos=1)
    spy.loop_start()
    try:
        agent, _ = start_agent(tmp_path, mosquitto, "dev-replay", agents, cloud)
        wait_for(lambda: results(controller, "dev-replay"), 30, what="the first verdict")
        assert results(controller, "dev-replay")[0]["ok"]
        wait_for(lambda: captured, 10, what="the quote on the wire")
        old_quote = captured[0]

        agent.stop()
        wait_for(
            lambda: device(controller, "dev-replay").get("state") == "offline",
            20,
            what="the device to go offline",
        )
        with controller.api() as api:
            issued = api.post("/api/devices/dev-replay/attest")
        assert issued.status_code == 202, issued.text
        assert issued.json()["nonce"] != json.loads(old_quote)["nonce"]
        spy.publish("ef/v1/dev-replay/quote", old_quote, qos=1).wait_for_publish(10)

        state = wait_for(
            lambda: quarantined(controller, "dev-replay"),
            30,
            what="the replay to quarantine the device",
        )
        assert state["quarantine_reason"] == "nonce_replayed"
        replay = state["results"][0]
        assert not replay["ok"] and codes(replay) == ["nonce_replayed"]

        agent.start()
        wait_for(
            lambda: not attestation(controller, "dev-replay").get("quarantined", True),
            30,
            what="re-attestation to lift the quarantine",
        )
        assert results(controller, "dev-replay")[0]["ok"]
    finally:
        spy.loop_stop()
        spy.disconnect()


def test_silent_device_is_quarantined_after_the_timeout(
    mosquitto: Broker, controller: ControllerProcess
) -> None:
    """A device that is online (birth with an identity key, steady heartbeats) but answers
    no challenge is quarantined as silent once the timeout passes, and is told so in its
    retained desired document."""
    device_id = "dev-silent"
    private = Ed25519PrivateKey.generate()
    key = encode_public_key(public_key_of(private))
    signer = device_signer(private)
    inbox: list[tuple[str, bytes]] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=device_id,
        protocol=mqtt.MQTTv5,
    )
    client.on_message = lambda _c, _u, msg: inbox.append((msg.topic, bytes(msg.payload)))
    client.connect(mosquitto.host, mosquitto.port)
    client.subscribe([(f"ef/v1/{device_id}/challenge", 1), (f"ef/v1/{device_id}/desired", 1)])
    client.loop_start()
    stop = threading.Event()

    def heartbeats() -> None:
        seq = 0
        while not stop.wait(0.5):
            beat = Heartbeat(
                device_id=device_id,
                bd_seq=0,
                seq=seq,
                uptime_s=seq * 0.5,
                cpu_percent=1.0,
                memory_percent=10.0,
                requests_total=0,
                local_tier_healthy=True,
            )
            client.publish(*encode_message(beat, signer), qos=1)
            seq += 1

    beating = threading.Thread(target=heartbeats, daemon=True)
    try:
        birth = Birth(
            device_id=device_id,
            bd_seq=0,
            agent_version="0.1.0",
            hardware=HardwareInfo(
                device_class="x86_64-cpu",
                arch="x86_64",
                accelerator="cpu",
                cpu_count=1,
                memory_mb=512,
            ),
            heartbeat_interval_s=1.0,
            identity_key=key,
        )
        client.publish(*encode_message(birth, signer), qos=1, retain=True).wait_for_publish(10)
        beating.start()
        challenges = wait_for(
            lambda: [json.loads(p) for t, p in inbox if t.endswith("/challenge")],
            20,
            what="the challenge",
        )
        state = wait_for(
            lambda: quarantined(controller, device_id),
            30,
            what="the silent device to be quarantined",
        )
        assert state["quarantine_reason"] == "silent"
        silent = state["results"][0]
        assert codes(silent) == ["silent"] and silent["nonce"] == challenges[0]["nonce"]
        waited = utc(silent["at"]) - utc(challenges[0]["issued_at"])
        assert waited.total_seconds() >= TIMEOUT_S, "judged silent only after the timeout"
        assert device(controller, device_id).get("state") == "online"
        desired = wait_for(
            lambda: [json.loads(p) for t, p in inbox if t.endswith("/desired")],
            20,
            what="the quarantine in the desired document",
        )
        assert desired[-1]["state"]["quarantine"] == {"reason": "silent"}
    finally:
        stop.set()
        client.loop_stop()
        client.disconnect()
