"""The ingest shell: a paho subscriber feeding a batching writer thread.

- paho's network thread only enqueues, so a slow database never stalls keepalives.
- One writer thread drains the queue in batches and applies each in one transaction.
- At-least-once into the database: messages are acknowledged to the broker (manual PUBACK)
  only after their batch is committed, and the session is persistent, so a controller
  killed mid-batch gets the unacknowledged messages again when it comes back. The unique
  key on (device, epoch, seq) turns the re-delivery into exactly-once storage.
- Devices get an ``ack`` per telemetry batch after commit, which lets them trim their outbox.
- Attestation challenges (after a birth) and quarantine desired documents (after a quote)
  are decided in the batch's transaction and published after its commit, like acks.
- On MQTT 5, subscriptions are shared (``$share/<group>/...``) so replicas split the stream.
"""

import logging
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from controller.db import session_scope
from controller.ingest import IngestStats, Received, apply_batch
from controller.settings import BrokerSettings
from shared.messages import Desired, encode_message
from shared.topics import DEVICE_TO_CONTROLLER, DeviceTopic

if TYPE_CHECKING:
    from controller.attestation.service import AttestationService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Item:
    received: Received
    mid: int
    qos: int


def subscriptions(shared_group: str | None) -> list[str]:
    """The topic filters ingest subscribes to: every device-to-controller kind."""
    filters = [DeviceTopic.subscription(kind) for kind in sorted(DEVICE_TO_CONTROLLER)]
    if shared_group:
        return [f"$share/{shared_group}/{f}" for f in filters]
    return filters


class MqttIngest:
    """Subscribe to device topics and write what arrives to the registry."""

    def __init__(
        self,
        *,
        broker: BrokerSettings,
        port: int,
        engine: Engine,
        stats: IngestStats,
        queue_size: int,
        batch_size: int,
        known_devices: Callable[[], set[str]] | None = None,
        attestation: "AttestationService | None" = None,
    ) -> None:
        self._broker = broker
        self._port = port
        self._engine = engine
        self.stats = stats
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._known_devices = known_devices
        self._attestation = attestation
        self._stopping = threading.Event()
        self._disconnecting = threading.Event()
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._v5 = broker.effective_protocol == "5"
        self._filters = subscriptions(broker.shared_group if self._v5 else None)
        if self._v5:
            self._client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=broker.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:
            self._client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=broker.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if broker.username:
            password = broker.password.get_secret_value() if broker.password else None
            self._client.username_pw_set(broker.username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Unlimited: paho's inflight counter can stick at its limit across a reconnect and
        # then queue every later ack for good (eclipse-paho/paho.mqtt.python#24, #492).
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def backlog(self) -> int:
        """Messages received from the broker and not yet written."""
        return self._queue.qsize()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._broker.session_expiry_s
            self._client.connect_async(
                self._broker.host,
                self._port,
                keepalive=self._broker.keepalive_s,
                clean_start=False,
                properties=props,
            )
        else:
            self._client.connect_async(
                self._broker.host, self._port, keepalive=self._broker.keepalive_s
            )
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        # Let the writer finish (and PUBACK) what it holds before the connection goes.
        self._stopping.set()
        if self._writer is not None:
            self._writer.join(timeout)
        self._disconnecting.set()
        if self._v5 and self._writer is not None and not self._writer.is_alive():
            # Everything received was written and acknowledged: end the session with us. A
            # persistent session left behind would stay a member of the shared subscription
            # and collect its share of the fleet's messages until it expired.
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            self._client.disconnect(properties=props)
        else:
            self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish to devices (QoS 1); False if the broker is not connected right now."""
        if not self._connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # --- paho callbacks (network thread) ----------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the controller: %s", reason_code)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Ready (``connected``) only once the broker has granted the subscriptions, in
        # ``_on_subscribe``: a message published before that reaches no session of ours.
        client.subscribe([(f, 1) for f in self._filters])
        log.info(
            "ingest connected to %s:%d (MQTT %s)",
            self._broker.host,
            self._port,
            self._broker.effective_protocol,
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused ingest's subscriptions: %s", ", ".join(refused))
            return
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._connected.clear()
        if not self._disconnecting.is_set():
            log.warning("ingest lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        item = _Item(
            Received(message.topic, bytes(message.payload), datetime.now(UTC)),
            message.mid,
            message.qos,
        )
        try:
            # Blocking here pushes back on the broker instead of losing the message.
            self._queue.put(item, timeout=10)
        except queue.Full:
            # Not acknowledged: the broker redelivers it after a reconnect.
            self.stats.add("dropped_queue_full")
            log.error(
                "ingest queue full for 10s; message on %.128r left unacknowledged",
                item.received.topic,
            )

    # --- writer thread -------------------------------------------------------------------
    def _next_batch(self) -> list[_Item]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            batch = self._next_batch()
            delay = 0.5
            while batch:
                try:
                    known = self._known_devices() if self._known_devices else None
                    with session_scope(self._engine) as session:
                        result = apply_batch(
                            session,
                            [i.received for i in batch],
                            known_devices=known,
                            attestation=self._attestation,
                            stored_at=datetime.now(UTC),
                        )
                except SQLAlchemyError as e:
                    self.stats.add("db_errors")
                    log.error(
                        "ingest batch of %d failed on the database (%s); retrying", len(batch), e
                    )
                    if self._stopping.wait(delay):
                        log.error(
                            "stopping with %d uncommitted messages (left unacknowledged)",
                            len(batch),
                        )
                        return
                    delay = min(delay * 2, 10.0)
                    continue
                self.stats.merge(result.outcome)
                for ack in result.acks:
                    self._client.publish(*encode_message(ack), qos=1)
                for message in result.outbound:
                    retain = isinstance(message, Desired)
                    self._client.publish(*encode_message(message), qos=1, retain=retain)
                for item in batch:
                    if item.qos > 0:
                        self._client.ack(item.mid, item.qos)
                batch = []
