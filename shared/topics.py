"""MQTT topic names for protocol v1: ``ef/v1/{device_id}/{kind}``.

Builders and a strict parser, both pure. The version lives in the topic so that a v2 agent
and a v1 controller never read each other's payloads by accident.
"""

import re
from dataclasses import dataclass
from enum import StrEnum

from shared.errors import ProtocolError

TOPIC_ROOT = "ef/v1"

# Device ids become topic levels, file names and database keys: keep them boring.
_DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class MessageKind(StrEnum):
    """The last topic level; each kind has one payload schema and one direction."""

    STATUS = "status"  # device -> controller, retained; birth, death and the Last Will
    HEARTBEAT = "heartbeat"  # device -> controller
    TELEMETRY = "telemetry"  # device -> controller; batches of outbox records
    REPORTED = "reported"  # device -> controller; the shadow's reported document
    ACK = "ack"  # controller -> device; which outbox records are stored
    DESIRED = "desired"  # controller -> device, retained; the shadow's desired document
    CHALLENGE = "challenge"  # controller -> device; a nonce to attest against
    QUOTE = "quote"  # device -> controller; signed measurements bound to a challenge's nonce
    # device -> controller; a CSR for a new TLS key, signed by the current certificate's key
    CERT_REQUEST = "cert_request"
    CERT_ISSUED = "cert_issued"  # controller -> device; the renewed certificate, or why not
    # controller -> device, retained; the controller message keys to trust (pin or rotation)
    CONTROLLER_KEYS = "controller_keys"
    # controller -> device; a request to act now (``rebirth``: publish the birth again)
    COMMAND = "command"

    @property
    def from_device(self) -> bool:
        return self in DEVICE_TO_CONTROLLER


# Kinds a device may publish (and the controller subscribes to), and the reverse. The broker
# ACL is generated from these two sets, so they are the single source of who may say what.
DEVICE_TO_CONTROLLER = frozenset(
    {
        MessageKind.STATUS,
        MessageKind.HEARTBEAT,
        MessageKind.TELEMETRY,
        MessageKind.REPORTED,
        MessageKind.QUOTE,
        MessageKind.CERT_REQUEST,
    }
)
CONTROLLER_TO_DEVICE = frozenset(
    {
        MessageKind.ACK,
        MessageKind.DESIRED,
        MessageKind.CHALLENGE,
        MessageKind.CERT_ISSUED,
        MessageKind.CONTROLLER_KEYS,
        MessageKind.COMMAND,
    }
)


def is_valid_device_id(device_id: str) -> bool:
    """True for ids of 1-63 lowercase letters, digits, ``-`` or ``_``, starting alphanumeric."""
    return bool(_DEVICE_ID.match(device_id))


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """One device's topic of one kind."""

    device_id: str
    kind: MessageKind

    def __post_init__(self) -> None:
        if not is_valid_device_id(self.device_id):
            raise ValueError(f"invalid device id {self.device_id!r}")

    def __str__(self) -> str:
        return f"{TOPIC_ROOT}/{self.device_id}/{self.kind.value}"

    @staticmethod
    def subscription(kind: MessageKind) -> str:
        """The wildcard filter that matches this kind for every device."""
        return f"{TOPIC_ROOT}/+/{kind.value}"

    @classmethod
    def parse(cls, topic: str) -> "DeviceTopic":
        """Parse a concrete topic; raises ``ProtocolError`` for anything not v1-shaped."""
        parts = topic.split("/")
        if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
            raise ProtocolError("bad_topic", f"topic {topic!r} is not {TOPIC_ROOT}/<device>/<kind>")
        device_id, kind = parts[2], parts[3]
        if not is_valid_device_id(device_id):
            raise ProtocolError("bad_topic", f"invalid device id in topic {topic!r}")
        try:
            return cls(device_id, MessageKind(kind))
        except ValueError:
            raise ProtocolError("bad_topic", f"unknown message kind {kind!r}") from None
