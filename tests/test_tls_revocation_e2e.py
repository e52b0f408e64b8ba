"""End to end over mutual TLS, with the Mosquitto config `edgefleet broker mosquitto-config
--tls` writes: the device CA from `edgefleet pki init`, the controller in `broker.mode:
external` over mqtts:// with the client certificate the command signed, and agents' MQTT
links with their own certificates. What is ingested, what the broker drops, and what a
revocation (`edgefleet devices revoke`, or attestation with on_fail: revoke) refuses."""

import getpass
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from controller.db import make_engine, session_scope
from controller.migrations import init_db
from controller.pki.service import issue_device_certificate
from controller.pki.store import PkiStore
from controller.settings import PkiSettings
from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from edge_agent.sync.outbox import Outbox, Priority
from shared.broker_url import Tls
from shared.certificates import csr_for, new_private_key, private_key_pem
from shared.messages import Birth, Challenge, Quote, TelemetryBatch, encode_message
from shared.mqtt_transport import Endpoint, Transport
from tests.conftest import free_port, mosquitto_binary, port_open, wait_for
from tests.controller_harness import LiveController, live_controller
from tests.procs import run_cli
from tests.sync_harness import stored_records
from tests.test_attestation_service import FakeDevice
from tests.test_protocol import birth

PASSPHRASE = "tls-e2e-passphrase-for-the-ca"
CONTROLLER_ID = "edgefleet-controller"


@dataclass
class World:
    """A device CA, a Mosquitto from the generated config, and the controller's files."""

    tmp: Path
    config: Path
    store: PkiStore
    port: int
    broker: subprocess.Popen[bytes]
    log: Path
    database_url: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE}
        return run_cli(["-m", "controller", *args, "-c", str(self.config)], env=env)

    def device_tls(self, device_id: str) -> Tls:
        """A key made here and a certificate the CA signs for it, recorded as issued."""
        key = new_private_key()
        engine = make_engine(self.database_url)
        with session_scope(engine) as session:
            issued = issue_device_certificate(
                session, self.store, device_id, csr_for(device_id, key), _now()
            )
        engine.dispose()
        cert_file, key_file = self.tmp / f"{device_id}.crt", self.tmp / f"{device_id}.key"
        cert_file.write_bytes(issued.certificate_pem)
        key_file.write_bytes(private_key_pem(key))
        return Tls(self.store.ca_file, cert_file, key_file)

    def reload_broker(self) -> None:
        """What the systemd path unit of docs/tls.md does when crl.pem changes."""
        self.broker.send_signal(signal.SIGHUP)

    def broker_settings(self) -> dict[str, object]:
        certs = self.tmp / "controller-certs"
        return {
            "mode": "external",
            "url": f"mqtts://127.0.0.1:{self.port}",
            "client_id": CONTROLLER_ID,
            "ca_file": str(self.store.ca_file),
            "cert_file": str(certs / f"{CONTROLLER_ID}.crt"),
            "key_file": str(certs / f"{CONTROLLER_ID}.key"),
        }


def _now() -> datetime:
    return datetime.now(UTC)


def _start_broker(conf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=out, stderr=out)
    wait_for(lambda: port_open(port) or proc.poll() is not None, 10, what="mosquitto")
    if proc.poll() is not None:
        pytest.fail(f"mosquitto exited: {log.read_text()}")
    return proc


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """`pki init`, then `broker mosquitto-config --tls --controller-cert-out`, and a
    Mosquitto running that config (as the current user, so it reads pytest's folders)."""
    database_url = f"sqlite:///{tmp_path / 'controller.db'}"
    config = tmp_path / "controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "database_url": database_url,
                "pki": {"dir": str(tmp_path / "pki")},
            }
        )
    )
    port = free_port()
    store = PkiStore(tmp_path / "pki", SecretStr(PASSPHRASE), PkiSettings(dir=tmp_path / "pki"))
    world = World(tmp_path, config, store, port, None, tmp_path / "mosquitto.log", database_url)  # type: ignore[arg-type]
    done = world.cli("pki", "init", "--host", "127.0.0.1", "--host", "localhost")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "broker"
    done = world.cli(
        "broker", "mosquitto-config", "--tls", "--port", str(port), "--out", str(out),
        "--controller-cert-out", str(tmp_path / "controller-certs"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    conf = out / "mosquitto.conf"
    conf.write_text(
        conf.read_text() + f"user {getpass.getuser()}\nlog_dest stderr\nlog_type error\n"
    )
    init_db(make_engine(database_url))
    world.broker = _start_broker(conf, port, world.log)
    try:
        yield world
    finally:
        world.broker.terminate()
        world.broker.wait(10)


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
                         "at": _now().isoformat(), "body": {}},
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
    """With attestation.on_fail: revoke, a device answering its challenge with a quote
    signed by another key is revoked: its certificate lands in the CRL the controller's
    crl-refresh job signs, and after the broker's reload its reconnect is refused."""
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", PASSPHRASE)
    tls = world.device_tls("dev-c")
    device = FakeDevice(world.tmp / "keys", "dev-c")
    impostor = FakeDevice(world.tmp / "impostor", "dev-c")

    def forged_answer(challenge: Challenge) -> Quote:
        return impostor.answer(challenge)

    def make_birth(bd_seq: int) -> Birth:
        return device.birth(bd_seq)

    with live_controller(
        world.tmp,
        world.broker_settings(),
        pki={"dir": str(world.store.dir)},
        attestation={"on_fail": "revoke"},
    ) as ctl:
        link, _ = make_link(world, "dev-c", tls, make_birth=make_birth, on_challenge=forged_answer)
        link.start()
        try:
            assert link.wait_connected(15), "dev-c's TLS session"

            def decommissioned() -> bool:
                row = ctl.device("dev-c")
                return row is not None and row["decommissioned"] is True

            wait_for(decommissioned, 20, what="the revocation after the forged quote")
            row = ctl.device("dev-c")
            assert row is not None and "wrong_key" in str(row["decommission_reason"])
            ctl.services.refresh_crl()  # the crl-refresh job's run, without its 10 s wait
            world.reload_broker()
            refused_within_one_reconnect(link)
        finally:
            link.stop()
