"""The scale-out path: two controller processes, one PostgreSQL, one Mosquitto (MQTT 5)."""

import json
from pathlib import Path

import pytest

from tests.conftest import Broker, MosquittoProcess, wait_for
from tests.procs import processes, run_cli
from tests.sync_harness import (
    ControllerProcess,
    SimulatedDevice,
    agent_yaml,
    assert_exactly_once,
)

pytestmark = pytest.mark.e2e

DEVICES = ("fleet-a", "fleet-b", "fleet-c")


def test_two_controllers_split_the_stream(tmp_path: Path, postgres_url: str) -> None:
    """A shared subscription splits device batches between two replicas; each record lands
    once in PostgreSQL, and desired state set through either replica converges."""
    broker = MosquittoProcess(tmp_path)
    broker.start()
    replicas = [
        ControllerProcess(tmp_path, name, broker_url=broker.broker.url, database_url=postgres_url)
        for name in ("replica-1", "replica-2")
    ]
    replicas[0].bootstrap()
    replicas[1].use_token_of(replicas[0])
    devices = [
        SimulatedDevice(
            tmp_path, agent_yaml(tmp_path, device_id, broker.broker.url), records=800, rate=200
        )
        for device_id in DEVICES
    ]
    try:
        with processes(tmp_path) as procs:
            procs.extend(replica.start() for replica in replicas)
            procs.extend(device.start() for device in devices)
            for device in devices:
                device.wait_drained()
            for device, device_id in zip(devices, DEVICES, strict=True):
                assert assert_exactly_once(postgres_url, device, device_id) >= 800

            batches = [replica.ingest_stats()["batches"] for replica in replicas]
            assert all(n > 0 for n in batches), f"both replicas took a share: {batches}"
            for replica in replicas:
                stats = replica.ingest_stats()
                assert stats["rejected_total"] == 0, stats

            for replica, device_id in zip(replicas + replicas[:1], DEVICES, strict=True):
                version = replica.patch_desired(device_id, {"labels": {"via": replica.name}})
                shadow = replica.wait_in_sync(device_id, version["desired_version"])
                assert shadow["reported"]["labels"] == {"via": replica.name}
            wait_for(
                lambda: all(r.shadow(d)["in_sync"] for r in replicas for d in DEVICES),
                30,
                what="both replicas to see every shadow in sync",
            )

            # The operator's CLI over the same API: set, show, and a malformed assignment.
            cli = ["-m", "controller", "devices"]
            auth = ["--url", replicas[1].base_url, "--token", replicas[1].token, "--json"]
            changed = run_cli([*cli, "desire", "fleet-b", "--set", "telemetry_interval_s=5",
                               "--set", "labels={\"site\": \"north\"}", *auth])  # fmt: skip
            assert changed.returncode == 0, changed.stderr
            version = json.loads(changed.stdout)["desired_version"]
            replicas[0].wait_in_sync("fleet-b", version)
            shown = run_cli([*cli, "shadow", "fleet-b", *auth])
            assert shown.returncode == 0, shown.stderr
            reported = json.loads(shown.stdout)["reported"]
            assert (reported["telemetry_interval_s"], reported["labels"]) == (
                5.0,
                {"via": "replica-2", "site": "north"},  # objects merge (RFC 7396)
            )
            bad = run_cli([*cli, "desire", "fleet-b", "--set", "no-equals-sign", *auth])
            assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr
    finally:
        broker.stop()


def test_a_replica_stopped_cleanly_leaves_the_shared_subscription(
    mosquitto: Broker, tmp_path: Path
) -> None:
    """After a replica stops gracefully, its session is gone: a new replica with another
    client id receives every message instead of sharing them with a dead session."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from controller.services import Services
    from controller.settings import load_settings
    from shared import Heartbeat, encode_message

    def replica(name: str) -> Services:
        settings = load_settings(
            None,
            environment="development",
            database_url=f"sqlite:///{tmp_path / 'c.db'}",
            broker={"mode": "external", "url": mosquitto.url, "client_id": name},
        )
        services = Services.create(settings)
        services.start()
        assert services.ingest is not None and services.ingest.wait_connected(10)
        return services

    replica("replica-old").stop()
    new = replica("replica-new")
    try:
        publisher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        for seq in range(40):
            beat = Heartbeat(device_id="dev-1", bd_seq=0, seq=seq, uptime_s=1.0,
                             cpu_percent=1.0, memory_percent=1.0, requests_total=0,
                             local_tier_healthy=True)  # fmt: skip
            publisher.publish(*encode_message(beat), qos=1).wait_for_publish(5)
        wait_for(lambda: new.stats.accepted == 40, 20, what="every heartbeat at the new replica")
        publisher.loop_stop()
    finally:
        new.stop()
