"""The ingest shell: a paho subscriber feeding a batching writer thread.

paho's network thread only enqueues (so a slow database never stalls keepalives); one
writer thread drains the queue in batches and applies each batch in one transaction. A
batch that fails on the database is retried, not dropped.
"""

import logging
import queue
import threading
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from controller.db import session_scope
from controller.ingest import IngestStats, Received, apply_batch
from controller.settings import BrokerSettings
from shared.topics import TOPIC_ROOT

log = logging.getLogger(__name__)

# Everything under the root, so topics of unknown versions or kinds are counted, not unseen.
SUBSCRIPTION = f"{TOPIC_ROOT.split('/')[0]}/#"


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
    ) -> None:
        self._broker = broker
        self._port = port
        self._engine = engine
        self.stats = stats
        self._queue: queue.Queue[Received] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._stopping = threading.Event()
        self._disconnecting = threading.Event()
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=broker.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if broker.username:
            password = broker.password.get_secret_value() if broker.password else None
            self._client.username_pw_set(broker.username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._client.connect_async(
            self._broker.host, self._port, keepalive=self._broker.keepalive_s
        )
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        self._disconnecting.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._stopping.set()
        if self._writer is not None:
            self._writer.join(timeout)

    # --- paho callbacks (network thread) ----------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the controller: %s", reason_code)
            return
        client.subscribe(SUBSCRIPTION, qos=1)
        self._connected.set()
        log.info(
            "ingest connected to %s:%d, subscribed to %s",
            self._broker.host,
            self._port,
            SUBSCRIPTION,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._connected.clear()
        if not self._disconnecting.is_set():
            log.warning("ingest lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        item = Received(message.topic, bytes(message.payload), datetime.now(UTC))
        try:
            # Blocking here pushes back on the broker instead of losing the message.
            self._queue.put(item, timeout=10)
        except queue.Full:
            self.stats.add("dropped_queue_full")
            log.error("ingest queue full for 10s; message on %.128r dropped", item.topic)

    # --- writer thread -------------------------------------------------------------------
    def _next_batch(self) -> list[Received]:
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
                    with session_scope(self._engine) as session:
                        outcome = apply_batch(session, batch)
                    self.stats.merge(outcome)
                    batch = []
                except SQLAlchemyError as e:
                    self.stats.add("db_errors")
                    log.error(
                        "ingest batch of %d failed on the database (%s); retrying", len(batch), e
                    )
                    if self._stopping.wait(delay):
                        log.error("stopping with %d unwritten messages", len(batch))
                        return
                    delay = min(delay * 2, 10.0)
