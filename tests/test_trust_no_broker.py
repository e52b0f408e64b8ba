"""Issue 21, "trust no broker": forged quotes, stolen client ids and system-owned desired
keys, each attack run against real processes (a real Mosquitto on a free port, a real
controller process, real agent processes, paho clients as the attacker) and each refused
with its reason named, while the genuine traffic beside it still gets through."""

import json
import re
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, col, select

from controller.audit import AuditEntry
from controller.db import make_engine, session_scope
from controller.devices.shadows import (
    AUDIT_VALUE_MAX,
    DeviceShadow,
    OwnedKeyError,
    set_desired,
)
from controller.drills.openai_server import FakeProvider
from controller.migrations import init_db
from shared.attestation import key_id, public_key_of, quote_payload, sign
from shared.messages import Quote, encode_message
from tests.conftest import Broker, wait_for
from tests.sync_harness import ControllerProcess
from tests.test_attestation_e2e import (  # noqa: F401  (fixtures)
    AgentProcess,
    agents,
    attestation,
    cloud,
    controller,
    results,
    start_agent,
)
from tests.test_broker_acl import (  # noqa: F401  (fixtures)
    CONTROLLER_PASSWORD,
    CONTROLLER_USER,
    Client,
    Fleet,
    RunningBroker,
    broker,
    clients,
    connect,
    fleet,
    login,
)

pytestmark = pytest.mark.e2e


# --- helpers -------------------------------------------------------------------------------------
def metric(ctl: ControllerProcess, name: str, labels: str = "") -> float:
    """One sample of the controller's /metrics (0 when it is not served)."""
    with ctl.api() as api:
        text = api.get("/metrics").text
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def audit_entries(ctl: ControllerProcess, action: str) -> list[dict[str, Any]]:
    with ctl.api() as api:
        response = api.get("/api/audit", params={"action": action})
    assert response.status_code == 200, response.text
    body = response.json()
    return list(body["data"] if isinstance(body, dict) else body)


