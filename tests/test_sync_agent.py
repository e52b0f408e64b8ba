"""The agent's side of sync against a live controller and a real Mosquitto (MQTT 5)."""

import json
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.sync.outbox import Priority
from shared import encode_message
from shared.messages import Desired
from tests.conftest import Broker, wait_for
from tests.controller_harness import LiveController, live_controller


@pytest.fixture
def live(mosquitto: Broker, tmp_path: Path) -> Iterator[LiveController]:
    broker = {"mode": "external", "url": mosquitto.url, "protocol": "5"}
    with live_controller(tmp_path, broker, desired_republish_s=1.0) as controller:
        yield controller


def make_agent(tmp_path: Path, broker: Broker, **outbox: object) -> Agent:
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-sync",
            "state_dir": str(tmp_path / "dev-sync"),
            "mqtt": {"url": broker.url, "keepalive_s": 2, "reconnect_min_s": 0.2},
            "heartbeat_interval_s": 1.0,
            "outbox": {"ack_timeout_s": 3.0, **outbox},
        }
    )
    return Agent(config)


def records(live: LiveController, device_id: str, name: str) -> list[dict[str, object]]:
    response = live.client.get(
        f"/api/devices/{device_id}/telemetry", params={"name": name}, headers=live.auth
    )
    return list(response.json()["data"]) if response.status_code == 200 else []


def test_offline_quota_drops_metrics_first_and_reports_every_drop(
    live: LiveController, mosquitto: Broker, tmp_path: Path
) -> None:
    """Offline with a 4 KiB quota, the outbox sheds low-priority metrics before events; on
    reconnect the drop counts arrive as an outbox_drops event and every kept record lands."""
    agent = make_agent(tmp_path, mosquitto, max_bytes=4096)
    try:
        for n in range(200):
            agent.record("metric", "system", {"n": n}, Priority.LOW)
        agent.record_event("door_opened", {"n": 1})
        assert agent.outbox.used_bytes <= 4096, "the quota held"
        assert agent.outbox.pending() < 202
        agent.start_link()
        wait_for(lambda: agent.outbox.pending() == 0, 30, what="the outbox to drain")
        drops = wait_for(lambda: records(live, "dev-sync", "outbox_drops"), 10, what="the report")
        body = drops[0]["body"]
        assert isinstance(body, dict)
        assert body["dropped_events"] == 0, "events outlive metrics"
        assert records(live, "dev-sync", "door_opened"), "the event was kept"
        assert records(live, "dev-sync", "agent_started")
        landed = live.client.get("/api/devices/dev-sync/telemetry", headers=live.auth).json()
        dropped = body["dropped_low"] + body["dropped_normal"]
        assert landed["count"] - 1 + dropped == 202, "every record landed or was counted"
        assert agent.outbox.append_drop_report() is None, "counts reset once reported"
    finally:
        agent.stop()


def test_bad_inbound_messages_are_counted_and_ignored(
    live: LiveController, mosquitto: Broker, tmp_path: Path
) -> None:
    """Garbage, a desired document for another device and an oversized payload on the
    device's topics are counted and ignored; the link stays up and the next good desired
    document is applied and reported."""
    agent = make_agent(tmp_path, mosquitto)
    attacker = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="attacker")
    try:
        agent.start_link()
        assert agent.link is not None
        wait_for(lambda: live.device("dev-sync"), 15, what="the device to register")
        attacker.connect(mosquitto.host, mosquitto.port)
        attacker.loop_start()
        desired_topic, _ = encode_message(Desired(device_id="dev-sync", version=1, state={}))
        other = Desired(device_id="dev-other", version=50, state={"labels": {"x": "y"}})
        bad = [
            b"{not json",
            json.dumps({**json.loads(encode_message(other)[1]), "device_id": "dev-other"}).encode(),
            b"{" + b" " * (70 * 1024) + b"}",
        ]
        for payload in bad:
            attacker.publish(desired_topic, payload, qos=1).wait_for_publish(5)
        link = agent.link
        wait_for(lambda: link.stats.bad_inbound == 3, 10, what="three rejects")
        assert agent.shadow.applied_desired_version is None, "nothing was applied"

        shown = live.client.patch(
            "/api/devices/dev-sync/shadow/desired",
            json={"heartbeat_interval_s": 2},
            headers=live.auth,
        )
        assert shown.status_code == 200, shown.text
        wait_for(
            lambda: live.client.get("/api/devices/dev-sync/shadow", headers=live.auth).json()[
                "in_sync"
            ],
            15,
            what="the good desired document to be applied",
        )
        assert link.connected and link.heartbeat_interval_s == 2.0
    finally:
        attacker.loop_stop()
        agent.stop()
