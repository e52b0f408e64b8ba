"""The device's identity key: Ed25519, created once, and the private half never leaves.

``IdentityKey`` is all the agent needs from a key (its public half and a signature), so a
TPM-backed signer (tpm2-pytss, see docs/attestation.md) can replace the file-backed one
without touching anything else. The file-backed key lives at
``<state_dir>/identity/ed25519.pem`` (PKCS#8 PEM, mode 0600, folder 0700). Flashing
(``edgefleet flash``) creates it before first boot; an agent that finds none creates it.
"""

import logging
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.attestation import key_id, public_key_of
from shared.files import write_atomic
from shared.provisioning import IDENTITY_KEY_FILE

log = logging.getLogger(__name__)

KEY_FILE = IDENTITY_KEY_FILE  # flashing writes it there too (shared.provisioning)


@runtime_checkable
class IdentityKey(Protocol):
    """A device identity key that can sign but never hands out its private half."""

    def public_key_raw(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        ...


class FileIdentityKey:
    """An Ed25519 key in a 0600 PEM file (the development and no-TPM path)."""

    def __init__(self, path: Path, private_key: Ed25519PrivateKey) -> None:
        self.path = path
        self._private_key = private_key
        self._public = public_key_of(private_key)

    def __repr__(self) -> str:  # the private key must never end up in a log line
        return f"FileIdentityKey(path={str(self.path)!r}, key_id={self.key_id[:16]}...)"

    @property
    def key_id(self) -> str:
        return key_id(self._public)

    def public_key_raw(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    @classmethod
    def load_or_create(cls, folder: Path) -> "FileIdentityKey":
        """Load ``folder/ed25519.pem``, creating folder (0700) and key (0600) if absent."""
        path = folder / KEY_FILE
        if path.is_file():
            return cls(path, _load(path))
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        _write_private(path, key)
        identity = cls(path, key)
        log.info("created device identity key %s (key id %s)", path, identity.key_id[:16])
        return identity


def _load(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # Readable by others means possibly copied already; tighten it and say so loudly.
        log.warning("identity key %s had mode %o; set to 0600", path, mode)
        path.chmod(0o600)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        # Only the type of failure: the text of a parser error could quote key material.
        raise RuntimeError(f"identity key {path} is unreadable ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RuntimeError(f"identity key {path} is not an Ed25519 private key")
    return key


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    """Write atomically, 0600 from the first byte (no window where it is world-readable)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, mode=0o600)


__all__ = ["KEY_FILE", "FileIdentityKey", "IdentityKey"]
