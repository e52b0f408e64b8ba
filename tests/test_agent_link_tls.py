"""The agent's MQTT link over TLS with its client certificate, and its warning for plaintext
to another host."""

import logging
import threading
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from shared.broker_url import Tls
from shared.mqtt_transport import Endpoint, Inbound, Transport
from tests.conftest import wait_for
from tests.pki_world import TestCa, tls_mosquitto
from tests.test_protocol import birth


def make_link(tmp_path: Path, config: MqttConfig, device_id: str = "dev-a") -> MqttLink:
    return MqttLink(
        device_id=device_id,
        config=config,
        counters=CounterStore(tmp_path / f"{device_id}-counters.json"),
        make_birth=lambda bd_seq: birth(device_id, bd_seq=bd_seq),
        snapshot=lambda: LoadSnapshot(1.0, 1.0, 1.0, 0, True),
        heartbeat_interval_s=60,
    )


def test_the_link_connects_over_mutual_tls_and_its_birth_arrives(tmp_path: Path) -> None:
    """An mqtts:// link with the device's certificate gets a session on a broker that
    requires client certificates, and its birth reaches the controller's subscription."""
    ca = TestCa(tmp_path / "ca")
    broker = tls_mosquitto(tmp_path, ca)
    broker.start()
    heard: list[Inbound] = []
    granted = threading.Event()
    ctl_files = ca.client("edgefleet-controller")
    holder: list[Transport] = []
    ctl = Transport(
        Endpoint(
            "127.0.0.1",
            broker.port,
            "edgefleet-controller",
            tls=Tls(ca.ca_file, ctl_files.cert_file, ctl_files.key_file),
        ),
        on_message=heard.append,
        on_connect=lambda refused: holder[0].subscribe([("ef/#", 1)]),
        on_subscribe=lambda refused: granted.set(),
    )
    holder.append(ctl)
    stopping = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stopping,), kwargs={"backoff": lambda a: 0.2})
    thread.start()
    files = ca.client("dev-a")
    link = make_link(
        tmp_path,
        MqttConfig(
            url=f"mqtts://127.0.0.1:{broker.port}",
            ca_file=ca.ca_file,
            cert_file=files.cert_file,
            key_file=files.key_file,
        ),
    )
    try:
        assert granted.wait(10), "the controller's subscription"
        link.start()
        assert link.wait_connected(10), "the device's TLS session"
        wait_for(lambda: any(m.topic == "ef/v1/dev-a/status" for m in heard), 10, what="the birth")
    finally:
        link.stop()
        stopping.set()
        ctl.disconnect()
        thread.join(10)
        ctl.close()
        broker.stop()


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("mqtt://10.20.30.40:1883", True),
        ("mqtt://broker.example.net", True),
        ("mqtt://127.0.0.1:1883", False),
        ("mqtt://localhost:1883", False),
        ("mqtts://broker.example.net", False),
    ],
)
def test_plaintext_to_another_host_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, url: str, warned: bool
) -> None:
    """Plain mqtt:// to anything but loopback logs a warning naming the URL at start;
    loopback and mqtts:// do not."""
    with caplog.at_level(logging.WARNING, logger="edge_agent.sync.link"):
        make_link(tmp_path, MqttConfig(url=url)).transport.close()
    messages = [r.getMessage() for r in caplog.records if "plaintext" in r.getMessage()]
    assert bool(messages) == warned
    if warned:
        assert url in messages[0]


def test_simulated_devices_each_present_their_own_certificate(tmp_path: Path) -> None:
    """In a simulation template, ``{device_id}`` in the certificate and key paths becomes
    each simulated device's id, so every device connects with its own certificate."""
    from edge_agent.config import AgentConfig
    from edge_agent.simulate import device_configs

    template = AgentConfig.model_validate(
        {
            "device_id": "sim",
            "state_dir": str(tmp_path),
            "mqtt": {
                "url": "mqtts://127.0.0.1:8883",
                "ca_file": str(tmp_path / "ca.crt"),
                "cert_file": str(tmp_path / "{device_id}.crt"),
                "key_file": str(tmp_path / "{device_id}.key"),
            },
        }
    )
    configs = device_configs(template, 3)
    assert [(c.device_id, c.mqtt and c.mqtt.cert_file) for c in configs] == [
        (f"sim-{i:04d}", tmp_path / f"sim-{i:04d}.crt") for i in range(3)
    ]
    assert all(c.mqtt and c.mqtt.key_file == tmp_path / f"{c.device_id}.key" for c in configs)
    assert all(c.mqtt and c.mqtt.ca_file == tmp_path / "ca.crt" for c in configs)
    single = device_configs(template, 1)[0]
    assert single.mqtt is not None and single.mqtt.cert_file == tmp_path / "sim.crt"
