"""The zero-setup path: the controller's embedded broker with the agent's real MQTT link."""

from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.broker.embedded import EmbeddedBroker, write_password_file
from edge_agent.config import MqttConfig
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from shared import Death, encode_message
from shared.topics import TOPIC_ROOT
from tests.conftest import wait_for
from tests.controller_harness import LiveController, live_controller
from tests.pki_world import ClientFiles, TestCa
from tests.test_protocol import birth


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveController]:
    with live_controller(tmp_path, {"mode": "embedded", "url": "mqtt://127.0.0.1:0"}) as controller:
        yield controller


def make_link(live: LiveController, counters: CounterStore, device_id: str) -> MqttLink:
    port = live.services.broker_port
    return MqttLink(
        device_id=device_id,
        config=MqttConfig(url=f"mqtt://127.0.0.1:{port}", keepalive_s=5, protocol="3.1.1"),
        counters=counters,
        make_birth=lambda bd_seq: birth(device_id, bd_seq=bd_seq),
        snapshot=lambda: LoadSnapshot(1.0, 5.0, 20.0, 3, True),
        heartbeat_interval_s=0.2,
    )


def test_agent_link_births_heartbeats_and_dies_cleanly(
    live: LiveController, tmp_path: Path
) -> None:
    """Through the embedded broker an agent link comes online, heartbeats with increasing
    seq, goes offline with reason 'shutdown' on stop, and its next session has bd_seq + 1."""
    counters = CounterStore(tmp_path / "agent" / "counters.json")
    link = make_link(live, counters, "dev-emb")
    link.start()
    try:
        first = wait_for(
            lambda: (d := live.device("dev-emb")) and d["last_heartbeat_seq"] is not None and d,
            15,
            what="birth and a heartbeat",
        )
        assert first["state"] == "online" and first["bd_seq"] == 0 and first["requests_total"] == 3
        later = wait_for(
            lambda: (
                (d := live.device("dev-emb"))
                and d["last_heartbeat_seq"] > first["last_heartbeat_seq"]
                and d
            ),
            10,
            what="a later heartbeat",
        )
        assert later["state"] == "online"
    finally:
        link.stop()
    gone = wait_for(
        lambda: (d := live.device("dev-emb")) and d["state"] == "offline" and d, 10, what="death"
    )
    assert gone["state_reason"] == "shutdown"

    again = make_link(live, counters, "dev-emb")
    again.start()
    try:
        back = wait_for(
            lambda: (d := live.device("dev-emb")) and d["state"] == "online" and d,
            15,
            what="rebirth",
        )
        assert back["bd_seq"] == 1
    finally:
        again.stop()


