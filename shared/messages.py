"""Protocol v1 message envelopes: schema, encoding and strict decoding.

Every message is a JSON object with the protocol version ``v``, a ``type``, the sender's
``device_id`` and a timestamp ``ts``, plus the fields of its type. Decoding never trusts the
sender: size, topic shape, JSON, version, schema, topic/type agreement and topic/device
agreement are each checked, and each failure is a ``ProtocolError`` with its own reason.
"""

import itertools
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from shared.canonical import canonical_json
from shared.errors import ProtocolError
from shared.json_guard import JsonShapeError, check_shape, loads_bounded
from shared.message_signing import SIGNATURE_OVERHEAD, SessionMac, SignedPayload, Signer, split
from shared.topics import DeviceTopic, MessageKind

PROTOCOL_VERSION = 1
# Birth messages list models and capabilities; 64 KiB leaves room for that and refuses
# anything that would make a broker or the controller buffer megabytes per device.
MAX_PAYLOAD_BYTES = 64 * 1024

Accelerator = Literal["cpu", "jetson", "nvidia", "npu"]

# Attestation encodings: a raw Ed25519 public key and a signature in standard base64, hex
# nonces and key ids, and measurement names (``model:<name>`` for each active model).
_PUBLIC_KEY = r"^[A-Za-z0-9+/]{43}=$"
_SIGNATURE = r"^[A-Za-z0-9+/]{86}==$"
_HEX256 = r"^[0-9a-f]{64}$"
_KID = r"^[0-9a-f]{16}$"
MeasurementName = Annotated[
    str, StringConstraints(pattern=r"^(?:[a-z][a-z0-9_]{0,31}|model:[^\x00-\x1f]{1,128})$")
]
MeasurementValue = Annotated[str, StringConstraints(min_length=1, max_length=256)]
# A birth lists at most 64 models; a quote measures those plus a handful of others.
MAX_MEASUREMENTS = 80


# Every integer is stored in a BIGINT column somewhere: a larger one would fail its whole
# ingest transaction (PostgreSQL "integer out of range", SQLite OverflowError) - a poison
# message. Refused here instead, with a reason.
MAX_INT64 = 2**63 - 1


def _storable_time(value: datetime) -> datetime:
    """Refuse a time whose UTC value is outside years 1-9999 (a valid ISO time with an
    offset can be): storing or comparing it would raise later, far from the decoder."""
    try:
        value.astimezone(UTC)
    except OverflowError as e:
        raise ValueError("time out of the storable range (years 1-9999 in UTC)") from e
    return value


Timestamp = Annotated[AwareDatetime, AfterValidator(_storable_time)]


class _Frozen(BaseModel):
    # No infinities in float fields: ``1e400`` is valid JSON that overflows a double, and
    # neither database stores an infinity.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HardwareInfo(_Frozen):
    """What the device's hardware probe found."""

    device_class: str = Field(min_length=1, max_length=64)
    arch: str = Field(min_length=1, max_length=32)
    accelerator: Accelerator
    cpu_count: int = Field(ge=1, le=MAX_INT64)
    memory_mb: int = Field(ge=0, le=MAX_INT64)
    execution_providers: list[str] = Field(default_factory=list, max_length=32)
    detail: str | None = Field(default=None, max_length=256)


class ModelInfo(_Frozen):
    """One model the agent serves, and whether it is loaded."""

    name: str = Field(min_length=1, max_length=128)
    runtime: str = Field(min_length=1, max_length=32)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    loaded: bool
    error: str | None = Field(default=None, max_length=512)


class _Envelope(_Frozen):
    v: Literal[1] = 1  # PROTOCOL_VERSION; a literal so a v2 payload fails validation
    device_id: str = Field(min_length=1, max_length=63)
    ts: Timestamp = Field(default_factory=lambda: datetime.now(UTC))


