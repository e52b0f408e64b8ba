"""Step 5 of flashing: write ``rootfs/`` and the device's files to the target.

Into a folder: every file is first staged in a private folder inside the target and
re-hashed there; only when all of them match the manifest, and the files staged are
exactly the manifest's (less the device's own), are they moved into place (a mismatch
removes the staging folder and nothing in the target is replaced). With ``force``, files
of an earlier flash that this image does not have are removed from the trees the image
owns (``IMAGE_TREES``; a leftover ``.py`` would change the device's ``agent_code``). A
symlink already in the target is never followed. Into a ``.tar``: written to a temporary
file, re-hashed as written, and renamed over the target only when complete and matching.
"""

import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from controller.images.flashing.device_files import DeviceFile
from controller.images.flashing.errors import TargetError
from controller.images.flashing.image import CHUNK as _CHUNK
from controller.images.flashing.image import VerifiedImage
from controller.images.manifest import ROOTFS, FileEntry, ImageError
from shared.files import fsync_dir

# The trees of the device root that the image owns (device-relative): with ``force``, a file
# in them that is neither in the image nor one of the device's own files is removed.
IMAGE_TREES = ("opt/edgefleet", "etc/edgefleet", "etc/systemd/system/edgefleet-agent.service")
_STAGING_PREFIX = ".edgefleet-flash."


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


__all__ = [
    "IMAGE_TREES",
    "check_target",
    "is_tar_target",
    "write_folder",
    "write_tar",
]
