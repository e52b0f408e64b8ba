"""The one MQTT transport against a real Mosquitto: sessions, wills, manual acks, reconnects,
and callbacks that cannot stop its network loop."""

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.mqtt_transport import Endpoint, Inbound, Protocol, Transport
from tests.conftest import Broker, MosquittoProcess, wait_for


@dataclass
class Ear:
    """What a transport's callbacks heard."""

    messages: list[Inbound] = field(default_factory=list)
    connects: list[str | None] = field(default_factory=list)
    subscribed: list[list[str]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)

    def topics(self) -> list[str | None]:
        return [m.topic for m in self.messages]


@contextmanager
def running(
    broker: Broker,
    client_id: str,
    *,
    protocol: Protocol = "5",
    subscribe: list[str] | None = None,
    manual_ack: bool = False,
    on_message: Callable[[Inbound], None] | None = None,
    will: tuple[str, bytes] | None = None,
) -> Iterator[tuple[Transport, Ear]]:
    """A transport served by its own thread (as a supervised worker would), stopped after."""
    ear = Ear()
    holder: list[Transport] = []

    def connected(refused: str | None) -> None:
        ear.connects.append(refused)
        if refused is None and subscribe:
            holder[0].subscribe([(f, 1) for f in subscribe])

    transport = Transport(
        Endpoint(
            broker.host,
            broker.port,
            client_id,
            protocol=protocol,
            keepalive_s=5,
            manual_ack=manual_ack,
        ),
        on_message=on_message or ear.messages.append,
        on_connect=connected,
        on_subscribe=ear.subscribed.append,
        on_disconnect=ear.disconnects.append,
        name=client_id,
    )
    holder.append(transport)
    if will is not None:
        transport.will_set(*will)
    stopping = threading.Event()
    thread = threading.Thread(
        target=transport.run, args=(stopping,), kwargs={"backoff": lambda attempt: 0.2}
    )
    thread.start()
    try:
        wait_for(lambda: ear.connects and (not subscribe or ear.subscribed), 10, what="session")
        yield transport, ear
    finally:
        stopping.set()
        transport.disconnect()
        thread.join(10)
        assert not thread.is_alive(), "the network loop ends at stop"
        transport.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_messages_flow_both_ways_on_either_protocol(mosquitto: Broker, protocol: Protocol) -> None:
    """A subscriber gets what a publisher sends, payload bytes intact, on MQTT 5 and 3.1.1;
    a QoS 1 publish is confirmed by the broker."""
    with (
        running(mosquitto, f"sub-{protocol}", protocol=protocol, subscribe=["t/#"]) as (_, ear),
        running(mosquitto, f"pub-{protocol}", protocol=protocol) as (pub, _),
    ):
        assert ear.connects == [None] and ear.subscribed == [[]]
        sent = pub.publish("t/a", b"\x00\xffbytes", qos=1)
        assert sent.queued and sent.wait(5)
        wait_for(lambda: ear.messages, 5, what="delivery")
        assert ear.messages[0].topic == "t/a" and ear.messages[0].payload == b"\x00\xffbytes"


def test_a_persistent_session_keeps_messages_while_the_client_is_away(
    mosquitto: Broker,
) -> None:
    """QoS 1 messages published while a subscriber is disconnected are delivered when the
    same client id connects again (clean start off, session expiry kept)."""
    with running(mosquitto, "away", subscribe=["held/#"]):
        pass
    with running(mosquitto, "pub") as (pub, _):
        assert pub.publish("held/1", b"kept", qos=1).wait(5)
    with running(mosquitto, "away") as (_, ear):
        wait_for(lambda: ear.messages, 5, what="held message")
        assert ear.topics() == ["held/1"]


def test_the_will_is_published_when_the_connection_dies(tmp_path: Path) -> None:
    """The Last Will set before connecting is published by the broker when the client
    vanishes without a DISCONNECT (its socket closed under it)."""
    server = MosquittoProcess(tmp_path)
    server.start()
    try:
        with (
            running(server.broker, "watcher", subscribe=["status/#"]) as (_, ear),
            running(server.broker, "dying", will=("status/dying", b"gone")) as (t, _),
        ):
            sock = t._client.socket()
            assert sock is not None
            sock.close()  # dies abruptly: no DISCONNECT
            wait_for(lambda: "status/dying" in ear.topics(), 15, what="the will")
    finally:
        server.stop()


