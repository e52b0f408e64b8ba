"""An agent that starts while the broker is down keeps retrying and comes online later."""

import time
from pathlib import Path

from edge_agent.config import MqttConfig
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from tests.conftest import free_port, wait_for
from tests.controller_harness import live_controller
from tests.test_protocol import birth


def test_link_connects_once_the_broker_appears(tmp_path: Path) -> None:
    """With no broker at start the link is offline (not crashed); when the controller and its
    broker come up on that port, the device appears online without restarting the agent."""
    port = free_port()
    link = MqttLink(
        device_id="dev-late",
        config=MqttConfig(
            url=f"mqtt://127.0.0.1:{port}", reconnect_min_s=1, reconnect_max_s=2, protocol="3.1.1"
        ),
        counters=CounterStore(tmp_path / "counters.json"),
        make_birth=lambda bd_seq: birth("dev-late", bd_seq=bd_seq),
        snapshot=lambda: LoadSnapshot(1.0, 1.0, 1.0, 0, True),
        heartbeat_interval_s=0.5,
    )
    link.start()
    try:
        time.sleep(1.5)
        assert not link.connected
        broker = {"mode": "embedded", "url": f"mqtt://127.0.0.1:{port}"}
        with live_controller(tmp_path, broker) as live:
            device = wait_for(
                lambda: (d := live.device("dev-late")) and d["state"] == "online" and d,
                20,
                what="the late connection",
            )
            assert link.connected
            assert device["bd_seq"] == link.bd_seq
    finally:
        link.stop()
