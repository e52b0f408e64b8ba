"""The ingest shell: a paho subscriber feeding a batching writer thread, both supervised.

- The connection is ``shared.mqtt_transport``'s; its network loop runs in our own thread
  under ``shared.supervision.Supervisor``: whatever escapes it is logged with its traceback,
  counted (``edgefleet_worker_restarts_total{worker="ingest-network"}``) and the loop
  restarted with backoff on a fresh connection. Every callback has a last-resort guard too.
- Messages are decoded on arrival, in the transport's callback: the decoder is bounded (size, depth
  and element count before any work) and raises only ``ProtocolError``. A refused message
  is counted, handed to the ``DeadLetterBook`` (aggregated, rate-limited, see
  ``controller/ingest/limits.py``) and PUBACKed at once: it never enters the queue or the
  writer's transaction, so a flood of garbage costs one cheap decode per message and does
  not delay the good messages' writes. The ``ingest-dead-letters`` worker stores the book's
  rows every ``dead_letters.flush_s`` and prunes them to their caps.
- One writer thread (supervised) drains the queue in batches and applies each in one
  transaction. A database that cannot be reached is retried with backoff; any other
  exception kills the writer, which the supervisor restarts. The batch in hand then gets a
  strike each (``StrikeBook``) and is written one message per transaction, so the innocent
  messages beside a poison one still land, and a message that killed the writer twice is
  dead-lettered as ``poison`` and acknowledged instead of crash-looping.
- At-least-once into the database: good messages are acknowledged to the broker (manual
  PUBACK) only after their batch is committed, and the session is persistent, so a
  controller killed mid-batch gets the unacknowledged messages again when it comes back.
  The unique key on (device, epoch, seq) turns the re-delivery into exactly-once storage.
- Devices get an ``ack`` per telemetry batch after commit, which lets them trim their outbox.
- Attestation challenges (after a birth), quarantine desired documents (after a quote) and
  certificate renewal answers (``cert_issued``, controller/pki/renewal.py) are decided in
  the batch's transaction and published after its commit, like acks.
- On MQTT 5, subscriptions are shared (``$share/<group>/...``) so replicas split the stream.
"""

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from controller.db import session_scope
from controller.ingest.apply import (
    Decoded,
    IngestStats,
    Received,
    apply_decoded,
    bounds_from,
    check_known,
    classify,
    topic_device,
)
from controller.ingest.dead_letters import prune_dead_letters, write_dead_letters
from controller.ingest.limits import DeadLetterBook, Rejection
from controller.ingest.signatures import SessionKeys, SignatureRules, default_rules
from controller.settings import BrokerSettings, DeadLetterSettings, PlausibilitySettings
from shared.attestation import encode_public_key
from shared.errors import ProtocolError
from shared.message_signing import Signer, is_signed
from shared.messages import (
    AnyMessage,
    Birth,
    Command,
    ControllerKeys,
    Desired,
    encode_message,
)
from shared.mqtt_transport import Endpoint, Inbound, Transport
from shared.supervision import StrikeBook, Supervisor
from shared.topics import DEVICE_TO_CONTROLLER, DeviceTopic

if TYPE_CHECKING:
    from controller.attestation.service import AttestationService
    from controller.pki.message_keys import MessageKeyring
    from controller.pki.renewal import RenewalService

log = logging.getLogger(__name__)

# The database is away (down, restarting, locked): retried, never a strike against the
# messages. Any other exception while writing is a defect some input reached.
_UNREACHABLE = (OperationalError, InterfaceError, PoolTimeoutError)

# How long the reader trusts the writer's copy of the provisioned device ids (the copy
# itself may be up to ``ProvisionedDevices``' TTL old).
KNOWN_FRESH_S = 5.0

# A device whose MACs name a session the controller never heard the birth of is asked to
# publish that birth again, at most this often (a flood of such messages is not a flood of
# requests).
REBIRTH_INTERVAL_S = 30.0
NETWORK_WORKER = "ingest-network"
WRITER_WORKER = "ingest-writer"
DEAD_LETTER_WORKER = "ingest-dead-letters"


