"""What device and controller agree on for attestation (Keylime-style nonce-bound quotes).

- The bytes a quote's signature covers (``quote_payload``): canonical JSON of the device id,
  the challenge's nonce, the signing key's id, the measurements and both timestamps, under
  a domain tag so a quote signature can never be mistaken for any other signed document.
- Ed25519 helpers over raw 32-byte public keys, and the key id: SHA-256 of the raw key.
- The agent code tree hash: one digest over every ``.py`` file of the agent's packages
  (relative path and file hash, sorted), so the device and the controller compute the same
  value for the same code on any machine, whatever the install folder.

Pure apart from ``tree_hash``, which reads the files it is asked to hash.
"""

import base64
import binascii
import hashlib
import importlib.util
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.canonical import canonical_json

QUOTE_DOMAIN = "edgefleet/attestation/quote/v1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# The measurements every quote carries; models add one ``model:<name>`` each.
AGENT_CODE = "agent_code"
CONFIG = "config"
IMAGE_ID = "image_id"
BOOT_EPOCH = "boot_epoch"
MODEL_PREFIX = "model:"
REQUIRED_MEASUREMENTS = (AGENT_CODE, CONFIG, IMAGE_ID, BOOT_EPOCH)
# The packages whose code the agent_code measurement covers.
AGENT_PACKAGES = ("edge_agent", "shared")


class AttestationError(ValueError):
    """Attestation data (a key, a signature) that is malformed; the text says what."""


# --- keys and signatures ------------------------------------------------------------------
def key_id(public_key: bytes) -> str:
    """The key id: hex SHA-256 of the raw 32-byte Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise AttestationError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
    return hashlib.sha256(public_key).hexdigest()


def encode_public_key(public_key: bytes) -> str:
    """Standard base64 of the raw public key (44 characters), as births carry it."""
    key_id(public_key)  # length check
    return base64.b64encode(public_key).decode("ascii")


def decode_public_key(text: str) -> bytes:
    """The raw public key from its base64 form; ``AttestationError`` if it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise AttestationError("identity key is not base64") from e
    if len(raw) != PUBLIC_KEY_BYTES:
        raise AttestationError(
            f"identity key is {len(raw)} bytes, an Ed25519 public key is {PUBLIC_KEY_BYTES}"
        )
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise AttestationError("identity key is not an Ed25519 public key") from e
    return raw


def public_key_of(private_key: Ed25519PrivateKey) -> bytes:
    """The raw public key of ``private_key``."""
    return private_key.public_key().public_bytes_raw()


def sign(private_key: Ed25519PrivateKey, payload: bytes) -> str:
    """Base64 Ed25519 signature of ``payload``."""
    return encode_signature(private_key.sign(payload))


def encode_signature(signature: bytes) -> str:
    if len(signature) != SIGNATURE_BYTES:
        raise AttestationError(f"an Ed25519 signature is {SIGNATURE_BYTES} bytes")
    return base64.b64encode(signature).decode("ascii")


def verify(public_key: bytes, payload: bytes, signature: str) -> bool:
    """True if ``signature`` (base64) is ``public_key``'s signature of ``payload``."""
    try:
        raw = base64.b64decode(signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(raw, payload)
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


# --- the signed quote -----------------------------------------------------------------------
def stamp(moment: datetime) -> str:
    """One text per instant: UTC, microseconds, ``Z`` (both sides format times this way)."""
    if moment.tzinfo is None:
        raise ValueError("attestation times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def quote_payload(
    *,
    device_id: str,
    nonce: str,
    key_id: str,
    measurements: Mapping[str, str],
    issued_at: datetime,
    answered_at: datetime,
) -> bytes:
    """The exact bytes a quote's signature covers (canonical JSON: keys sorted)."""
    return canonical_json(
        {
            "domain": QUOTE_DOMAIN,
            "device_id": device_id,
            "nonce": nonce,
            "key_id": key_id,
            "measurements": dict(measurements),
            "issued_at": stamp(issued_at),
            "answered_at": stamp(answered_at),
        }
    )


def quote_digest(payload: bytes, signature: str) -> str:
    """Identifies one quote exactly (payload and signature): tells a re-delivery of the
    same message from a different quote for the same nonce."""
    return hashlib.sha256(payload + b"\n" + signature.encode("ascii")).hexdigest()


# --- the agent code tree hash ---------------------------------------------------------------
def tree_digest(entries: Iterable[tuple[str, str]]) -> str:
    """Hex SHA-256 over ``(relative path, file sha256)`` pairs, sorted by path."""
    h = hashlib.sha256()
    for path, digest in sorted(entries):
        h.update(f"{path}\0{digest}\n".encode())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# File digests by (path, inode, size, mtime, ctime): a quote re-hashes only files whose
# metadata changed since the last one. Any write changes mtime and ctime, and ctime cannot
# be set back from user space (unlike mtime), so a file edited on disk is still seen at the
# next quote; what is saved is hashing ~100 unchanged files in the link's network thread
# for every challenge (a reconnect storm answers a thousand at once).
# No lock: a dict's get and set are atomic under the GIL, and a lock here was where a storm's
# quoting threads queued (each acquisition another GIL hand-off).
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_MAX_DIGESTS = 4096


def _cached_sha256(path: str, stat: os.stat_result) -> str:
    key = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    found = _DIGESTS.get(key)
    if found is not None:
        return found
    digest = _file_sha256(Path(path))
    if len(_DIGESTS) >= _MAX_DIGESTS:
        _DIGESTS.clear()
    _DIGESTS[key] = digest
    return digest


def _code_files(root: str, prefix: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, path, stat) of every regular file below ``root``, bytecode caches
    left out (``__pycache__`` folders are not entered)."""
    with os.scandir(root) as entries:
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            if entry.is_dir():
                if entry.name != "__pycache__":
                    yield from _code_files(entry.path, relative + "/")
            elif entry.is_file() and not entry.name.endswith((".pyc", ".pyo")):
                yield relative, entry.path, entry.stat()


def tree_hash(roots: Mapping[str, Path]) -> str:
    """The tree hash of every file under each root (data files included: a term list
    edited on a device changes the agent as much as a module does), named ``<root
    name>/<relative path>`` (POSIX separators), so the install folder does not change the
    value. Bytecode caches are left out."""
    entries = [
        (f"{name}/{relative}", _cached_sha256(path, stat))
        for name, root in roots.items()
        for relative, path, stat in _code_files(str(root))
    ]
    return tree_digest(entries)


def package_dir(name: str) -> Path:
    """Where top-level package ``name`` is installed, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def installed_agent_code() -> str:
    """The agent_code value of the agent packages installed in this environment (the
    controller uses it as a golden value in development, without importing the agent)."""
    return tree_hash({name: package_dir(name) for name in AGENT_PACKAGES})


__all__ = [
    "AGENT_CODE",
    "AGENT_PACKAGES",
    "BOOT_EPOCH",
    "CONFIG",
    "IMAGE_ID",
    "MODEL_PREFIX",
    "QUOTE_DOMAIN",
    "REQUIRED_MEASUREMENTS",
    "AttestationError",
    "decode_public_key",
    "encode_public_key",
    "encode_signature",
    "installed_agent_code",
    "key_id",
    "package_dir",
    "public_key_of",
    "quote_digest",
    "quote_payload",
    "sign",
    "stamp",
    "tree_digest",
    "tree_hash",
    "verify",
]
