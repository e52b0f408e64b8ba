"""The agent's link to the controller over MQTT.

- Session numbering follows Sparkplug B's ``bdSeq``: each connection gets a new number,
  persisted before use, and the Last Will registered for it carries that number, so the
  controller can tell a stale will from a real death.
- The connection is ``shared.mqtt_transport``'s (persistent session, TCP_NODELAY, our own
  network loop); this link reconnects it with exponential backoff and full jitter, so acks
  and desired state sent while the device is away are waiting when it comes back.
- A publisher thread drains the durable outbox in batches through a ``SendWindow``
  (``edge_agent/sync/window.py``): acks trim the outbox; a lost connection re-sends from the
  oldest unacknowledged record, an overdue ack re-sends that batch (the controller stores
  each record once, so that is safe).
- Attestation challenges go to ``on_challenge``; its signed quote is published at QoS 1
  straight away (not through the outbox: a quote is only worth anything while its nonce is).
- Certificate renewal answers (``cert_issued``) go to ``on_cert_issued`` (the renewer,
  ``edge_agent/sync/renewal.py``), whose requests ``publish_cert_request`` sends at QoS 1.
- Nothing that arrives can stop the link: every inbound message is refused with a counted
  reason (``stats.rejected``) or handled, and what a handler raises is caught and counted
  (``stats.handler_errors``); the transport guards its callbacks once more. The three
  loops run under a ``Supervisor`` all the same: a defect that gets through is logged,
  counted and restarted with backoff.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edge_agent.config import MqttConfig, OutboxConfig
from edge_agent.sync.backoff import full_jitter
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.outbox import Outbox, StoredRecord
from edge_agent.sync.trust import ControllerTrust
from edge_agent.sync.window import SendWindow
from shared.attestation import encode_public_key
from shared.broker_url import parse_broker_url
from shared.errors import ProtocolError
from shared.message_signing import (
    DEVICE_DOMAIN,
    SessionMac,
    Signer,
    session_mac_key,
    short_key_id,
)
from shared.messages import (
    Ack,
    AnyMessage,
    Birth,
    CertIssued,
    CertRequest,
    Challenge,
    Command,
    ControllerKeys,
    Death,
    Desired,
    Heartbeat,
    Quote,
    Record,
    Reported,
    TelemetryBatch,
    decode_signed,
    encode_message,
)
from shared.mqtt_transport import Endpoint, Inbound, Transport
from shared.supervision import Supervisor
from shared.topics import CONTROLLER_TO_DEVICE, DeviceTopic, MessageKind

log = logging.getLogger(__name__)

BD_SEQ = "bd_seq"
HEARTBEAT_SEQ = "heartbeat_seq"
# Heartbeat seqs only have to grow (the controller compares them within a session): one
# write of the counter file covers this many (edge_agent/sync/counters.py).
HEARTBEAT_SEQ_RESERVE = 100


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
    # Births published again because the controller asked (a ``rebirth`` command).
    rebirths: int = 0
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
# The controller asks for a rebirth at most every 30 s per device; more often is ignored.
REBIRTH_MIN_INTERVAL_S = 5.0


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
        on_cert_issued: Callable[[CertIssued], None] | None = None,
        supervisor: Supervisor | None = None,
        signer: Signer | None = None,
        trust: ControllerTrust | None = None,
    ) -> None:
        self.device_id = device_id
        # Outbound messages are signed with the device's identity key; inbound ones must
        # carry the controller's signature (edge_agent/sync/trust.py). A link built without
        # them (tests of other things) sends and takes unsigned messages.
        self._signer = signer
        self.trust = trust
        # This session's MAC (a fresh X25519 key agreed with the controller's exchange key at
        # each session start); None: every message is signed with the identity key.
        self._session: SessionMac | None = None
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
        self._on_cert_issued = on_cert_issued
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._wake = threading.Event()
        # The owner's supervisor (the agent's), or one of our own for a link used alone.
        self._own_supervisor = supervisor is None
        self._supervisor = supervisor or Supervisor()
        self._workers: list[str] = []
        self._network_runs = 0
        self._publisher_runs = 0
        self._rng = random.Random()  # noqa: S311 (jitter, not cryptography)
        self._bd_seq = counters.next(BD_SEQ)
        # Outbox publishing state, touched by the publisher thread and the network thread.
        self.window = SendWindow(self._outbox_config.inflight_batches)
        self.births_sent = 0
        self.heartbeats_sent = 0
        # This session's birth as sent (topic, signed payload), for a ``rebirth`` command.
        self._birth_wire: tuple[str, bytes] | None = None
        self._last_rebirth = -REBIRTH_MIN_INTERVAL_S
        self.transport = Transport(
            Endpoint(
                host=config.host,
                port=config.port,
                client_id=device_id,
                protocol=config.protocol,
                keepalive_s=config.keepalive_s,
                session_expiry_s=config.session_expiry_s,
                username=config.username or None,
                password=config.password() if config.username else None,
                tls=config.tls(),
            ),
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            name=f"agent {device_id}",
        )
        address = parse_broker_url(config.url)
        if not address.tls and not address.loopback:
            log.warning(
                "mqtt.url %s is plaintext to another host: this device's data and credentials "
                "cross the network unencrypted; use mqtts:// (docs/tls.md)",
                config.url,
            )
        self._topic_ack = str(DeviceTopic(device_id, MessageKind.ACK))
        self._topic_desired = str(DeviceTopic(device_id, MessageKind.DESIRED))
        self._topic_challenge = str(DeviceTopic(device_id, MessageKind.CHALLENGE))
        self._topic_cert_issued = str(DeviceTopic(device_id, MessageKind.CERT_ISSUED))
        self._topic_controller_keys = str(DeviceTopic(device_id, MessageKind.CONTROLLER_KEYS))
        self._topic_command = str(DeviceTopic(device_id, MessageKind.COMMAND))
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
        self.transport.publish(*self._encode(reported), qos=1)
        return True

    def publish_cert_request(self, request: CertRequest) -> bool:
        """Publish a certificate renewal request now (QoS 1, not through the outbox: it is
        signed for this moment); False while offline (the renewer asks again later)."""
        if not self._connected.is_set():
            return False
        return self.transport.publish(*self._encode(request), qos=1).queued

    def _encode(self, message: AnyMessage) -> tuple[str, bytes]:
        """The topic and (signed) payload of an outbound message: births and deaths signed
        by the identity key, the rest MACed under the session key when there is one."""
        session = self._session
        if session is not None and not isinstance(message, Birth | Death):
            return encode_message(message, session)
        return encode_message(message, self._signer)

    def _open_session(self, birth: Birth) -> tuple[Birth, SessionMac | None]:
        """A fresh X25519 session key agreed with the controller's exchange key: the birth
        presents it (under the identity key's signature) and the MAC key follows from it."""
        exchange = self.trust.exchange if self.trust is not None else None
        if self._signer is None or exchange is None:
            return birth, None
        kid, controller_key = exchange
        if birth.controller_key_ids[:1] != [kid]:
            return birth, None  # the birth names other keys first: stay with signatures
        ephemeral = X25519PrivateKey.generate()
        public = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(controller_key))
        mac = SessionMac(
            DEVICE_DOMAIN, short_key_id(public), session_mac_key(shared, self.device_id, public)
        )
        return birth.model_copy(update={"session_key": encode_public_key(public)}), mac

    def _set_will(self) -> None:
        topic, payload = self._encode(
            Death(device_id=self.device_id, bd_seq=self._bd_seq, reason="will")
        )
        self.transport.will_set(topic, payload, qos=1, retain=True)

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
            topic, payload = self._encode(
                Death(device_id=self.device_id, bd_seq=self._bd_seq, reason="shutdown")
            )
            sent = self.transport.publish(topic, payload, qos=1, retain=True)
            if not sent.wait(timeout):
                log.warning("clean death not confirmed by the broker")
            self.transport.disconnect()
        for name in self._workers:
            self._supervisor.join(name, timeout)
        if self._own_supervisor:
            self._supervisor.stop(timeout)
        self.transport.close()

    # --- network loop ----------------------------------------------------------------------
    def _new_session_number(self) -> None:
        """Every connection attempt after the first gets a new bd_seq and a will saying so,
        whether or not the previous disconnect was noticed."""
        with self._lock:
            self._bd_seq = self._counters.next(BD_SEQ)
            self._set_will()
        self.window.reset()

    def _backoff(self, attempt: int) -> float:
        return full_jitter(
            attempt,
            base=self._config.reconnect_min_s,
            cap=self._config.reconnect_max_s,
            rng=self._rng,
        )

    def _network_loop(self) -> None:
        """Connect and serve the transport until stop (one supervised run). A run after a
        crash starts a new session (new bd_seq, reconnect): what the crashed run left of the
        old one (socket, in-flight batches) is not trusted."""
        self._network_runs += 1
        if self._network_runs > 1:
            self._connected.clear()
        self.transport.run(
            self._stopping,
            backoff=self._backoff,
            before_reconnect=self._new_session_number,
            on_lost=self._lost,
        )

    def _lost(self, reason: str) -> None:
        self._connected.clear()
        self.stats.reconnects += 1

    def _on_connect(self, refused: str | None) -> None:
        """The transport's callback: never raises. A session that could not be set up (no
        birth, no subscriptions) is dropped, so the network loop starts a fresh one after its
        backoff."""
        if refused is not None:
            log.warning("broker refused connection: %s", refused)
            return
        try:
            self._session_up()
        except Exception:
            self.stats.handler_errors.add("connect")
            log.exception("setting up the MQTT session failed; reconnecting")
            self._connected.clear()
            try:
                self.transport.disconnect()
            except Exception:
                log.debug("disconnect after a failed session setup failed", exc_info=True)

    def _session_up(self) -> None:
        topics = [(self._topic_ack, 1), (self._topic_desired, 1), (self._topic_command, 1)]
        if self._on_challenge is not None:
            topics.append((self._topic_challenge, 1))
        if self._on_cert_issued is not None:
            topics.append((self._topic_cert_issued, 1))
        if self.trust is not None:
            topics.append((self._topic_controller_keys, 1))
        self.transport.subscribe(topics)
        self._session = None
        with self._lock:
            birth, session = self._open_session(self._make_birth(self._bd_seq))
        self.window.reset()
        self._birth_wire = self._encode(birth)
        self.transport.publish(*self._birth_wire, qos=1, retain=True)
        self._session = session
        self.births_sent += 1
        if self._current_reported is not None:
            self.transport.publish(*self._encode(self._current_reported()), qos=1)
        if self._outbox is not None:
            self._outbox.append_drop_report()
        self._connected.set()
        self._wake.set()
        log.info("connected to broker; birth published (bd_seq=%d)", birth.bd_seq)

    def _on_disconnect(self, reason: str) -> None:
        """The transport's callback: never raises."""
        self._connected.clear()
        if self._stopping.is_set():
            return
        try:
            log.warning("disconnected from broker (%s); will reconnect", reason)
            # Unacknowledged batches are re-sent from the oldest record on the next session
            # (which gets its own bd_seq before it connects).
            self.window.reset()
        except Exception:
            self.stats.handler_errors.add("disconnect")
            log.exception("handling a disconnect failed")

    # --- inbound: acks and desired state ----------------------------------------------------
    def _on_message(self, inbound: Inbound) -> None:
        """The transport's callback: never raises."""
        try:
            self.receive(inbound.topic, inbound.payload)
        except Exception:  # receive() guards itself; this is the last line
            self.stats.handler_errors.add("message")
            log.exception("inbound message on %.128r not handled", inbound.topic)

    def receive(self, topic: str | None, payload: bytes) -> str | None:
        """Handle one inbound message: decode it, check it is for this device and comes from
        the controller, and act on it. Returns the rejection reason, or None once handled;
        a handler's exception is logged and counted here, never raised."""
        try:
            if topic is None:
                raise ProtocolError("bad_topic", "topic is not UTF-8")
            parsed, decoded, signed = decode_signed(topic, payload)
            if parsed.device_id != self.device_id:
                raise ProtocolError("wrong_device", f"message for {parsed.device_id!r}")
            if parsed.kind not in CONTROLLER_TO_DEVICE:
                raise ProtocolError("wrong_direction", f"{parsed.kind.value!r} is sent by devices")
            if self.trust is not None:
                self.trust.check(topic, decoded, signed)
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
        if isinstance(decoded, ControllerKeys) and self.trust is not None:
            pass  # pinned or rotated by the trust check already
        elif isinstance(decoded, Ack):
            self._handle_ack(decoded)
        elif isinstance(decoded, Desired) and self._on_desired is not None:
            reported = self._on_desired(decoded)
            if reported is not None:
                self.transport.publish(*self._encode(reported), qos=1)
        elif isinstance(decoded, Challenge) and self._on_challenge is not None:
            self._answer(decoded)
        elif isinstance(decoded, CertIssued) and self._on_cert_issued is not None:
            self._on_cert_issued(decoded)
        elif isinstance(decoded, Command):
            self._rebirth(decoded)
        else:
            return False
        return True

    def _rebirth(self, command: Command) -> None:
        """Publish this session's birth again, byte for byte (same ``bd_seq``, same session
        key), and send the unacknowledged records again from the oldest: the controller
        refused them because it never heard that birth. Asked more often than
        ``REBIRTH_MIN_INTERVAL_S``, or before the session's birth, nothing happens."""
        wire = self._birth_wire
        now = time.monotonic()
        if wire is None or not self._connected.is_set():
            return
        if now - self._last_rebirth < REBIRTH_MIN_INTERVAL_S:
            log.info("rebirth asked again within %.0f s; ignored", REBIRTH_MIN_INTERVAL_S)
            return
        self._last_rebirth = now
        self.transport.publish(*wire, qos=1, retain=True)
        self.stats.rebirths += 1
        self.window.reset()
        self._wake.set()
        log.warning("controller asked for the birth again (%s); published", command.reason)

    def _answer(self, challenge: Challenge) -> None:
        """Publish the quote for ``challenge``; a failure to measure or sign is logged and
        counted, never raised into paho's loop (the controller sees a silent device)."""
        try:
            quote = self._on_challenge(challenge) if self._on_challenge else None
        except Exception:
            self.stats.challenges_failed += 1
            log.exception("could not answer attestation challenge")
            return
        if quote is not None:
            self.transport.publish(*self._encode(quote), qos=1)
            self.stats.quotes_sent += 1

    def _handle_ack(self, ack: Ack) -> None:
        if self._outbox is None:
            return
        self.stats.records_acked += self._outbox.ack(ack.epoch, ack.first_seq, ack.hwm)
        self.window.acked(ack.epoch, ack.first_seq, ack.hwm)
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
                seq=self._counters.next(HEARTBEAT_SEQ, reserve=HEARTBEAT_SEQ_RESERVE),
                uptime_s=load.uptime_s,
                cpu_percent=load.cpu_percent,
                memory_percent=load.memory_percent,
                requests_total=load.requests_total,
                local_tier_healthy=load.local_tier_healthy,
            )
        self.transport.publish(*self._encode(message), qos=1)
        self.heartbeats_sent += 1

    def _resend_overdue(self, ack_timeout_s: float) -> None:
        """Re-send only the batches whose ack is overdue (the window's rules)."""
        assert self._outbox is not None
        for key in self.window.overdue(time.monotonic(), ack_timeout_s):
            # What is still held of that batch (acks for overlapping batches trim it too).
            records = self._outbox.read_range(*key)
            if not self.window.resent(key, still_held=bool(records), now=time.monotonic()):
                continue
            self.stats.republishes += 1
            sent = self.transport.publish(*self._encode(self._batch_message(records)), qos=1)
            self.window.delivered_by(key, sent.published)

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
            self.window.reset()
        cfg = self._outbox_config
        while not self._stopping.is_set():
            if not self._connected.is_set():
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            self._resend_overdue(cfg.ack_timeout_s)
            if self.window.full():
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            cursor = self.window.cursor
            batch = self._outbox.read_batch(
                cursor, max_records=cfg.batch_records, max_bytes=cfg.batch_bytes
            )
            if not batch:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            first, last = batch[0], batch[-1]
            key = (first.epoch, first.seq, last.seq)
            if not self.window.sent(key, after=cursor, now=time.monotonic()):
                continue  # a reconnect reset the position meanwhile
            sent = self.transport.publish(*self._encode(self._batch_message(batch)), qos=1)
            self.window.delivered_by(key, sent.published)
            self.stats.batches_sent += 1
