"""Faults with real Mosquitto and real processes: after each, every record a device stored is
in the database exactly once and the shadow has converged on the newest desired version."""

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.drills.tcp_proxy import TcpProxy
from tests.conftest import MosquittoProcess, wait_for
from tests.procs import processes
from tests.sync_harness import (
    ControllerProcess,
    SimulatedDevice,
    agent_yaml,
    assert_exactly_once,
    stored_records,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """Mosquitto with persistence: a restart keeps sessions, queued messages and retained."""
    server = MosquittoProcess(tmp_path, persistence=True)
    server.start()
    yield server
    server.stop()


def _controller(tmp_path: Path, broker: MosquittoProcess) -> tuple[ControllerProcess, str]:
    database_url = f"sqlite:///{tmp_path / 'controller.db'}"
    controller = ControllerProcess(
        tmp_path, "controller", broker_url=broker.broker.url, database_url=database_url
    )
    controller.bootstrap()
    return controller, database_url


def _stored(database_url: str, device_id: str) -> int:
    return len(stored_records(database_url, device_id))


def _converge(controller: ControllerProcess, device_id: str, label: str) -> None:
    version = controller.patch_desired(device_id, {"labels": {"phase": label}})["desired_version"]
    shadow = controller.wait_in_sync(device_id, version)
    assert shadow["reported"]["labels"] == {"phase": label}
    assert shadow["delta"] == {}


def test_broker_restart_mid_stream(tmp_path: Path, broker: MosquittoProcess) -> None:
    """Mosquitto restarted (sessions persisted) while a device streams: nothing lost or doubled,
    and a desired change made while the broker was down still reaches the device."""
    controller, database_url = _controller(tmp_path, broker)
    device = SimulatedDevice(
        tmp_path, agent_yaml(tmp_path, "dev-restart", broker.broker.url), records=1500, rate=300
    )
    with processes(tmp_path) as procs:
        procs.append(controller.start())
        procs.append(device.start())
        wait_for(lambda: _stored(database_url, "dev-restart") > 200, 60, what="records flowing")
        _converge(controller, "dev-restart", "before")

        broker.stop()
        pending = controller.patch_desired("dev-restart", {"labels": {"phase": "during"}})
        time.sleep(1.0)
        broker.start()

        shadow = controller.wait_in_sync("dev-restart", pending["desired_version"])
        assert shadow["reported"]["labels"] == {"phase": "during"}
        device.wait_drained()
        stored = assert_exactly_once(database_url, device, "dev-restart")
        assert stored >= 1500
        _converge(controller, "dev-restart", "after")


def test_controller_sigkill_mid_batch(tmp_path: Path, broker: MosquittoProcess) -> None:
    """The controller SIGKILLed while batches are in flight and restarted: the device's
    unacknowledged batches are re-sent and stored once; shadows still converge."""
    controller, database_url = _controller(tmp_path, broker)
    device = SimulatedDevice(
        tmp_path, agent_yaml(tmp_path, "dev-ctl", broker.broker.url), records=2000, rate=400
    )
    with processes(tmp_path) as procs:
        procs.append(controller.start())
        procs.append(device.start())
        wait_for(lambda: _stored(database_url, "dev-ctl") > 300, 60, what="records flowing")
        controller.kill()
        time.sleep(1.5)  # the device keeps storing; its batches go unacknowledged
        procs.append(controller.start())
        device.wait_drained()
        stored = assert_exactly_once(database_url, device, "dev-ctl")
        assert stored >= 2000
        _converge(controller, "dev-ctl", "after-crash")
        assert "Traceback" not in controller.proc.log()  # type: ignore[union-attr]


def test_agent_sigkill_mid_write(tmp_path: Path, broker: MosquittoProcess) -> None:
    """A device SIGKILLed while writing records as fast as it can, then rebooted: the new
    boot numbers from a new epoch, and every record either boot stored lands exactly once."""
    controller, database_url = _controller(tmp_path, broker)
    device = SimulatedDevice(
        tmp_path, agent_yaml(tmp_path, "dev-kill", broker.broker.url), records=10**7, rate=0
    )
    with processes(tmp_path) as procs:
        procs.append(controller.start())
        first = device.start()
        procs.append(first)
        wait_for(lambda: len(device.appended()) > 3000, 60, what="records being written")
        first.stop(signal.SIGKILL)
        before = device.appended()

        procs.append(device.start(records=300))
        device.wait_drained()
        stored = assert_exactly_once(database_url, device, "dev-kill")
        epochs = {epoch for epoch, _, _, _ in stored_records(database_url, "dev-kill")}
        assert len(epochs) == 2, "the reboot numbers from a new epoch"
        assert before <= {(e, s) for e, s, _, _ in stored_records(database_url, "dev-kill")}
        assert stored >= len(before) + 300
        _converge(controller, "dev-kill", "rebooted")


def test_network_partition(tmp_path: Path, broker: MosquittoProcess) -> None:
    """A partition (packets vanish, no RST) longer than every timeout on the device side
    (keepalive, ack timeout, backoff cap, broker session expiry): the device buffers, then
    delivers everything exactly once and applies the desired state set while it was away.

    12 s against a 2 s keepalive, 3 s ack timeout, 2 s backoff cap and a 4 s session expiry
    is the same sequence of events as a several-minute partition with production settings.
    """
    controller, database_url = _controller(tmp_path, broker)
    proxy = TcpProxy("127.0.0.1", broker.port).start()
    config = agent_yaml(
        tmp_path,
        "dev-part",
        f"mqtt://127.0.0.1:{proxy.port}",
        mqtt={"session_expiry_s": 4},
    )
    device = SimulatedDevice(tmp_path, config, records=2400, rate=150)
    try:
        with processes(tmp_path) as procs:
            procs.append(controller.start())
            procs.append(device.start())
            wait_for(lambda: _stored(database_url, "dev-part") > 200, 60, what="records flowing")
            _converge(controller, "dev-part", "before")

            proxy.cut()
            time.sleep(3)
            during = controller.patch_desired("dev-part", {"labels": {"phase": "partitioned"}})
            stuck = _stored(database_url, "dev-part")
            time.sleep(9)
            assert _stored(database_url, "dev-part") <= stuck + 200, "the partition holds"
            proxy.heal()

            shadow = controller.wait_in_sync("dev-part", during["desired_version"])
            assert shadow["reported"]["labels"] == {"phase": "partitioned"}
            device.wait_drained()
            stored = assert_exactly_once(database_url, device, "dev-part")
            assert stored >= 2400
            assert proxy.connections >= 2, "the device reconnected after the partition"
    finally:
        proxy.stop()
