"""Device signatures on ingest: nothing a device did not sign is applied (docs/protocol.md).

Each message a device publishes is signed with its identity key (shared/message_signing.py).
Before a batch is applied, in its own transaction, each message is checked against the key
enrolled for its device (one query per batch):

- a device with an enrolled key: the message must be signed by that key (``unsigned``,
  ``unknown_key``, ``bad_signature`` otherwise), births included, so a birth presenting a
  new key is refused rather than quarantining the device it names;
- a device with none yet: a birth that presents a key must be signed by it (proof of
  possession; attestation then enrolls it on first use or quarantines an unregistered one),
  and later messages in the same batch are checked against it. Without a key: accepted
  under ``tofu`` enrollment (agents that predate attestation), refused (``not_enrolled``)
  under ``provisioned``, except a birth, which attestation quarantines visibly;
- a signed message older than ``max_age_s`` (by its ``ts``) is refused as ``expired``: a
  replay of something captured long ago. Births and deaths (retained, and the Last Will is
  composed when the session starts) are numbered by ``bd_seq`` instead.

Everything refused is counted by reason and dead-lettered by the caller; what is refused is
never acknowledged to the device as stored, so a genuine device re-sends it.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from controller.attestation.service import DeviceIdentity
from shared.attestation import AttestationError, decode_public_key
from shared.errors import ProtocolError
from shared.message_signing import DEVICE_DOMAIN, SignedPayload, short_key_id, verify
from shared.messages import AnyMessage, Birth, Death

if TYPE_CHECKING:
    from controller.attestation.service import AttestationService
    from controller.ingest.apply import BatchResult, Decoded

# A signed message older than this is a replay (devices sign when they send: a batch
# re-sent after a week offline is signed anew).
DEFAULT_MAX_AGE_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SignatureRules:
    """How strictly ingest checks device signatures."""

    enrollment: str  # tofu | provisioned (attestation's)
    max_age_s: float


def default_rules(attestation: "AttestationService | None") -> SignatureRules:
    """The rules of a controller with ``attestation`` (its enrollment; tofu without it)."""
    enrollment = attestation.enrollment if attestation is not None else "tofu"
    return SignatureRules(enrollment=enrollment, max_age_s=DEFAULT_MAX_AGE_S)


def refuse_unverified(
    session: Session, batch: list["Decoded"], result: "BatchResult", rules: SignatureRules
) -> list["Decoded"]:
    """The messages of ``batch`` that pass ``check_signature``; the others are counted in
    ``result.outcome`` and listed in ``result.refused`` with their reason."""
    keys = enrolled_keys(session, (d.message.device_id for d in batch))
    kept: list[Decoded] = []
    for decoded in batch:
        message, received = decoded.message, decoded.received
        try:
            key = check_signature(
                received.topic,
                message,
                decoded.signed,
                keys.get(message.device_id),
                rules,
                received.received_at,
            )
        except ProtocolError as e:
            result.outcome[f"rejected:{e.reason}"] += 1
            result.refused.append((received, e))
            continue
        if key is not None:
            keys.setdefault(message.device_id, key)  # a birth's key checks what follows it
        kept.append(decoded)
    return kept


def enrolled_keys(session: Session, device_ids: Iterable[str]) -> dict[str, bytes]:
    """The enrolled identity keys (raw) of ``device_ids``, in one query."""
    ids = set(device_ids)
    if not ids:
        return {}
    rows = session.exec(
        select(DeviceIdentity.device_id, DeviceIdentity.public_key).where(
            col(DeviceIdentity.device_id).in_(ids)
        )
    )
    keys: dict[str, bytes] = {}
    for device_id, public_key in rows:
        try:
            keys[device_id] = decode_public_key(public_key)
        except AttestationError:
            continue  # unreadable row: treated as not enrolled (the API refuses such keys)
    return keys


def check_signature(
    topic: str,
    message: AnyMessage,
    signed: SignedPayload | None,
    key: bytes | None,
    rules: SignatureRules,
    now: datetime,
) -> bytes | None:
    """Raise ``ProtocolError`` unless ``message`` is its device's; returns the key it was
    checked against (a birth's own key for a device with none enrolled, else ``key``)."""
    if key is None and isinstance(message, Birth) and message.identity_key is not None:
        try:
            key = decode_public_key(message.identity_key)
        except AttestationError as e:
            raise ProtocolError("bad_identity_key", str(e)) from e
        if signed is None:
            raise ProtocolError("unsigned", "a birth presenting a key must be signed by it")
    if key is None:
        if rules.enrollment == "tofu" or isinstance(message, Birth):
            return None  # nothing to check against; attestation deals with the device
        raise ProtocolError(
            "not_enrolled",
            f"device {message.device_id!r} has no enrolled identity key to check its "
            "messages with (enrollment is provisioned)",
        )
    if signed is None:
        raise ProtocolError("unsigned", f"{message.type!r} carries no signature of the device")
    if signed.kid != short_key_id(key):
        raise ProtocolError(
            "unknown_key",
            f"{message.type!r} signed by key {signed.kid}, the device's is {short_key_id(key)}",
        )
    if not verify(key, DEVICE_DOMAIN, topic, signed):
        raise ProtocolError("bad_signature", f"{message.type!r}: signature does not verify")
    if not isinstance(message, Birth | Death) and message.ts < now - timedelta(
        seconds=rules.max_age_s
    ):
        raise ProtocolError(
            "expired",
            f"{message.type!r} was signed at {message.ts.isoformat()}, more than "
            f"{rules.max_age_s:.0f} s ago (a replay)",
        )
    return key


__all__ = [
    "DEFAULT_MAX_AGE_S",
    "SignatureRules",
    "check_signature",
    "default_rules",
    "enrolled_keys",
    "refuse_unverified",
]
