"""Signing keys of the update repository, encrypted at rest.

Every private key is an Ed25519 key stored as a PEM PKCS#8 block encrypted with the
operator's passphrase (cryptography's ``BestAvailableEncryption``), in a file of mode 0600
named ``<role>.<keyid>.pem`` inside a 0700 folder. The passphrase comes from a file or
``EDGEFLEET_KEY_PASSPHRASE`` and is only held as a ``SecretStr``: it never reaches a log,
an error or a repr. Keys are decrypted when a signature is needed and not kept, so a key
rotated by the CLI is picked up by a running controller without a restart.

An exported (offline) key file is the same format with one or more PEM blocks, each after
a ``# <role> key <keyid>`` comment line.
"""

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from pydantic import SecretStr
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from controller.settings import PLACEHOLDER_SECRETS
from controller.updates._files import fsync_dir, write_atomic
from controller.updates.errors import KeyStoreError

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
# Where the controller looks for the passphrase, as messages name it.
PASSPHRASE_SOURCES = f"updates.passphrase_file or {PASSPHRASE_ENV}"
# cryptography's PKCS#8 encryption is PBKDF2-HMAC-SHA256 with only 2048 rounds: the
# passphrase itself has to carry the strength against a stolen key file.
MIN_PASSPHRASE_LENGTH = 12
ROLES = ("root", "targets", "snapshot", "timestamp")

_ENCRYPTED_PEM = re.compile(
    rb"-----BEGIN ENCRYPTED PRIVATE KEY-----\r?\n.+?-----END ENCRYPTED PRIVATE KEY-----\r?\n?",
    re.DOTALL,
)
_PLAIN_PEM = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")
_KEY_FILE = re.compile(r"^(root|targets|snapshot|timestamp)\.([0-9a-f]{64})\.pem$")


def read_passphrase(
    passphrase_file: Path | None, environ: Mapping[str, str] | None = None
) -> SecretStr | None:
    """The key passphrase from ``passphrase_file`` (trailing newline dropped) or from
    ``EDGEFLEET_KEY_PASSPHRASE``; None when neither is given."""
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise KeyStoreError(f"cannot read passphrase file {passphrase_file}: {e}") from e
        return SecretStr(text.rstrip("\r\n"))
    value = (os.environ if environ is None else environ).get(PASSPHRASE_ENV)
    return None if value is None else SecretStr(value)


def require_passphrase(passphrase: SecretStr | None) -> SecretStr:
    """Refuse a missing, empty, placeholder or short passphrase before any key is written
    or read with it."""
    if passphrase is None:
        raise KeyStoreError(
            f"no key passphrase: pass --passphrase-file or set {PASSPHRASE_ENV}"
            " (the controller reads updates.passphrase_file or the same variable)"
        )
    value = passphrase.get_secret_value()
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        raise KeyStoreError("the key passphrase is empty or a well-known placeholder")
    if len(value) < MIN_PASSPHRASE_LENGTH:
        raise KeyStoreError(
            f"the key passphrase is shorter than {MIN_PASSPHRASE_LENGTH} characters"
        )
    return passphrase


def public_key_of(private: Ed25519PrivateKey) -> SSlibKey:
    """The TUF public key (with its default keyid) of an Ed25519 private key."""
    return SSlibKey.from_crypto(private.public_key(), scheme="ed25519")


def encrypt_private_key(private: Ed25519PrivateKey, passphrase: SecretStr) -> bytes:
    """PEM PKCS#8, encrypted with ``passphrase``."""
    secret = require_passphrase(passphrase).get_secret_value().encode()
    return private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(secret))


def decrypt_private_keys(
    data: bytes, passphrase: SecretStr | None, source: str
) -> list[Ed25519PrivateKey]:
    """Every encrypted Ed25519 key in ``data`` (one PEM block or an exported bundle).

    ``source`` names the file in errors; plaintext keys are refused, not used.
    """
    blocks = _ENCRYPTED_PEM.findall(data)
    if not blocks:
        if _PLAIN_PEM.search(data):
            raise KeyStoreError(
                f"{source} holds an unencrypted private key; keys must be encrypted at rest"
            )
        raise KeyStoreError(f"{source} holds no encrypted private key")
    if passphrase is None:
        require_passphrase(passphrase)
    assert passphrase is not None
    secret = passphrase.get_secret_value().encode()
    keys: list[Ed25519PrivateKey] = []
    for block in blocks:
        try:
            private = load_pem_private_key(block, secret)
        except (ValueError, TypeError) as e:
            # cryptography's message is about the ciphertext, never the passphrase
            raise KeyStoreError(
                f"cannot decrypt {source}: wrong passphrase or damaged key file"
            ) from e
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyStoreError(f"{source} holds a key that is not Ed25519")
        keys.append(private)
    return keys


