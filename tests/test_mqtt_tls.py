"""The transport over TLS against a real Mosquitto with a TLS listener that requires client
certificates made by the project's CA: what connects, and what is refused and why."""

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from shared.broker_url import Tls, TlsConfigError
from shared.mqtt_transport import Endpoint, Inbound, Transport
from tests.conftest import wait_for
from tests.pki_world import NOW, ClientFiles, TestCa, tls_mosquitto


@contextmanager
def serving(transport: Transport) -> Iterator[threading.Event]:
    stopping = threading.Event()
    thread = threading.Thread(
        target=transport.run, args=(stopping,), kwargs={"backoff": lambda attempt: 0.2}
    )
    thread.start()
    try:
        yield stopping
    finally:
        stopping.set()
        transport.disconnect()
        thread.join(10)
        transport.close()


def client(
    port: int,
    client_id: str,
    tls: Tls,
    *,
    host: str = "127.0.0.1",
    heard: list[Inbound] | None = None,
    connects: list[str | None] | None = None,
    subscribe: str | None = None,
    subscribed: list[list[str]] | None = None,
) -> Transport:
    holder: list[Transport] = []

    def connected(refused: str | None) -> None:
        if connects is not None:
            connects.append(refused)
        if refused is None and subscribe:
            holder[0].subscribe([(subscribe, 1)])

    transport = Transport(
        Endpoint(host, port, client_id, keepalive_s=5, tls=tls),
        on_message=(heard.append if heard is not None else lambda m: None),
        on_connect=connected,
        on_subscribe=subscribed.append if subscribed is not None else None,
        name=client_id,
    )
    holder.append(transport)
    return transport


def tls_for(ca: TestCa, files: ClientFiles) -> Tls:
    return Tls(ca.ca_file, files.cert_file, files.key_file)


def test_devices_talk_over_mutual_tls_and_only_on_their_own_topics(tmp_path: Path) -> None:
    """With client certificates from the CA, a device and the controller connect; the
    device's messages on its own topics arrive, those it sends on another device's topics
    are dropped by the broker's ACL keyed on the certificate's CN."""
    ca = TestCa(tmp_path / "ca")
    broker = tls_mosquitto(tmp_path, ca)
    broker.start()
    try:
        heard: list[Inbound] = []
        granted: list[list[str]] = []
        ctl = client(
            broker.port,
            "edgefleet-controller",
            tls_for(ca, ca.client("edgefleet-controller")),
            heard=heard,
            subscribe="ef/#",
            subscribed=granted,
        )
        connects: list[str | None] = []
        dev = client(broker.port, "dev-a", tls_for(ca, ca.client("dev-a")), connects=connects)
        with serving(ctl), serving(dev):
            wait_for(lambda: connects == [None], 10, what="the device's TLS session")
            wait_for(lambda: granted == [[]], 10, what="the controller's subscription")
            dev.publish("ef/v1/dev-b/heartbeat", b"forged", qos=1).wait(5)
            assert dev.publish("ef/v1/dev-a/heartbeat", b"own", qos=1).wait(5)
            wait_for(lambda: heard, 10, what="the device's own message")
            assert [(m.topic, m.payload) for m in heard] == [("ef/v1/dev-a/heartbeat", b"own")]
    finally:
        broker.stop()


@pytest.mark.parametrize("case", ["other CA", "expired", "revoked", "no certificate"])
def test_the_broker_refuses_clients_without_a_valid_certificate(tmp_path: Path, case: str) -> None:
    """A client certificate from another CA, an expired one, a revoked one (in the CRL) or
    none at all gets no session: the handshake fails and the transport keeps retrying."""
    ca = TestCa(tmp_path / "ca")
    good = ca.client("dev-ok")
    if case == "other CA":
        files = TestCa(tmp_path / "other", name="someone else").client("dev-x")
    elif case == "expired":
        files = ca.client("dev-x", days=1, now=NOW - timedelta(days=2))
    else:
        files = ca.client("dev-x")
    crl = ca.crl([files.serial] if case == "revoked" else [])
    broker = tls_mosquitto(tmp_path, ca, crl=crl)
    broker.start()
    try:
        tls = (
            Tls(ca.ca_file)
            if case == "no certificate"
            else Tls(ca.ca_file, files.cert_file, files.key_file)
        )
        refused: list[str | None] = []
        bad = client(broker.port, "dev-x", tls, connects=refused)
        ok: list[str | None] = []
        control = client(broker.port, "dev-ok", tls_for(ca, good), connects=ok)
        with serving(control), serving(bad):
            wait_for(lambda: ok == [None], 10, what="a valid client's session (the control)")
            wait_for(lambda: bad.tls_failures >= 2 or bad.attempts >= 2, 15, what="retries")
            assert None not in refused, f"{case}: a session was granted"
    finally:
        broker.stop()


