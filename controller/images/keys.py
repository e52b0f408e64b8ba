"""The controller's image key: an Ed25519 key that signs firmware image manifests.

It lives beside the TUF keys (``updates.keys_dir``) under the same rules: the private half
is PEM PKCS#8 encrypted with the operator's passphrase (``controller.updates.keys``), mode
0600 in a 0700 folder, named ``image.<keyid>.pem``; the public half sits next to it as
``image.<keyid>.pub`` (the raw key in base64, one line) so the controller can serve it at
``GET /api/images/key`` without the passphrase. The key id is the SHA-256 of the raw public
key, as for device identity keys (``shared.attestation.key_id``).
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from controller.updates.errors import KeyStoreError
from controller.updates.keys import decrypt_private_keys, encrypt_private_key, require_passphrase
from shared.attestation import AttestationError, decode_public_key, encode_public_key, key_id
from shared.files import write_atomic

_PRIVATE = re.compile(r"^image\.([0-9a-f]{64})\.pem$")
_PUBLIC = re.compile(r"^image\.([0-9a-f]{64})\.pub$")


class ImageKeyError(KeyStoreError):
    """The image key is missing, ambiguous, damaged, or its passphrase is wrong."""


@dataclass(frozen=True, slots=True)
class ImageKey:
    """The image signing key, decrypted for one build."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes_raw()

    @property
    def keyid(self) -> str:
        return key_id(self.public)

    def __repr__(self) -> str:
        return f"ImageKey(keyid={self.keyid!r})"


def _find(keys_dir: Path, pattern: re.Pattern[str]) -> list[tuple[str, Path]]:
    if not keys_dir.is_dir():
        return []
    found = []
    for path in sorted(keys_dir.iterdir()):
        match = pattern.match(path.name)
        if match and path.is_file():
            found.append((match.group(1), path))
    return found


def _only(keys_dir: Path, pattern: re.Pattern[str], what: str) -> tuple[str, Path]:
    found = _find(keys_dir, pattern)
    if not found:
        raise ImageKeyError(
            f"no image {what} in {keys_dir}; create one with 'edgefleet image keygen'"
        )
    if len(found) > 1:
        ids = ", ".join(k for k, _ in found)
        raise ImageKeyError(f"several image keys in {keys_dir} ({ids}); keep exactly one")
    return found[0]


def generate_image_key(keys_dir: Path, passphrase: SecretStr | None) -> bytes:
    """Create the encrypted image key and its public file; returns the raw public key.
    Refuses when an image key exists already (replacing it would orphan every image it
    signed without a decision by the operator)."""
    secret = require_passphrase(passphrase)
    existing = _find(keys_dir, _PRIVATE)
    if existing:
        raise ImageKeyError(f"an image key exists already in {keys_dir}: {existing[0][0]}")
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    keyid = key_id(public)
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(keys_dir, 0o700)
    write_atomic(keys_dir / f"image.{keyid}.pem", encrypt_private_key(private, secret), 0o600)
    write_atomic(
        keys_dir / f"image.{keyid}.pub", (encode_public_key(public) + "\n").encode(), 0o644
    )
    return public


def image_public_key(keys_dir: Path) -> bytes:
    """The raw public image key from ``image.<keyid>.pub`` (no passphrase needed)."""
    keyid, path = _only(keys_dir, _PUBLIC, "public key")
    try:
        public = decode_public_key(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, AttestationError) as e:
        raise ImageKeyError(f"cannot read the image public key {path}: {e}") from e
    if key_id(public) != keyid:
        raise ImageKeyError(f"{path} does not hold the key its name says ({keyid})")
    return public


def load_image_key(keys_dir: Path, passphrase: SecretStr | None) -> ImageKey:
    """Decrypt the image key for signing."""
    keyid, path = _only(keys_dir, _PRIVATE, "key")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageKeyError(f"cannot read the image key {path}: {e}") from e
    private = decrypt_private_keys(data, passphrase, path.name)[0]
    key = ImageKey(private)
    if key.keyid != keyid:
        raise ImageKeyError(f"{path} does not hold the key its name says ({keyid})")
    return key


def read_public_key_file(path: Path) -> bytes:
    """A public image key given on the command line: a file with the base64 raw key."""
    try:
        return decode_public_key(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError, AttestationError) as e:
        raise ImageKeyError(f"{path} is not an image public key: {e}") from e


__all__ = [
    "ImageKey",
    "ImageKeyError",
    "generate_image_key",
    "image_public_key",
    "load_image_key",
    "read_public_key_file",
]
