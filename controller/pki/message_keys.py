"""The controller's message keys: what signs every message the controller sends devices.

Ed25519 keys in ``<pki.dir>/message-keys/`` (folder 0700): one ``<kid>.pem`` per key
(PKCS#8, mode 0600; encrypted with the TUF keys' passphrase when the controller has one,
as every production controller does) and ``current``, the short id of the key that signs
now. ``serve`` creates the first key when there is none. Every replica of one fleet must
hold the same folder (copy it, or put it on shared storage): devices trust keys, not
replicas.

Rotation has two steps, so no device ever gets a message signed by a key it does not know:

1. ``edgefleet pki rotate-message-key`` adds a key as ``next``. A controller restarted with
   it announces both keys to every device (``controller_keys``, retained, signed by the
   current key) and to every device that is born later; births list the keys a device
   trusts, so ``edgefleet pki message-keys`` can say how many have the new one.
2. ``edgefleet pki promote-message-key`` makes ``next`` current (restart the replicas): it
   signs from then on, and devices are told to drop the old key at their next birth. The
   old key stays until ``edgefleet pki retire-message-key KID``, so a device that missed
   the announcement can still be told the new key with a message it can verify.
"""

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from pydantic import SecretStr

from controller.pki.errors import PkiError
from controller.updates._files import locked
from controller.updates.keys import require_passphrase
from shared.attestation import (
    AttestationError,
    decode_public_key,
    encode_public_key,
    public_key_of,
)
from shared.files import write_atomic
from shared.message_signing import CONTROLLER_DOMAIN, Signer, short_key_id
from shared.message_signing import session_mac_key as _session_mac_key

log = logging.getLogger(__name__)

FOLDER = "message-keys"
CURRENT = "current"
NEXT = "next"
_KEY_FILE = re.compile(r"^([0-9a-f]{16})\.pem$")


@dataclass(frozen=True)
class MessageKeyring:
    """The loaded keys: ``current`` signs; the others only sign rotations to the current."""

    current: Signer
    public_keys: dict[str, bytes]  # short id -> raw public key, current first
    _signers: dict[str, Signer]
    next_kid: str | None = None  # announced to devices, not signing yet
    # short id of a message key -> its paired X25519 exchange key (session MACs)
    _exchange: dict[str, X25519PrivateKey] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"MessageKeyring(current={self.current.kid!r}, next={self.next_kid!r}, "
            f"keys={list(self.public_keys)})"
        )

    @property
    def current_kid(self) -> str:
        return self.current.kid

    def signer(self, kid: str) -> Signer | None:
        """The signer of key ``kid``, if this controller holds it."""
        return self._signers.get(kid)

    def exchange_public(self, kid: str) -> bytes | None:
        """The raw X25519 exchange key paired with message key ``kid``."""
        private = self._exchange.get(kid)
        return None if private is None else private.public_key().public_bytes_raw()

    def session_mac_key(self, kid: str, device_id: str, session_key: bytes) -> bytes | None:
        """The MAC key of a device session whose key ``session_key`` was agreed with the
        exchange key of message key ``kid``; None when this controller does not hold it or
        the session key is not a usable X25519 key."""
        private = self._exchange.get(kid)
        if private is None:
            return None
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(session_key))
        except ValueError:
            return None  # a low-order point: no secret to share
        return _session_mac_key(shared, device_id, session_key)

    def trusted_kids(self) -> list[str]:
        """The short ids devices should trust, newest first: the next key (during a
        rotation) and the current one."""
        return [self.next_kid, self.current.kid] if self.next_kid else [self.current.kid]

    def trusted_set(self) -> list[bytes]:
        """The raw keys of ``trusted_kids``."""
        return [self.public_keys[kid] for kid in self.trusted_kids()]


