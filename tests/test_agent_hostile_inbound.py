"""Hostile MQTT input to the agent: a real Mosquitto, a real agent, a raw paho attacker.

The failure this pins down (issue 19): one 6 KB message of nested JSON on a device's
``desired``, ``challenge`` or ``ack`` topic raised out of ``MqttLink._on_message`` into
paho's loop and ended the agent's ``mqtt-network`` thread; the device heard nothing more.
"""

import json
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, MqttConfig
from edge_agent.sync.counters import CounterStore
from edge_agent.sync.link import LoadSnapshot, MqttLink
from edge_agent.sync.trust import write_keys
from shared.attestation import public_key_of
from shared.errors import ProtocolError
from shared.messages import (
    Ack,
    Birth,
    Challenge,
    Desired,
    HardwareInfo,
    Heartbeat,
    Quote,
    Reported,
    TelemetryBatch,
    decode_message,
    encode_message,
)
from shared.provisioning import CONTROLLER_KEYS_FILE, IDENTITY_FOLDER
from shared.topics import CONTROLLER_TO_DEVICE, DeviceTopic, MessageKind
from tests.conftest import Broker, wait_for
from tests.signing import controller_signer

DEVICE = "dev-hostile"
CONTROLLER_KEY = Ed25519PrivateKey.generate()
INBOUND = (MessageKind.DESIRED, MessageKind.CHALLENGE, MessageKind.ACK)
NONCE = "ab" * 32


def _envelope(kind: str, device_id: str = DEVICE, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "type": kind, "device_id": device_id, "ts": "2026-01-01T00:00:00Z", **fields}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _heartbeat() -> bytes:
    """A well-formed device-to-controller message (a controller-bound kind)."""
    beat = Heartbeat(
        device_id=DEVICE,
        bd_seq=1,
        seq=1,
        uptime_s=1.0,
        cpu_percent=1.0,
        memory_percent=1.0,
        requests_total=0,
        local_tier_healthy=True,
    )
    return encode_message(beat)[1]


def hostile_payloads(kind: MessageKind) -> list[tuple[str, bytes, str]]:
    """(name, payload, the rejection reason it must get) for one inbound topic kind."""
    rng = random.Random(19)
    # Fields that make the payload a valid message of ``kind`` apart from the defect.
    valid: dict[str, Any] = {
        MessageKind.DESIRED: {"version": 7, "state": {}},
        MessageKind.CHALLENGE: {
            "nonce": NONCE,
            "issued_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-01T00:01:00Z",
        },
        MessageKind.ACK: {"epoch": 1, "first_seq": 0, "hwm": 10},
    }[kind]
    nested = b"[" * 3000 + b"]" * 3000
    deep_inside = _json(_envelope(kind.value, **valid))[:-1] + b', "x": ' + nested + b"}"
    return [
        ("3000-deep nesting", nested, "too_deep"),
        ("3000-deep nesting in an envelope", deep_inside, "too_deep"),
        ("random bytes", b"\xff" + rng.randbytes(2048), "bad_json"),
        ("oversized", b"{" + b" " * (70 * 1024) + b"}", "oversized"),
        ("NaN", _json(_envelope(kind.value, **valid))[:-1] + b', "n": NaN}', "bad_json"),
        ("10^400", _json(_envelope(kind.value, **valid))[:-1] + b', "n": 1e400}', "bad_json"),
        ("bad JSON", b"{not json", "bad_json"),
        ("empty", b"", "empty_payload"),
        ("not an object", b"[1, 2, 3]", "schema"),
        ("version 2", _json({**_envelope(kind.value, **valid), "v": 2}), "unsupported_version"),
        ("missing fields", _json(_envelope(kind.value)), "schema"),
        ("spoofed device", _json(_envelope(kind.value, "dev-other", **valid)), "spoofed_device_id"),
        ("controller-bound kind", _heartbeat(), "wrong_type_for_topic"),
    ]


