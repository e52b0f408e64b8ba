"""The agent's link to the controller over MQTT.

- Session numbering follows Sparkplug B's ``bdSeq``: each connection gets a new number,
  persisted before use, and the Last Will registered for it carries that number, so the
  controller can tell a stale will from a real death.
- Persistent sessions (MQTT 5 session expiry, or clean_session=False on 3.1.1), so acks and
  desired state sent while the device is away are waiting when it comes back.
- Our own network loop reconnects with exponential backoff and full jitter, and sets
  TCP_NODELAY: with Nagle, every QoS 1 round trip waits for delayed ACKs.
- A publisher thread drains the durable outbox in batches with a window of unacknowledged
  batches; acks trim the outbox; a lost connection or an overdue ack republishes from the
  oldest unacknowledged record (the controller stores each record once, so that is safe).
- Attestation challenges go to ``on_challenge``; its signed quote is published at QoS 1
  straight away (not through the outbox: a quote is only worth anything while its nonce is).
- Nothing that arrives can stop the link: paho re-raises a callback's exception out of
  ``loop()``, which would end the network thread, so every callback refuses bad input with a
  counted reason (``stats.rejected``) and catches what a handler raises
  (``stats.handler_errors``). The three loops run under a ``Supervisor`` all the same: a
  defect that gets through is logged, counted and restarted with backoff.
"""

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.backoff import full_jitter
from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.outbox import Outbox, StoredRecord
from edge_agent.state import CounterStore
from shared.errors import ProtocolError
from shared.messages import (
    Ack,
    Birth,
    Challenge,
    Death,
    Desired,
    Heartbeat,
    Quote,
    Record,
    Reported,
    TelemetryBatch,
    decode_message,
    encode_message,
)
from shared.supervision import Supervisor
from shared.topics import CONTROLLER_TO_DEVICE, DeviceTopic, MessageKind

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


