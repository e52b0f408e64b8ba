"""Checking a tar archive's members before anything of it is used or unpacked.

An archive from outside (a model artifact, a firmware image) can name ``/etc/passwd`` or
``../../x``, carry a symlink or hard link that points out of the folder it is unpacked
into, a device node or FIFO, a member that claims a terabyte, or a million empty members.
``check_members`` reads the headers one at a time and stops at the first such member, so a
compressed bomb is decompressed no further than the limits allow; ``extract_checked``
unpacks only the members so checked and, as a second fence, with ``tarfile``'s ``data``
filter (which also strips set-uid bits and refuses anything resolving outside the target).

Every refusal is a ``TarGuardError``: a ``tarfile.TarError`` (callers that already handle a
damaged archive handle it), with a ``reason`` and a text naming the archive and member.
"""

import lzma
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TarGuardError",
    "TarLimits",
    "check_members",
    "extract_checked",
    "safe_member_name",
]

# Errors a damaged compressed archive raises from inside tarfile's reads.
_DAMAGED = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


class TarGuardError(tarfile.TarError):
    """An archive refused; ``reason`` is one of ``bad_tar``, ``unsafe_name``,
    ``link_outside``, ``special_file``, ``too_many_members``, ``member_too_large``,
    ``total_too_large``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TarLimits:
    """What an archive may hold: member count, bytes per file, bytes in all, and whether
    links (that stay inside the archive's folder) are allowed at all."""

    max_members: int = 10_000
    max_member_bytes: int = 8 * 1024**3
    max_total_bytes: int = 16 * 1024**3
    allow_links: bool = True


def safe_member_name(name: str) -> str:
    """``name`` normalized (no ``./``, no trailing ``/``), or ``TarGuardError`` when it is
    absolute, climbs with ``..``, or holds a NUL or backslash (a Windows separator)."""
    if not name or "\x00" in name or "\\" in name:
        raise TarGuardError("unsafe_name", f"member {name!r} has an unsafe name")
    if name.startswith("/"):
        raise TarGuardError("unsafe_name", f"member {name!r} is an absolute path (path traversal)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TarGuardError("unsafe_name", f"member {name!r} climbs out with '..' (path traversal)")
    if not parts:
        return "."
    return "/".join(parts)


def _check_link(member: tarfile.TarInfo, name: str, regular: set[str]) -> None:
    target = member.linkname
    if not target or "\x00" in target or target.startswith("/"):
        raise TarGuardError(
            "link_outside", f"link {member.name!r} points to {target!r}, outside the archive"
        )
    if member.issym():  # relative to the link's own folder
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    else:  # a hard link names another member of the archive
        resolved = posixpath.normpath(target)
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise TarGuardError(
            "link_outside", f"link {member.name!r} points to {target!r}, outside the archive"
        )
    if member.islnk() and resolved not in regular:
        raise TarGuardError(
            "link_outside", f"hard link {member.name!r} names {target!r}, no earlier file"
        )


class _Checker:
    """The state of one pass over an archive's headers: what each next member may be."""

    def __init__(self, limits: TarLimits) -> None:
        self.limits = limits
        self.regular: set[str] = set()
        self.symlinks: set[str] = set()
        self.dirs: set[str] = set()
        self.names: set[str] = set()  # every member that is not a folder
        self.total = 0

    def take(self, member: tarfile.TarInfo) -> None:
        """Accept ``member`` or raise ``TarGuardError`` saying why not."""
        name = safe_member_name(member.name)
        # A second member of one name replaces the first, and a link over a name already on
        # disk (an earlier member, or a folder an earlier member's path created) sends
        # tarfile's fallback (copy the target when linking fails) into endless recursion:
        # RecursionError, found by the property test. Only a folder listed twice is
        # harmless; a member below an earlier file cannot be written at all.
        parents = _prefixes(name)[:-1] if name != "." else []
        if name in self.names or (name in self.dirs and not member.isdir()):
            raise TarGuardError("duplicate_member", f"member {member.name!r} appears twice")
        below = [p for p in parents if p in self.names and p not in self.symlinks]
        if below:
            raise TarGuardError(
                "duplicate_member", f"member {member.name!r} lies below the file {below[0]!r}"
            )
        self.dirs.update(parents)
        if member.isdir():
            self.dirs.add(name)
        else:
            self.names.add(name)
        # A path through (or onto) an earlier symlink lands wherever the link points: a
        # link "s" -> "." followed by "s/l" -> ".." escapes although each looks inside.
        through = [p for p in _prefixes(name) if p in self.symlinks]
        if through:
            raise TarGuardError(
                "link_outside", f"member {member.name!r} is written through the link {through[0]!r}"
            )
        if member.isreg() and not member.issparse():
            self._file(member, name)
        elif member.issym() or member.islnk():
            if not self.limits.allow_links:
                raise TarGuardError("special_file", f"member {member.name!r} is a link")
            _check_link(member, name, self.regular)
            if member.issym():
                self.symlinks.add(name)
        elif not member.isdir():
            raise TarGuardError(
                "special_file",
                f"member {member.name!r} is not a file or folder (type {member.type!r})",
            )

    def _file(self, member: tarfile.TarInfo, name: str) -> None:
        limit = self.limits.max_member_bytes
        if member.size > limit:
            raise TarGuardError(
                "member_too_large", f"member {member.name!r} is {member.size} bytes, over {limit}"
            )
        self.total += member.size
        if self.total > self.limits.max_total_bytes:
            raise TarGuardError(
                "total_too_large", f"unpacks to more than {self.limits.max_total_bytes} bytes"
            )
        self.regular.add(name)


def _prefixes(name: str) -> list[str]:
    """``a``, ``a/b`` and ``a/b/c`` for ``a/b/c``: every path the member's own passes."""
    parts = name.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def check_members(tar: tarfile.TarFile, *, limits: TarLimits, source: str) -> list[tarfile.TarInfo]:
    """Every member of ``tar`` (read header by header, also in stream mode), or
    ``TarGuardError`` at the first one beyond ``limits`` or unsafe to unpack. Regular
    files, folders and (when allowed) links staying inside are the only members taken;
    nothing may be written through or over an earlier symlink."""
    members: list[tarfile.TarInfo] = []
    checker = _Checker(limits)
    while True:
        try:
            member = tar.next()
        except _DAMAGED as e:
            raise TarGuardError("bad_tar", f"{source}: damaged archive: {e}") from e
        if member is None:
            return members
        if len(members) >= limits.max_members:
            raise TarGuardError(
                "too_many_members", f"{source}: more than {limits.max_members} members"
            )
        try:
            checker.take(member)
        except TarGuardError as e:
            raise TarGuardError(e.reason, f"{source}: {e.detail}") from None
        members.append(member)


def extract_checked(archive: Path, into: Path, *, limits: TarLimits) -> list[tarfile.TarInfo]:
    """Unpack ``archive`` into the existing folder ``into`` after ``check_members``
    passed, with the ``data`` filter; returns the members. ``TarGuardError`` for any
    refusal or damage (``into`` may then hold part of the archive: callers unpack into a
    folder of their own and remove it)."""
    source = archive.name
    try:
        with tarfile.open(archive) as tar:
            members = check_members(tar, limits=limits, source=source)
            tar.extractall(into, members=members, filter="data")
    except TarGuardError:
        raise
    except tarfile.FilterError as e:
        raise TarGuardError("link_outside", f"{source}: refused by the data filter: {e}") from e
    except _DAMAGED as e:
        raise TarGuardError("bad_tar", f"{source}: cannot be unpacked: {e}") from e
    return members
