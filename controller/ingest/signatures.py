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

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from controller.attestation.service import DeviceIdentity
from controller.devices.tables import MAX_SESSIONS, Device
from shared.attestation import AttestationError, decode_public_key
from shared.errors import ProtocolError
from shared.message_signing import (
    DEVICE_DOMAIN,
    SignedPayload,
    short_key_id,
    verify,
    verify_mac,
)
from shared.messages import AnyMessage, Birth, Death

if TYPE_CHECKING:
    from controller.attestation.service import AttestationService
    from controller.ingest.apply import BatchResult, Decoded
    from controller.pki.message_keys import MessageKeyring

# A signed message older than this is a replay (devices sign when they send: a batch
# re-sent after a week offline is signed anew).
DEFAULT_MAX_AGE_S = 24 * 3600.0


class SessionKeys:
    """The MAC keys of device sessions (derived with the controller's exchange keys, an
    X25519 agreement each, so cached: one per session, not one per message)."""

    def __init__(self, ring: "MessageKeyring", max_cached: int = 100_000) -> None:
        self._ring = ring
        self._max = max_cached
        self._cache: dict[tuple[str, str, bytes], bytes | None] = {}

    def mac_key(self, device_id: str, exchange_kid: str, session_key: bytes) -> bytes | None:
        """The session's MAC key; None when this controller lacks that exchange key."""
        name = (device_id, exchange_kid, session_key)
        if name not in self._cache:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[name] = self._ring.session_mac_key(exchange_kid, device_id, session_key)
        return self._cache[name]


@dataclass(frozen=True, slots=True)
class SignatureRules:
    """How strictly ingest checks device signatures, and the session keys MACs need."""

    enrollment: str  # tofu | provisioned (attestation's)
    max_age_s: float
    sessions: SessionKeys | None = None


# A device's session as ingest knows it: the X25519 session key (raw) and the controller
# message key whose exchange key the device agreed it with.
DeviceSession = tuple[bytes, str]


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
    macs = any(d.signed is not None and d.signed.mac for d in batch)
    sessions = device_sessions(session, {d.message.device_id for d in batch}) if macs else {}
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
                sessions=sessions.get(message.device_id, {}),
            )
        except ProtocolError as e:
            result.outcome[f"rejected:{e.reason}"] += 1
            result.refused.append((received, e))
            continue
        if key is not None:
            keys.setdefault(message.device_id, key)  # a birth's key checks what follows it
            if isinstance(message, Birth):
                _adopt_session(sessions.setdefault(message.device_id, {}), message)
        kept.append(decoded)
    return kept


def _adopt_session(sessions: dict[str, DeviceSession], birth: Birth) -> None:
    """A verified birth's session checks the MACs after it in the batch."""
    if birth.session_key is None or not birth.controller_key_ids:
        return
    try:
        raw = decode_public_key(birth.session_key)
    except AttestationError:
        return
    sessions[short_key_id(raw)] = (raw, birth.controller_key_ids[0])


def remember_session(
    sessions: list[list[str]], session_key: str, exchange_kid: str
) -> list[list[str]]:
    """A device's recent sessions with a verified birth's added (the newest last, at most
    ``MAX_SESSIONS``): a new list, so the ORM sees the change."""
    kept = [entry for entry in sessions if entry[:1] != [session_key]]
    return [*kept, [session_key, exchange_kid]][-MAX_SESSIONS:]


def device_sessions(session: Session, device_ids: set[str]) -> dict[str, dict[str, DeviceSession]]:
    """The recent sessions of ``device_ids`` by their short ids, in one query."""
    if not device_ids:
        return {}
    rows = session.exec(select(Device.id, Device.sessions).where(col(Device.id).in_(device_ids)))
    found: dict[str, dict[str, DeviceSession]] = {}
    for device_id, entries in rows:
        known: dict[str, DeviceSession] = {}
        for entry in entries or []:
            if (
                not isinstance(entry, list | tuple)
                or len(entry) < 2
                or not isinstance(entry[1], str)
            ):
                continue
            decoded = _public_key(entry[0]) if isinstance(entry[0], str) else None
            if decoded is not None:
                known[decoded[1]] = (decoded[0], entry[1])
        found[device_id] = known
    return found


@functools.lru_cache(maxsize=65_536)
def _public_key(text: str) -> tuple[bytes, str] | None:
    """A stored public key's raw bytes and short id; None if it is not one. A pure function
    of the text, cached: ingest reads the keys of every device of every batch, and checking
    a key (base64, an Ed25519 point, a SHA-256) cost more than the rest of a one-record
    message's signature step."""
    try:
        raw = decode_public_key(text)
    except AttestationError:
        return None
    return raw, short_key_id(raw)


def _check_mac(
    topic: str,
    message: AnyMessage,
    signed: SignedPayload,
    session: DeviceSession | None,
    rules: SignatureRules,
) -> None:
    """A session MAC: only for a session a verified birth opened, and never on a birth or
    death (those carry the identity key's own signature)."""
    if isinstance(message, Birth | Death):
        raise ProtocolError("unsigned", f"a {message.type} must carry the identity key's signature")
    if session is None or rules.sessions is None:
        raise ProtocolError(
            "unknown_session",
            f"{message.type!r} carries a MAC of session {signed.kid}, which is not one of "
            "the device's recent sessions",
        )
    session_key, exchange_kid = session
    mac_key = rules.sessions.mac_key(message.device_id, exchange_kid, session_key)
    if mac_key is None:
        raise ProtocolError(
            "unknown_session", f"no exchange key {exchange_kid} for the device's session"
        )
    if not verify_mac(mac_key, DEVICE_DOMAIN, topic, signed):
        raise ProtocolError("bad_signature", f"{message.type!r}: the session MAC does not verify")


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
        decoded = _public_key(public_key) if isinstance(public_key, str) else None
        if decoded is not None:  # an unreadable row: not enrolled (the API refuses such keys)
            keys[device_id] = decoded[0]
    return keys


def check_signature(
    topic: str,
    message: AnyMessage,
    signed: SignedPayload | None,
    key: bytes | None,
    rules: SignatureRules,
    now: datetime,
    *,
    sessions: Mapping[str, DeviceSession] | None = None,
) -> bytes | None:
    """Raise ``ProtocolError`` unless ``message`` is its device's; returns the key it was
    checked against (a birth's own key for a device with none enrolled, else ``key``).
    A MACed message is checked under the one of the device's recent ``sessions`` (by short
    id) that it names instead."""
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
    if signed.mac:
        _check_mac(topic, message, signed, (sessions or {}).get(signed.kid), rules)
    elif signed.kid != short_key_id(key):
        raise ProtocolError(
            "unknown_key",
            f"{message.type!r} signed by key {signed.kid}, the device's is {short_key_id(key)}",
        )
    elif not verify(key, DEVICE_DOMAIN, topic, signed):
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
    "DeviceSession",
    "SessionKeys",
    "SignatureRules",
    "check_signature",
    "default_rules",
    "device_sessions",
    "enrolled_keys",
    "refuse_unverified",
    "remember_session",
]