class Controller:
    """The controller's side, played by a raw paho client: sees batches and reports,
    sends desired documents and acks."""

    def __init__(self, broker: Broker) -> None:
        self.batches: list[TelemetryBatch] = []
        self.reported: list[Reported] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="fake-controller"
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(
            [
                (str(DeviceTopic(DEVICE, MessageKind.TELEMETRY)), 1),
                (str(DeviceTopic(DEVICE, MessageKind.REPORTED)), 1),
            ]
        )
        self.client.loop_start()
        assert subscribed.wait(10), "the fake controller's subscriptions were granted"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        _, decoded = decode_message(msg.topic, bytes(msg.payload))
        with self._lock:
            if isinstance(decoded, TelemetryBatch):
                self.batches.append(decoded)
            elif isinstance(decoded, Reported):
                self.reported.append(decoded)

    def send(self, message: Desired | Ack) -> None:
        # Desired documents are retained, as the controller sends them: one published
        # before the agent's subscription is granted still reaches it.
        retain = isinstance(message, Desired)
        payload = encode_message(message, controller_signer(CONTROLLER_KEY))
        self.client.publish(*payload, qos=1, retain=retain).wait_for_publish(5)

    def ack_everything(self) -> None:
        with self._lock:
            batches = list(self.batches)
        for batch in batches:
            first, last = batch.records[0], batch.records[-1]
            self.send(Ack(device_id=DEVICE, epoch=first.epoch, first_seq=first.seq, hwm=last.seq))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def agent(mosquitto: Broker, tmp_path: Path) -> Iterator[Agent]:
    config = AgentConfig.model_validate(
        {
            "device_id": DEVICE,
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"url": mosquitto.url, "keepalive_s": 5, "reconnect_min_s": 0.2},
            "heartbeat_interval_s": 1.0,
        }
    )
    # Flashing writes the controller's message key; this agent trusts the fake controller's.
    write_keys(
        tmp_path / "state" / IDENTITY_FOLDER / CONTROLLER_KEYS_FILE, [public_key_of(CONTROLLER_KEY)]
    )
    agent = Agent(config)
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def attacker(mosquitto: Broker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="attacker")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.loop_stop()
        client.disconnect()


def test_hostile_payloads_on_every_inbound_topic_are_rejected_and_the_link_keeps_working(
    agent: Agent, mosquitto: Broker, attacker: mqtt.Client
) -> None:
    """Deep nesting, random bytes, oversized, NaN, 10^400, bad JSON, spoofed devices and
    controller-bound kinds on desired/challenge/ack are each rejected with their reason and
    counted; the network worker never dies, and afterwards a good desired document is
    applied and good acks trim the outbox."""
    controller = Controller(mosquitto)
    try:
        for n in range(5):
            agent.record_event("door_opened", {"n": n})
        agent.start_link()
        link = agent.link
        assert link is not None
        assert link.wait_connected(15), "the agent connected"
        pending = agent.outbox.pending()
        assert pending >= 6, "the records wait for their acks"
        wait_for(
            lambda: sum(len(b.records) for b in controller.batches) >= pending,
            15,
            what="the buffered records to be sent",
        )

        expected: dict[str, int] = {}
        for kind in INBOUND:
            topic = str(DeviceTopic(DEVICE, kind))
            for _, payload, reason in hostile_payloads(kind):
                attacker.publish(topic, payload, qos=1).wait_for_publish(5)
                expected[reason] = expected.get(reason, 0) + 1
        wait_for(
            lambda: link.stats.bad_inbound == sum(expected.values()), 20, what="every rejection"
        )
        assert link.stats.rejected.snapshot() == expected, "each payload got its own reason"
        assert link.stats.handler_errors.snapshot() == {}
        assert agent.supervisor.restarts()["mqtt-network"] == 0, "the network loop never died"
        assert agent.workers_down() == []
        assert agent.shadow.applied_desired_version is None, "nothing hostile was applied"
        assert agent.outbox.pending() == pending, "no hostile ack trimmed the outbox"

        controller.send(Desired(device_id=DEVICE, version=3, state={"heartbeat_interval_s": 2}))
        wait_for(lambda: agent.shadow.applied_desired_version == 3, 15, what="desired applied")
        wait_for(
            lambda: any(r.applied_desired_version == 3 for r in controller.reported),
            15,
            what="the reported document for it",
        )
        assert link.heartbeat_interval_s == 2.0
        controller.ack_everything()
        wait_for(lambda: agent.outbox.pending() == 0, 15, what="the acks to trim the outbox")

        text = agent.metrics.exposition().decode()
        assert 'edgefleet_agent_mqtt_rejected_total{reason="too_deep"} 6.0' in text
        assert 'edgefleet_worker_restarts_total{worker="mqtt-network"} 0.0' in text
    finally:
        controller.close()


