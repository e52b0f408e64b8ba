"""The controller message keys a device trusts, and the check every inbound message passes.

Everything the controller sends a device (``ack``, ``desired``, ``challenge``,
``cert_issued``, ``controller_keys``) is signed with the controller's message key
(shared/message_signing.py). The device keeps the public keys it trusts in
``<state_dir>/identity/controller-keys.json`` (0600), newest first:

- flashing writes the file, so a flashed device trusts its controller from the first byte;
- a device without it trusts nothing but a ``controller_keys`` message signed by one of the
  keys it lists, and pins those keys (trust on first use, logged as a warning);
- a ``controller_keys`` message signed by a key the device already trusts replaces the set
  (the controller's key rotation); one signed by any other key is refused.

The file also holds the X25519 exchange key paired with the newest key (``exchange_key``):
the link agrees each session's MAC key with it (shared/message_signing.py).

Anything else that is unsigned, signed by an unknown key, or whose signature does not verify
is refused with its reason (``unsigned``, ``no_controller_key``, ``unknown_key``,
``bad_signature``) and never reaches a handler.
"""

import json
import logging
import threading
from pathlib import Path

from shared.attestation import AttestationError, decode_public_key, encode_public_key
from shared.errors import ProtocolError
from shared.files import write_atomic
from shared.message_signing import CONTROLLER_DOMAIN, SignedPayload, short_key_id, verify
from shared.messages import AnyMessage, ControllerKeys

log = logging.getLogger(__name__)


class TrustStoreError(ValueError):
    """The trust file exists but cannot be read as one; the text says what is wrong."""


def read_keys(path: Path) -> tuple[list[bytes], bytes | None]:
    """The keys in a trust file (newest first) and the exchange key paired with the first;
    ([], None) when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], None
    except (OSError, UnicodeDecodeError) as e:
        raise TrustStoreError(f"cannot read controller keys {path}: {e}") from e
    try:
        document = json.loads(text)
        keys = document["keys"]
        if not isinstance(keys, list) or not keys:
            raise TypeError("'keys' is not a non-empty list")
        exchange = document.get("exchange_key")
        return (
            [decode_public_key(k) for k in keys],
            decode_public_key(exchange) if exchange is not None else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError, AttestationError) as e:
        raise TrustStoreError(f"controller keys {path} are malformed: {e}") from e


def write_keys(path: Path, keys: list[bytes], exchange: bytes | None = None) -> None:
    """Write a trust file (0600, its folder 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    document: dict[str, object] = {"keys": [encode_public_key(k) for k in keys]}
    if exchange is not None:
        document["exchange_key"] = encode_public_key(exchange)
    write_atomic(path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o600)


class ControllerTrust:
    """The trusted controller keys of one device, checked against every inbound message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys, self._exchange = read_keys(path)

    @property
    def exchange(self) -> tuple[str, bytes] | None:
        """The newest trusted key's short id and its paired X25519 exchange key, for session
        MACs; None without one (the device then signs every message)."""
        with self._lock:
            if not self._keys or self._exchange is None:
                return None
            return short_key_id(self._keys[0]), self._exchange

    @property
    def newest_kid(self) -> str | None:
        """The short id of the newest trusted key (births carry it); None before pinning."""
        with self._lock:
            return short_key_id(self._keys[0]) if self._keys else None

    def kids(self) -> list[str]:
        with self._lock:
            return [short_key_id(k) for k in self._keys]

    def check(self, topic: str, message: AnyMessage, signed: SignedPayload | None) -> None:
        """Raise ``ProtocolError`` unless ``message`` is the controller's; a verified
        ``controller_keys`` message also pins or rotates the keys here."""
        if isinstance(message, ControllerKeys):
            self._accept_keys(topic, message, signed)
            return
        with self._lock:
            keys = list(self._keys)
        if not keys:
            raise ProtocolError(
                "no_controller_key",
                "this device trusts no controller key yet (flash writes it, or the "
                "controller's controller_keys message pins it)",
            )
        if signed is None:
            raise ProtocolError("unsigned", f"{message.type!r} carries no controller signature")
        key = next((k for k in keys if short_key_id(k) == signed.kid), None)
        if key is None:
            raise ProtocolError("unknown_key", f"signed by key {signed.kid}, not a trusted one")
        if not verify(key, CONTROLLER_DOMAIN, topic, signed):
            raise ProtocolError("bad_signature", f"{message.type!r}: signature does not verify")

    def _accept_keys(
        self, topic: str, message: ControllerKeys, signed: SignedPayload | None
    ) -> None:
        if signed is None:
            raise ProtocolError("unsigned", "'controller_keys' carries no controller signature")
        offered = [decode_public_key(k) for k in message.keys]
        exchange = decode_public_key(message.exchange_key) if message.exchange_key else None
        with self._lock:
            trusted = list(self._keys)
            pinning = not trusted
            signers = offered if pinning else trusted
            key = next((k for k in signers if short_key_id(k) == signed.kid), None)
            if key is None:
                raise ProtocolError(
                    "unknown_key",
                    f"controller keys signed by {signed.kid}, which "
                    + ("they do not list" if pinning else "this device does not trust"),
                )
            if not verify(key, CONTROLLER_DOMAIN, topic, signed):
                raise ProtocolError("bad_signature", "'controller_keys': signature does not verify")
            if offered == trusted and exchange == self._exchange:
                return
            write_keys(self.path, offered, exchange)
            self._keys, self._exchange = offered, exchange
        kids = ", ".join(short_key_id(k) for k in offered)
        if pinning:
            log.warning(
                "pinned the controller's message keys on first use (%s); flash the device "
                "to give it them beforehand (docs/protocol.md)",
                kids,
            )
        else:
            log.info("controller message keys rotated: now trusting %s", kids)