class MessageKeyStore:
    """The key folder, with the passphrase that opens (or encrypts) its keys."""

    def __init__(self, pki_dir: Path, passphrase: SecretStr | None) -> None:
        self.folder = pki_dir / FOLDER
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return f"MessageKeyStore({str(self.folder)!r})"

    def kids(self) -> list[str]:
        """The short ids of the stored keys (sorted)."""
        if not self.folder.is_dir():
            return []
        return sorted(m.group(1) for p in self.folder.iterdir() if (m := _KEY_FILE.match(p.name)))

    def current_kid(self) -> str | None:
        return self._marker(CURRENT)

    def next_kid(self) -> str | None:
        return self._marker(NEXT)

    def _marker(self, name: str) -> str | None:
        try:
            kid = (self.folder / name).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise PkiError(f"cannot read {self.folder / name}: {e}") from e
        if kid not in self.kids():
            raise PkiError(f"{self.folder / name} names key {kid!r}, which is not in the folder")
        return kid

    def rotate(self) -> str:
        """Add a key as ``next`` (announced, not signing yet); returns its short id."""
        if self.current_kid() is None:
            raise PkiError(f"no controller message key in {self.folder} to rotate from")
        if (pending := self.next_kid()) is not None:
            raise PkiError(f"key {pending} is already next; promote it first")
        return self.generate(marker=NEXT)

    def promote(self) -> str:
        """Make ``next`` current; returns its short id. The old key is kept (retire it)."""
        kid = self.next_kid()
        if kid is None:
            raise PkiError("no next message key to promote (rotate-message-key first)")
        write_atomic(self.folder / CURRENT, (kid + "\n").encode(), mode=0o600)
        (self.folder / NEXT).unlink()
        log.info("controller message key %s is current", kid)
        return kid

    def generate(self, marker: str = CURRENT) -> str:
        """Add a new key and make it ``marker`` (current); returns its short id."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        kid = short_key_id(public_key_of(private))
        pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, self._encryption())
        write_atomic(self.folder / f"{kid}.pem", pem, mode=0o600)
        # The public half beside it, so flashing and the API hand it out without the
        # passphrase.
        write_atomic(
            self.folder / f"{kid}.pub",
            (encode_public_key(public_key_of(private)) + "\n").encode(),
            mode=0o644,
        )
        self._write_exchange(kid)
        write_atomic(self.folder / marker, (kid + "\n").encode(), mode=0o600)
        log.info("new controller message key %s is %s", kid, marker)
        return kid

    def _encryption(self) -> BestAvailableEncryption | NoEncryption:
        if self._passphrase is None:
            return NoEncryption()
        return BestAvailableEncryption(
            require_passphrase(self._passphrase).get_secret_value().encode()
        )

    def _write_exchange(self, kid: str) -> X25519PrivateKey:
        """Make the X25519 exchange key paired with message key ``kid`` (and its .pub),
        encrypted exactly when that key is (one passphrase rule per key, whoever runs)."""
        private = X25519PrivateKey.generate()
        paired = self.folder / f"{kid}.pem"
        encrypted = not paired.exists() or b"ENCRYPTED" in paired.read_bytes()
        encryption = self._encryption() if encrypted else NoEncryption()
        pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
        write_atomic(self.folder / f"{kid}.x25519.pem", pem, mode=0o600)
        public = encode_public_key(private.public_key().public_bytes_raw())
        write_atomic(self.folder / f"{kid}.x25519.pub", (public + "\n").encode(), mode=0o644)
        return private

    def exchange_public_key(self, kid: str) -> bytes:
        """The raw X25519 exchange key paired with ``kid``, read without the passphrase."""
        path = self.folder / f"{kid}.x25519.pub"
        if not path.exists():
            self._read_exchange(kid)  # made now for a key that predates exchange keys
        try:
            return decode_public_key(path.read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError, AttestationError) as e:
            raise PkiError(f"cannot read the exchange key {path}: {e}") from e

    def _read_exchange(self, kid: str) -> X25519PrivateKey:
        path = self.folder / f"{kid}.x25519.pem"
        if not path.exists():
            return self._write_exchange(kid)
        key = self._load_private(path)
        if not isinstance(key, X25519PrivateKey):
            raise PkiError(f"exchange key {path} is not an X25519 key")
        return key

    def current_public_key(self) -> bytes:
        """The current key's public half (raw), read without the passphrase."""
        kid = self.current_kid()
        if kid is None:
            raise PkiError(f"no controller message key in {self.folder} (serve creates one)")
        path = self.folder / f"{kid}.pub"
        if not path.exists():  # a key made before public halves were written beside it
            public = encode_public_key(public_key_of(self._read(kid)))
            write_atomic(path, (public + "\n").encode(), mode=0o644)
        try:
            raw = decode_public_key(path.read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError, AttestationError) as e:
            raise PkiError(f"cannot read the public message key {path}: {e}") from e
        if short_key_id(raw) != kid:
            raise PkiError(f"{path} holds key {short_key_id(raw)}, not {kid}")
        return raw

    def retire(self, kid: str) -> None:
        """Remove key ``kid`` (never the current one)."""
        if kid == self.current_kid():
            raise PkiError(f"key {kid} is the current message key; rotate and promote first")
        if kid == self.next_kid():
            raise PkiError(f"key {kid} is the next message key; promote it, or retire another")
        path = self.folder / f"{kid}.pem"
        if not path.is_file():
            raise PkiError(f"no message key {kid} in {self.folder}")
        os.remove(path)
        for suffix in (".pub", ".x25519.pem", ".x25519.pub"):
            (self.folder / f"{kid}{suffix}").unlink(missing_ok=True)

    def load(self, *, create: bool = False) -> MessageKeyring:
        """Every key, decrypted; with ``create``, a first key is made when there is none."""
        if self.current_kid() is None:
            if not create:
                raise PkiError(f"no controller message key in {self.folder}")
            # Replicas share this folder and may start together: one makes the first key,
            # the others take it (two would each sign with their own, and a device would
            # refuse whichever it did not learn first).
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            with locked(self.folder / ".lock"):
                if self.current_kid() is None:
                    self.generate()
        current = self.current_kid()
        assert current is not None
        pending = self.next_kid()
        signers: dict[str, Signer] = {}
        public: dict[str, bytes] = {}
        exchange: dict[str, X25519PrivateKey] = {}
        for kid in [current, *(k for k in self.kids() if k != current)]:
            private = self._read(kid)
            raw = public_key_of(private)
            if short_key_id(raw) != kid:
                raise PkiError(f"message key file {kid}.pem holds key {short_key_id(raw)}")
            public[kid] = raw
            signers[kid] = Signer(CONTROLLER_DOMAIN, kid, private.sign)
            exchange[kid] = self._read_exchange(kid)
        return MessageKeyring(signers[current], public, signers, pending, exchange)

    def _read(self, kid: str) -> Ed25519PrivateKey:
        path = self.folder / f"{kid}.pem"
        key = self._load_private(path)
        if not isinstance(key, Ed25519PrivateKey):
            raise PkiError(f"message key {path} is not an Ed25519 key")
        return key

    def _load_private(self, path: Path) -> object:
        data = path.read_bytes()
        encrypted = b"ENCRYPTED" in data
        if encrypted and self._passphrase is None:
            raise PkiError(f"message key {path} is encrypted and no key passphrase is set")
        secret = (
            require_passphrase(self._passphrase).get_secret_value().encode()
            if encrypted and self._passphrase is not None
            else None
        )
        try:
            return load_pem_private_key(data, password=secret)
        except (ValueError, TypeError):
            raise PkiError(f"cannot open message key {path} (wrong passphrase?)") from None


__all__ = ["FOLDER", "MessageKeyStore", "MessageKeyring"]
