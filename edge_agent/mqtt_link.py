"""The agent's link to the controller over MQTT: Last Will, birth, heartbeats, clean death.

Session numbering follows Sparkplug B's ``bdSeq``: each MQTT session gets a new number,
persisted before use; the Last Will registered for a session carries that session's
number, so the controller can tell a stale will (from a session already replaced) from a
real death. Connection runs in paho's background thread and reconnects with capped
backoff, so the agent keeps serving locally when the broker is unreachable.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttConfig
from edge_agent.state import CounterStore
from shared.messages import Birth, Death, Heartbeat, encode_message

log = logging.getLogger(__name__)

BD_SEQ = "bd_seq"
HEARTBEAT_SEQ = "heartbeat_seq"


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """What a heartbeat reports besides its numbering."""

    uptime_s: float
    cpu_percent: float
    memory_percent: float
    requests_total: int
    local_tier_healthy: bool


class MqttLink:
    """One device's MQTT session manager."""

    def __init__(
        self,
        *,
        device_id: str,
        config: MqttConfig,
        counters: CounterStore,
        make_birth: Callable[[int], Birth],
        snapshot: Callable[[], LoadSnapshot],
        heartbeat_interval_s: float,
    ) -> None:
        self.device_id = device_id
        self._config = config
        self._counters = counters
        self._make_birth = make_birth
        self._snapshot = snapshot
        self._interval = heartbeat_interval_s
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._bd_seq = counters.next(BD_SEQ)
        self.births_sent = 0
        self.heartbeats_sent = 0

        # Client id = device id: a second process claiming the same device takes the session
        # over, and the broker's ACL (per-device credentials) can key on it.
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if config.username:
            self._client.username_pw_set(config.username, config.password())
        self._client.reconnect_delay_set(
            min_delay=max(1, int(config.reconnect_min_s)),
            max_delay=max(1, int(config.reconnect_max_s)),
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._set_will()

    @property
    def bd_seq(self) -> int:
        return self._bd_seq

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _set_will(self) -> None:
        topic, payload = encode_message(
            Death(device_id=self.device_id, bd_seq=self._bd_seq, reason="will")
        )
        self._client.will_set(topic, payload, qos=1, retain=True)

    def start(self) -> None:
        """Begin connecting in the background; returns at once even if the broker is down."""
        self._client.connect_async(
            self._config.host, self._config.port, keepalive=self._config.keepalive_s
        )
        self._client.loop_start()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name="heartbeat", daemon=True
        )
        self._heartbeat_thread.start()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker refused connection: %s", reason_code)
            return
        with self._lock:
            birth = self._make_birth(self._bd_seq)
        topic, payload = encode_message(birth)
        client.publish(topic, payload, qos=1, retain=True)
        self.births_sent += 1
        self._connected.set()
        log.info("connected to broker; birth published (bd_seq=%d)", birth.bd_seq)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._connected.clear()
        if self._stopping.is_set():
            return
        log.warning("disconnected from broker (%s); will reconnect", reason_code)
        # The next session gets a new number, and its will must say so before reconnecting.
        with self._lock:
            self._bd_seq = self._counters.next(BD_SEQ)
            self._set_will()

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self._interval):
            if not self._connected.is_set():
                continue
            try:
                self.publish_heartbeat()
            except Exception:  # a failed heartbeat must never kill the thread
                log.exception("heartbeat failed")

    def publish_heartbeat(self) -> None:
        load = self._snapshot()
        with self._lock:
            message = Heartbeat(
                device_id=self.device_id,
                bd_seq=self._bd_seq,
                seq=self._counters.next(HEARTBEAT_SEQ),
                uptime_s=load.uptime_s,
                cpu_percent=load.cpu_percent,
                memory_percent=load.memory_percent,
                requests_total=load.requests_total,
                local_tier_healthy=load.local_tier_healthy,
            )
        topic, payload = encode_message(message)
        self._client.publish(topic, payload, qos=1)
        self.heartbeats_sent += 1

    def stop(self, timeout: float = 5.0) -> None:
        """Publish a clean death (so the console shows why), then disconnect."""
        self._stopping.set()
        if self._connected.is_set():
            topic, payload = encode_message(
                Death(device_id=self.device_id, bd_seq=self._bd_seq, reason="shutdown")
            )
            info = self._client.publish(topic, payload, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("clean death not confirmed by the broker")
            self._client.disconnect()
        self._client.loop_stop()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout)