def _signer(private: Ed25519PrivateKey, public: Key, source: str) -> CryptoSigner:
    if not isinstance(public, SSlibKey):
        raise KeyStoreError(f"key {public.keyid} in the root metadata is not an SSlib key")
    try:
        return CryptoSigner(private, public)
    except ValueError as e:  # securesystemslib's KeyMismatchError is a ValueError
        raise KeyStoreError(f"{source} does not match key {public.keyid}") from e


def load_key_file(path: Path, passphrase: SecretStr | None) -> list[CryptoSigner]:
    """Signers for every key in an offline key file (used to sign root from outside)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyStoreError(f"cannot read key file {path}: {e}") from e
    return [
        _signer(private, public_key_of(private), path.name)
        for private in decrypt_private_keys(data, passphrase, path.name)
    ]


class KeyStore:
    """The online key folder: generate, find, decrypt and export role keys."""

    def __init__(self, keys_dir: Path, passphrase: SecretStr | None) -> None:
        self.dir = keys_dir
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return f"KeyStore({str(self.dir)!r})"

    @property
    def has_passphrase(self) -> bool:
        return self._passphrase is not None

    def check_passphrase(self) -> None:
        """Raise KeyStoreError unless the passphrase is usable for new keys."""
        require_passphrase(self._passphrase)

    def files(self) -> dict[str, tuple[str, Path]]:
        """keyid -> (role, path) for every key file in the folder."""
        found: dict[str, tuple[str, Path]] = {}
        if not self.dir.is_dir():
            return found
        for path in sorted(self.dir.iterdir()):
            match = _KEY_FILE.match(path.name)
            if match and path.is_file():
                found[match.group(2)] = (match.group(1), path)
        return found

    def generate(self, role: str) -> SSlibKey:
        """Create a new encrypted key for ``role``; return its public key."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        passphrase = require_passphrase(self._passphrase)
        private = Ed25519PrivateKey.generate()
        public = public_key_of(private)
        self._ensure_dir()
        write_atomic(
            self.dir / f"{role}.{public.keyid}.pem",
            encrypt_private_key(private, passphrase),
            0o600,
        )
        return public

    def signers(self, keys: Mapping[str, Key]) -> dict[str, CryptoSigner]:
        """Signers for those of ``keys`` (keyid -> public key) held in this folder."""
        files = self.files()
        signers: dict[str, CryptoSigner] = {}
        for keyid, public in keys.items():
            if keyid not in files:
                continue
            path = files[keyid][1]
            try:
                data = path.read_bytes()
            except OSError as e:
                raise KeyStoreError(f"cannot read key file {path}: {e}") from e
            privates = decrypt_private_keys(data, self._passphrase, path.name)
            signers[keyid] = _signer(privates[0], public, path.name)
        return signers

    def export(self, keyids: Iterable[str], out: Path, *, keep: bool) -> list[str]:
        """Write the (still encrypted) keys ``keyids`` to ``out`` as one bundle (0600), then
        remove them from this folder unless ``keep``. Refuses to overwrite ``out``."""
        files = self.files()
        wanted = list(dict.fromkeys(keyids))
        missing = [k for k in wanted if k not in files]
        if missing:
            raise KeyStoreError(f"no private key in {self.dir} for {', '.join(missing)}")
        if not wanted:
            raise KeyStoreError(f"no keys to export from {self.dir}")
        if out.exists():
            raise KeyStoreError(f"{out} already exists; choose another file")
        parts: list[bytes] = []
        for keyid in wanted:
            role, path = files[keyid]
            data = path.read_bytes()
            # Proves the passphrase opens it before the only online copy goes away.
            decrypt_private_keys(data, self._passphrase, path.name)
            parts.append(f"# {role} key {keyid}\n".encode() + data.rstrip(b"\n") + b"\n")
        try:
            write_atomic(out, b"".join(parts), 0o600)
        except OSError as e:
            raise KeyStoreError(f"cannot write {out}: {e}") from e
        if not keep:
            for keyid in wanted:
                files[keyid][1].unlink()
            fsync_dir(self.dir)
        return wanted

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)


__all__ = [
    "MIN_PASSPHRASE_LENGTH",
    "PASSPHRASE_ENV",
    "PASSPHRASE_SOURCES",
    "ROLES",
    "KeyStore",
    "decrypt_private_keys",
    "encrypt_private_key",
    "load_key_file",
    "public_key_of",
    "read_passphrase",
    "require_passphrase",
]