def test_a_handler_that_raises_is_counted_and_the_next_message_still_handled(
    agent: Agent, mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in the desired handler (a defect some input reaches) is caught, logged
    and counted per handler; the network loop keeps running and the next document applies."""
    apply = agent.shadow.apply

    def apply_unless_version_4(desired: Desired) -> object:
        if desired.version == 4:
            raise RuntimeError("injected defect in the desired handler")
        return apply(desired)

    monkeypatch.setattr(agent.shadow, "apply", apply_unless_version_4)
    controller = Controller(mosquitto)
    try:
        agent.start_link()
        link = agent.link
        assert link is not None and link.wait_connected(15)
        controller.send(Desired(device_id=DEVICE, version=4, state={}))
        wait_for(lambda: link.stats.handler_errors.snapshot() == {"desired": 1}, 15)
        controller.send(Desired(device_id=DEVICE, version=5, state={"labels": {"a": "b"}}))
        wait_for(lambda: agent.shadow.applied_desired_version == 5, 15, what="version 5")
        assert agent.supervisor.restarts()["mqtt-network"] == 0
        assert link.connected
        text = agent.metrics.exposition().decode()
        assert 'edgefleet_agent_mqtt_handler_errors_total{handler="desired"} 1.0' in text
    finally:
        controller.close()


# --- the handler alone, under hypothesis ------------------------------------------------------
class _Handlers:
    """The link's callbacks: each counts what it got, and may be told to raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def desired(self, desired: Desired) -> None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("injected")

    def challenge(self, challenge: object) -> Quote | None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("injected")
        return None


def _make_link(tmp: Path, handlers: _Handlers) -> MqttLink:
    def birth(bd_seq: int) -> Birth:
        hardware = HardwareInfo(
            device_class="x86", arch="x86_64", accelerator="cpu", cpu_count=1, memory_mb=1
        )
        return Birth(
            device_id=DEVICE,
            bd_seq=bd_seq,
            agent_version="0",
            hardware=hardware,
            runtimes=[],
            models=[],
            api_url="http://127.0.0.1:1",
            heartbeat_interval_s=5,
        )

    return MqttLink(
        device_id=DEVICE,
        config=MqttConfig.model_validate({"url": "mqtt://127.0.0.1:1"}),
        counters=CounterStore(tmp / "counters.json"),
        make_birth=birth,
        snapshot=lambda: LoadSnapshot(0, 0, 0, 0, True),
        heartbeat_interval_s=5,
        on_desired=handlers.desired,
        on_challenge=handlers.challenge,
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)
_fields = st.dictionaries(
    st.sampled_from(
        ["version", "state", "epoch", "first_seq", "hwm", "nonce", "issued_at", "expires_at"]
    ),
    _json_values | st.just(NONCE) | st.just("2026-01-01T00:00:00Z") | st.integers(0, 9),
)
_envelopes = st.builds(
    lambda kind, device, fields, v: _json({**_envelope(kind, device, **fields), "v": v}),
    st.sampled_from([k.value for k in MessageKind] + ["nope"]),
    st.sampled_from([DEVICE, "dev-other", "", "UPPER"]),
    _fields,
    st.sampled_from([1, 1, 1, 2, "1", None]),
)
_payloads = (
    st.binary(max_size=512)
    | _envelopes
    | _json_values.map(_json)
    | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
)
_topics = (
    st.sampled_from(
        [str(DeviceTopic(d, k)) for d in (DEVICE, "dev-other") for k in MessageKind]
    ).map(str.encode)
    | st.binary(max_size=80)
    | st.text(max_size=80).map(str.encode)
)


# Documents refuse NUL; JSON text is UTF-8, which has no lone surrogates.
_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
_finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner),
    max_leaves=10,
)
_seq = st.integers(0, 2**63 - 1)
# Messages the link must accept (topic and payload that agree), so that the handled branch
# and the handlers' exceptions are exercised too, not only the rejections.
_valid = st.one_of(
    st.builds(
        lambda version, state: encode_message(
            Desired(device_id=DEVICE, version=version, state=state)
        ),
        st.integers(1, 2**63 - 1),
        st.dictionaries(_text, _finite_json, max_size=4),
    ),
    st.builds(
        lambda e, f, h: encode_message(Ack(device_id=DEVICE, epoch=e, first_seq=f, hwm=h)),
        _seq,
        _seq,
        _seq,
    ),
    st.builds(
        lambda nonce: encode_message(
            Challenge(
                device_id=DEVICE,
                nonce=nonce,
                issued_at=datetime(2026, 1, 1, tzinfo=UTC),
                expires_at=datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
            )
        ),
        st.text("0123456789abcdef", min_size=64, max_size=64),
    ),
).map(lambda pair: (pair[0].encode(), pair[1]))


