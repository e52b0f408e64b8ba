"""Flashing: write a verified firmware image onto a device's root and give it an identity.

``flash`` runs on the operator's machine with the device's storage mounted (or writes a
``.tar`` of the device's root). In order, so that a refusal leaves nothing behind:

1. **Verify** the image before anything is written: ``manifest.sig`` against the image key
   (given, or ``GET /api/images/key``), the manifest's own image id, and every tar member:
   a regular file or folder under ``rootfs/`` with a safe name (no ``..``, no absolute path,
   no links or devices), listed in the manifest with that exact size and SHA-256; nothing
   listed may be missing. A tampered image is refused with the file it concerns.
2. **Check the target**: a folder that is missing or empty (``force`` overwrites), or a
   ``.tar`` file that does not exist yet (``force`` replaces it).
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
5. **Write** ``rootfs/`` and the device's files, re-hashing every image file as it is
   written (a file that changed since step 1 stops the write), never following a symlink
   that is already in the target folder.
"""

import base64
import hashlib
import io
import os
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

# Where flashing puts the device's own files, as paths on the device (under its root).
AGENT_CONFIG = "etc/edgefleet/agent.yaml"
PASSWORD_FILE = "etc/edgefleet/mqtt-password"  # noqa: S105 (a path, not a password)
TRUSTED_ROOT = "etc/edgefleet/tuf-root.json"
IDENTITY_FOLDER = "identity"  # under state_dir, as edge_agent.attestation.identity has it
MAX_TEMPLATE_BYTES = 1024 * 1024
MAX_ROOT_BYTES = 1024 * 1024
MAX_ROOT_VERSIONS = 1000
_CHUNK = 1024 * 1024
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
    """An image whose signature, manifest and every member were checked."""

    path: Path
    manifest: Manifest

    @property
    def image_id(self) -> str:
        return self.manifest.image_id

    def entries(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.manifest.files}


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


def verify_image_file(image: Path, public_key: bytes) -> VerifiedImage:
    """Check everything about ``image`` without writing anything; ImageError naming every
    problem (the signature, the manifest, each file by its path) when it must not be used.

    Member names are checked first, so a path-traversal attempt is called what it is;
    ``controller.images.build.verify_image`` then checks the signature, the image id and
    every member against the manifest."""
    try:
        with tarfile.open(image, "r:*") as tar:
            names = tar.getnames()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise ImageError(f"{image} is not a readable image tar: {e}") from e
    for name in names:
        _safe_member_name(name)
    return VerifiedImage(image, verify_image(image, public_key))


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
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"agent.yaml template is not valid YAML: {e}") from e
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
            f"{name}: content changed since the image was verified; nothing more written"
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


def _write_file(root: Path, relative: str, mode: int, fill: Callable[[IO[bytes]], None]) -> None:
    path = PurePosixPath(relative)
    folder = _folder_in(root, path.parent)
    dest = folder / path.name
    if dest.is_symlink() or dest.is_dir():
        raise TargetError(f"{dest} is a symlink or a folder in the target; refusing to replace it")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".flash")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    """Every image file as (device-relative path, manifest entry, hashing reader)."""
    entries = image.entries()
    with tarfile.open(image.path, "r:*") as tar:
        for member in tar:
            if member.name not in entries:
                continue
            handle = tar.extractfile(member)
            if handle is None or not member.isreg():
                raise ImageError(f"{member.name}: changed since the image was verified")
            yield member.name[len(ROOTFS) :], entries[member.name], _HashingReader(handle)


def write_folder(image: VerifiedImage, target: Path, device: dict[str, DeviceFile]) -> int:
    """Write the image's rootfs and the device's files into the folder ``target``;
    returns the number of files written."""
    target.mkdir(mode=0o755, exist_ok=True)
    root = target.resolve()
    count = 0
    for relative, entry, reader in _image_files(image):
        if relative in device:
            continue  # the device's own version of the file (its agent.yaml) wins
        _write_file(root, relative, entry.mode, _copy(reader))
        _check_written(ROOTFS + relative, reader, entry)
        count += 1
    for relative, file in sorted(device.items()):
        home = _folder_in(root, PurePosixPath(relative).parent)
        if file.folder_mode is not None:
            home.chmod(file.folder_mode)
        _write_file(root, relative, file.mode, _put(file.content))
        count += 1
    fsync_dir(root)
    return count


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
                for relative, entry, reader in _image_files(image):
                    if relative in device:
                        continue
                    info = _tar_info(relative, size=entry.size, mode=entry.mode, mtime=0)
                    out.addfile(info, reader)
                    _check_written(ROOTFS + relative, reader, entry)
                    count += 1
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
    with _translated():
        image = verify_image_file(image_path, public)
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
                count = write_folder(image, target, device)
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
    "verify_image_file",
    "write_folder",
    "write_tar",
]