class Birth(_Envelope):
    """Sent (retained) on every MQTT session start; ``bd_seq`` numbers the session."""

    type: Literal["birth"] = "birth"
    bd_seq: int = Field(ge=0, le=MAX_INT64)
    agent_version: str = Field(min_length=1, max_length=32)
    hardware: HardwareInfo
    runtimes: list[str] = Field(default_factory=list, max_length=16)
    models: list[ModelInfo] = Field(default_factory=list, max_length=64)
    api_url: str | None = Field(default=None, max_length=256)
    heartbeat_interval_s: float = Field(gt=0, le=3600)
    # The device's Ed25519 identity public key (raw, base64); None from agents that predate
    # attestation. The controller enrolls it or checks it against the enrolled one.
    identity_key: str | None = Field(default=None, pattern=_PUBLIC_KEY)
    # The short ids (shared.message_signing) of the controller message keys the device
    # trusts, newest first; empty before it trusts any. The controller answers a birth whose
    # list is not the one it wants devices to hold with a ``controller_keys`` message.
    controller_key_ids: list[Annotated[str, StringConstraints(pattern=_KID)]] = Field(
        default_factory=list, max_length=8
    )
    # A fresh X25519 public key (raw, base64) for this session's MACs
    # (shared/message_signing.py), agreed with the exchange key paired with the controller
    # key ``controller_key_ids[0]``; None: the session's messages are signed one by one.
    session_key: str | None = Field(default=None, pattern=_PUBLIC_KEY)


class Death(_Envelope):
    """The Last Will (``reason='will'``) or a clean shutdown, for session ``bd_seq``."""

    type: Literal["death"] = "death"
    bd_seq: int = Field(ge=0, le=MAX_INT64)
    reason: Literal["will", "shutdown"]


class Heartbeat(_Envelope):
    """Periodic liveness and load; ``seq`` is monotonic per device across restarts."""

    type: Literal["heartbeat"] = "heartbeat"
    bd_seq: int = Field(ge=0, le=MAX_INT64)
    seq: int = Field(ge=0, le=MAX_INT64)
    uptime_s: float = Field(ge=0, le=MAX_INT64)
    cpu_percent: float = Field(ge=0, le=100 * 1024)
    memory_percent: float = Field(ge=0, le=100)
    requests_total: int = Field(ge=0, le=MAX_INT64)
    local_tier_healthy: bool


# Free-form documents (record bodies, shadow states) nest at most this deep and hold at most
# this many values each; the whole payload is bounded by MAX_PAYLOAD_BYTES before parsing.
MAX_DOCUMENT_DEPTH = 16
MAX_DOCUMENT_ELEMENTS = 20_000
# The envelope adds a few levels above a document (batch -> records -> record -> body).
MAX_MESSAGE_DEPTH = MAX_DOCUMENT_DEPTH + 4


def _bounded_document(value: dict[str, Any]) -> dict[str, Any]:
    """Refuse a free-form document nested too deep, too large, or holding an infinity
    (valid JSON such as ``1e400`` overflows a double; no database stores it)."""
    check_shape(
        value, max_depth=MAX_DOCUMENT_DEPTH, max_elements=MAX_DOCUMENT_ELEMENTS, allow_nul=True
    )
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded_document)]

# A telemetry batch must stay under MAX_PAYLOAD_BYTES with its envelope.
MAX_BATCH_RECORDS = 500


class Record(_Frozen):
    """One outbox record: a metric or an event, numbered ``(epoch, seq)`` on its device.

    ``epoch`` changes on every agent boot and ``seq`` is monotonic within it, so the pair is
    unique per device forever and the controller can store each record exactly once.
    """

    epoch: int = Field(ge=0, le=MAX_INT64)
    seq: int = Field(ge=0, le=MAX_INT64)
    kind: Literal["metric", "event"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.]+$")
    at: Timestamp
    body: JsonObject = Field(default_factory=dict)


class TelemetryBatch(_Envelope):
    """Consecutive records of one epoch, oldest first (device -> controller, QoS 1)."""

    type: Literal["telemetry"] = "telemetry"
    records: list[Record] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)

    @model_validator(mode="after")
    def _one_epoch_in_order(self) -> "TelemetryBatch":
        epochs = {r.epoch for r in self.records}
        if len(epochs) != 1:
            raise ValueError("a batch holds records of exactly one epoch")
        seqs = [r.seq for r in self.records]
        if any(b <= a for a, b in itertools.pairwise(seqs)):
            raise ValueError("records must be in strictly increasing seq order")
        return self


class Ack(_Envelope):
    """Controller -> device: records ``first_seq..hwm`` of ``epoch`` are stored for good.

    ``device_id`` is the device the ack is for. Acks are per batch (not a running
    high-water mark) because a device may have dropped records under its disk quota, so
    its sequence can have holes the controller never sees.
    """

    type: Literal["ack"] = "ack"
    epoch: int = Field(ge=0, le=MAX_INT64)
    first_seq: int = Field(ge=0, le=MAX_INT64)
    hwm: int = Field(ge=0, le=MAX_INT64)


