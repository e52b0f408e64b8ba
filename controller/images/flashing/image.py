"""Step 1 of flashing: verify the image, and read what flashing needs from the verified copy.

The image is first copied, in one read, into a private 0600 file (in a 0700 temporary
folder); that copy is what is verified and what is written, so the file given cannot
change between the two. ``verified_image`` checks member names first (so a path-traversal
attempt is called what it is), then ``controller.images.build.verify_image`` checks the
signature, the image id and every member against the manifest.
"""

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from controller.images.build import verify_image
from controller.images.flashing.device_files import MAX_TEMPLATE_BYTES
from controller.images.manifest import ROOTFS, FileEntry, ImageError, Manifest
from shared.json_guard import JsonShapeError, loads_bounded
from shared.provisioning import AGENT_CONFIG, AGENT_CONFIG_SCHEMA
from shared.tar_guard import TarGuardError, TarLimits, check_members

MAX_SCHEMA_BYTES = 4 * 1024 * 1024
# An image is regular files only (build.py writes no folders or links); the wheelhouse of
# the largest recipe (CUDA wheels) is a few GiB.
MAX_IMAGE_BYTES = 32 * 1024**3
IMAGE_TAR_LIMITS = TarLimits(
    max_members=100_000,
    max_member_bytes=MAX_IMAGE_BYTES,
    max_total_bytes=MAX_IMAGE_BYTES,
    allow_links=False,
)
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class VerifiedImage:
    """An image whose signature, manifest and every member were checked; ``path`` is the
    private copy that was checked (and that is written from)."""

    path: Path
    manifest: Manifest

    @property
    def image_id(self) -> str:
        return self.manifest.image_id

    def entries(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.manifest.files}

    def rootfs_files(self) -> set[str]:
        """Every image file as a device-relative path."""
        return {f.path[len(ROOTFS) :] for f in self.manifest.files if f.path.startswith(ROOTFS)}


def _safe_member_name(name: str) -> str:
    """``name`` without a trailing slash, or ImageError when it could leave the target."""
    if not name or "\x00" in name or "\\" in name:
        raise ImageError(f"tar member {name!r} has an unsafe name")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", "") for part in name.rstrip("/").split("/")):
        raise ImageError(f"tar member {name!r} points outside the image (path traversal)")
    return name.rstrip("/")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isreg():
        raise ImageError(f"{member.name} is not a regular file")
    if member.size > limit:
        raise ImageError(f"{member.name} is {member.size} bytes, more than {limit}")
    handle = tar.extractfile(member)
    if handle is None:
        raise ImageError(f"{member.name} cannot be read")
    return handle.read(limit + 1)


def _private_copy(image: Path, folder: Path) -> Path:
    """``image`` copied in one read into a new 0600 file in ``folder``."""
    copy = folder / "image.tar"
    try:
        with image.open("rb") as source:
            st = os.fstat(source.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(f"{image} is not a regular file")
            if st.st_size > MAX_IMAGE_BYTES:
                raise ImageError(f"{image} is {st.st_size} bytes, more than {MAX_IMAGE_BYTES}")
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
    except OSError as e:
        raise ImageError(f"cannot read {image}: {e}") from e
    return copy


@contextmanager
def verified_image(image: Path, public_key: bytes) -> Iterator[VerifiedImage]:
    """Check everything about ``image`` without writing anything to the target; ImageError
    naming every problem (the signature, the manifest, each file by its path) when it must
    not be used. Yields the verified private copy (removed afterwards): write from it only."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-flash-") as folder:
        copy = _private_copy(image, Path(folder))
        try:
            with tarfile.open(copy, "r:*") as tar:
                members = check_members(tar, limits=IMAGE_TAR_LIMITS, source=str(image))
        except TarGuardError as e:
            raise ImageError(f"image refused: {e}") from e
        except (OSError, tarfile.TarError, EOFError) as e:
            raise ImageError(f"{image} is not a readable image tar: {e}") from e
        for member in members:
            _safe_member_name(member.name)
        yield VerifiedImage(copy, verify_image(copy, public_key))


def _verified_file(image: VerifiedImage, relative: str, limit: int, missing: str) -> bytes:
    """The bytes of the image file ``rootfs/<relative>``, checked again against the
    manifest; ImageError ``<name>: <missing>`` when the image has no such file."""
    name = ROOTFS + relative
    if name not in image.entries():
        raise ImageError(f"{name}: {missing}")
    with tarfile.open(image.path, "r:*") as tar:
        data = _read_member(tar, tar.getmember(name), limit)
    if hashlib.sha256(data).hexdigest() != image.entries()[name].sha256:
        raise ImageError(f"{name}: content does not match the manifest (changed since checked)")
    return data


def template_bytes(image: VerifiedImage) -> bytes:
    """The image's ``agent.yaml`` template (its hash was checked with the image)."""
    return _verified_file(
        image, AGENT_CONFIG, MAX_TEMPLATE_BYTES, "missing (the image has no agent config template)"
    )


def agent_config_schema(image: VerifiedImage) -> dict[str, Any]:
    """The JSON Schema of the agent config that the image build exported from the agent the
    image holds; ImageError for an image built before images carried it (rebuild it)."""
    name = ROOTFS + AGENT_CONFIG_SCHEMA
    data = _verified_file(
        image,
        AGENT_CONFIG_SCHEMA,
        MAX_SCHEMA_BYTES,
        "missing: the image was built before images carried the agent's config schema;"
        " rebuild it with 'edgefleet image build'",
    )
    try:
        schema = loads_bounded(data, max_bytes=MAX_SCHEMA_BYTES)
    except JsonShapeError as e:
        raise ImageError(f"{name} is refused: {e}") from e
    if not isinstance(schema, dict):
        raise ImageError(f"{name} is not a JSON object")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise ImageError(f"{name} is not a valid JSON Schema: {e.message}") from e
    return schema


__all__ = [
    "CHUNK",
    "MAX_IMAGE_BYTES",
    "VerifiedImage",
    "agent_config_schema",
    "template_bytes",
    "verified_image",
]