@pytest.fixture
def idle_link(tmp_path: Path) -> tuple[MqttLink, _Handlers]:
    """A link that is never started: its callbacks are driven by hand."""
    handlers = _Handlers()
    return _make_link(tmp_path, handlers), handlers


def _deliver(link: MqttLink, handlers: _Handlers, topic: bytes, payload: bytes) -> bool:
    """Hand one message to paho's callback as paho would; checks the counters moved as they
    must, and returns whether the message was one to handle."""
    rejected, calls = link.stats.bad_inbound, handlers.calls
    # A failed attestation answer has its own counter; other handlers' errors are counted
    # as handler errors.
    errors = link.stats.handler_errors.total() + link.stats.challenges_failed
    received = mqtt.MQTTMessage(mid=0, topic=topic)
    received.payload = payload
    link.transport._on_message(link.transport._client, None, received)  # must not raise

    try:
        parsed, _ = decode_message(topic.decode(), payload)
        acceptable = parsed.device_id == DEVICE and parsed.kind in CONTROLLER_TO_DEVICE
    except (UnicodeDecodeError, ProtocolError):
        acceptable = False
    errors_now = link.stats.handler_errors.total() + link.stats.challenges_failed
    if acceptable:
        assert link.stats.bad_inbound == rejected
        called = handlers.calls - calls
        assert errors_now - errors == (1 if handlers.fail and called else 0), "raise counted"
    else:
        assert link.stats.bad_inbound == rejected + 1, "what is not acceptable is rejected"
        assert handlers.calls == calls and errors_now == errors
    return acceptable


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=_topics, payload=_payloads)
def test_on_message_never_raises_for_any_topic_or_payload(
    idle_link: tuple[MqttLink, _Handlers], topic: bytes, payload: bytes
) -> None:
    """For arbitrary topic and payload bytes, paho's on_message callback never raises: the
    message is handled (only a controller-to-device message for this device is) or counted
    as rejected with a reason."""
    link, handlers = idle_link
    event("handled" if _deliver(link, handlers, topic, payload) else "rejected")


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=_valid, fail=st.booleans())
def test_on_message_never_raises_when_a_handler_raises(
    idle_link: tuple[MqttLink, _Handlers], message: tuple[bytes, bytes], fail: bool
) -> None:
    """For any valid desired document, ack or challenge, the callback never raises, even
    when the handler does: the handler's exception is counted instead."""
    link, handlers = idle_link
    handlers.fail = fail
    assert _deliver(link, handlers, *message), "a valid message for this device is handled"