class Desired(_Envelope):
    """Controller -> device (retained): the whole desired document and its version."""

    type: Literal["desired"] = "desired"
    version: int = Field(ge=1, le=MAX_INT64)
    state: JsonObject


class Reported(_Envelope):
    """Device -> controller: what the device runs now, and the desired version it applied."""

    type: Literal["reported"] = "reported"
    version: int = Field(ge=0, le=MAX_INT64)
    applied_desired_version: int = Field(ge=0, le=MAX_INT64)
    state: JsonObject
    rejected: dict[str, str] = Field(default_factory=dict)


class Challenge(_Envelope):
    """Controller -> device: prove what you run now, by a quote over this fresh nonce.

    ``expires_at`` is when the controller stops accepting an answer; the device answers
    anyway (its clock may be off) and leaves the judgement to the controller.
    """

    type: Literal["challenge"] = "challenge"
    nonce: str = Field(pattern=_HEX256)
    issued_at: Timestamp
    expires_at: AwareDatetime


class Quote(_Envelope):
    """Device -> controller: measurements signed by the device's identity key, bound to a
    challenge's ``nonce`` and ``issued_at``; ``signature`` covers
    ``shared.attestation.quote_payload`` of these fields."""

    type: Literal["quote"] = "quote"
    nonce: str = Field(pattern=_HEX256)
    key_id: str = Field(pattern=_HEX256)
    measurements: dict[MeasurementName, MeasurementValue] = Field(max_length=MAX_MEASUREMENTS)
    issued_at: Timestamp
    answered_at: AwareDatetime
    signature: str = Field(pattern=_SIGNATURE)


# Certificate renewal (docs/tls.md): PEM texts of one P-256 key's CSR or certificate are
# well under these; anything else in them (headers, other blocks, control characters) is
# refused by the patterns before any X.509 parser sees it.
MAX_CSR_PEM = 8 * 1024
MAX_CERTIFICATE_PEM = 8 * 1024
# Compiled with Python's ``re`` (pydantic then uses it instead of Rust's regex crate): the
# Rust engine unrolls the counted repeats ({1,76} lines, {1,160} times) and held 4.8 MiB per
# pattern from import on, in every process that imports this module (benchmarks/
# bench_agent_memory.py). ``\Z`` is what Rust's ``$`` means: the very end, no newline after.
_PEM_BODY = r"\n(?:[A-Za-z0-9+/=]{1,76}\n){1,160}"
_CSR_PEM = re.compile(
    rf"^-----BEGIN CERTIFICATE REQUEST-----{_PEM_BODY}-----END CERTIFICATE REQUEST-----\n\Z"
)
_CERT_PEM = re.compile(rf"^-----BEGIN CERTIFICATE-----{_PEM_BODY}-----END CERTIFICATE-----\n\Z")
# An ECDSA P-256 signature (DER, at most 72 bytes) in standard base64.
_ECDSA_SIGNATURE = r"^[A-Za-z0-9+/]{8,96}={0,2}$"
_HEX128 = r"^[0-9a-f]{32}$"


class CertRequest(_Envelope):
    """Device -> controller: certify the new key in ``csr`` (CN = this device).

    ``certificate`` is the certificate the device holds now (the one the broker
    authenticated this session with); ``signature`` is by its key over
    ``shared.cert_renewal.request_payload`` of these fields and ``ts``, so a broker session
    alone (without that key) gets no certificate. ``request_id`` (random) names the
    request; the answer carries it back.
    """

    type: Literal["cert_request"] = "cert_request"
    request_id: str = Field(pattern=_HEX128)
    csr: str = Field(max_length=MAX_CSR_PEM, pattern=_CSR_PEM)
    certificate: str = Field(max_length=MAX_CERTIFICATE_PEM, pattern=_CERT_PEM)
    signature: str = Field(max_length=96, pattern=_ECDSA_SIGNATURE)


class CertIssued(_Envelope):
    """Controller -> device: the certificate for ``request_id`` and the CA that signed it,
    or ``refused`` (a reason code) and ``detail`` (words) when it will not sign."""

    type: Literal["cert_issued"] = "cert_issued"
    request_id: str = Field(pattern=_HEX128)
    certificate: str | None = Field(default=None, max_length=MAX_CERTIFICATE_PEM, pattern=_CERT_PEM)
    ca: str | None = Field(default=None, max_length=MAX_CERTIFICATE_PEM, pattern=_CERT_PEM)
    refused: str | None = Field(default=None, pattern=r"^[a-z][a-z_]{0,31}$")
    detail: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _certificate_or_refusal(self) -> "CertIssued":
        issued = self.certificate is not None and self.ca is not None
        if self.refused is None and not issued:
            raise ValueError("either certificate and ca, or refused")
        if self.refused is not None and (self.certificate is not None or self.ca is not None):
            raise ValueError("a refusal carries no certificate")
        return self


