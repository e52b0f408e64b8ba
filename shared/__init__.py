"""What the controller and the edge agents agree on: the MQTT protocol v1 and its encoding.

This package imports neither ``controller`` nor ``edge_agent``.
"""

from shared.canonical import canonical_json
from shared.errors import ProtocolError
from shared.messages import (
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    Birth,
    Challenge,
    Death,
    DeviceMessage,
    Heartbeat,
    Quote,
    decode_message,
    encode_message,
)
from shared.topics import TOPIC_ROOT, DeviceTopic, MessageKind, is_valid_device_id

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "TOPIC_ROOT",
    "Birth",
    "Challenge",
    "Death",
    "DeviceMessage",
    "DeviceTopic",
    "Heartbeat",
    "MessageKind",
    "ProtocolError",
    "Quote",
    "canonical_json",
    "decode_message",
    "encode_message",
    "is_valid_device_id",
]
