"""Bearer keys of the agent's local API (``api.keys_file``): one named key per local app.

The file stores only the SHA-256 of each key, under the app's name::

    # edge-agent API keys: edge-agent api-key add NAME --keys-file FILE
    keys:
      dashboard: sha256:3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855e

``edge-agent api-key add NAME`` makes a key, prints it once and stores its hash. A request
presents ``Authorization: Bearer <key>``; its hash is compared, in constant time, with every
stored one, and the matching name is what the agent knows of the caller (telemetry counts
requests by that name; the key itself is never logged or kept).
"""

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from shared.yaml_guard import YamlShapeError, read_yaml_file

# App names become a Prometheus label: short, plain, and as many as an operator writes.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_KEYS = 256
KEY_PREFIX = "efk_"  # so a leaked key is recognisable (secret scanners, grep)
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_HEADER = "# edge-agent API keys: edge-agent api-key add NAME --keys-file FILE\n"
# The longest Authorization value worth hashing: a key is 47 characters.
MAX_KEY_CHARS = 512


class ApiKeysError(ValueError):
    """The keys file is unreadable or malformed, or a name is refused; the text says which."""


def key_hash(key: str) -> str:
    """The stored form of ``key``."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive,
    RFC 6750's token68 characters), or None when the header is missing or not that."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not token or len(token) > MAX_KEY_CHARS:
        return None
    if re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token) is None:
        return None
    return token


@dataclass(frozen=True)
class ApiKeys:
    """The names and key hashes of one keys file (never the keys)."""

    hashes: dict[str, str] = field(default_factory=dict)  # name -> sha256:hex

    def __repr__(self) -> str:
        return f"ApiKeys(names={sorted(self.hashes)})"

    def app_for(self, key: str) -> str | None:
        """The name whose key ``key`` is, or None. Every stored hash is compared (in
        constant time each), so the answer's timing says nothing of which name matched."""
        presented = key_hash(key).encode()
        found: str | None = None
        for name, stored in self.hashes.items():
            if hmac.compare_digest(presented, stored.encode()):
                found = name
        return found


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ApiKeysError(
            f"app name {name!r}: use 1-64 of a-z, 0-9, '-' or '_', starting with a letter or digit"
        )
    return name


def read_keys_file(path: Path) -> ApiKeys:
    """The keys in ``path``; ApiKeysError naming the file and what is wrong with it."""
    try:
        raw = read_yaml_file(path)
    except OSError as e:
        raise ApiKeysError(f"api.keys_file {path}: cannot read it: {e.strerror or e}") from e
    except YamlShapeError as e:
        raise ApiKeysError(f"api.keys_file {e}") from e
    if raw is None:
        return ApiKeys()
    keys = raw.get("keys") if isinstance(raw, dict) and set(raw) == {"keys"} else None
    if keys is None:
        keys = {}  # `keys:` with nothing under it
    if not isinstance(raw, dict) or set(raw) != {"keys"} or not isinstance(keys, dict):
        raise ApiKeysError(f"api.keys_file {path}: must be a mapping 'keys: {{name: sha256:...}}'")
    if len(keys) > MAX_KEYS:
        raise ApiKeysError(f"api.keys_file {path}: more than {MAX_KEYS} keys")
    hashes: dict[str, str] = {}
    for name, stored in keys.items():
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ApiKeysError(f"api.keys_file {path}: {name!r} is not a valid app name")
        if not isinstance(stored, str) or not _HASH.fullmatch(stored):
            # Never echo the value: it may be a key pasted where its hash belongs.
            raise ApiKeysError(
                f"api.keys_file {path}: the entry of {name!r} is not 'sha256:' and 64 hex digits"
                " (store hashes only: edge-agent api-key add)"
            )
        hashes[name] = stored
    return ApiKeys(hashes)


def _write(path: Path, hashes: dict[str, str]) -> None:
    lines = [_HEADER, "keys:\n" if hashes else "keys: {}\n"]
    lines += [f"  {name}: {stored}\n" for name, stored in sorted(hashes.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_key(path: Path, name: str, *, replace: bool = False) -> str:
    """Make a key for ``name``, store its hash in ``path`` (created if missing) and return
    the key: the only time it exists outside the app that will present it."""
    check_name(name)
    hashes = dict(read_keys_file(path).hashes) if path.exists() else {}
    if name in hashes and not replace:
        raise ApiKeysError(f"{path} already has a key named {name!r} (--replace to rotate it)")
    if name not in hashes and len(hashes) >= MAX_KEYS:
        raise ApiKeysError(f"{path} already holds {MAX_KEYS} keys")
    key = new_key()
    hashes[name] = key_hash(key)
    _write(path, hashes)
    return key


def remove_key(path: Path, name: str) -> None:
    """Drop ``name``'s key from ``path``; its app is refused from the agent's next start."""
    hashes = dict(read_keys_file(path).hashes)
    if hashes.pop(name, None) is None:
        raise ApiKeysError(f"{path} has no key named {name!r}")
    _write(path, hashes)
