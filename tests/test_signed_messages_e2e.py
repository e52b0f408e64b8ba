"""Signed messages end to end (issue 21): a real controller (`edgefleet serve`), a real
Mosquitto and a real agent (`edge-agent run`), and an attacker who can publish anything on
the broker (no ACLs: the broker itself is not trusted). Forged device messages are refused
by the controller with their reason, forged controller messages by the agent, and the
genuine traffic of both keeps flowing."""

import json
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from shared.attestation import decode_public_key, encode_public_key, public_key_of
from shared.message_signing import short_key_id
from shared.messages import (
    Birth,
    Desired,
    HardwareInfo,
    Heartbeat,
    Reported,
    encode_message,
)
from shared.provisioning import CONTROLLER_KEYS_FILE, IDENTITY_FOLDER
from tests.conftest import Broker, free_port, port_open, wait_for
from tests.procs import run_cli
from tests.signing import controller_signer, device_signer
from tests.sync_harness import ControllerProcess, agent_yaml
from tests.test_attestation_e2e import AgentProcess

pytestmark = pytest.mark.e2e

DEVICE = "dev-signed"


@pytest.fixture
def controller(tmp_path: Path, mosquitto: Broker) -> Iterator[ControllerProcess]:
    """`edgefleet serve` in development (tofu enrollment); its log is printed on failure."""
    process = ControllerProcess(
        tmp_path,
        "controller",
        broker_url=mosquitto.url,
        database_url=f"sqlite:///{tmp_path / 'controller.db'}",
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
def agent(tmp_path: Path, mosquitto: Broker) -> Iterator[tuple[AgentProcess, int]]:
    """One real agent with its local API on a free port; its log is printed on failure."""
    port = free_port()
    config = agent_yaml(tmp_path, DEVICE, mosquitto.url, api={"host": "127.0.0.1", "port": port})
    process = AgentProcess(tmp_path, config)
    process.start()
    try:
        wait_for(lambda: port_open(port), 30, what="the agent's API")
        yield process, port
    except BaseException:
        print(f"----- agent log -----\n{process.log()[-6000:]}")
        raise
    finally:
        process.stop(signal.SIGKILL)


@pytest.fixture
def attacker(mosquitto: Broker) -> Iterator[mqtt.Client]:
    """A paho client that publishes whatever it likes."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="attacker",
        protocol=mqtt.MQTTv5,
    )
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def device(controller: ControllerProcess) -> dict[str, Any]:
    with controller.api() as api:
        response = api.get(f"/api/devices/{DEVICE}")
    return dict(response.json()) if response.status_code == 200 else {}


def attested(controller: ControllerProcess) -> dict[str, Any] | None:
    with controller.api() as api:
        response = api.get(f"/api/devices/{DEVICE}/attestation")
    state = dict(response.json()) if response.status_code == 200 else {}
    results = state.get("results", [])
    return state if results and results[0]["ok"] else None


def rejected(controller: ControllerProcess) -> dict[str, int]:
    return dict(controller.ingest_stats().get("rejected", {}))


def agent_rejections(port: int) -> dict[str, int]:
    """The agent's inbound refusals by reason, from its /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    pattern = r'^edgefleet_agent_mqtt_rejected_total\{reason="([a-z_]+)"\} ([0-9.e+]+)$'
    return {m[1]: int(float(m[2])) for m in re.finditer(pattern, text, re.MULTILINE)}


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(
        device_id=DEVICE,
        bd_seq=1,
        seq=seq,
        uptime_s=1.0,
        cpu_percent=1.0,
        memory_percent=1.0,
        requests_total=0,
        local_tier_healthy=True,
    )


def publish(client: mqtt.Client, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def test_forged_device_messages_are_refused_and_the_device_is_untouched(
    tmp_path: Path,
    controller: ControllerProcess,
    agent: tuple[AgentProcess, int],
    attacker: mqtt.Client,
) -> None:
    """Posing as an enrolled device - an unsigned heartbeat with seq 10^12, one signed by
    another key, a birth presenting a new key (signed by it), a reported version 10^9 - is
    refused as ``unsigned`` or ``unknown_key``: the device stays online, attested and not
    quarantined, and its shadow keeps its genuine reported version."""
    wait_for(lambda: attested(controller), 60, what="the agent's first good attestation")
    wait_for(lambda: device(controller).get("state") == "online", 30, what="online")
    version_before = controller.shadow(DEVICE)["reported_version"]
    rogue = Ed25519PrivateKey.generate()
    birth = Birth(
        device_id=DEVICE,
        bd_seq=10**6,
        agent_version="9.9.9",
        hardware=HardwareInfo(device_class="x86-cpu", arch="x86_64", accelerator="cpu",
                              cpu_count=1, memory_mb=512),
        heartbeat_interval_s=1.0,
        identity_key=encode_public_key(public_key_of(rogue)),
    )  # fmt: skip
    forged_report = Reported(device_id=DEVICE, version=10**9, applied_desired_version=10**9,
                             state={"models": {"fake": "1"}})  # fmt: skip
    publish(attacker, *encode_message(heartbeat(10**12)))
    publish(attacker, *encode_message(heartbeat(10**12 + 1), device_signer(rogue)))
    publish(attacker, *encode_message(birth, device_signer(rogue)), retain=True)
    publish(attacker, *encode_message(forged_report))
    publish(attacker, *encode_message(forged_report, device_signer(rogue)))
    wait_for(
        lambda: (
            (r := rejected(controller)).get("unsigned", 0) >= 2 and r.get("unknown_key", 0) >= 3
        ),
        30,
        what="the forgeries to be refused",
    )
    time.sleep(3)  # a few genuine heartbeats later
    state = device(controller)
    assert state["state"] == "online", state
    assert state["agent_version"] != "9.9.9"
    shadow = controller.shadow(DEVICE)
    assert shadow["reported_version"] < 10**9
    assert shadow["reported_version"] >= version_before
    with controller.api() as api:
        status = api.get(f"/api/devices/{DEVICE}/attestation").json()
    assert not status.get("quarantined"), status


def test_forged_controller_messages_are_refused_by_the_agent(
    tmp_path: Path,
    controller: ControllerProcess,
    agent: tuple[AgentProcess, int],
    attacker: mqtt.Client,
) -> None:
    """The agent pins the controller's key on first use; a desired document with version
    1,000,000 published straight to the device, unsigned or signed by another key, is
    refused by the agent (``unsigned``, ``unknown_key``), and the controller's next real
    desired change is still applied."""
    _, port = agent
    keys_file = tmp_path / DEVICE / IDENTITY_FOLDER / CONTROLLER_KEYS_FILE
    wait_for(keys_file.exists, 60, what="the agent to pin the controller's key")
    assert json.loads(keys_file.read_text())["keys"]
    wait_for(lambda: attested(controller), 60, what="the agent's first good attestation")
    fake = Desired(device_id=DEVICE, version=1_000_000, state={"heartbeat_interval_s": 3600})
    publish(attacker, *encode_message(fake), retain=True)
    publish(attacker, *encode_message(fake, controller_signer(Ed25519PrivateKey.generate())))
    wait_for(
        lambda: (
            (r := agent_rejections(port)).get("unsigned", 0) >= 1 and r.get("unknown_key", 0) >= 1
        ),
        30,
        what="the agent to refuse the forged desired documents",
    )
    patched = controller.patch_desired(DEVICE, {"telemetry_interval_s": 7})
    shadow = controller.wait_in_sync(DEVICE, patched["desired_version"], timeout=60)
    assert shadow["applied_desired_version"] == patched["desired_version"] < 1_000_000
    assert shadow["reported"]["telemetry_interval_s"] == 7


def trusted_kids(tmp_path: Path) -> list[str]:
    keys_file = tmp_path / DEVICE / IDENTITY_FOLDER / CONTROLLER_KEYS_FILE
    if not keys_file.exists():
        return []
    return [short_key_id(decode_public_key(k)) for k in json.loads(keys_file.read_text())["keys"]]


def pki(controller: ControllerProcess, *args: str) -> str:
    done = run_cli(["-m", "controller", "pki", *args, "--config", str(controller.config)])
    assert done.returncode == 0, done.stderr
    return done.stdout


def restart(controller: ControllerProcess) -> None:
    assert controller.proc is not None
    controller.proc.stop()
    controller.start()


def test_message_key_rotation_reaches_a_connected_device_without_a_refusal(
    tmp_path: Path, controller: ControllerProcess, agent: tuple[AgentProcess, int]
) -> None:
    """rotate-message-key and a restart announce the next key to the connected agent (it
    trusts both); promote-message-key and a restart make the new key sign, which the agent
    verifies at once (a desired change applies, nothing is refused), and its next birth
    leaves it trusting the new key only."""
    _, port = agent
    old = json.loads(pki(controller, "message-keys", "--json"))["current"]
    wait_for(lambda: trusted_kids(tmp_path) == [old], 60, what="the agent to pin the key")
    wait_for(lambda: attested(controller), 60, what="the agent's first good attestation")
    new = pki(controller, "rotate-message-key").split()[2]
    restart(controller)
    wait_for(lambda: trusted_kids(tmp_path) == [new, old], 30, what="the announced next key")
    pki(controller, "promote-message-key")
    restart(controller)
    patched = controller.patch_desired(DEVICE, {"telemetry_interval_s": 9})
    controller.wait_in_sync(DEVICE, patched["desired_version"], timeout=60)
    refused = agent_rejections(port)
    assert not {"unknown_key", "bad_signature", "unsigned"} & set(refused), refused
    agent[0].stop()
    agent[0].start()  # a new birth lists both keys; the controller narrows it to the new one
    wait_for(lambda: trusted_kids(tmp_path) == [new], 60, what="the old key to be dropped")
    assert json.loads(pki(controller, "message-keys", "--json"))["keys"] == sorted([old, new])
    pki(controller, "retire-message-key", old)
    assert json.loads(pki(controller, "message-keys", "--json"))["keys"] == [new]


def test_the_agent_macs_its_session_and_forged_macs_are_refused(
    tmp_path: Path,
    mosquitto: Broker,
    controller: ControllerProcess,
    agent: tuple[AgentProcess, int],
    attacker: mqtt.Client,
) -> None:
    """From the session after it learned the controller's exchange key, the agent MACs its
    heartbeats (``{"mac":...``); a captured heartbeat with a changed seq is refused as
    ``bad_signature`` and a MAC naming another session as ``unknown_session``, while the
    genuine heartbeats keep the device online."""
    keys_file = tmp_path / DEVICE / IDENTITY_FOLDER / CONTROLLER_KEYS_FILE
    wait_for(lambda: "exchange_key" in json.loads(keys_file.read_text() or "{}")
             if keys_file.exists() else False, 60, what="the exchange key")  # fmt: skip
    agent[0].stop()
    agent[0].start()  # its next session
    seen: list[bytes] = []
    observer = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                           client_id="observer", protocol=mqtt.MQTTv5)  # fmt: skip
    observer.on_message = lambda _c, _u, msg: seen.append(bytes(msg.payload))
    observer.connect(mosquitto.host, mosquitto.port)
    observer.subscribe(f"ef/v1/{DEVICE}/heartbeat", 0)
    observer.loop_start()
    try:
        macs = wait_for(
            lambda: [p for p in seen if p.startswith(b'{"mac":"')], 60, what="a MACed heartbeat"
        )
    finally:
        observer.loop_stop()
        observer.disconnect()
    captured = macs[-1]
    document = json.loads(captured)
    forged = captured.replace(f'"seq":{document["seq"]}'.encode(), b'"seq":99999999', 1)
    assert forged != captured
    other_session = captured.replace(document["kid"].encode(), b"0123456789abcdef", 1)
    publish(attacker, f"ef/v1/{DEVICE}/heartbeat", forged)
    publish(attacker, f"ef/v1/{DEVICE}/heartbeat", other_session)
    wait_for(
        lambda: (
            (r := rejected(controller)).get("bad_signature", 0) >= 1
            and r.get("unknown_session", 0) >= 1
        ),
        30,
        what="the forged MACs to be refused",
    )
    time.sleep(3)
    assert device(controller)["state"] == "online"


def test_a_session_the_controller_never_heard_is_reopened_by_a_rebirth(
    tmp_path: Path,
    controller: ControllerProcess,
    agent: tuple[AgentProcess, int],
    attacker: mqtt.Client,
) -> None:
    """A device MACing under a session whose birth the controller never heard (it went to a
    dead replica's broker session) is refused as ``unknown_session`` only until the
    controller asks it for its birth again (one ``rebirth`` command): the device publishes
    that birth again and its heartbeats are accepted again, without a reconnect."""
    keys_file = tmp_path / DEVICE / IDENTITY_FOLDER / CONTROLLER_KEYS_FILE
    wait_for(lambda: "exchange_key" in json.loads(keys_file.read_text() or "{}")
             if keys_file.exists() else False, 60, what="the exchange key")  # fmt: skip
    agent[0].stop()
    agent[0].start()  # its next session MACs
    wait_for(lambda: device(controller).get("state") == "online", 60, what="online")
    database = tmp_path / "controller.db"
    wait_for(lambda: _sessions(database), 30, what="the device's session")
    assert controller.proc is not None
    controller.proc.stop()
    # As if that session's birth never arrived: not in the database, and not retained (a
    # shared subscription never gets retained messages).
    publish(attacker, f"ef/v1/{DEVICE}/status", b"", retain=True)
    with sqlite3.connect(database) as db:
        db.execute("UPDATE device SET sessions = '[]' WHERE id = ?", (DEVICE,))
    controller.start()
    wait_for(lambda: controller.ingest_stats().get("rebirths_requested", 0) >= 1, 60,
             what="a rebirth request")  # fmt: skip
    wait_for(lambda: _sessions(database), 30, what="the session heard again")
    refused = rejected(controller).get("unknown_session", 0)
    beat = device(controller)["last_heartbeat_at"]
    wait_for(lambda: device(controller)["last_heartbeat_at"] != beat, 30,
             what="a heartbeat accepted under the reopened session")  # fmt: skip
    assert rejected(controller).get("unknown_session", 0) == refused
    assert controller.ingest_stats()["rebirths_requested"] == 1
    assert device(controller)["state"] == "online"


def _sessions(database: Path) -> list[Any]:
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT sessions FROM device WHERE id = ?", (DEVICE,)).fetchone()
    return list(json.loads(row[0])) if row and row[0] else []
