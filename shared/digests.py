"""Content digests both sides compute the same way.

A model folder (an ONNX Runtime GenAI export) is measured by ``folder_sha256``: the agent
when it loads the folder, and the controller from the published archive
(``tar_folder_sha256``) so attestation can recognise the folder an archive unpacks to.
"""

import hashlib
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from shared.tar_guard import TarLimits, check_members

CHUNK = 1 << 20


def _digest(entries: Iterable[tuple[str, int, IO[bytes]]]) -> str:
    """``name NUL size NUL contents`` per file, in the order given (sorted by the callers)."""
    digest = hashlib.sha256()
    for name, size, stream in entries:
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(str(size).encode())
        digest.update(b"\0")
        for block in iter(lambda s=stream: s.read(CHUNK), b""):  # type: ignore[misc]
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """Hash every file under ``folder``: sorted relative names, sizes and contents, streamed.

    Each file contributes ``name NUL size NUL contents``, so renaming, moving bytes between
    files or adding an empty file all change the hash.
    """
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )

    def entries() -> Iterable[tuple[str, int, IO[bytes]]]:
        for path in files:
            with path.open("rb") as f:
                yield path.relative_to(folder).as_posix(), path.stat().st_size, f

    return _digest(entries())


def tar_folder_sha256(archive: Path) -> str:
    """``folder_sha256`` of the folder ``archive`` unpacks to, read from the archive itself.

    As the agent unpacks it: the model files at the top level, or inside one folder (whose
    name is then not part of the paths). Only regular files count, as on disk. Raises
    ``tarfile.TarError`` or ``OSError`` for an archive that cannot be read or that the agent
    would refuse to unpack.
    """
    with tarfile.open(archive) as tar:
        # The agent's own checks (shared.tar_guard), so an archive it would refuse is
        # refused at publishing already; TarGuardError is a TarError.
        members = check_members(tar, limits=TarLimits(), source=archive.name)
        names = [m.name.removeprefix("./").strip("/") for m in members]
        tops = {n.split("/", 1)[0] for n in names if n and n != "."}
        prefix = ""
        if len(tops) == 1:
            (top,) = tops
            if any(n.startswith(f"{top}/") for n in names):
                prefix = f"{top}/"
        files = sorted(
            (
                (n.removeprefix(prefix), m)
                for n, m in zip(names, members, strict=True)
                if m.isfile()
            ),
            key=lambda item: item[0],
        )

        def entries() -> Iterable[tuple[str, int, IO[bytes]]]:
            for name, member in files:
                stream = tar.extractfile(member)
                if stream is None:
                    raise tarfile.TarError(f"{member.name} has no contents")
                with stream:
                    yield name, member.size, stream

        return _digest(entries())


__all__ = ["folder_sha256", "tar_folder_sha256"]