class Tally:
    """Counts by a short key (a rejection reason, a callback), read by another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, key: str) -> int:
        """Count one more ``key``; returns its count now."""
        with self._lock:
            count = self._counts[key] = self._counts.get(key, 0) + 1
            return count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


@dataclass
class LinkStats:
    batches_sent: int = 0
    records_acked: int = 0
    republishes: int = 0
    reconnects: int = 0
    quotes_sent: int = 0
    challenges_failed: int = 0
    # Inbound messages refused, by reason (the decoder's reasons, plus wrong_device,
    # wrong_direction, unhandled and bad_topic for a topic that is not UTF-8).
    rejected: Tally = field(default_factory=Tally)
    # Exceptions caught in paho callbacks and inbound handlers, by where they happened.
    handler_errors: Tally = field(default_factory=Tally)

    @property
    def bad_inbound(self) -> int:
        return self.rejected.total()


# A flood of garbage must not flood the log as well: the first few rejections of each
# reason are logged, then one in every LOG_EVERY (the counters keep the exact numbers).
LOG_FIRST = 10
LOG_EVERY = 1000


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
        outbox: Outbox | None = None,
        outbox_config: OutboxConfig | None = None,
        on_desired: Callable[[Desired], Reported | None] | None = None,
        current_reported: Callable[[], Reported] | None = None,
        on_challenge: Callable[[Challenge], Quote | None] | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.device_id = device_id
        self.heartbeat_interval_s = heartbeat_interval_s
        self.stats = LinkStats()
        self._config = config
        self._counters = counters
        self._make_birth = make_birth
        self._snapshot = snapshot
        self._outbox = outbox
        self._outbox_config = outbox_config or OutboxConfig()
        self._on_desired = on_desired
        self._current_reported = current_reported
        self._on_challenge = on_challenge
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._wake = threading.Event()
        # The owner's supervisor (the agent's), or one of our own for a link used alone.
        self._own_supervisor = supervisor is None
        self._supervisor = supervisor or Supervisor()
        self._workers: list[str] = []
        self._network_runs = 0
        self._connect_called = False
        self._publisher_runs = 0
        self._rng = random.Random()  # noqa: S311 (jitter, not cryptography)
        self._bd_seq = counters.next(BD_SEQ)
        # Outbox publishing state, touched by the publisher thread and the network thread.
        self._cursor: tuple[int, int] | None = None
        # (epoch, first_seq, last_seq) of each unacknowledged batch -> (sent at, sends)
        self._inflight: dict[tuple[int, int, int], tuple[float, int]] = {}
        self.births_sent = 0
        self.heartbeats_sent = 0

        self._v5 = config.protocol == "5"
        if self._v5:
            self._client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=device_id,
                protocol=mqtt.MQTTv5,
            )
        else:
            self._client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=device_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
            )
        if config.username:
            self._client.username_pw_set(config.username, config.password())
        # No paho-side window: ours (outbox.inflight_batches) bounds what is outstanding, and
        # paho's own counter can stay "full" across a reconnect and then hold every later
        # publish in its queue for good (eclipse-paho/paho.mqtt.python#24, #492).
        self._client.max_inflight_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._topic_ack = str(DeviceTopic(device_id, MessageKind.ACK))
        self._topic_desired = str(DeviceTopic(device_id, MessageKind.DESIRED))
        self._topic_challenge = str(DeviceTopic(device_id, MessageKind.CHALLENGE))
        self._set_will()

    @property
    def bd_seq(self) -> int:
        return self._bd_seq

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wake(self) -> None:
        """Tell the publisher that new records are waiting."""
        self._wake.set()

    def publish_reported(self, reported: Reported) -> bool:
        """Publish a reported document now (QoS 1), for state that changes on its own (a
        model install). False while offline: every connect publishes the current one."""
        if not self._connected.is_set():
            return False
        self._client.publish(*encode_message(reported), qos=1)
        return True

    def _set_will(self) -> None:
        topic, payload = encode_message(
            Death(device_id=self.device_id, bd_seq=self._bd_seq, reason="will")
        )
        self._client.will_set(topic, payload, qos=1, retain=True)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting in the background; returns at once even if the broker is down.
        Each loop is a supervised worker, stopped cleanly by ``stop()``."""
        workers: list[tuple[str, Callable[[], None]]] = [
            ("mqtt-network", self._network_loop),
            ("heartbeat", self._heartbeat_loop),
        ]
        if self._outbox is not None:
            workers.append(("outbox-publisher", self._publish_loop))
        for name, target in workers:
            self._supervisor.spawn(name, target, stopping=self._stopping)
            self._workers.append(name)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish a clean death (so the console shows why), then disconnect."""
        self._stopping.set()
        self._wake.set()
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
        for name in self._workers:
            self._supervisor.join(name, timeout)
        if self._own_supervisor:
            self._supervisor.stop(timeout)

    # --- network loop ----------------------------------------------------------------------
    def _new_session_number(self) -> None:
        """Every connection attempt after the first gets a new bd_seq and a will saying so,
        whether or not paho reported the previous disconnect."""
        with self._lock:
            self._bd_seq = self._counters.next(BD_SEQ)
            self._set_will()
            self._cursor = None
            self._inflight.clear()

    def _connect(self, first: bool) -> None:
        if not first:
            self._new_session_number()
            self._client.reconnect()
            return
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._config.session_expiry_s
            self._client.connect(
                self._config.host,
                self._config.port,
                keepalive=self._config.keepalive_s,
                clean_start=False,
                properties=props,
            )
        else:
            self._client.connect(
                self._config.host, self._config.port, keepalive=self._config.keepalive_s
            )

    def _backoff(self, attempt: int) -> float:
        return full_jitter(
            attempt,
            base=self._config.reconnect_min_s,
            cap=self._config.reconnect_max_s,
            rng=self._rng,
        )

    def _network_loop(self) -> None:
        """Connect and run paho's loop until stop (one supervised run). A run after a crash
        starts a new session (new bd_seq, reconnect): what the crashed run left of the old
        one (socket, in-flight batches) is not trusted."""
        self._network_runs += 1
        if self._network_runs > 1:
            self._connected.clear()
        attempt = 0
        while not self._stopping.is_set():
            try:
                self._connect(first=not self._connect_called)
                self._connect_called = True
            except (OSError, ValueError) as e:
                delay = self._backoff(attempt)
                attempt += 1
                log.info("broker unreachable (%s); retry %d in %.1fs", e, attempt, delay)
                self._stopping.wait(delay)
                continue
            while not self._stopping.is_set():
                rc = self._client.loop(timeout=0.5)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if self._connected.is_set():
                    attempt = 0
            if self._stopping.is_set():
                # Let stop() finish its clean death and DISCONNECT on this loop.
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and self._client.loop(timeout=0.1) == 0:
                    pass
                return
            self.stats.reconnects += 1
            delay = self._backoff(attempt)
            attempt += 1
            self._stopping.wait(delay)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        """paho's callback: never raises. A session that could not be set up (no birth, no
        subscriptions) is dropped, so the network loop starts a fresh one after its backoff."""
        try:
            self._session_up(client, reason_code)
        except Exception:
            self.stats.handler_errors.add("connect")
            log.exception("setting up the MQTT session failed; reconnecting")
            self._connected.clear()
            try:
                client.disconnect()
            except Exception:
                log.debug("disconnect after a failed session setup failed", exc_info=True)

    def _session_up(self, client: mqtt.Client, reason_code: Any) -> None:
        if reason_code.is_failure:
            log.warning("broker refused connection: %s", reason_code)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        topics = [(self._topic_ack, 1), (self._topic_desired, 1)]
        if self._on_challenge is not None:
            topics.append((self._topic_challenge, 1))
        client.subscribe(topics)
        with self._lock:
            birth = self._make_birth(self._bd_seq)
            self._cursor = None
            self._inflight.clear()
        client.publish(*encode_message(birth), qos=1, retain=True)
        self.births_sent += 1
        if self._current_reported is not None:
            client.publish(*encode_message(self._current_reported()), qos=1)
        if self._outbox is not None:
            self._outbox.append_drop_report()
        self._connected.set()
        self._wake.set()
        log.info("connected to broker; birth published (bd_seq=%d)", birth.bd_seq)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        """paho's callback: never raises."""
        self._connected.clear()
        if self._stopping.is_set():
            return
        try:
            log.warning("disconnected from broker (%s); will reconnect", reason_code)
            # Unacknowledged batches are re-sent from the oldest record on the next session
            # (which gets its own bd_seq in _connect).
            with self._lock:
                self._cursor = None
                self._inflight.clear()
        except Exception:
            self.stats.handler_errors.add("disconnect")
            log.exception("handling a disconnect failed")

    # --- inbound: acks and desired state ----------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho's callback: never raises (paho would re-raise it out of the network loop)."""
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:  # paho decodes the topic on access
            topic = None
        try:
            self.receive(topic, bytes(message.payload))
        except Exception:  # receive() guards itself; this is the last line
            self.stats.handler_errors.add("message")
            log.exception("inbound message on %.128r not handled", topic)

    def receive(self, topic: str | None, payload: bytes) -> str | None:
        """Handle one inbound message: decode it, check it is for this device and comes from
        the controller, and act on it. Returns the rejection reason, or None once handled;
        a handler's exception is logged and counted here, never raised."""
        try:
            if topic is None:
                raise ProtocolError("bad_topic", "topic is not UTF-8")
            parsed, decoded = decode_message(topic, payload)
            if parsed.device_id != self.device_id:
                raise ProtocolError("wrong_device", f"message for {parsed.device_id!r}")
            if parsed.kind not in CONTROLLER_TO_DEVICE:
                raise ProtocolError("wrong_direction", f"{parsed.kind.value!r} is sent by devices")
        except ProtocolError as e:
            self._reject(topic, e)
            return e.reason
        try:
            handled = self._dispatch(decoded)
        except Exception:
            self.stats.handler_errors.add(parsed.kind.value)
            log.exception("handling %s on %.128r failed", decoded.type, topic)
            return None
        if not handled:
            self._reject(topic, ProtocolError("unhandled", f"no handler for {decoded.type!r}"))
            return "unhandled"
        return None

    def _reject(self, topic: str | None, error: ProtocolError) -> None:
        # The topic is truncated and the payload never logged: both are the sender's choice.
        count = self.stats.rejected.add(error.reason)
        if count <= LOG_FIRST or count % LOG_EVERY == 0:
            log.warning(
                "rejected inbound message on %.128r: %s: %.200s (%d with this reason)",
                topic,
                error.reason,
                error.detail,
                count,
            )

    def _dispatch(self, decoded: object) -> bool:
        if isinstance(decoded, Ack):
            self._handle_ack(decoded)
        elif isinstance(decoded, Desired) and self._on_desired is not None:
            reported = self._on_desired(decoded)
            if reported is not None:
                self._client.publish(*encode_message(reported), qos=1)
        elif isinstance(decoded, Challenge) and self._on_challenge is not None:
            self._answer(self._client, decoded)
        else:
            return False
        return True

    def _answer(self, client: mqtt.Client, challenge: Challenge) -> None:
        """Publish the quote for ``challenge``; a failure to measure or sign is logged and
        counted, never raised into paho's loop (the controller sees a silent device)."""
        try:
            quote = self._on_challenge(challenge) if self._on_challenge else None
        except Exception:
            self.stats.challenges_failed += 1
            log.exception("could not answer attestation challenge")
            return
        if quote is not None:
            client.publish(*encode_message(quote), qos=1)
            self.stats.quotes_sent += 1

    def _handle_ack(self, ack: Ack) -> None:
        if self._outbox is None:
            return
        self.stats.records_acked += self._outbox.ack(ack.epoch, ack.first_seq, ack.hwm)
        with self._lock:
            # Only batches the ack covers entirely: an ack for an older, shorter batch that
            # starts at the same record (re-delivered after a reconnect) must not retire a
            # longer batch sent since.
            for key in [
                k
                for k in self._inflight
                if k[0] == ack.epoch and k[1] >= ack.first_seq and k[2] <= ack.hwm
            ]:
                del self._inflight[key]
        self._wake.set()

    # --- outbound: heartbeats and the outbox --------------------------------------------------
    def _heartbeat_loop(self) -> None:
        # A failing heartbeat raises into the supervisor: logged, counted, retried later.
        while not self._stopping.wait(self.heartbeat_interval_s):
            if self._connected.is_set():
                self.publish_heartbeat()

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
        self._client.publish(*encode_message(message), qos=1)
        self.heartbeats_sent += 1

    def _resend_overdue(self, ack_timeout_s: float) -> None:
        """Re-send only the batches whose ack is overdue, each with its own doubling timeout.

        On a live persistent session the broker redelivers QoS 1 itself; a missing ack here
        means the controller lost or is far behind on that batch, so re-sending the whole
        window would only add load when it is already overloaded.
        """
        assert self._outbox is not None
        now = time.monotonic()
        with self._lock:
            overdue = [
                (key, sends)
                for key, (sent, sends) in self._inflight.items()
                if now - sent > ack_timeout_s * min(2 ** (sends - 1), 8)
            ]
        for key, sends in overdue:
            # What is still held of that batch (acks for overlapping batches trim it too).
            records = self._outbox.read_range(*key)
            with self._lock:
                if key not in self._inflight:
                    continue  # acked (or the session reset) meanwhile
                if not records:  # acked through another batch, or dropped under the quota
                    del self._inflight[key]
                    continue
                self._inflight[key] = (time.monotonic(), sends + 1)
            self.stats.republishes += 1
            self._client.publish(*encode_message(self._batch_message(records)), qos=1)

    def _batch_message(self, batch: list[StoredRecord]) -> TelemetryBatch:
        return TelemetryBatch(
            device_id=self.device_id,
            records=[
                Record(epoch=r.epoch, seq=r.seq, kind=r.kind, name=r.name, at=r.at, body=r.body)
                for r in batch
            ],
        )

    def _publish_loop(self) -> None:
        """Drain the outbox until stop (one supervised run). A run after a crash re-sends
        from the oldest unacknowledged record: the controller stores each record once."""
        if self._outbox is None:
            return
        self._publisher_runs += 1
        if self._publisher_runs > 1:
            with self._lock:
                self._cursor = None
                self._inflight.clear()
        cfg = self._outbox_config
        while not self._stopping.is_set():
            if not self._connected.is_set():
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            self._resend_overdue(cfg.ack_timeout_s)
            with self._lock:
                full = len(self._inflight) >= cfg.inflight_batches
                cursor = self._cursor
            if full:
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            batch = self._outbox.read_batch(
                cursor, max_records=cfg.batch_records, max_bytes=cfg.batch_bytes
            )
            if not batch:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            message = self._batch_message(batch)
            first, last = batch[0], batch[-1]
            with self._lock:
                if self._cursor != cursor:  # a reconnect reset the position meanwhile
                    continue
                self._inflight[(first.epoch, first.seq, last.seq)] = (time.monotonic(), 1)
                self._cursor = (last.epoch, last.seq)
            self._client.publish(*encode_message(message), qos=1)
            self.stats.batches_sent += 1
