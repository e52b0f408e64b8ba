"""Flashing: write a verified firmware image onto a device's root and give it an identity.

``flash`` runs on the operator's machine with the device's storage mounted (or writes a
``.tar`` of the device's root). In order, so that a refusal leaves nothing behind:

1. **Verify** the image before anything is written. The image is first copied, in one
   read, into a private 0600 file (in a 0700 temporary folder); that copy is what is
   verified and what is written, so the file given cannot change between the two.
   Checked: ``manifest.sig`` against the image key (given, or ``GET /api/images/key``),
   the manifest's own image id, and every tar member: a regular file under ``rootfs/``
   with a safe name (no ``..``, no absolute path, no links or devices), listed in the
   manifest with that exact size and SHA-256; nothing listed may be missing. A tampered
   image is refused with the file it concerns.
2. **Check the target**: a folder that is missing or empty (``force`` writes over it), or
   a ``.tar`` file that does not exist yet (``force`` replaces it).
3. **Prepare the device's files in memory**: its Ed25519 identity key (generated here, on
   the operator's side of the wire; the private half only ever goes to the target), a
   random broker password, the TUF trusted root (the controller's root chain from
   ``/tuf/metadata/``, each version checked against the one before), and ``agent.yaml``
   (the image's template with the device id, broker URL and credentials, and the update
   mirror filled in; validated as the agent would).
4. **Tell the controller**: issue the broker credential (``POST
   /api/devices/{id}/broker-credential`` with only the password's ``$7$`` hash, so the
   password never crosses the network) and register the identity key as expected (``PUT
   /api/devices/{id}/identity``). Both need an admin token.
5. **Write** ``rootfs/`` and the device's files. Into a folder: every file is first
   staged in a private folder inside the target and re-hashed there; only when all of
   them match the manifest, and the files staged are exactly the manifest's (less the
   device's own), are they moved into place (a mismatch removes the staging folder and
   nothing in the target is replaced). With ``force``, files of an earlier flash that
   this image does not have are removed from the trees the image owns (``IMAGE_TREES``;
   a leftover ``.py`` would change the device's ``agent_code``). A symlink already in the
   target is never followed. Into a ``.tar``: written to a temporary file, re-hashed as
   written, and renamed over the target only when complete and matching.
"""

import base64
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from controller.broker.mosquitto_auth import generate_password, hash_password
from controller.images.build import verify_image
from controller.images.manifest import ROOTFS, FileEntry, ImageError, Manifest
from edge_agent.attestation.identity import KEY_FILE
from edge_agent.config import AgentConfig
from shared.attestation import (
    AttestationError,
    decode_public_key,
    encode_public_key,
    key_id,
    public_key_of,
)
from shared.files import fsync_dir
from shared.tar_guard import TarGuardError, TarLimits, check_members
from shared.yaml_guard import YamlShapeError, load_yaml_bounded

# Where flashing puts the device's own files, as paths on the device (under its root).
AGENT_CONFIG = "etc/edgefleet/agent.yaml"
PASSWORD_FILE = "etc/edgefleet/mqtt-password"  # noqa: S105 (a path, not a password)
TRUSTED_ROOT = "etc/edgefleet/tuf-root.json"
IDENTITY_FOLDER = "identity"  # under state_dir, as edge_agent.attestation.identity has it
MAX_TEMPLATE_BYTES = 1024 * 1024
MAX_ROOT_BYTES = 1024 * 1024
MAX_ROOT_VERSIONS = 1000
# An image is regular files only (build.py writes no folders or links); the wheelhouse of
# the largest recipe (CUDA wheels) is a few GiB.
MAX_IMAGE_BYTES = 32 * 1024**3
IMAGE_TAR_LIMITS = TarLimits(
    max_members=100_000,
    max_member_bytes=MAX_IMAGE_BYTES,
    max_total_bytes=MAX_IMAGE_BYTES,
    allow_links=False,
)
_CHUNK = 1024 * 1024
# The trees of the device root that the image owns (device-relative): with ``force``, a file
# in them that is neither in the image nor one of the device's own files is removed.
IMAGE_TREES = ("opt/edgefleet", "etc/edgefleet", "etc/systemd/system/edgefleet-agent.service")
_STAGING_PREFIX = ".edgefleet-flash."
_PLACEHOLDERS = ("device_id", "broker_url", "controller_url")


