"""``/tuf``: the TUF repository as a plain file mirror, without authentication.

TUF makes the mirror untrusted: devices verify every byte against signed metadata, so any
replica or CDN may serve these files. What this router must get right is HTTP: byte ranges
(206, so a device resumes a large download), 416 for ranges outside the file, no path
outside the repository, and caching hints (versioned files never change; timestamp does).
"""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from controller.api.deps import ServicesDep
from controller.updates.repository import TufRepository

router = APIRouter(prefix="/tuf", tags=["tuf"])

_METADATA_NAME = re.compile(r"^(?:[1-9][0-9]{0,9}\.(?:root|targets|snapshot)|timestamp)\.json$")
_RANGE_SPEC = re.compile(r"^([0-9]*)-([0-9]*)$")
_CHUNK = 256 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"


class RangeNotSatisfiable(ValueError):
    """The Range header asks for bytes the file does not have."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) for a single ``bytes=`` range of a ``size``-byte
    file; None means send the whole file (no header, another unit, or several ranges,
    which RFC 9110 lets a server ignore). A malformed or unsatisfiable byte range raises
    RangeNotSatisfiable."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None
    match = _RANGE_SPEC.match(spec)
    if match is None or match.group(0) == "-":
        raise RangeNotSatisfiable(header)
    first, last = match.groups()
    if not first:  # "-N": the last N bytes
        count = int(last)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(size - count, 0), size
    start = int(first)
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(header)
    end = min(int(last) + 1, size) if last else size
    return start, end


def safe_target_path(targets_dir: Path, path: str) -> Path | None:
    """The file for URL path ``path`` under ``targets_dir``, or None when the path tries
    to leave it (``..``, empty or hidden segments, backslashes, symlinks pointing out)."""
    parts = path.split("/")
    if any(not p or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        return None
    base = targets_dir.resolve()
    candidate = (base / path).resolve()
    if not candidate.is_relative_to(base) or candidate == base:
        return None
    return candidate


def _stream(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    try:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        f.close()


def file_response(request: Request, path: Path, media_type: str, cache: str) -> Response:
    """Serve ``path`` with Range support. The file is opened before its size is read, so
    a ``timestamp.json`` replaced mid-request is served whole, old or new."""
    try:
        f = path.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise HTTPException(404, "no such file") from e
    try:
        st = os.fstat(f.fileno())
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": cache}
        wanted = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range != etag:
            wanted = None  # the client's partial copy is of another version: send it all
        try:
            span = parse_range(wanted, size)
        except RangeNotSatisfiable:
            f.close()
            return Response(
                status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"}
            )
        start, end = span if span is not None else (0, size)
        headers["Content-Length"] = str(end - start)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if request.method == "HEAD":
            f.close()
            return Response(status_code=status, headers=headers, media_type=media_type)
    except BaseException:
        f.close()
        raise
    return StreamingResponse(
        _stream(f, start, end), status_code=status, headers=headers, media_type=media_type
    )


def _repository(services: ServicesDep) -> TufRepository:
    repo = services.tuf
    if repo is None or not repo.is_initialized():
        raise HTTPException(404, "this controller has no TUF repository")
    return repo


@router.api_route("/metadata/{name}", methods=["GET", "HEAD"])
def get_metadata(name: str, request: Request, services: ServicesDep) -> Response:
    """A metadata file: ``N.root.json``, ``N.targets.json``, ``N.snapshot.json`` or
    ``timestamp.json``."""
    if not _METADATA_NAME.match(name):
        raise HTTPException(404, "no such metadata file")
    repo = _repository(services)
    cache = "no-cache" if name == "timestamp.json" else IMMUTABLE
    return file_response(request, repo.metadata_dir / name, "application/json", cache)


@router.api_route("/targets/{path:path}", methods=["GET", "HEAD"])
def get_target(path: str, request: Request, services: ServicesDep) -> Response:
    """An artifact, by its hash-prefixed path ``<dir>/<sha256>.<basename>``."""
    repo = _repository(services)
    local = safe_target_path(repo.targets_dir, path)
    if local is None:
        raise HTTPException(400, "invalid target path")
    return file_response(request, local, "application/octet-stream", IMMUTABLE)