@dataclass(frozen=True, slots=True)
class _Item:
    decoded: Decoded
    mid: int
    qos: int
    key: bytes  # the strike book's name for this message: same topic and bytes, same key


def _key(received: Received) -> bytes:
    digest = hashlib.blake2b(received.topic.encode(), digest_size=16)
    digest.update(b"\0")
    digest.update(received.payload)
    return digest.digest()


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
        supervisor: Supervisor | None = None,
        dead_letters: DeadLetterSettings | None = None,
        plausibility: PlausibilitySettings | None = None,
        renewal: "RenewalService | None" = None,
        message_keys: "MessageKeyring | None" = None,
    ) -> None:
        self._broker = broker
        # Signs everything sent to devices (shared/message_signing.py); None: unsigned (a
        # controller without a key folder, tests of other things).
        self.message_keys = message_keys
        self._signer: Signer | None = message_keys.current if message_keys else None
        rules = default_rules(attestation)
        self._signature_rules = SignatureRules(
            rules.enrollment,
            rules.max_age_s,
            SessionKeys(message_keys) if message_keys is not None else None,
        )
        self._port = port
        self._engine = engine
        # Telemetry rows are prepared in the network thread, in this database's form.
        self._dialect = engine.dialect.name
        self.stats = stats
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._known_devices = known_devices
        # The writer's latest copy of the provisioned ids and when it was read. The reader
        # refuses unknown devices with it while it is fresh; an older copy (no traffic
        # made the writer read again) is not trusted: the writer checks with a fresh one.
        self._known: set[str] | None = None
        self._known_at = float("-inf")
        self._attestation = attestation
        self._renewal = renewal
        self._bounds = bounds_from(plausibility or PlausibilitySettings())
        self.supervisor = supervisor or Supervisor()
        self._dl = dead_letters or DeadLetterSettings()
        self.dead_letters = DeadLetterBook(
            window_s=self._dl.window_s,
            device_rate=self._dl.device_rows_per_minute / 60.0,
            device_burst=self._dl.device_burst,
            total_rate=self._dl.rows_per_second,
            total_burst=self._dl.burst,
            now=time.monotonic(),
        )
        self._flush_lock = threading.Lock()
        self._strikes = StrikeBook()
        self._rebirths: dict[str, float] = {}  # device -> when it was last asked (monotonic)
        self._pending: list[_Item] = []  # the writer's batch in hand; survives its restart
        self._last_error = "unknown"
        self._stopping = threading.Event()  # the writer and the dead-letter worker stop
        self._disconnecting = threading.Event()  # the network loop stops
        self._writer_done = threading.Event()
        self._network_done = threading.Event()
        self._connected = threading.Event()
        # When the broker last granted the subscriptions (None: not now); replicas judge
        # device silence only from there (controller/replicas.py).
        self.subscribed_at: datetime | None = None
        self._started = False
        self._v5 = broker.effective_protocol == "5"
        self._filters = subscriptions(broker.shared_group if self._v5 else None)
        password = broker.password.get_secret_value() if broker.password else None
        self.transport = Transport(
            Endpoint(
                host=broker.host,
                port=port,
                client_id=broker.client_id,
                protocol="5" if self._v5 else "3.1.1",
                keepalive_s=broker.keepalive_s,
                session_expiry_s=broker.session_expiry_s,
                username=broker.username or None,
                password=password if broker.username else None,
                manual_ack=True,
                tls=broker.tls(),
            ),
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_subscribe=self._on_subscribe,
            on_disconnect=self._on_disconnect,
            name="ingest",
        )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def backlog(self) -> int:
        """Messages received from the broker and not yet written."""
        return self._queue.qsize() + len(self._pending)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._started = True
        self.supervisor.spawn(WRITER_WORKER, self._write_loop, stopping=self._stopping)
        self.supervisor.spawn(DEAD_LETTER_WORKER, self._dead_letter_loop, stopping=self._stopping)
        self.supervisor.spawn(NETWORK_WORKER, self._network_loop, stopping=self._disconnecting)

    def stop(self, timeout: float = 5.0) -> bool:
        """Write and acknowledge what was received, then end the broker session; False
        when the writer did not finish, so the session was left to expire."""
        # Let the writer finish (and PUBACK) what it holds before the connection goes.
        self._stopping.set()
        written = self._wait_worker(self._writer_done, WRITER_WORKER, timeout)
        try:
            self.flush_dead_letters()
        except Exception:
            log.exception("could not store the last dead letters")
        self._disconnecting.set()
        # Everything received was written and acknowledged: end the session with us (MQTT 5).
        # A persistent session left behind would stay a member of the shared subscription
        # and collect its share of the fleet's messages until it expired.
        self.transport.disconnect(end_session=written)
        self._wait_worker(self._network_done, NETWORK_WORKER, timeout)
        self.transport.close()
        return written

    def _wait_worker(self, done: threading.Event, name: str, timeout: float) -> bool:
        """Wait for ``name`` to finish its stop; False if it was not running or timed out."""
        if not self._started:
            return False
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            state = {w.name: w.state for w in self.supervisor.statuses()}.get(name)
            if state in (None, "stopped") or time.monotonic() > deadline:
                return done.is_set()
        return True

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish to devices (QoS 1); False if the broker is not connected right now."""
        if not self._connected.is_set():
            return False
        if self._signer is not None and not is_signed(payload):
            payload = self._signer.payload(topic, payload)
        return self.transport.publish(topic, payload, qos=1, retain=retain).ok

    # --- network thread ------------------------------------------------------------------
    def _network_loop(self) -> None:
        """The transport's network I/O until stop, reconnecting with backoff. What escapes
        it ends this call; the supervisor logs it and calls again, which reconnects afresh."""
        self._network_done.clear()
        try:
            self.transport.run(self._disconnecting, backoff=_reconnect_delay, on_lost=self._lost)
        finally:
            self._connected.clear()
        self._network_done.set()

    def _lost(self, reason: str) -> None:
        self._connected.clear()
        self.subscribed_at = None
        log.warning("ingest lost the broker (%s); reconnecting", reason)

    # --- transport callbacks (network thread): none may raise -----------------------------
    def _on_connect(self, refused: str | None) -> None:
        try:
            if refused is not None:
                log.error("broker refused the controller: %s", refused)
                return
            # Ready (``connected``) only once the broker has granted the subscriptions, in
            # ``_on_subscribe``: a message published before that reaches no session of ours.
            self.transport.subscribe([(f, 1) for f in self._filters])
            log.info(
                "ingest connected to %s:%d (MQTT %s)",
                self._broker.host,
                self._port,
                self._broker.effective_protocol,
            )
        except Exception:
            self._callback_failed("on_connect")

    def _on_subscribe(self, refused: list[str]) -> None:
        try:
            if refused:
                log.error("broker refused ingest's subscriptions: %s", ", ".join(refused))
                return
            self.subscribed_at = datetime.now(UTC)
            self._connected.set()
        except Exception:
            self._callback_failed("on_subscribe")

    def _on_disconnect(self, reason: str) -> None:
        self._connected.clear()
        self.subscribed_at = None
        try:
            if not self._disconnecting.is_set():
                log.warning("ingest lost the broker (%s); reconnecting", reason)
        except Exception:
            self._callback_failed("on_disconnect")

    def _on_message(self, message: Inbound) -> None:
        try:
            self._receive(message)
        except Exception:
            # A defect of ours: acknowledged, so the broker does not hand it back forever.
            self._callback_failed("on_message")
            try:
                self._ack(message.mid, message.qos)
            except Exception:
                log.exception("could not acknowledge a message ingest failed on")

    def _callback_failed(self, name: str) -> None:
        self.stats.add("callback_errors")
        log.exception("ingest's %s callback failed (caught; the network loop goes on)", name)

    def _receive(self, message: Inbound) -> None:
        if message.topic is None:
            received = Received("<not UTF-8>", message.payload, datetime.now(UTC))
            self._reject(received, ProtocolError("bad_topic", "topic is not UTF-8"))
            self._ack(message.mid, message.qos)
            return
        received = Received(message.topic, message.payload, datetime.now(UTC))
        fresh = time.monotonic() - self._known_at < KNOWN_FRESH_S
        try:
            decoded = classify(
                received,
                known_devices=self._known if fresh else None,
                attestation_on=self._attestation is not None,
                renewal_on=self._renewal is not None,
                dialect=self._dialect,
            )
        except ProtocolError as e:
            self._reject(received, e)
            self._ack(message.mid, message.qos)
            return
        item = _Item(decoded, message.mid, message.qos, _key(received))
        try:
            # Blocking here pushes back on the broker instead of losing the message.
            self._queue.put(item, timeout=10)
        except queue.Full:
            # Not acknowledged: the broker redelivers it after a reconnect.
            self.stats.add("dropped_queue_full")
            log.error(
                "ingest queue full for 10s; message on %.128r left unacknowledged",
                received.topic,
            )

    def _ack(self, mid: int, qos: int) -> None:
        self.transport.ack(mid, qos)

    def _reject(self, received: Received, error: ProtocolError, *, count: bool = True) -> None:
        """Count a refused message and hand it to the dead-letter book (no payload kept)."""
        if count:
            self.stats.add_rejected(error.reason)
        outcome = self.dead_letters.record(
            Rejection(
                device_id=topic_device(received.topic),
                reason=error.reason,
                topic=received.topic[:256],
                detail=error.detail[:1024],
                size=len(received.payload),
                at=received.received_at,
            ),
            time.monotonic(),
        )
        if outcome == "dropped":
            self.stats.add("rejections_dropped")
        elif outcome == "opened":
            # One line per dead-letter row, not per message: a flood must not flood the log.
            log.warning("rejected message on %.128r: %s", received.topic, error)

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
        """Write batches until stop. Called again by the supervisor after a crash, with the
        batch that was in hand still pending: its messages get a strike, and are written
        one per transaction until none has one."""
        self._writer_done.clear()
        if self._pending and self._strikes.crashed():
            log.warning(
                "ingest writer restarted with %d messages in hand; writing them one at a time",
                len(self._pending),
            )
        while True:
            if not self._pending:
                if self._stopping.is_set() and self._queue.empty():
                    break
                self._pending = self._next_batch()
                continue
            self._park_poison()
            if not self._pending:
                continue
            chunk = self._pending[:1] if self._strikes.suspects() else self._pending
            if not self._write(chunk):
                return  # stopping while the database is away: left unacknowledged
            del self._pending[: len(chunk)]
        self._writer_done.set()

    def _park_poison(self) -> None:
        """Dead-letter (and acknowledge) the pending messages that killed the writer twice."""
        keep: list[_Item] = []
        for item in self._pending:
            if not self._strikes.is_poison(item.key):
                keep.append(item)
                continue
            received = item.decoded.received
            log.error("message on %.128r killed the ingest writer twice: parked", received.topic)
            self._reject(
                received,
                ProtocolError("poison", f"killed the ingest writer twice ({self._last_error})"),
            )
            self._ack(item.mid, item.qos)
            self._strikes.release([item.key])
            self.transport.wake()
        self._pending = keep

    def _write(self, items: list[_Item]) -> bool:
        """Apply ``items`` in one transaction, then publish acks and PUBACK them; retried
        while the database cannot be reached. False: told to stop before it could write."""
        keys: list[Any] = [item.key for item in items]
        self._strikes.hold(keys)
        delay = 0.5
        while True:
            try:
                if self._known_devices is not None:
                    self._known = self._known_devices()
                    self._known_at = time.monotonic()
                good: list[_Item] = []
                unknown: list[tuple[Received, ProtocolError]] = []
                for item in items:
                    try:
                        check_known(item.decoded.message, self._known)
                        good.append(item)
                    except ProtocolError as e:
                        unknown.append((item.decoded.received, e))
                with session_scope(self._engine) as session:
                    result = apply_decoded(
                        session,
                        [item.decoded for item in good],
                        attestation=self._attestation,
                        stored_at=datetime.now(UTC),
                        renewal=self._renewal,
                        bounds=self._bounds,
                        signatures=self._signature_rules,
                    )
                break
            except _UNREACHABLE as e:
                self.stats.add("db_errors")
                log.error("ingest batch of %d failed on the database (%s); retrying", len(items), e)
                if self._stopping.wait(delay):
                    log.error(
                        "stopping with %d uncommitted messages (left unacknowledged)", len(items)
                    )
                    return False
                delay = min(delay * 2, 10.0)
            except BaseException as e:
                self._last_error = f"{type(e).__name__}: {e}"[:300]
                raise
        self.stats.merge(result.outcome)
        for received, error in unknown:
            self._reject(received, error)
        for received, error in result.refused:
            self._reject(received, error, count=False)  # counted in the outcome
        # One wake-up for the whole burst of acks, publishes and PUBACKs.
        refused = {id(received) for received, _ in (*unknown, *result.refused)}
        accepted = [i.decoded for i in good if id(i.decoded.received) not in refused]
        for update, signer in self._key_updates(accepted):
            self._send(update, signer=signer)
        for ack in result.acks:
            self._send(ack)
        for message in result.outbound:
            self._send(message)
        for command in self._rebirth_requests(good, result.refused):
            self._send(command)
        for item in items:
            self._ack(item.mid, item.qos)
        self.transport.wake()
        self._strikes.release(keys)
        return True

    def _rebirth_requests(
        self, items: list[_Item], refused: list[tuple[Received, ProtocolError]]
    ) -> list[Command]:
        """A ``rebirth`` command for each device whose message was refused as
        ``unknown_session`` (its birth went to a dead replica's session, or came while no
        controller listened), each device at most once per ``REBIRTH_INTERVAL_S``. Its next
        birth opens the session again; the refused records come again after their ack
        timeout."""
        unheard = {id(received) for received, e in refused if e.reason == "unknown_session"}
        if not unheard:
            return []
        now = time.monotonic()
        devices = {
            item.decoded.message.device_id for item in items if id(item.decoded.received) in unheard
        }
        commands = []
        for device_id in sorted(devices):
            if now - self._rebirths.get(device_id, -REBIRTH_INTERVAL_S) < REBIRTH_INTERVAL_S:
                continue
            self._rebirths[device_id] = now
            commands.append(Command(device_id=device_id, name="rebirth", reason="unknown_session"))
        if len(self._rebirths) > 10_000:  # forget the oldest asks: the map stays small
            for device_id, at in list(self._rebirths.items()):
                if now - at >= REBIRTH_INTERVAL_S:
                    del self._rebirths[device_id]
        if commands:
            self.stats.add("rebirths_requested", len(commands))
            log.info(
                "asked %d device(s) to publish their birth again (MACs under a session "
                "never heard): %s",
                len(commands),
                ", ".join(c.device_id for c in commands[:10]),
            )
        return commands

    def _send(self, message: AnyMessage, *, signer: Signer | None = None) -> None:
        """Publish one message to its device after a commit (signed; retained if desired
        state or keys), leaving the wake-up to the caller."""
        retain = isinstance(message, Desired | ControllerKeys)
        topic, payload = encode_message(message, signer or self._signer)
        self.transport.publish(topic, payload, qos=1, retain=retain, wake=False)

    def _key_updates(self, decoded: list[Decoded]) -> list[tuple[ControllerKeys, Signer]]:
        """A ``controller_keys`` message, and the key to sign it with, for each accepted
        birth whose device does not hold the keys it should: signed by the current key for
        a device that trusts none (it pins them), else by a key the device trusts (a
        rotation). A device trusting only keys this controller no longer holds cannot be
        told (logged: re-flash it, docs/protocol.md)."""
        ring = self.message_keys
        if ring is None:
            return []
        wanted = ring.trusted_kids()
        out: list[tuple[ControllerKeys, Signer]] = []
        for d in decoded:
            birth = d.message
            if not isinstance(birth, Birth) or birth.identity_key is None:
                continue
            held = birth.controller_key_ids
            # Up to date: same keys, and a session key (so it holds the exchange key too).
            if held == wanted and birth.session_key is not None:
                continue
            signer = self.signer_for(held)
            if signer is None:
                log.error(
                    "device %s trusts controller message keys %s, none of which this "
                    "controller holds: it cannot learn %s (re-flash it)",
                    birth.device_id,
                    ", ".join(held),
                    ", ".join(wanted),
                )
                continue
            out.append((self._keys_message(birth.device_id), signer))
        return out

    def _keys_message(self, device_id: str) -> ControllerKeys:
        """The keys ``device_id`` should trust, with the exchange key paired with the newest."""
        ring = self.message_keys
        assert ring is not None
        exchange = ring.exchange_public(ring.trusted_kids()[0])
        return ControllerKeys(
            device_id=device_id,
            keys=[encode_public_key(k) for k in ring.trusted_set()],
            exchange_key=encode_public_key(exchange) if exchange is not None else None,
        )

    def signer_for(self, trusted: list[str]) -> Signer | None:
        """The key to sign a ``controller_keys`` message with for a device trusting
        ``trusted``: the current key if it is among them (or the device trusts none)."""
        ring = self.message_keys
        if ring is None:
            return None
        if not trusted or ring.current_kid in trusted:
            return ring.current
        return next((s for kid in trusted if (s := ring.signer(kid)) is not None), None)

    def announce_keys(self, device_ids: list[str]) -> int:
        """Publish the keys devices should trust to each of ``device_ids`` (retained,
        signed by the current key): a rotation's next key reaches connected devices now.
        Returns how many were handed to the broker."""
        ring = self.message_keys
        if ring is None or not self._connected.is_set():
            return 0
        sent = 0
        for device_id in device_ids:
            self._send(self._keys_message(device_id), signer=ring.current)
            sent += 1
        self.transport.wake()
        return sent

    # --- dead-letter worker --------------------------------------------------------------
    def _dead_letter_loop(self) -> None:
        while not self._stopping.wait(self._dl.flush_s):
            try:
                self.flush_dead_letters()
            except _UNREACHABLE as e:
                log.warning("dead letters not stored yet (%s); next time", e)

    def flush_dead_letters(self) -> None:
        """Store what the dead-letter book gathered, then prune the rows to their caps."""
        with self._flush_lock:
            drained = self.dead_letters.drain()
            if not drained:
                return
            try:
                with session_scope(self._engine) as session:
                    devices = write_dead_letters(session, drained)
                    lost = prune_dead_letters(
                        session,
                        devices,
                        per_device=self._dl.max_rows_per_device,
                        total=self._dl.max_rows,
                    )
            except _UNREACHABLE:
                self.dead_letters.restore(drained)  # stored at a later run
                raise
            except BaseException:
                # A defect these rows reach: giving them back would crash every later run
                # too; they are counted as dropped and the worker is restarted.
                self.stats.add("rejections_dropped", sum(item.count for item in drained))
                raise
        if lost:
            self.stats.add("rejections_dropped", lost)
            log.warning("dead letters over their caps: %d rejections' rows pruned", lost)


def _reconnect_delay(attempt: int) -> float:
    """1 s after a connection that worked, doubling per failed attempt, at most 30 s."""
    return float(min(2**attempt, 30))