def two_or_more(found: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return found if len(found) >= 2 else None


def healthz(ctl: ControllerProcess) -> httpx.Response:
    return httpx.get(f"{ctl.base_url}/healthz", timeout=10)


class Attacker:
    """A paho client on the broker (anonymous, as the test broker allows) that answers
    every challenge to ``device_id`` with quotes the device's key did not sign."""

    def __init__(self, on: Broker, device_id: str, enrolled_key_id: str) -> None:
        self.device_id = device_id
        self.enrolled_key_id = enrolled_key_id
        self.own_key = Ed25519PrivateKey.generate()
        self.sent: list[str] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"attacker-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_challenge
        self.client.connect(on.host, on.port)
        self.client.subscribe(f"ef/v1/{device_id}/challenge", qos=1)
        self.client.loop_start()

    def _quote(self, challenge: dict[str, Any], key_id_claimed: str) -> Quote:
        issued = datetime.fromisoformat(challenge["issued_at"].replace("Z", "+00:00"))
        answered = datetime.now(UTC)
        measurements = {"agent_code": "0" * 64, "config": "0" * 64, "image_id": "none"}
        measurements["boot_epoch"] = "999"
        payload = quote_payload(
            device_id=self.device_id,
            nonce=challenge["nonce"],
            key_id=key_id_claimed,
            measurements=measurements,
            issued_at=issued,
            answered_at=answered,
        )
        return Quote(
            device_id=self.device_id,
            nonce=challenge["nonce"],
            key_id=key_id_claimed,
            measurements=measurements,
            issued_at=issued,
            answered_at=answered,
            signature=sign(self.own_key, payload),
        )

    def _on_challenge(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        challenge = json.loads(message.payload)
        own = key_id(public_key_of(self.own_key))
        # Claims the enrolled key (signature does not verify), then signs with its own key.
        for claimed, reason in ((self.enrolled_key_id, "bad_signature"), (own, "wrong_key")):
            self.client.publish(*encode_message(self._quote(challenge, claimed)), qos=1)
            self.sent.append(reason)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- 3. quotes -----------------------------------------------------------------------------------
def test_forged_quotes_after_a_challenge_do_not_quarantine_the_honest_device(
    tmp_path: Path,
    mosquitto: Broker,
    controller: ControllerProcess,  # noqa: F811
    agents: list[AgentProcess],  # noqa: F811
    cloud: FakeProvider,  # noqa: F811
) -> None:
    """An attacker answers the operator's challenge with a quote claiming the device's key
    (bad signature) and one signed by its own key (wrong key), neither in an envelope the
    device signed: ingest refuses both (counted as unsigned) before attestation, nothing
    quarantines the device, and the device's own answer to the same challenge passes.
    (Attestation's own refusal of such quotes: test_attestation_service.py.)"""
    start_agent(tmp_path, mosquitto, "dev-forge", agents, cloud)
    first = wait_for(lambda: results(controller, "dev-forge"), 30, what="the first verdict")
    assert first[0]["ok"], first[0]["reasons"]
    enrolled = attestation(controller, "dev-forge")["identity"]["key_id"]
    attacker = Attacker(mosquitto, "dev-forge", enrolled)
    try:
        with controller.api() as api:
            issued = api.post("/api/devices/dev-forge/attest")
        assert issued.status_code == 202, issued.text
        wait_for(lambda: len(attacker.sent) == 2, 20, what="the forged quotes on the wire")
        wait_for(
            lambda: (
                metric(controller, "edgefleet_ingest_rejected_total", '{reason="unsigned"}') >= 2
            ),
            30,
            what="the forged quotes to be refused",
        )
        verdicts = wait_for(
            lambda: two_or_more(results(controller, "dev-forge")),
            30,
            what="the honest answer's verdict",
        )
    finally:
        attacker.close()
    assert [r["ok"] for r in verdicts] == [True, True], verdicts
    assert verdicts[0]["nonce"] == issued.json()["nonce"], "the honest answer used the nonce"
    state = attestation(controller, "dev-forge")
    assert not state["quarantined"], state["quarantine_reason"]


# --- 4. client identity --------------------------------------------------------------------------
def test_controller_reports_a_takeover_of_its_session_and_reconnects(
    mosquitto: Broker,
    controller: ControllerProcess,  # noqa: F811
) -> None:
    """A paho client (MQTT 5, reconnecting as paho does) connecting with the controller's
    client id takes its session again and again: the controller recognises the takeover
    (Mosquitto 2.0 closes the connection without DISCONNECT 142, so by sessions dropped
    right after they were accepted), logs an error naming the client id, counts it in
    /metrics and shows /healthz degraded with the reason; once the intruder is gone it
    reconnects and ingest is connected again."""
    assert healthz(controller).status_code == 200
    intruder = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="edgefleet-controller",
        protocol=mqtt.MQTTv5,
    )
    intruder.reconnect_delay_set(min_delay=1, max_delay=1)
    intruder.connect(mosquitto.host, mosquitto.port)
    intruder.loop_start()
    try:
        wait_for(
            lambda: metric(controller, "edgefleet_broker_session_takeovers_total") >= 1,
            60,
            what="the takeover to be counted",
        )
    finally:
        intruder.loop_stop()
        intruder.disconnect()
    health = healthz(controller)
    assert health.status_code == 503, health.text
    session = health.json()["broker_session"]
    assert session["taken_over"] and session["client_id"] == "edgefleet-controller"
    assert "'edgefleet-controller'" in session["reason"]
    assert "sessions in a row dropped" in session["reason"]
    wait_for(lambda: controller.ingest_stats().get("broker_connected"), 30, what="reconnect")
    assert controller.proc is not None
    log = controller.proc.log()
    assert "session of client id 'edgefleet-controller' taken over" in log
    assert re.search(r"ERROR.*taken over", log), "the takeover is logged as an error"


def test_controller_on_mqtt_311_recognises_repeated_takeovers(
    tmp_path: Path, mosquitto: Broker
) -> None:
    """On MQTT 3.1.1 (no DISCONNECT from the broker at all) an intruder that keeps
    reconnecting with the controller's client id drops each of its sessions soon after
    the broker accepted it: after a few in a row the controller reports a takeover."""
    process = ControllerProcess(
        tmp_path,
        "ctl311",
        broker_url=mosquitto.url,
        database_url=f"sqlite:///{tmp_path / 'controller.db'}",
        broker={
            "mode": "external",
            "url": mosquitto.url,
            "protocol": "3.1.1",
            "client_id": "edgefleet-ctl311",
            "keepalive_s": 5,
        },
    )
    process.bootstrap()
    process.start()
    intruder = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="edgefleet-ctl311",
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )
    intruder.reconnect_delay_set(min_delay=1, max_delay=1)
    try:
        intruder.connect(mosquitto.host, mosquitto.port)
        intruder.loop_start()
        wait_for(
            lambda: metric(process, "edgefleet_broker_session_takeovers_total") >= 1,
            60,
            what="the repeated takeovers to be recognised",
        )
        intruder.loop_stop()
        intruder.disconnect()
        session = healthz(process).json()["broker_session"]
        assert session["taken_over"] and "sessions in a row" in session["reason"]
        wait_for(lambda: process.ingest_stats().get("broker_connected"), 30, what="reconnect")
    except BaseException:
        assert process.proc is not None
        print(f"----- controller log -----\n{process.proc.log()[-6000:]}")
        raise
    finally:
        intruder.loop_stop()
        if process.proc is not None:
            process.proc.stop()