def test_unacknowledged_messages_come_back_with_manual_ack(mosquitto: Broker) -> None:
    """With manual acks, a message the receiver never acknowledged is delivered again on
    the next connection; an acknowledged one is not."""
    with running(mosquitto, "acker", subscribe=["m/#"], manual_ack=True) as (me, ear):
        with running(mosquitto, "pub") as (pub, _):
            pub.publish("m/ack", b"1").wait(5)
            pub.publish("m/keep", b"2").wait(5)
        wait_for(lambda: len(ear.messages) == 2, 5, what="both delivered")
        first = next(m for m in ear.messages if m.topic == "m/ack")
        me.ack(first.mid, first.qos)
        me.wake()
    with running(mosquitto, "acker", manual_ack=True) as (_, again):
        wait_for(lambda: again.messages, 10, what="redelivery")
        assert again.topics() == ["m/keep"]


def test_a_callback_that_raises_is_counted_and_the_loop_goes_on(mosquitto: Broker) -> None:
    """An exception in the message callback never leaves the network loop: it is counted
    in ``callback_errors`` and the next message is delivered."""
    heard: list[str | None] = []

    def fussy(message: Inbound) -> None:
        if message.payload == b"bad":
            raise RuntimeError("injected callback defect")
        heard.append(message.topic)

    with (
        running(mosquitto, "fussy", subscribe=["f/#"], on_message=fussy) as (me, _),
        running(mosquitto, "pub") as (pub, _),
    ):
        pub.publish("f/1", b"bad").wait(5)
        pub.publish("f/2", b"good").wait(5)
        wait_for(lambda: heard, 5, what="the message after the defect")
        assert heard == ["f/2"] and me.callback_errors["message"] == 1


def test_the_loop_reconnects_after_the_broker_restarts(tmp_path: Path) -> None:
    """When the broker goes away and comes back, ``run`` reconnects by itself with its
    backoff, and the new session carries traffic."""
    server = MosquittoProcess(tmp_path)
    server.start()
    try:
        with running(server.broker, "stayer", subscribe=["r/#"]) as (_, ear):
            server.restart()
            wait_for(lambda: ear.disconnects, 10, what="the loss")
            wait_for(lambda: len(ear.subscribed) >= 2, 15, what="the resubscription")
            with running(server.broker, "pub") as (pub, _):
                pub.publish("r/after", b"x").wait(5)
            wait_for(lambda: ear.messages, 5, what="traffic after the restart")
    finally:
        server.stop()


def test_an_unreachable_broker_is_retried_until_stop(tmp_path: Path) -> None:
    """Nothing listening: ``run`` keeps trying with its backoff and returns at stop."""
    server = MosquittoProcess(tmp_path)  # never started: its port is free
    attempts: list[int] = []
    stopping = threading.Event()
    transport = Transport(Endpoint("127.0.0.1", server.port, "nobody"), on_message=lambda m: None)

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        if len(attempts) >= 3:
            stopping.set()
        return 0.05

    transport.run(stopping, backoff=backoff)
    transport.close()
    assert attempts == [0, 1, 2]


def test_a_backlog_arrives_whole_in_order_from_few_large_reads(
    mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A persistent session's backlog of 1,500 messages (tiny ones, and some larger than one
    read, so packets straddle reads) arrives complete, in order, bytes intact, read from the
    socket in far fewer system calls than packets (paho alone makes three or more each)."""
    import paho.mqtt.client as mqtt

    sizes = [1, 7, 300, 100_000, 2_000] * 300
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    with running(mosquitto, "backlog", subscribe=["bl/#"]):
        pass
    with running(mosquitto, "backlog-pub") as (pub, _):
        sent = [pub.publish(f"bl/{i}", p, qos=1) for i, p in enumerate(payloads)]
        assert all(s.wait(30) for s in sent)
    reads = {"n": 0}
    socket_recv = mqtt.Client._sock_recv

    def counted(self: mqtt.Client, bufsize: int) -> bytes:
        reads["n"] += 1
        return socket_recv(self, bufsize)

    monkeypatch.setattr(mqtt.Client, "_sock_recv", counted)
    with running(mosquitto, "backlog") as (_, ear):
        wait_for(lambda: len(ear.messages) >= len(payloads), 60, what="the backlog")
    assert ear.topics() == [f"bl/{i}" for i in range(len(payloads))]
    assert [m.payload for m in ear.messages] == payloads
    assert reads["n"] < len(payloads)
