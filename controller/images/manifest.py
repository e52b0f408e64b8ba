"""The signed manifest of a firmware image, and the pure checks on it.

``manifest.json`` is canonical JSON (``shared.canonical``)::

    {"format": 1, "image_id": ..., "recipe": {...}, "device_class": ..., "platform": {...},
     "agent_version": ..., "agent_code": ...,
     "files": [{"path": "rootfs/...", "size": N, "sha256": ..., "mode": 420}, ...]}

``files`` lists every regular file of the tar except the manifest and its signature, by
its path in the tar (``rootfs/`` + the path on the device), sorted; ``mode`` is the
permission bits as an integer (420 = 0o644, 493 = 0o755).

The ``image_id`` is the hex SHA-256 of the canonical manifest without ``image_id`` and
without the entry of ``rootfs/etc/edgefleet/image.json``: that file carries the image id
itself, so its bytes are fixed by the manifest instead (``image_json``) and checked exactly.

``manifest.sig`` is ``{"keyid": <sha256 of the raw public key>, "sig": <base64 Ed25519>}``
over the exact bytes of ``manifest.json``.

Nothing here reads files: callers hand in bytes (``controller.images.build`` does the I/O).
"""

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.attestation import key_id, sign, verify
from shared.canonical import canonical_json
from shared.json_guard import JsonShapeError, loads_bounded
from shared.provisioning import IMAGE_FILE

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ROOTFS = "rootfs/"
IMAGE_JSON = ROOTFS + IMAGE_FILE
MODE_FILE = 0o644
MODE_EXEC = 0o755
# Bounds on a manifest read from an image (before its signature is checked, for display):
# an entry is five values, so 100,000 files and a recipe fit; nesting is at most ~6 levels.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_FILES = 100_000
MAX_MANIFEST_VALUES = 5 * MAX_MANIFEST_FILES + 10_000


class ImageError(ValueError):
    """A firmware image that must not be used; ``problems`` lists every reason found."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    """One regular file of the image."""

    path: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mode: Literal[420, 493]  # 0o644, 0o755


class Manifest(_Strict):
    """What an image holds and which measurements it makes on the device."""

    format: Literal[1]
    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    recipe: dict[str, Any]
    device_class: str
    platform: dict[str, Any]
    agent_version: str
    agent_code: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: list[FileEntry]

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)


class Signature(_Strict):
    """``manifest.sig``."""

    keyid: str = Field(pattern=r"^[0-9a-f]{64}$")
    sig: str = Field(min_length=1, max_length=200)


def image_json(*, image_id: str, device_class: str, agent_version: str) -> bytes:
    """The bytes of ``/etc/edgefleet/image.json`` (read by the agent's attestation)."""
    return canonical_json(
        {"image_id": image_id, "device_class": device_class, "agent_version": agent_version}
    )


def compute_image_id(body: dict[str, Any]) -> str:
    """The image id of a manifest body (``image_id`` and the image.json entry left out)."""
    rest = {k: v for k, v in body.items() if k != "image_id"}
    rest["files"] = [f for f in body.get("files", []) if f.get("path") != IMAGE_JSON]
    return hashlib.sha256(canonical_json(rest)).hexdigest()


def sign_manifest(manifest: bytes, private_key: Any) -> bytes:
    """``manifest.sig`` bytes for the canonical manifest bytes."""
    public = private_key.public_key().public_bytes_raw()
    return canonical_json({"keyid": key_id(public), "sig": sign(private_key, manifest)})


def parse_manifest(data: bytes) -> Manifest:
    """The manifest in ``data``; ``ImageError`` when it is not a well-formed, canonical one
    whose image id matches its content."""
    try:
        raw = loads_bounded(data, max_bytes=MAX_MANIFEST_BYTES, max_elements=MAX_MANIFEST_VALUES)
    except JsonShapeError as e:
        raise ImageError(f"{MANIFEST} is refused: {e}") from e
    if not isinstance(raw, dict):
        raise ImageError(f"{MANIFEST} is not a JSON object")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        where = "; ".join(
            f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors()[:5]
        )
        raise ImageError(f"{MANIFEST} is malformed: {where}") from e
    if canonical_json(raw) != data:
        raise ImageError(f"{MANIFEST} is not canonical JSON (it was edited after signing)")
    if compute_image_id(raw) != manifest.image_id:
        raise ImageError(f"{MANIFEST}: image_id does not match the manifest's content")
    if len(manifest.files) > MAX_MANIFEST_FILES:
        raise ImageError(f"{MANIFEST} lists more than {MAX_MANIFEST_FILES} files")
    paths = [f.path for f in manifest.files]
    if paths != sorted(set(paths)):
        raise ImageError(f"{MANIFEST}: file paths are not sorted and unique")
    for path in paths:
        if not path.startswith(ROOTFS) or ".." in path.split("/") or path.endswith("/"):
            raise ImageError(f"{MANIFEST}: file path {path!r} is outside rootfs/")
    return manifest


def check_signature(manifest: bytes, signature: bytes, public_key: bytes) -> None:
    """Raise ``ImageError`` unless ``signature`` (``manifest.sig`` bytes) is the image key
    ``public_key``'s signature of ``manifest``."""
    try:
        sig = Signature.model_validate_json(signature)
    except ValidationError as e:
        raise ImageError(f"{SIGNATURE} is malformed") from e
    expected = key_id(public_key)
    if sig.keyid != expected:
        raise ImageError(
            f"wrong key: the image is signed by key {sig.keyid[:16]}…, the trusted image key"
            f" is {expected[:16]}…"
        )
    if not verify(public_key, manifest, sig.sig):
        raise ImageError(f"bad signature: {SIGNATURE} does not verify over {MANIFEST}")


__all__ = [
    "FORMAT",
    "IMAGE_JSON",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_FILES",
    "MODE_EXEC",
    "MODE_FILE",
    "ROOTFS",
    "SIGNATURE",
    "FileEntry",
    "ImageError",
    "Manifest",
    "Signature",
    "check_signature",
    "compute_image_id",
    "image_json",
    "parse_manifest",
    "sign_manifest",
]