def test_a_device_login_cannot_use_the_controllers_client_id(
    broker: RunningBroker,  # noqa: F811
    clients: list[Client],  # noqa: F811
    fleet: Fleet,  # noqa: F811
) -> None:
    """With the generated Mosquitto config, dev-a logging in on the device listener with the
    controller's client id gets its own id (the user name): the controller's session on
    its listener stays connected and keeps receiving dev-a's messages. (Device against
    device: tests/test_broker_acl.py::test_device_cannot_take_over_another_devices_session.)"""
    ctl = connect(broker.controller_port, CONTROLLER_USER, CONTROLLER_USER, CONTROLLER_PASSWORD)
    clients.append(ctl)
    assert ctl.connack == [0]
    assert ctl.subscribe("ef/v1/+/heartbeat") == [1]
    kicked = threading.Event()
    ctl.mqttc.on_disconnect = lambda *_: kicked.set()
    intruder = connect(broker.port, CONTROLLER_USER, "dev-a", fleet.passwords["dev-a"])
    clients.append(intruder)
    assert intruder.connack == [0]
    intruder.publish("ef/v1/dev-a/heartbeat", b"still-the-controllers")
    wait_for(lambda: ctl.messages, 10, what="dev-a's message at the controller")
    assert not kicked.is_set(), "the controller was kicked off by a client id collision"