class FlashError(RuntimeError):
    """Flashing was refused or failed; the text says what and where."""


class TargetError(FlashError):
    """The target (a folder or a ``.tar`` file) cannot be written as asked."""


class ControllerError(FlashError):
    """The controller could not be reached or refused a step."""


# --- 1. verifying the image -----------------------------------------------------------------
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
                shutil.copyfileobj(source, out, _CHUNK)
    except OSError as e:
        raise ImageError(f"cannot read {image}: {e}") from e
    return copy


@contextmanager
def verified_image(image: Path, public_key: bytes) -> Iterator[VerifiedImage]:
    """Check everything about ``image`` without writing anything to the target; ImageError
    naming every problem (the signature, the manifest, each file by its path) when it must
    not be used. Yields the verified private copy (removed afterwards): write from it only.

    Member names are checked first, so a path-traversal attempt is called what it is;
    ``controller.images.build.verify_image`` then checks the signature, the image id and
    every member against the manifest."""
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


# --- 3. the device's own files ----------------------------------------------------------------
@dataclass(frozen=True)
class DeviceFile:
    """A file flashing adds to the device root (never part of the image)."""

    content: bytes = field(repr=False)  # keys and passwords: never in a repr or a log
    mode: int
    # The mode of the file's folder when flashing creates or owns it (the identity folder
    # is 0700, as the agent makes it); None: 0755 for new folders, existing ones untouched.
    folder_mode: int | None = None


def template_bytes(image: VerifiedImage) -> bytes:
    """The image's ``agent.yaml`` template (its hash was checked with the image)."""
    name = ROOTFS + AGENT_CONFIG
    if name not in image.entries():
        raise ImageError(f"{name}: missing (the image has no agent config template)")
    with tarfile.open(image.path, "r:*") as tar:
        data = _read_member(tar, tar.getmember(name), MAX_TEMPLATE_BYTES)
    if hashlib.sha256(data).hexdigest() != image.entries()[name].sha256:
        raise ImageError(f"{name}: content does not match the manifest (changed since checked)")
    return data


def render_agent_config(
    template: bytes,
    *,
    device_id: str,
    broker_url: str,
    controller_url: str,
) -> tuple[bytes, AgentConfig]:
    """The device's ``agent.yaml``: the template with placeholders filled and the keys that
    make it this device (id, broker login, update mirror and trusted root) set. ValueError
    when the result is not a config the agent accepts."""
    text = template.decode("utf-8")
    values = {"device_id": device_id, "broker_url": broker_url, "controller_url": controller_url}
    for name in _PLACEHOLDERS:
        text = text.replace("{{" + name + "}}", values[name]).replace(
            "{{ " + name + " }}", values[name]
        )
    if "{{" in text:
        start = text.index("{{")
        raise ValueError(
            f"agent.yaml template has an unknown placeholder {text[start : start + 40]!r}"
        )
    try:
        raw = load_yaml_bounded(text, source="agent.yaml template", max_bytes=MAX_TEMPLATE_BYTES)
    except YamlShapeError as e:
        raise ValueError(str(e)) from e
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError("agent.yaml template is not a YAML mapping")
    raw["device_id"] = device_id
    mqtt: dict[str, Any] = raw["mqtt"] if isinstance(raw.get("mqtt"), dict) else {}
    raw["mqtt"] = {
        **mqtt,
        "url": broker_url,
        "username": device_id,
        "password_file": "/" + PASSWORD_FILE,
    }
    updates: dict[str, Any] = raw["updates"] if isinstance(raw.get("updates"), dict) else {}
    raw["updates"] = {
        **updates,
        "enabled": True,
        "metadata_url": f"{controller_url}/tuf/metadata/",
        "targets_url": f"{controller_url}/tuf/targets/",
        "trusted_root": "/" + TRUSTED_ROOT,
    }
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as e:
        where = "; ".join(
            f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors(include_url=False)
        )
        raise ValueError(f"the flashed agent.yaml would be invalid: {where}") from e
    header = f"# Written by 'edgefleet flash' for {device_id}; every key: docs/configuration.md\n"
    return (header + yaml.safe_dump(raw, sort_keys=False)).encode("utf-8"), config