def test_a_broker_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    """The client verifies the broker's host name: a certificate for another name fails the
    handshake (counted as a TLS failure), so no credentials are sent to an impostor."""
    ca = TestCa(tmp_path / "ca")
    broker = tls_mosquitto(tmp_path, ca, hosts=["broker.example.net"])
    broker.start()
    try:
        connects: list[str | None] = []
        dev = client(broker.port, "dev-a", tls_for(ca, ca.client("dev-a")), connects=connects)
        with serving(dev):
            wait_for(lambda: dev.tls_failures >= 2, 15, what="refused handshakes")
        assert connects == []
    finally:
        broker.stop()


def test_plaintext_to_the_tls_port_gets_no_session(tmp_path: Path) -> None:
    """A client speaking plain MQTT to the TLS listener is never accepted."""
    ca = TestCa(tmp_path / "ca")
    broker = tls_mosquitto(tmp_path, ca)
    broker.start()
    try:
        connects: list[str | None] = []
        plain = Transport(
            Endpoint("127.0.0.1", broker.port, "dev-plain", keepalive_s=5),
            on_message=lambda m: None,
            on_connect=connects.append,
        )
        with serving(plain):
            wait_for(lambda: plain.attempts >= 3, 15, what="reconnect attempts")
        assert None not in connects
    finally:
        broker.stop()


def test_unusable_tls_files_fail_at_start_naming_the_file(tmp_path: Path) -> None:
    """A missing CA file or a certificate without its key is refused when the transport is
    built, with the file's name, not in a reconnect loop."""
    with pytest.raises(TlsConfigError, match=re.escape("missing-ca.crt")):
        Tls(tmp_path / "missing-ca.crt").context()
    ca = TestCa(tmp_path / "ca")
    files = ca.client("dev-a")
    with pytest.raises(TlsConfigError, match=re.escape("dev-a.crt")):
        Tls(ca.ca_file, files.cert_file, ca.ca_file).context()


def test_a_device_certificate_cannot_read_another_devices_topics(tmp_path: Path) -> None:
    """Device A subscribing to device B's topics (or to everything) receives nothing the
    controller sends to B, while B gets it: the broker's ACL keys on the certificate's CN."""
    ca = TestCa(tmp_path / "ca")
    broker = tls_mosquitto(tmp_path, ca)
    broker.start()
    try:
        snooped: list[Inbound] = []
        snoop_acks: list[list[str]] = []
        a = client(
            broker.port,
            "dev-a",
            tls_for(ca, ca.client("dev-a")),
            heard=snooped,
            subscribe="ef/v1/dev-b/#",
            subscribed=snoop_acks,
        )
        heard_b: list[Inbound] = []
        b_acks: list[list[str]] = []
        b = client(
            broker.port,
            "dev-b",
            tls_for(ca, ca.client("dev-b")),
            heard=heard_b,
            subscribe="ef/v1/dev-b/#",
            subscribed=b_acks,
        )
        ctl_connects: list[str | None] = []
        ctl = client(
            broker.port,
            "edgefleet-controller",
            tls_for(ca, ca.client("edgefleet-controller")),
            connects=ctl_connects,
        )
        with serving(a), serving(b), serving(ctl):
            wait_for(lambda: snoop_acks and b_acks and ctl_connects, 10, what="sessions")
            assert ctl.publish("ef/v1/dev-b/desired", b"for b only", qos=1).wait(5)
            wait_for(lambda: heard_b, 10, what="B's own message")
            assert ctl.publish("ef/v1/dev-b/ack", b"also for b", qos=1).wait(5)
            wait_for(lambda: len(heard_b) == 2, 10, what="B's second message")
        assert snooped == [], "device A read device B's topic"
    finally:
        broker.stop()
