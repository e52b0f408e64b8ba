"""The issue-21 counter attacks against real processes: a real Mosquitto, the real
controller ingest, a real agent (``edge-agent simulate`` as ``demo-edge-1``) and a paho
attacker on the device's own topics. The attacker here also holds the device's identity
key (copied off the device), so its messages pass the signature check and plausibility is
the defense left (defense in depth). The forged heartbeat seq 10^12, reported version 10^9
and telemetry 10^9 past the stored seq are refused as ``implausible_seq`` (counted,
dead-lettered, flagged on the device) and the genuine messages after them keep landing."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, text

from controller.ingest.plausibility import REASON
from shared import encode_message
from shared.attestation import public_key_of
from shared.message_signing import DEVICE_DOMAIN, Signer, short_key_id
from shared.messages import Heartbeat, Record, Reported, TelemetryBatch
from shared.provisioning import IDENTITY_FOLDER, IDENTITY_KEY_FILE
from tests.conftest import Broker, wait_for
from tests.controller_harness import LiveController, live_controller
from tests.procs import processes
from tests.sync_harness import SimulatedDevice, agent_yaml, assert_exactly_once

DEVICE = "demo-edge-1"


@pytest.fixture
def attacker(mosquitto: Broker) -> Iterator[mqtt.Client]:
    """A raw paho client on the broker, as the issue's attacker had."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="rogue")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def _get(live: LiveController, path: str) -> Any:
    response = live.client.get(path, headers=live.auth)
    assert response.status_code == 200, response.text
    return response.json()


def _newest_record(database_url: str) -> tuple[int, int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT epoch, seq FROM telemetry_record WHERE device_id = :d "
                    "ORDER BY epoch DESC, seq DESC LIMIT 1"
                ),
                {"d": DEVICE},
            ).one()
    finally:
        engine.dispose()
    return int(row[0]), int(row[1])


def test_forged_counters_are_refused_and_the_device_keeps_working(
    mosquitto: Broker, tmp_path: Path, attacker: mqtt.Client
) -> None:
    """Posing as a running device: the heartbeat with seq 10^12, the reported version 10^9
    and a telemetry batch 10^9 past the stored seq are each refused as implausible_seq with
    the counter named; the device stays online, its later heartbeats and report are
    applied, and every record it made is stored exactly once."""
    database_url = f"sqlite:///{tmp_path / 'controller.db'}"
    with (
        live_controller(tmp_path, {"mode": "external", "url": mosquitto.url}) as live,
        processes(tmp_path) as started,
    ):
        sim = SimulatedDevice(
            tmp_path, agent_yaml(tmp_path, DEVICE, mosquitto.url), records=300, rate=30
        )
        started.append(sim.start())

        def device() -> dict[str, Any]:
            return dict(_get(live, f"/api/devices/{DEVICE}"))

        wait_for(
            lambda: live.device(DEVICE) and (device()["last_heartbeat_seq"] or 0) > 0,
            30,
            what="the agent's heartbeats",
        )
        wait_for(lambda: _get(live, f"/api/devices/{DEVICE}/shadow")["reported_version"], 30)
        wait_for(lambda: len(sim.appended()) >= 30 and _newest_record(database_url)[1] > 5, 30)
        bd_seq = device()["bd_seq"]
        epoch, seq = _newest_record(database_url)
        now = datetime.now(UTC)
        forged = [
            Heartbeat(
                device_id=DEVICE,
                bd_seq=bd_seq,
                seq=10**12,
                uptime_s=1.0,
                cpu_percent=1.0,
                memory_percent=1.0,
                requests_total=0,
                local_tier_healthy=True,
            ),
            Reported(
                device_id=DEVICE,
                version=10**9,
                applied_desired_version=0,
                state={"model": "fake-9.9"},
            ),
            TelemetryBatch(
                device_id=DEVICE,
                records=[Record(epoch=epoch, seq=seq + 10**9, kind="metric", name="sim", at=now)],
            ),
        ]
        pem = (tmp_path / DEVICE / IDENTITY_FOLDER / IDENTITY_KEY_FILE).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, Ed25519PrivateKey)
        signer = Signer(DEVICE_DOMAIN, short_key_id(public_key_of(key)), key.sign)
        for message in forged:
            topic, body = encode_message(message)
            attacker.publish(topic, signer.payload(topic, body), qos=1).wait_for_publish(10)

        wait_for(
            lambda: _get(live, "/api/ingest/stats")["rejected"].get(REASON, 0) >= 3,
            15,
            what="the three forged messages to be refused",
        )
        flags = [e for e in _get(live, f"/api/devices/{DEVICE}/events") if e["event"] == REASON]
        details = " | ".join(e["detail"] for e in flags)
        assert "heartbeat seq 1000000000000" in details
        assert "reported version 1000000000" in details
        assert f"telemetry seq (epoch {epoch})" in details
        letters = _get(live, f"/api/ingest/rejected?reason={REASON}&device={DEVICE}")
        assert sum(row["count"] for row in letters) == 3

        # The genuine device goes on: heartbeats applied, online, a new desired applied
        # and reported, records drained.
        after = device()["last_heartbeat_seq"]
        assert after < 10**12
        wait_for(lambda: device()["last_heartbeat_seq"] > after, 15, what="a later heartbeat")
        assert device()["state"] == "online"
        response = live.client.patch(
            f"/api/devices/{DEVICE}/shadow/desired",
            json={"labels": {"after": "attack"}},
            headers=live.auth,
        )
        assert response.status_code == 200, response.text
        version = response.json()["desired_version"]
        shadow = wait_for(
            lambda: (
                (s := _get(live, f"/api/devices/{DEVICE}/shadow"))["applied_desired_version"]
                >= version
                and s
            ),
            30,
            what="the genuine report after the forged one",
        )
        assert shadow["reported_version"] < 10**9
        assert shadow["reported"].get("model") != "fake-9.9"
        sim.wait_drained(60)
        assert _newest_record(database_url)[1] < 10**9
        assert assert_exactly_once(database_url, sim, DEVICE) >= 300
        assert device()["state"] == "online"