class ControllerKeys(_Envelope):
    """Controller -> device (retained): the controller message keys to trust from now on,
    newest first (raw Ed25519 public keys, base64). Signed by a key the device trusts
    already (a rotation), or, for a device that trusts none yet, by one of the keys it lists
    (pinned on first use; flashing writes the keys instead, docs/protocol.md)."""

    type: Literal["controller_keys"] = "controller_keys"
    keys: list[Annotated[str, StringConstraints(pattern=_PUBLIC_KEY)]] = Field(
        min_length=1, max_length=8
    )
    # The X25519 exchange key paired with ``keys[0]`` (raw, base64): devices agree session
    # MAC keys with it. None from a controller that takes no MACs.
    exchange_key: str | None = Field(default=None, pattern=_PUBLIC_KEY)


class Command(_Envelope):
    """Controller -> device: act now. ``rebirth``: publish the current session's birth
    again, unchanged (the controller refused a session MAC as ``unknown_session``: the
    birth that opened the session never reached it, e.g. it went to a controller replica's
    broker session that died with it). ``reason`` says why, for the device's log."""

    type: Literal["command"] = "command"
    name: Literal["rebirth"]
    reason: str = Field(default="", max_length=200)


AnyMessage = (
    Birth
    | Death
    | Heartbeat
    | TelemetryBatch
    | Ack
    | Desired
    | Reported
    | Challenge
    | Quote
    | CertRequest
    | CertIssued
    | ControllerKeys
    | Command
)
DeviceMessage = Annotated[AnyMessage, Field(discriminator="type")]
_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(DeviceMessage)

_KIND_BY_TYPE: dict[str, MessageKind] = {
    "birth": MessageKind.STATUS,
    "death": MessageKind.STATUS,
    "heartbeat": MessageKind.HEARTBEAT,
    "telemetry": MessageKind.TELEMETRY,
    "ack": MessageKind.ACK,
    "desired": MessageKind.DESIRED,
    "reported": MessageKind.REPORTED,
    "challenge": MessageKind.CHALLENGE,
    "quote": MessageKind.QUOTE,
    "cert_request": MessageKind.CERT_REQUEST,
    "cert_issued": MessageKind.CERT_ISSUED,
    "controller_keys": MessageKind.CONTROLLER_KEYS,
    "command": MessageKind.COMMAND,
}


def kind_for(message: AnyMessage) -> MessageKind:
    """The topic kind a message is published on."""
    return _KIND_BY_TYPE[message.type]


def encode_message(
    message: AnyMessage, signer: Signer | SessionMac | None = None
) -> tuple[str, bytes]:
    """The topic and canonical JSON payload for ``message``, signed by ``signer`` if given."""
    topic = str(DeviceTopic(message.device_id, kind_for(message)))
    body = canonical_json(message.model_dump(mode="json"))
    return topic, body if signer is None else signer.payload(topic, body)


def _summarize(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _validate_strictly(payload: bytes) -> AnyMessage:
    """Parse within limits and validate the objects, checking one thing after another so a
    refusal names the first defect: ``bad_json``, ``too_deep``, ``too_many_elements``,
    ``schema`` or ``unsupported_version``. Never recursive in Python (shared/json_guard.py):
    a payload nested thousands deep is a refusal, not a ``RecursionError``."""
    try:
        raw = loads_bounded(
            payload,
            max_bytes=MAX_PAYLOAD_BYTES,
            max_depth=MAX_MESSAGE_DEPTH,
            max_elements=MAX_PAYLOAD_BYTES // 2,
            allow_nul=True,
        )
    except JsonShapeError as e:
        raise ProtocolError(e.reason, e.detail) from e
    if not isinstance(raw, dict):
        raise ProtocolError("schema", "payload is not a JSON object")
    if raw.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version", f"protocol version {raw.get('v')!r}, expected {PROTOCOL_VERSION}"
        )
    try:
        message = _ADAPTER.validate_python(raw)
    except ValidationError as e:
        raise ProtocolError("schema", _summarize(e)) from e
    if b"\\u0000" in payload:
        _refuse_nul_outside_documents(message)
    return message