def test_last_will_marks_a_vanished_device_offline(live: LiveController) -> None:
    """A client that drops its socket without DISCONNECT is marked offline by its will."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dev-crash")
    client.will_set(
        *encode_message(Death(device_id="dev-crash", bd_seq=0, reason="will")), qos=1, retain=True
    )
    client.connect("127.0.0.1", live.services.broker_port)
    client.loop_start()
    client.publish(
        *encode_message(birth("dev-crash", bd_seq=0)), qos=1, retain=True
    ).wait_for_publish(5)
    wait_for(lambda: (d := live.device("dev-crash")) and d["state"] == "online", 10, what="birth")
    client.loop_stop()
    sock = client.socket()
    assert sock is not None
    sock.close()  # what a power cut looks like to the broker
    gone = wait_for(
        lambda: (d := live.device("dev-crash")) and d["state"] == "offline" and d, 15, what="will"
    )
    assert gone["state_reason"] == "will"


def test_the_embedded_broker_over_tls_takes_devices_with_certificates(tmp_path: Path) -> None:
    """With a server certificate the embedded broker listens on mqtts:// only: the
    controller's ingest and an agent with certificates from the same CA connect and the
    device comes online; a client certificate from another CA is refused at the handshake."""
    ca = TestCa(tmp_path / "ca")
    server_cert, server_key = ca.server(["127.0.0.1"])
    ctl = ca.client("edgefleet-controller")
    broker: dict[str, object] = {
        "mode": "embedded",
        "url": "mqtts://127.0.0.1:0",
        "server_cert_file": str(server_cert),
        "server_key_file": str(server_key),
        "ca_file": str(ca.ca_file),
        "cert_file": str(ctl.cert_file),
        "key_file": str(ctl.key_file),
    }
    with live_controller(tmp_path, broker) as live:
        port = live.services.broker_port
        assert live.services.broker is not None
        assert live.services.broker.url.startswith("mqtts://")

        def link(device_id: str, files: ClientFiles) -> MqttLink:
            return MqttLink(
                device_id=device_id,
                config=MqttConfig(
                    url=f"mqtts://127.0.0.1:{port}",
                    protocol="3.1.1",
                    ca_file=ca.ca_file,
                    cert_file=files.cert_file,
                    key_file=files.key_file,
                ),
                counters=CounterStore(tmp_path / device_id / "counters.json"),
                make_birth=lambda bd_seq: birth(device_id, bd_seq=bd_seq),
                snapshot=lambda: LoadSnapshot(1.0, 5.0, 20.0, 3, True),
                heartbeat_interval_s=0.5,
            )

        good = link("dev-tls", ca.client("dev-tls"))
        stranger = link("dev-stranger", TestCa(tmp_path / "other").client("dev-stranger"))
        good.start()
        stranger.start()
        try:
            wait_for(
                lambda: (d := live.device("dev-tls")) and d["state"] == "online",
                20,
                what="the TLS device online",
            )
            wait_for(
                lambda: stranger.transport.tls_failures >= 1 or stranger.transport.attempts >= 2,
                20,
                what="the stranger's refused attempts",
            )
            assert not stranger.connected and live.device("dev-stranger") is None
        finally:
            good.stop()
            stranger.stop()


def connects(port: int, username: str, password: str, client_id: str) -> bool:
    """Whether the broker accepts this login under this client id (MQTT 3.1.1, paho)."""
    result: list[bool] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(username, password)
    client.on_connect = lambda _c, _u, _f, reason, _p: result.append(not reason.is_failure)
    client.on_disconnect = lambda *_: result.append(False)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_for(lambda: result, 10, what=f"{username} as {client_id}: an answer")
    finally:
        client.loop_stop()
        client.disconnect()
    return result[0]


def test_a_login_cannot_take_another_clients_session(tmp_path: Path) -> None:
    """With a password file, a device's valid login under the controller's client id or
    another device's is refused (no session takeover); each connects under its own, and the
    controller's user only under the controller's client id."""
    passwords = {"ctl": "controller-secret", "dev-a": "secret-a", "dev-b": "secret-b"}
    write_password_file(tmp_path / "passwd", passwords)
    broker = EmbeddedBroker(
        password_file=tmp_path / "passwd",
        controller_user="ctl",
        controller_client_ids=("edgefleet-controller",),
    )
    broker.start()
    try:
        assert connects(broker.port, "dev-a", "secret-a", "dev-a")
        assert connects(broker.port, "ctl", "controller-secret", "edgefleet-controller")
        assert not connects(broker.port, "dev-a", "secret-a", "edgefleet-controller")
        assert not connects(broker.port, "dev-a", "secret-a", "dev-b")
        assert not connects(broker.port, "ctl", "controller-secret", "dev-a")
    finally:
        broker.stop()


def _client(port: int, client_id: str, got: list[bytes] | None = None) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set("ctl", "controller-secret")
    if got is not None:
        client.on_message = lambda _c, _u, message: got.append(bytes(message.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_subscribing_during_a_broadcast_loses_no_message(tmp_path: Path) -> None:
    """Clients subscribing while the ACL-checked broker delivers a stream of messages cost
    no subscriber a message (amqtt's broadcast loop raised "dictionary changed size during
    iteration" mid-delivery and skipped the remaining subscribers)."""
    write_password_file(tmp_path / "passwd", {"ctl": "controller-secret", "dev-a": "secret-a"})
    ids = ("c-first", "c-steady", *(f"c-churn-{i}" for i in range(4)))
    broker = EmbeddedBroker(
        password_file=tmp_path / "passwd", controller_user="ctl", controller_client_ids=ids
    )
    broker.start()
    first: list[bytes] = []
    steady: list[bytes] = []
    clients = [_client(broker.port, "c-first", first)]
    clients[0].subscribe(f"{TOPIC_ROOT}/#", qos=1)
    wait_for(lambda: len(broker._broker.subscriptions) == 1, 10, what="the first subscription")
    clients.append(_client(broker.port, "c-steady", steady))
    clients[1].subscribe(f"{TOPIC_ROOT}/+/t", qos=1)
    wait_for(lambda: len(broker._broker.subscriptions) == 2, 10, what="the steady subscription")
    churners = [_client(broker.port, f"c-churn-{i}") for i in range(4)]
    clients += churners
    publisher = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id="dev-a", protocol=mqtt.MQTTv311
    )
    publisher.username_pw_set("dev-a", "secret-a")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    clients.append(publisher)
    try:
        total = 600
        for n in range(total):
            publisher.publish(f"{TOPIC_ROOT}/dev-a/t", str(n).encode(), qos=1)
            churners[n % 4].subscribe(f"{TOPIC_ROOT}/churn-{n}/x", qos=0)
        wait_for(lambda: len(set(first)) == total, 60, what="every message at the first client")
        wait_for(lambda: len(set(steady)) == total, 30, what="every message at the steady client")
    finally:
        for client in clients:
            client.loop_stop()
            client.disconnect()
        broker.stop()
