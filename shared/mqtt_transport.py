"""The one MQTT transport both sides use: paho is wrapped here and nowhere else.

Like aiomqtt, this module owns the paho client and everything about it that both sides need
to get right once: MQTT 5 (session expiry, clean start off) or 3.1.1 (clean session off)
persistent sessions, credentials, the Last Will, TCP_NODELAY, the in-flight workaround, the
network loop and what its callbacks may raise. The agent's link and the controller's ingest
keep their own policy (what to subscribe, when to reconnect, what a message means) and see
only plain values: an :class:`Inbound` per message, reason strings, :class:`Sent` handles.

The network loop is our own, on paho's external-loop API (``loop_read``, ``loop_write``,
``loop_misc`` around one ``select``), run by the caller's supervised thread:

- only that thread touches the socket. Without the ``on_socket_register_write`` hook, paho,
  seeing no ``loop_start`` thread, writes from whichever thread publishes or acks, racing the
  loop's own writes on one socket. Other threads queue their packets and wake the loop once
  per burst through a socket pair, where paho's own loop writes a wake-up byte per packet;
- paho's in-flight window is off (``max_inflight_messages_set(0)``): its counter can stay
  "full" across a reconnect and then hold every later publish in its queue for good
  (eclipse-paho/paho.mqtt.python#24, #492). Callers bound what they have outstanding;
- TCP_NODELAY is set on every connection: with Nagle, every QoS 1 round trip waits for a
  delayed ACK;
- no callback of the caller's can stop the loop: paho re-raises a callback's exception out of
  ``loop_read``, so each one runs under a guard that logs it and counts it in
  ``callback_errors`` (the caller's own guards should have caught it first);
- a session taken over by another client with our client id is recognised, logged as an
  error naming the client id and counted (``session_health``): by the broker's MQTT 5
  DISCONNECT with reason 142 "Session taken over" where the broker sends one (read from
  the packet ourselves: paho 2.1 drops a reason code sent without properties), and, since
  MQTT 3.1.1 has no such packet and Mosquitto 2.0 just closes the connection on either
  protocol, by ``SHORT_SESSIONS`` sessions in a row that the broker accepted and dropped
  within ``SHORT_SESSION_S`` (two clients with one client id knock each other off at every
  reconnect). A single takeover by a client that does not reconnect looks like any dropped
  connection and is not reported. Reconnecting is unchanged.
"""

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.broker_url import Tls, TlsConfigError, ssl_reason

log = logging.getLogger(__name__)

Protocol = Literal["5", "3.1.1"]

# How long ``serve`` keeps the connection after the caller asked to stop, to let a last
# publish (a clean death) and the DISCONNECT go out.
STOP_GRACE_S = 5.0
# MQTT 5 DISCONNECT reason code: another client connected with our client id.
SESSION_TAKEN_OVER = 142
# This many accepted sessions in a row, each dropped by the broker within SHORT_SESSION_S
# of its CONNACK, count as a takeover (two clients with one client id knock each other
# off at every reconnect).
SHORT_SESSION_S = 5.0
SHORT_SESSIONS = 3


@dataclass(frozen=True, slots=True)
class SessionHealth:
    """Takeovers of this connection's session since the transport was made."""

    client_id: str
    takeovers: int = 0
    last_at: float | None = None  # Unix time of the newest
    last_how: str | None = None  # how it was recognised


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect; the same fields for a device and the controller."""

    host: str
    port: int
    client_id: str
    protocol: Protocol = "5"
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    username: str | None = None
    password: str | None = None
    # The caller acknowledges QoS 1 messages itself (``Transport.ack``), after it has
    # stored them; otherwise paho acknowledges each one as it is delivered.
    manual_ack: bool = False
    # None: plaintext (``mqtt://``); a Tls: ``mqtts://``.
    tls: Tls | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as it came off the wire. ``topic`` is None when it is not UTF-8."""

    topic: str | None
    payload: bytes
    mid: int
    qos: int
    retain: bool


class Sent:
    """What became of one publish."""

    def __init__(self, info: mqtt.MQTTMessageInfo) -> None:
        self._info = info

    @property
    def queued(self) -> bool:
        """Accepted by the client: sent, or held to send on the next connection (QoS 1)."""
        return self._info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)

    @property
    def ok(self) -> bool:
        """Handed to a live connection."""
        return self._info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def published(self) -> bool:
        """Whether the broker has it now (PUBACK for QoS 1, written for QoS 0); never waits.
        True also when the publish failed or waits for a next connection: nothing will come
        on this one, so a caller timing the broker's side should not wait for it."""
        try:
            return self._info.is_published()
        except (RuntimeError, ValueError):
            return True

    def wait(self, timeout: float) -> bool:
        """Wait until the broker has it (PUBACK for QoS 1); False on timeout or failure."""
        try:
            self._info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return self._info.is_published()