# Free-form documents are stored as JSON text, and their readers deal with a NUL (rollouts
# replace it, rollups skip the record). Every other string lands in a text column, which
# PostgreSQL refuses a NUL in: the whole ingest transaction would fail on every retry.
_DOCUMENT_FIELDS = frozenset({"body", "state"})


def _refuse_nul_outside_documents(message: AnyMessage) -> None:
    """Refuse a NUL character in any string of ``message`` outside its free-form documents
    (an iterative walk; only payloads holding the ``\\u0000`` escape pay for it)."""
    stack: list[tuple[str, Any]] = [(message.type, message)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, BaseModel):
            stack += [
                (f"{where}.{name}", getattr(item, name))
                for name in type(item).model_fields
                if name not in _DOCUMENT_FIELDS
            ]
        elif isinstance(item, str):
            if "\x00" in item:
                raise ProtocolError("nul_character", f"{where} holds a NUL character")
        elif isinstance(item, list | tuple):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(item)]
        elif isinstance(item, dict):
            for key, value in item.items():
                if "\x00" in key:
                    raise ProtocolError("nul_character", f"a key of {where} holds a NUL")
                stack.append((f"{where}.{key}", value))


def _validate(payload: bytes) -> AnyMessage:
    """Validate ``payload``: straight from the bytes when it is valid, strictly otherwise.

    pydantic's JSON validation (no intermediate Python objects) is ~1.4x faster than
    parsing plus ``validate_python``, and for every payload both accept it gives an equal
    message. It accepts two things the strict path refuses: ``NaN`` and ``±Infinity`` (not
    JSON; payloads holding those bytes anywhere go the strict way) and a missing ``v`` (the
    model has a default; such messages are decoded again, strictly). Numbers that overflow
    a double fail validation on either path (float fields refuse infinities, documents are
    walked). Whatever the fast path refuses is decoded again strictly, so every refusal
    keeps its reason and detail.
    """
    # NUL characters (``\u0000``) are valid JSON, but PostgreSQL stores them in no text
    # column: such payloads take the strict path, which refuses them outside documents.
    if b"NaN" not in payload and b"Infinity" not in payload and b"\\u0000" not in payload:
        try:
            message = _ADAPTER.validate_json(payload)
        except ValidationError:
            pass
        else:
            if "v" in message.model_fields_set:
                return message
    return _validate_strictly(payload)


def decode_signed(
    topic: str, payload: bytes
) -> tuple[DeviceTopic, AnyMessage, SignedPayload | None]:
    """Decode one received message and split off its signature (None: unsigned) for the
    receiver to verify (shared.message_signing.verify). Raises only ``ProtocolError``."""
    if len(payload) > MAX_PAYLOAD_BYTES + SIGNATURE_OVERHEAD:
        raise ProtocolError(
            "oversized", f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    signed = split(payload)
    parsed, message = decode_message(topic, payload if signed is None else signed.body)
    return parsed, message, signed


def decode_message(topic: str, payload: bytes) -> tuple[DeviceTopic, AnyMessage]:
    """Validate and decode one received message; raises ``ProtocolError`` on any defect,
    and nothing else: whatever else a decode raises (a defect of ours that some input
    reaches) is refused as ``malformed`` rather than allowed to kill the caller's thread.
    A signed payload's signature is split off and NOT verified: receivers use
    ``decode_signed`` and verify."""
    try:
        if len(payload) <= MAX_PAYLOAD_BYTES + SIGNATURE_OVERHEAD:
            signed = split(payload)
            if signed is not None:
                payload = signed.body
        return _decode(topic, payload)
    except ProtocolError:
        raise
    except Exception as e:  # the last-resort guard: a hostile byte must never get past here
        raise ProtocolError(
            "malformed", f"could not decode ({type(e).__name__}: {str(e)[:200]})"
        ) from e


def _decode(topic: str, payload: bytes) -> tuple[DeviceTopic, AnyMessage]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            "oversized", f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    parsed_topic = DeviceTopic.parse(topic)
    if not payload:
        raise ProtocolError("empty_payload", f"empty payload on {topic!r}")
    message = _validate(payload)
    if _KIND_BY_TYPE[message.type] is not parsed_topic.kind:
        raise ProtocolError(
            "wrong_type_for_topic",
            f"{message.type!r} is not allowed on {parsed_topic.kind.value!r}",
        )
    if message.device_id != parsed_topic.device_id:
        raise ProtocolError(
            "spoofed_device_id",
            f"payload claims device {message.device_id!r} on the topic of "
            f"{parsed_topic.device_id!r}",
        )
    return parsed_topic, message
