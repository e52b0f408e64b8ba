"""End to end over mutual TLS, with the Mosquitto config `edgefleet broker mosquitto-config
--tls` writes: the device CA from `edgefleet pki init`, the controller in `broker.mode:
external` over mqtts:// with the client certificate the command signed, and agents' MQTT
links with their own certificates. What is ingested, what the broker drops, and what a
revocation (`edgefleet devices revoke`, or attestation with on_fail: revoke) refuses."""

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from edge_agent.sync.outbox import Outbox, Priority
from shared.broker_url import Tls
from shared.messages import Birth, Challenge, Quote, TelemetryBatch, encode_message
from shared.mqtt_transport import Endpoint, Transport
from tests.conftest import wait_for
from tests.controller_harness import LiveController, live_controller
from tests.sync_harness import stored_records
from tests.test_attestation_service import SIGNERS, FakeDevice
from tests.test_protocol import birth
from tests.tls_fleet import PASSPHRASE, World, tls_fleet


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with tls_fleet(tmp_path) as world:
        yield world


def make_link(
    world: World,
    device_id: str,
    tls: Tls,
    *,
    make_birth: object = None,
    on_challenge: object = None,
) -> tuple[MqttLink, Outbox]:
    outbox = Outbox(world.tmp / device_id / "outbox.db", max_bytes=1 << 22)
    link = MqttLink(
        device_id=device_id,
        config=MqttConfig(
            url=f"mqtts://127.0.0.1:{world.port}",
            ca_file=tls.ca_file,
            cert_file=tls.cert_file,
            key_file=tls.key_file,
            keepalive_s=5,
            reconnect_min_s=0.1,
            reconnect_max_s=0.3,
        ),
        counters=CounterStore(world.tmp / device_id / "counters.json"),
        make_birth=make_birth or (lambda bd_seq: birth(device_id, bd_seq=bd_seq)),  # type: ignore[arg-type]
        snapshot=lambda: LoadSnapshot(1.0, 1.0, 1.0, 0, True),
        heartbeat_interval_s=60,
        outbox=outbox,
        outbox_config=OutboxConfig(ack_timeout_s=1.0),
        on_challenge=on_challenge,  # type: ignore[arg-type]
        signer=SIGNERS.get(device_id),
    )
    return link, outbox


def records(world: World, device_id: str) -> list[str]:
    return [name for _, _, name, _ in stored_records(world.database_url, device_id)]


def rejected(ctl: LiveController, reason: str) -> int:
    counts = ctl.services.stats.snapshot()["rejected"]
    assert isinstance(counts, dict)
    return int(counts.get(reason, 0))


def refused_within_one_reconnect(link: MqttLink) -> None:
    """Drop the link's connection; its next attempt (the first reconnect) must not get a
    session: the broker refuses the revoked certificate in the handshake."""
    sessions, attempts = link.births_sent, link.transport.attempts
    link.transport.disconnect()
    wait_for(lambda: link.transport.attempts >= attempts + 2, 20, what="a refused reconnect")
    assert link.births_sent == sessions, "the revoked certificate got a session"
    assert not link.connected


def test_mutual_tls_fleet_ingest_acl_and_revocation(world: World) -> None:
    """Telemetry crosses the generated mutual-TLS listener into the database; a certificate
    for dev-b publishing on dev-a's topics is dropped by the CN-keyed ACL; after `devices
    revoke dev-a` what dev-a still sends over its open connection is refused by ingest
    (revoked), and once the broker reloads the CRL its reconnect is refused."""
    tls_a, tls_b = world.device_tls("dev-a"), world.device_tls("dev-b")
    with live_controller(
        world.tmp, world.broker_settings(), pki={"dir": str(world.store.dir)}
    ) as ctl:
        link, outbox = make_link(world, "dev-a", tls_a)
        link.start()
        try:
            assert link.wait_connected(15), "dev-a's TLS session"
            outbox.append("metric", "before", {"n": 1}, priority=Priority.NORMAL)
            link.wake()
            wait_for(lambda: records(world, "dev-a") == ["before"], 20, what="dev-a's record")
            wait_for(lambda: outbox.pending() == 0, 20, what="the ack")

            # dev-b's certificate speaking for dev-a: dropped by the broker, never stored.
            spoof = Transport(
                Endpoint("127.0.0.1", world.port, "dev-b", keepalive_s=5, tls=tls_b),
                on_message=lambda m: None,
                name="dev-b",
            )
            stop = threading.Event()
            spoof.connect()
            thread = threading.Thread(target=spoof.serve, args=(stop,))
            thread.start()
            forged = TelemetryBatch.model_validate(
                {
                    "device_id": "dev-a",
                    "records": [
                        {"epoch": 999, "seq": 0, "kind": "metric", "name": "forged",
                         "at": datetime.now(UTC).isoformat(), "body": {}},
                    ],
                }
            )  # fmt: skip
            spoof.publish(*encode_message(forged), qos=1)
            spoof.publish(*encode_message(birth("dev-b")), qos=1)  # a barrier behind it
            wait_for(lambda: ctl.device("dev-b") is not None, 15, what="dev-b's birth")
            assert "forged" not in records(world, "dev-a")
            stop.set()
            spoof.disconnect()
            thread.join(10)
            spoof.close()

            revoked = world.cli("devices", "revoke", "dev-a", "--reason", "stolen")
            assert revoked.returncode == 0, revoked.stderr
            assert "CRL" in revoked.stdout and "re-signed" in revoked.stdout
            # The broker has not reloaded the CRL: the open connection still carries dev-a's
            # messages, and ingest refuses every one.
            outbox.append("metric", "after", {"n": 2}, priority=Priority.NORMAL)
            link.wake()
            wait_for(lambda: rejected(ctl, "revoked") >= 1, 20, what="ingest's refusal")
            assert records(world, "dev-a") == ["before"]
            device = ctl.device("dev-a")
            assert device is not None and device["decommissioned"] is True

            world.reload_broker()
            refused_within_one_reconnect(link)
        finally:
            link.stop()


def test_attestation_on_fail_revoke_locks_the_device_out(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With attestation.on_fail: revoke, a device whose verified quote measures tampered
    agent code is revoked: its certificate lands in the CRL the controller's crl-refresh
    job signs, and after the broker's reload its reconnect is refused."""
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", PASSPHRASE)
    tls = world.device_tls("dev-c")
    device = FakeDevice(world.tmp / "keys", "dev-c")
    device.code = "bad0" * 16  # a tampered agent: its own key signs what it measures

    def tampered_answer(challenge: Challenge) -> Quote:
        return device.answer(challenge)

    def make_birth(bd_seq: int) -> Birth:
        return device.birth(bd_seq)

    with live_controller(
        world.tmp,
        world.broker_settings(),
        pki={"dir": str(world.store.dir)},
        attestation={"on_fail": "revoke"},
    ) as ctl:
        link, _ = make_link(
            world, "dev-c", tls, make_birth=make_birth, on_challenge=tampered_answer
        )
        link.start()
        try:
            assert link.wait_connected(15), "dev-c's TLS session"

            def decommissioned() -> bool:
                row = ctl.device("dev-c")
                return row is not None and row["decommissioned"] is True

            wait_for(decommissioned, 20, what="the revocation after the failed quote")
            row = ctl.device("dev-c")
            assert row is not None and "agent_code" in str(row["decommission_reason"])
            ctl.services.refresh_crl()  # the crl-refresh job's run, without its 10 s wait
            world.reload_broker()
            refused_within_one_reconnect(link)
        finally:
            link.stop()