# --- 5. system-owned desired keys ----------------------------------------------------------------
def test_operator_cannot_set_keys_a_service_owns_and_every_change_is_audited(
    tmp_path: Path,
    mosquitto: Broker,
    controller: ControllerProcess,  # noqa: F811
    agents: list[AgentProcess],  # noqa: F811
    cloud: FakeProvider,  # noqa: F811
) -> None:
    """An operator's PATCH of desired ``quarantine`` (null: lift it on the device) or
    ``model`` is refused with 403 naming the key and its owner, and changes nothing; a
    PATCH of labels still reaches the device and is audited with actor, keys, before and
    after; the republish job re-sending documents adds no audit entries."""
    start_agent(tmp_path, mosquitto, "dev-owned", agents, cloud)
    wait_for(lambda: results(controller, "dev-owned"), 30, what="the first verdict")
    before = controller.shadow("dev-owned")
    with controller.api() as api:
        for patch, key, owner in (
            ({"quarantine": None}, "quarantine", "system:attestation"),
            ({"model": {"name": "x", "factory": True}}, "model", "system:rollouts"),
            ({"labels": {"a": "b"}, "policy": {}}, "policy", "system:policy"),
        ):
            refused = api.patch("/api/devices/dev-owned/shadow/desired", json=patch)
            assert refused.status_code == 403, refused.text
            detail = refused.json()["detail"]
            assert f"'{key}' (set by {owner})" in detail and "user:ops" in detail
    assert controller.shadow("dev-owned")["desired_version"] == before["desired_version"]
    assert audit_entries(controller, "shadow.desired") == []

    changed = controller.patch_desired("dev-owned", {"labels": {"site": "lab"}})
    controller.wait_in_sync("dev-owned", changed["desired_version"])
    [entry] = audit_entries(controller, "shadow.desired")
    assert entry["actor"] == "user:ops" and entry["target"] == "device:dev-owned"
    assert entry["detail"]["keys"] == ["labels"]
    assert entry["detail"]["before"] == {"labels": None}
    assert entry["detail"]["after"] == {"labels": {"site": "lab"}}
    assert entry["detail"]["version"] == changed["desired_version"]
    assert controller.shadow("dev-owned")["reported"]["labels"] == {"site": "lab"}

    # The agent is stopped; the republish job (every second) re-sends the unapplied
    # document several times meanwhile: a re-send is not a change.
    agents[0].stop()
    again = controller.patch_desired("dev-owned", {"labels": {"site": "lab-2"}})
    wait_for(
        lambda: controller.shadow("dev-owned")["desired_version"] == again["desired_version"],
        10,
        what="the second change",
    )
    threading.Event().wait(3.0)
    assert len(audit_entries(controller, "shadow.desired")) == 2


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    engine = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


def test_services_own_their_keys_and_long_values_are_capped_in_the_audit(engine: Any) -> None:
    """Rollouts may not set quarantine (attestation's) and a refused change leaves no row;
    attestation's own change is audited with actor system:attestation in the same
    transaction (rolled back with it); a value too long for the audit log is kept as its
    size and hash."""
    now = datetime.now(UTC)
    with session_scope(engine) as session, pytest.raises(OwnedKeyError) as refused:
        set_desired(session, "dev-1", {"quarantine": None}, now=now, actor="system:rollouts")
    assert "'quarantine' (set by system:attestation)" in str(refused.value)
    with Session(engine) as session:
        assert session.get(DeviceShadow, "dev-1") is None

    with Session(engine) as session:
        set_desired(session, "dev-1", {"quarantine": {"reason": "silent"}}, now=now,
                    actor="system:attestation")  # fmt: skip
        session.rollback()
    with Session(engine) as session:
        assert session.exec(select(AuditEntry)).all() == []

    long_label = {f"k{i}": "v" * 100 for i in range(20)}
    with session_scope(engine) as session:
        set_desired(session, "dev-1", {"quarantine": {"reason": "silent"}}, now=now,
                    actor="system:attestation")  # fmt: skip
        set_desired(session, "dev-1", {"labels": long_label}, now=now, actor="user:ops")
    with Session(engine) as session:
        rows = session.exec(select(AuditEntry).order_by(col(AuditEntry.id))).all()
    assert [(r.actor, r.detail["keys"]) for r in rows] == [
        ("system:attestation", ["quarantine"]),
        ("user:ops", ["labels"]),
    ]
    after = rows[1].detail["after"]["labels"]
    assert after["truncated"] and after["bytes"] > AUDIT_VALUE_MAX
    assert len(json.dumps(rows[1].detail)) < 2 * AUDIT_VALUE_MAX