def identity_files(state_dir: str, key: Ed25519PrivateKey) -> dict[str, DeviceFile]:
    """The identity key where the agent looks for it (``<state_dir>/identity/ed25519.pem``,
    PKCS#8 PEM, 0600), as a device-relative path."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    folder = PurePosixPath(state_dir.lstrip("/")) / IDENTITY_FOLDER
    return {str(folder / KEY_FILE): DeviceFile(pem, 0o600, folder_mode=0o700)}


# --- the controller ---------------------------------------------------------------------------
class HttpClient(Protocol):
    """What flashing needs of an HTTP client: ``httpx.Client`` (or Starlette's TestClient)
    with the controller as base URL and the admin token in its headers."""

    def request(self, method: str, url: str, *, json: Any = None) -> httpx.Response: ...


class ControllerApi:
    """The few controller calls flashing makes."""

    def __init__(self, client: HttpClient, url: str) -> None:
        self._client = client
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        try:
            return self._client.request(method, path, json=json)
        except httpx.HTTPError as e:
            raise ControllerError(f"cannot reach the controller at {self.url}: {e}") from e

    def _json(self, method: str, path: str, what: str, json: Any = None) -> Any:
        response = self._call(method, path, json)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ControllerError(f"{what}: {response.status_code} from {path}: {detail}")
        try:
            return response.json()
        except ValueError as e:
            raise ControllerError(f"{what}: {path} did not answer JSON") from e

    def image_key(self) -> bytes:
        """The controller's image public key (``GET /api/images/key``)."""
        body = self._json("GET", "/api/images/key", "fetching the image key")
        text = body.get("public_key") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ControllerError("/api/images/key did not return a public_key")
        try:
            return decode_public_key(text)
        except AttestationError as e:
            raise ControllerError(f"/api/images/key: {e}") from e

    def trusted_root(self) -> tuple[bytes, int]:
        """The newest TUF root and its version, each version from ``1.root.json`` on checked
        against the one before (the chain a device would walk itself)."""
        from tuf.api.exceptions import RepositoryError
        from tuf.api.metadata import Metadata, Root
        from tuf.api.serialization import DeserializationError

        trusted: Metadata[Root] | None = None
        data = b""
        for version in range(1, MAX_ROOT_VERSIONS + 1):
            path = f"/tuf/metadata/{version}.root.json"
            response = self._call("GET", path)
            if response.status_code == 404 and trusted is not None:
                break
            if response.status_code != 200:
                raise ControllerError(
                    f"fetching the TUF trusted root: {response.status_code} from {path}"
                    " (has the controller run 'edgefleet keys init'?)"
                )
            if len(response.content) > MAX_ROOT_BYTES:
                raise ControllerError(f"{path} is larger than {MAX_ROOT_BYTES} bytes")
            try:
                new = Metadata[Root].from_bytes(response.content)
                if new.signed.version != version:
                    raise ControllerError(f"{path} holds root version {new.signed.version}")
                if trusted is not None:  # signed by the previous root's keys...
                    trusted.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
                # ...and by its own
                new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
            except (DeserializationError, RepositoryError, ValueError) as e:
                raise ControllerError(f"{path} is not a valid, signed TUF root: {e}") from e
            trusted, data = new, response.content
        assert trusted is not None
        return data, trusted.signed.version

    def issue_credential(self, device_id: str, password_hash: str, *, rotate: bool) -> None:
        self._json(
            "POST",
            f"/api/devices/{device_id}/broker-credential",
            "issuing the broker credential",
            json={"password_hash": password_hash, "rotate": rotate},
        )

    def register_identity(self, device_id: str, public_key: bytes) -> dict[str, Any]:
        body = self._json(
            "PUT",
            f"/api/devices/{device_id}/identity",
            "registering the identity key",
            json={"public_key": encode_public_key(public_key)},
        )
        return dict(body)


# --- 5. writing -------------------------------------------------------------------------------
class _HashingReader(io.RawIOBase):
    """Reads through ``inner`` and hashes what passes, so a write can check its source."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._inner.read(size)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk


def _check_written(name: str, reader: _HashingReader, entry: FileEntry) -> None:
    if reader.size != entry.size or reader.digest.hexdigest() != entry.sha256:
        raise ImageError(
            f"{name}: content changed since the image was verified; nothing in the target"
            " was replaced"
        )


def _check_complete(image: VerifiedImage, written: set[str], device: dict[str, DeviceFile]) -> None:
    """ImageError unless exactly the image's files (less the device's own) were read."""
    expected = image.rootfs_files() - set(device)
    missing, extra = sorted(expected - written), sorted(written - expected)
    if missing or extra:
        raise ImageError(
            "the files read from the image differ from its manifest"
            + (f"; missing: {', '.join(ROOTFS + p for p in missing)}" if missing else "")
            + (f"; not listed: {', '.join(ROOTFS + p for p in extra)}" if extra else "")
            + "; nothing in the target was replaced"
        )


def is_tar_target(target: Path) -> bool:
    return target.suffix == ".tar"


def check_target(target: Path, *, force: bool) -> None:
    """Refuse a target that would lose data or cannot be written, before anything is."""
    if is_tar_target(target):
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise TargetError(f"target {target} exists and is not a regular file")
        if target.exists() and not force:
            raise TargetError(f"target {target} exists; pass --force to replace it")
        if not target.parent.is_dir():
            raise TargetError(f"folder {target.parent} does not exist")
        return
    if target.is_symlink():
        raise TargetError(f"target {target} is a symlink; give the folder itself")
    if target.exists():
        if not target.is_dir():
            raise TargetError(f"target {target} exists and is not a folder")
        if any(target.iterdir()) and not force:
            raise TargetError(f"target {target} is not empty; pass --force to write over it")
    elif not target.parent.is_dir():
        raise TargetError(f"folder {target.parent} does not exist")


def _folder_in(root: Path, relative: PurePosixPath) -> Path:
    """``root/relative`` as a real folder, created (0755) where missing; TargetError when
    any part of it is a symlink or not a folder (so nothing is written outside ``root``)."""
    current = root
    for part in relative.parts:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            current.mkdir(mode=0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise TargetError(f"{current} is a symlink in the target; refusing to follow it")
        if not stat.S_ISDIR(st.st_mode):
            raise TargetError(f"{current} is in the way of a folder")
    return current


def _stage_file(staging: Path, mode: int, fill: Callable[[IO[bytes]], None]) -> Path:
    """A new file in the private ``staging`` folder, filled, ``mode``, synced."""
    fd, tmp = tempfile.mkstemp(dir=staging, suffix=".flash")
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        fill(out)
        out.flush()
        os.fsync(out.fileno())
    return Path(tmp)


def _move_into_place(root: Path, relative: str, staged: Path) -> None:
    path = PurePosixPath(relative)
    folder = _folder_in(root, path.parent)
    dest = folder / path.name
    if dest.is_symlink() or dest.is_dir():
        raise TargetError(f"{dest} is a symlink or a folder in the target; refusing to replace it")
    os.replace(staged, dest)


def _copy(source: "_HashingReader") -> Callable[[IO[bytes]], None]:
    def fill(out: IO[bytes]) -> None:
        while chunk := source.read(_CHUNK):
            out.write(chunk)

    return fill


def _put(data: bytes) -> Callable[[IO[bytes]], None]:
    def fill(out: IO[bytes]) -> None:
        out.write(data)

    return fill


def _image_files(image: VerifiedImage) -> Iterator[tuple[str, FileEntry, _HashingReader]]:
    """Every image file as (device-relative path, manifest entry, hashing reader), from the
    verified private copy; members outside the manifest (``manifest.json``/``.sig``) are
    not files to write, and the caller checks that every listed file came exactly once."""
    entries = image.entries()
    with tarfile.open(image.path, "r:*") as tar:
        while (member := tar.next()) is not None:
            if member.name not in entries:
                continue
            handle = tar.extractfile(member)
            if handle is None or not member.isreg():
                raise ImageError(f"{member.name}: changed since the image was verified")
            yield member.name[len(ROOTFS) :], entries[member.name], _HashingReader(handle)


def _tree_path(root: Path, tree: str) -> Path | None:
    """``root/tree`` when it exists, else None; TargetError when any part is a symlink."""
    current = root
    for part in PurePosixPath(tree).parts:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise TargetError(f"{current} is a symlink in the target; refusing to follow it")
    return current


def _raise(error: OSError) -> None:
    raise error


def _stale_files(root: Path, keep: set[str]) -> list[str]:
    """Device-relative paths under ``IMAGE_TREES`` in the folder ``root`` that are not in
    ``keep`` (a symlink is listed as itself, never followed)."""
    stale: list[str] = []
    for tree in IMAGE_TREES:
        top = _tree_path(root, tree)
        if top is None:
            continue
        if not top.is_dir():
            if tree not in keep:
                stale.append(tree)
            continue
        for folder, dirs, files in os.walk(top, followlinks=False, onerror=_raise):
            base = PurePosixPath(Path(folder).relative_to(root).as_posix())
            links = [d for d in dirs if (Path(folder) / d).is_symlink()]
            stale += [str(base / n) for n in files + links if str(base / n) not in keep]
    return sorted(stale)


def _remove_stale(root: Path, stale: list[str], keep: set[str]) -> None:
    """Remove ``stale`` files (links themselves), then the folders under ``IMAGE_TREES``
    they leave empty that no kept file needs."""
    needed = {str(p) for k in keep for p in PurePosixPath(k).parents}
    folders: set[str] = set()
    for relative in stale:
        (root / relative).unlink()
        folders.update(str(p) for p in PurePosixPath(relative).parents)
    trees = set(IMAGE_TREES)
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        if folder in needed or folder in trees or folder == ".":
            continue
        if not any(folder.startswith(t + "/") for t in IMAGE_TREES):
            continue
        path = root / folder
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


def write_folder(
    image: VerifiedImage, target: Path, device: dict[str, DeviceFile], *, force: bool = False
) -> int:
    """Write the image's rootfs and the device's files into the folder ``target``;
    returns the number of files written. Every file is staged and checked before any is
    moved into place; with ``force``, stale files in ``IMAGE_TREES`` are removed."""
    target.mkdir(mode=0o755, exist_ok=True)
    root = target.resolve()
    staging = Path(tempfile.mkdtemp(dir=root, prefix=_STAGING_PREFIX))
    try:
        staged: dict[str, Path] = {}
        for relative, entry, reader in _image_files(image):
            if relative in device:
                continue  # the device's own version of the file (its agent.yaml) wins
            if relative in staged:
                raise ImageError(f"{ROOTFS + relative}: more than once in the image")
            staged[relative] = _stage_file(staging, entry.mode, _copy(reader))
            _check_written(ROOTFS + relative, reader, entry)
        _check_complete(image, set(staged), device)
        for relative, file in sorted(device.items()):
            staged[relative] = _stage_file(staging, file.mode, _put(file.content))
        # Everything is staged and checked: from here on the target changes.
        if force:
            keep = set(staged)
            _remove_stale(root, _stale_files(root, keep), keep)
        for relative, path in sorted(staged.items()):
            own = device.get(relative)
            if own is not None and own.folder_mode is not None:
                _folder_in(root, PurePosixPath(relative).parent).chmod(own.folder_mode)
            _move_into_place(root, relative, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(root)
    return len(staged)


def _tar_info(
    name: str, *, size: int, mode: int, mtime: int, folder: bool = False
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if folder else tarfile.REGTYPE
    info.size = 0 if folder else size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_tar(image: VerifiedImage, target: Path, device: dict[str, DeviceFile]) -> int:
    """Write the device's root as a tar file (paths relative to the device's ``/``), mode
    0600 since it holds the identity key and the broker password; returns files written."""
    count = 0
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".flash")
    try:
        with os.fdopen(fd, "wb") as raw:
            os.fchmod(raw.fileno(), 0o600)
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as out:
                written_folders: set[str] = set()
                written: set[str] = set()
                for relative, entry, reader in _image_files(image):
                    if relative in device:
                        continue
                    if relative in written:
                        raise ImageError(f"{ROOTFS + relative}: more than once in the image")
                    info = _tar_info(relative, size=entry.size, mode=entry.mode, mtime=0)
                    out.addfile(info, reader)
                    _check_written(ROOTFS + relative, reader, entry)
                    written.add(relative)
                    count += 1
                _check_complete(image, written, device)
                for relative, file in sorted(device.items()):
                    for parent in reversed(PurePosixPath(relative).parents[:-1]):
                        if str(parent) not in written_folders:
                            own = parent == PurePosixPath(relative).parent
                            mode = file.folder_mode if own and file.folder_mode else 0o755
                            out.addfile(
                                _tar_info(str(parent), size=0, mode=mode, mtime=0, folder=True)
                            )
                            written_folders.add(str(parent))
                    info = _tar_info(relative, size=len(file.content), mode=file.mode, mtime=0)
                    out.addfile(info, io.BytesIO(file.content))
                    count += 1
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return count


# --- the whole flash ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FlashSummary:
    """What was written and registered (no secret in it)."""

    device_id: str
    target: str
    target_kind: str  # "folder" or "tar"
    image_id: str
    device_class: str
    agent_version: str
    agent_code: str
    files_written: int
    identity_key_id: str
    identity_public_key: str
    identity_key_file: str
    password_file: str
    agent_config: str
    broker_url: str
    controller_url: str
    trusted_root_version: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_broker_url(controller_url: str) -> str:
    """The broker on the controller's host at the standard port: devices usually reach both
    by the same name."""
    host = urlsplit(controller_url).hostname or "127.0.0.1"
    return f"mqtt://{host}:1883"


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except ImageError as e:
        raise FlashError(f"image refused: {e}") from e


def flash(
    image_path: Path,
    *,
    target: Path,
    device_id: str,
    controller: ControllerApi,
    broker_url: str | None = None,
    image_key: bytes | None = None,
    force: bool = False,
    rotate: bool = False,
) -> FlashSummary:
    """Verify, prepare, register and write (see the module docstring for the order)."""
    from shared.topics import is_valid_device_id

    if not is_valid_device_id(device_id):
        raise FlashError(
            f"invalid device id {device_id!r}: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    if not image_path.is_file():
        raise FlashError(f"image {image_path} is not a file")
    public = image_key if image_key is not None else controller.image_key()
    with _translated(), verified_image(image_path, public) as image:
        return _flash_verified(
            image,
            target=target,
            device_id=device_id,
            controller=controller,
            broker_url=broker_url,
            force=force,
            rotate=rotate,
        )


def _flash_verified(
    image: VerifiedImage,
    *,
    target: Path,
    device_id: str,
    controller: ControllerApi,
    broker_url: str | None,
    force: bool,
    rotate: bool,
) -> FlashSummary:
    check_target(target, force=force)
    broker = broker_url or default_broker_url(controller.url)
    with _translated():
        template = template_bytes(image)
    root_bytes, root_version = controller.trusted_root()
    try:
        config_bytes, config = render_agent_config(
            template, device_id=device_id, broker_url=broker, controller_url=controller.url
        )
    except ValueError as e:
        raise FlashError(str(e)) from e
    if not config.state_dir.is_absolute():
        raise FlashError(f"agent.yaml template: state_dir {config.state_dir} must be absolute")
    state_dir = str(config.state_dir)
    key = Ed25519PrivateKey.generate()
    public_key = public_key_of(key)
    password = generate_password()
    device: dict[str, DeviceFile] = {
        AGENT_CONFIG: DeviceFile(config_bytes, 0o644),
        TRUSTED_ROOT: DeviceFile(root_bytes, 0o644),
        PASSWORD_FILE: DeviceFile((password + "\n").encode(), 0o600),
        **identity_files(state_dir, key),
    }
    controller.issue_credential(device_id, hash_password(password), rotate=rotate)
    controller.register_identity(device_id, public_key)
    try:
        with _translated():
            if is_tar_target(target):
                count = write_tar(image, target, device)
            else:
                count = write_folder(image, target, device, force=force)
    except OSError as e:
        raise TargetError(
            f"cannot write {target}: {e} (the controller already expects this device's new key"
            " and password: flash again with --force --rotate)"
        ) from e
    manifest = image.manifest
    return FlashSummary(
        device_id=device_id,
        target=str(target),
        target_kind="tar" if is_tar_target(target) else "folder",
        image_id=manifest.image_id,
        device_class=manifest.device_class,
        agent_version=manifest.agent_version,
        agent_code=manifest.agent_code,
        files_written=count,
        identity_key_id=key_id(public_key),
        identity_public_key=base64.b64encode(public_key).decode("ascii"),
        identity_key_file="/" + next(p for p in device if p.endswith(KEY_FILE)),
        password_file="/" + PASSWORD_FILE,
        agent_config="/" + AGENT_CONFIG,
        broker_url=broker,
        controller_url=controller.url,
        trusted_root_version=root_version,
    )


__all__ = [
    "AGENT_CONFIG",
    "IMAGE_TREES",
    "PASSWORD_FILE",
    "TRUSTED_ROOT",
    "ControllerApi",
    "ControllerError",
    "DeviceFile",
    "FlashError",
    "FlashSummary",
    "HttpClient",
    "TargetError",
    "VerifiedImage",
    "check_target",
    "default_broker_url",
    "flash",
    "render_agent_config",
    "verified_image",
    "write_folder",
    "write_tar",
]