class Transport:
    """One MQTT client connection, reconnected by its owner's loop.

    Callbacks run on the network thread (the one in :meth:`serve`), one at a time:
    ``on_connect(refused)`` with None when the broker accepted the session, else its reason;
    ``on_subscribe(refused)`` with the reason codes of refused subscriptions (empty when all
    were granted); ``on_disconnect(reason)``; ``on_message(inbound)``.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        on_message: Callable[[Inbound], None],
        on_connect: Callable[[str | None], None] | None = None,
        on_subscribe: Callable[[list[str]], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        name: str = "mqtt",
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self.callback_errors: Counter[str] = Counter()
        self._on_message_cb = on_message
        self._on_connect_cb = on_connect
        self._on_subscribe_cb = on_subscribe
        self._on_disconnect_cb = on_disconnect
        self._v5 = endpoint.protocol == "5"
        # Built before the client, so a bad CA, certificate or key fails here, at start.
        self._tls = endpoint.tls.context() if endpoint.tls is not None else None
        self.tls_failures = 0  # handshakes that failed (either side refused)
        self.attempts = 0  # connection attempts by ``run``
        self._client = self._make_client(endpoint)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._configured = False
        # A connection was opened at least once (later attempts are reconnections), and the
        # broker accepted the current one.
        self._connected_once = False
        self._session_ok = False
        self._session_started = 0.0  # monotonic time of the current session's CONNACK
        self._short_sessions = 0
        self._taken_over = False  # the current session ended in a takeover
        self._health = SessionHealth(endpoint.client_id)
        self._health_lock = threading.Lock()

    @property
    def v5(self) -> bool:
        return self._v5

    def session_health(self) -> SessionHealth:
        with self._health_lock:
            return self._health

    def _taken(self, how: str) -> None:
        """Record a takeover of our session (network thread) and say so loudly."""
        self._taken_over = True
        with self._health_lock:
            self._health = SessionHealth(
                self.endpoint.client_id, self._health.takeovers + 1, time.time(), how
            )
        log.error(
            "%s: session of client id %r taken over (%s): another client connected with "
            "our client id; reconnecting",
            self.name,
            self.endpoint.client_id,
            how,
        )

    def _make_client(self, endpoint: Endpoint) -> "_BufferedClient":
        if self._v5:
            client = _BufferedClient(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=endpoint.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=endpoint.manual_ack,
            )
        else:
            client = _BufferedClient(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=endpoint.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=endpoint.manual_ack,
            )
        if endpoint.username:
            client.username_pw_set(endpoint.username, endpoint.password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.max_inflight_messages_set(0)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_register_write = _loop_writes
        return client

    # --- session ---------------------------------------------------------------------------
    def reload_certificate(self) -> None:
        """Present the client certificate as it is on disk now from the next connection on
        (after a renewal replaced the files); raises TlsConfigError if it cannot be used."""
        if self._tls is None or self.endpoint.tls is None:
            raise TlsConfigError("this connection does not use TLS")
        self.endpoint.tls.load_certificate(self._tls)

    def will_set(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = True) -> None:
        """The Last Will for the next connection attempt."""
        self._client.will_set(topic, payload, qos=qos, retain=retain)

    def connect(self) -> None:
        """Open a connection (persistent session); raises OSError (or ValueError for a bad
        address) when the broker cannot be reached. The broker's answer comes to
        ``on_connect`` from :meth:`serve`."""
        if not self._configured:
            ep = self.endpoint
            if self._v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = ep.session_expiry_s
                self._client.connect_async(
                    ep.host, ep.port, keepalive=ep.keepalive_s, clean_start=False, properties=props
                )
            else:
                self._client.connect_async(ep.host, ep.port, keepalive=ep.keepalive_s)
            self._configured = True
        self._client.reconnect()

    def disconnect(self, *, end_session: bool = False) -> None:
        """Send DISCONNECT (queued; :meth:`serve` writes it and then returns). With
        ``end_session`` on MQTT 5 the broker drops our session at once (session expiry 0)."""
        if self._v5 and end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            self._client.disconnect(properties=props)
        else:
            self._client.disconnect()
        self.wake()

    def close(self) -> None:
        """Release the wake-up socket pair (after the network thread has ended)."""
        self._wake_r.close()
        self._wake_w.close()

    # --- traffic -----------------------------------------------------------------------------
    def subscribe(self, filters: Sequence[tuple[str, int]]) -> None:
        self._client.subscribe(list(filters))
        self.wake()

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, wake: bool = True
    ) -> Sent:
        """Queue a message for the network thread. A thread that publishes a burst passes
        ``wake=False`` and calls :meth:`wake` once at the end (a system call saved per
        message); the network thread's own callbacks never need to wake it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if wake:
            self.wake()
        return Sent(info)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message received with ``manual_ack`` (nothing to do for QoS 0). Like
        a publish, from another thread it is written once someone calls :meth:`wake`."""
        if qos > 0:
            self._client.ack(mid, qos)

    def wake(self) -> None:
        """Have the network thread write what other threads queued (one byte is enough for
        any number of packets; a full pair already holds a wake-up)."""
        with contextlib.suppress(OSError):  # BlockingIOError too: a wake-up is pending
            self._wake_w.send(b"\0")

    # --- network loop --------------------------------------------------------------------------
    def serve(self, stopping: threading.Event | None = None) -> str:
        """Read, write and keep alive the current connection until it ends; returns why.
        Once ``stopping`` is set, the connection gets ``STOP_GRACE_S`` to finish what is
        queued (a DISCONNECT ends it sooner)."""
        client = self._client
        stop_at: float | None = None
        while True:
            if stopping is not None and stopping.is_set():
                now = time.monotonic()
                stop_at = stop_at if stop_at is not None else now + STOP_GRACE_S
                if now > stop_at:
                    return "stopping"
            sock = client.socket()
            if sock is None:
                return "no connection"
            # Bytes already read (ours, or TLS's decrypted ones) that select() cannot see:
            # read those first.
            pending = client.buffered() or (
                sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            )
            try:
                readable, _, _ = select.select(
                    [sock, self._wake_r],
                    [sock] if client.want_write() else [],
                    [],
                    0 if pending else 0.5,
                )
            except (OSError, ValueError, TypeError):  # closed meanwhile (a disconnect)
                return "connection lost"
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    self._wake_r.recv(4096)
            if sock in readable or pending:
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return _reason(rc)
            # What the callbacks just queued (PUBACKs), or what other threads did (publishes,
            # acks, a disconnect); a full socket buffer is retried next time round.
            if client.want_write():
                rc = client.loop_write()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return _reason(rc)
            rc = client.loop_misc()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return _reason(rc)

    def run(
        self,
        stopping: threading.Event,
        *,
        backoff: Callable[[int], float],
        before_reconnect: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        """Connect, serve and reconnect until ``stopping`` is set (one supervised run).

        ``backoff(attempt)`` gives the wait before the next attempt (attempt 0 after a
        connection that worked); ``before_reconnect`` runs before every attempt but the first
        of this transport (a new Last Will, say); ``on_lost`` hears why a connection ended.
        """
        attempt = 0
        while not stopping.is_set():
            self.attempts += 1
            try:
                if self._connected_once and before_reconnect is not None:
                    before_reconnect()
                self.connect()
            except ssl.SSLError as e:
                # A handshake the broker or we refused (wrong CA, host name, expired or revoked
                # certificate, plaintext port): retrying will not help until someone acts.
                self.tls_failures += 1
                delay = backoff(attempt)
                attempt += 1
                log.error(
                    "%s: TLS handshake with %s:%d failed (%s); retry %d in %.1fs",
                    self.name,
                    self.endpoint.host,
                    self.endpoint.port,
                    ssl_reason(e)
                    if not isinstance(e, ssl.SSLCertVerificationError)
                    else e.verify_message,
                    attempt,
                    delay,
                )
                stopping.wait(delay)
                continue
            except (OSError, ValueError) as e:
                delay = backoff(attempt)
                attempt += 1
                log.info(
                    "%s: broker %s:%d unreachable (%s); retry %d in %.1fs",
                    self.name,
                    self.endpoint.host,
                    self.endpoint.port,
                    e,
                    attempt,
                    delay,
                )
                stopping.wait(delay)
                continue
            self._connected_once = True
            self._session_ok = False
            self._taken_over = False
            reason = self.serve(stopping)
            if stopping.is_set():
                return
            self._count_short_session()
            if on_lost is not None:
                on_lost(reason)
            if self._session_ok:
                attempt = 0
            stopping.wait(backoff(attempt))
            attempt += 1

    def _count_short_session(self) -> None:
        """Recognise a takeover by sessions the broker accepts and soon drops (a broker
        that says so with DISCONNECT 142 was recognised already)."""
        if not self._session_ok or self._taken_over:
            self._short_sessions = 0
            return
        if time.monotonic() - self._session_started >= SHORT_SESSION_S:
            self._short_sessions = 0
            return
        self._short_sessions += 1
        if self._short_sessions >= SHORT_SESSIONS:
            self._short_sessions = 0
            self._taken(
                f"{SHORT_SESSIONS} sessions in a row dropped by the broker within "
                f"{SHORT_SESSION_S:g}s of being accepted"
            )

    # --- paho callbacks (network thread): none may raise -----------------------------------
    def _guard(self, where: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:
            self.callback_errors[where] += 1
            log.exception(
                "%s: %s callback failed (caught; the network loop goes on)", self.name, where
            )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        def handle() -> None:
            refused = str(reason_code) if reason_code.is_failure else None
            if refused is None:
                self._session_ok = True
                self._session_started = time.monotonic()
                sock = client.socket()
                if isinstance(sock, socket.socket):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._on_connect_cb is not None:
                self._on_connect_cb(refused)

        self._guard("connect", handle)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        def handle() -> None:
            if self._on_subscribe_cb is not None:
                self._on_subscribe_cb([str(rc) for rc in reason_codes if rc.is_failure])

        self._guard("subscribe", handle)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        def handle() -> None:
            reason = str(reason_code)
            code = getattr(client, "server_disconnect_code", None)
            if getattr(flags, "is_disconnect_packet_from_server", False) and code is not None:
                client.server_disconnect_code = None  # type: ignore[attr-defined]
                if code == SESSION_TAKEN_OVER:
                    reason = "Session taken over"
                    self._taken(f"broker sent DISCONNECT {code} {reason!r}")
            if self._on_disconnect_cb is not None:
                self._on_disconnect_cb(reason)

        self._guard("disconnect", handle)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        def handle() -> None:
            try:
                topic: str | None = message.topic
            except UnicodeDecodeError:  # paho decodes the topic on access
                topic = None
            inbound = Inbound(
                topic, bytes(message.payload), message.mid, message.qos, bool(message.retain)
            )
            self._on_message_cb(inbound)

        try:
            handle()
        except Exception:
            self.callback_errors["message"] += 1
            log.exception(
                "%s: message callback failed (caught; the network loop goes on)", self.name
            )
            # Acknowledged all the same, or the broker would hand it back forever.
            if self.endpoint.manual_ack:
                with contextlib.suppress(Exception):
                    self.ack(message.mid, message.qos)


class _BufferedClient(mqtt.Client):
    """paho's client reading the socket in large chunks.

    paho reads a packet with at least three ``recv`` calls (the command byte, each byte of
    the remaining length, the rest), each a system call (an ``SSL_read`` on TLS) that drops
    and re-takes the GIL. In a process with hundreds of threads (a simulation of 125
    devices) every re-take waits its turn, so a device's network thread spent most of its
    time queueing for the GIL between the bytes of one packet. Here one ``recv`` of up to
    ``READ_SIZE`` bytes serves paho's small reads from memory; :meth:`buffered` tells the
    network loop that bytes are waiting that ``select()`` cannot see.
    """

    READ_SIZE = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buf = b""
        self._read_pos = 0
        # The reason code of the broker's DISCONNECT being handled (MQTT 5), for
        # ``Transport._on_disconnect``: paho 2.1 reads it only when properties follow.
        self.server_disconnect_code: int | None = None

    def _handle_disconnect(self) -> None:
        packet = self._in_packet["packet"]
        v5 = self.protocol == mqtt.MQTTv5
        self.server_disconnect_code = packet[0] if v5 and len(packet) >= 1 else None
        super()._handle_disconnect()

    def buffered(self) -> int:
        return len(self._read_buf) - self._read_pos

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_pos >= len(self._read_buf):
            data = super()._sock_recv(self.READ_SIZE)  # raises as paho's does; b"" at EOF
            if len(data) <= bufsize:
                self._read_buf, self._read_pos = b"", 0
                return data
            self._read_buf, self._read_pos = data, 0
        start = self._read_pos
        self._read_pos = min(start + bufsize, len(self._read_buf))
        return self._read_buf[start : self._read_pos]

    def _sock_close(self) -> None:
        # What was read from the old connection is never parsed as the new one's.
        self._read_buf, self._read_pos = b"", 0
        super()._sock_close()

    def reconnect(self) -> MQTTErrorCode:
        self._read_buf, self._read_pos = b"", 0
        return super().reconnect()


def _reason(rc: MQTTErrorCode) -> str:
    return mqtt.error_string(rc)


def _loop_writes(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's "register for write" hook: nothing to do, :meth:`Transport.serve` writes (the
    thread that queued the packet wakes it, :meth:`Transport.wake`)."""
