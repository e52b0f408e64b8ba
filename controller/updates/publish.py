"""Adding a model version: stream-hash the artifact into the repository, record it in the
model registry and publish new targets, snapshot and timestamp metadata.

Artifacts can be many gigabytes, so nothing reads a whole file: bytes go through in 1 MiB
chunks into a staging file on the repository's filesystem while SHA-256 is computed, and the
staged file is then renamed into ``targets/`` under its content hash. The same staging path
serves the CLI (from a local file) and the HTTP upload (from the request body).
"""

import hashlib
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from tuf.api.metadata import TargetFile

from controller.audit import audit
from controller.updates._files import fsync_dir
from controller.updates.errors import (
    DuplicateError,
    PublishError,
    RepositoryStateError,
    TooLargeError,
)
from controller.updates.registry import ModelVersion, get_model_version
from controller.updates.repository import TufRepository
from shared.digests import tar_folder_sha256

CHUNK = 1024 * 1024
Runtime = Literal["llama.cpp", "ort-genai", "onnx"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
# Names become URL path segments and file names: no separators, no dot-only names.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ModelSpec:
    """What an operator says about a model version (contract 1's custom metadata)."""

    name: str
    version: str
    runtime: str
    filename: str
    quantization: str = ""
    device_classes: Sequence[str] = ()
    min_agent_version: str = "0"
    expected_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("version", self.version)):
            if not _SEGMENT.match(value):
                raise PublishError(
                    f"model {label} {value!r} must be 1-63 letters, digits, '.', '_', '+' or"
                    " '-', starting with a letter or digit"
                )
        if not _FILENAME.match(self.filename):
            raise PublishError(
                f"file name {self.filename!r} must be letters, digits, '.', '_', '+' or '-'"
            )
        if self.runtime not in RUNTIMES:
            raise PublishError(f"runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        if len(self.quantization) > 32:
            raise PublishError("quantization is longer than 32 characters")
        if not self.min_agent_version or len(self.min_agent_version) > 32:
            raise PublishError("min_agent_version must be 1-32 characters")
        for device_class in self.device_classes:
            if not device_class or len(device_class) > 64:
                raise PublishError(f"bad device class {device_class!r}")
        latency = self.expected_latency_ms
        if latency is not None and not (latency > 0 and latency < float("inf")):
            raise PublishError("expected_latency_ms must be a positive number")

    @property
    def target_path(self) -> str:
        return f"{self.name}/{self.version}/{self.filename}"

    def custom(self) -> dict[str, Any]:
        """The target's custom metadata as contract 1 spells it; expected_latency_ms is an
        integer (or null when unknown) because canonical JSON cannot carry floats."""
        return {
            "edgefleet": {
                "model": self.name,
                "version": self.version,
                "runtime": self.runtime,
                "quantization": self.quantization,
                "device_classes": list(self.device_classes),
                "min_agent_version": self.min_agent_version,
                "expected_latency_ms": self.latency_ms_int,
            }
        }

    @property
    def latency_ms_int(self) -> int | None:
        """TUF signs canonical JSON, which has no floats: whole milliseconds (at least 1)."""
        if self.expected_latency_ms is None:
            return None
        return max(1, round(self.expected_latency_ms))


@dataclass
class StagedFile:
    """An artifact copied into the repository's staging folder, with its hash and size."""

    path: Path
    sha256: str
    length: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class StagingWriter:
    """Write chunks into a staging file, hashing as they go, refusing more than
    ``max_bytes``. ``finish`` makes it durable; ``abort`` removes it."""

    repo: TufRepository
    max_bytes: int | None = None
    length: int = 0
    _hash: Any = field(default_factory=hashlib.sha256)
    _file: BinaryIO | None = None
    _path: Path | None = None

    def __post_init__(self) -> None:
        self.repo.staging_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.repo.staging_dir, prefix="upload-", suffix=".part")
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "writer already finished"
        self.length += len(chunk)
        if self.max_bytes is not None and self.length > self.max_bytes:
            raise TooLargeError(f"the artifact is larger than the limit of {self.max_bytes} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> StagedFile:
        assert self._file is not None and self._path is not None, "writer already finished"
        if self.length == 0:
            raise PublishError("the artifact is empty")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        return StagedFile(self._path, self._hash.hexdigest(), self.length)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def stage_chunks(
    repo: TufRepository,
    chunks: Iterable[bytes],
    *,
    max_bytes: int | None = None,
    progress: Progress | None = None,
) -> StagedFile:
    """Stream ``chunks`` into a staging file; the staged file is removed on any error."""
    writer = StagingWriter(repo, max_bytes)
    try:
        for chunk in chunks:
            writer.write(chunk)
            if progress is not None:
                progress(len(chunk))
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def read_chunks(source: BinaryIO, size: int = CHUNK) -> Iterable[bytes]:
    while chunk := source.read(size):
        yield chunk


def stage_file(
    repo: TufRepository, source: Path, *, progress: Progress | None = None
) -> StagedFile:
    """Copy ``source`` into staging in 1 MiB chunks, hashing as it goes."""
    try:
        with source.open("rb") as f:
            return stage_chunks(repo, read_chunks(f), progress=progress)
    except IsADirectoryError as e:
        raise PublishError(f"{source} is a folder, not a model file") from e
    except OSError as e:
        raise PublishError(f"cannot read {source}: {e.strerror or e}") from e


def check_new(session: Session, repo: TufRepository, spec: ModelSpec) -> None:
    """Refuse a name+version already in the registry, before any bytes are copied."""
    existing = get_model_version(session, spec.name, spec.version)
    if existing is not None:
        raise DuplicateError(
            f"model {spec.name} version {spec.version} already exists"
            f" (target {existing.target_path}, sha256 {existing.sha256[:12]}); published"
            " versions are immutable, choose a new version"
        )


def _content_sha256(spec: ModelSpec, path: Path) -> str | None:
    """For an ort-genai archive, the digest of the folder it unpacks to (devices measure
    that folder); refuses an archive that cannot be read. None for single-file models."""
    if spec.runtime != "ort-genai":
        return None
    try:
        return tar_folder_sha256(path)
    except (tarfile.TarError, OSError) as e:
        raise PublishError(f"an ort-genai model must be a tar archive of its folder: {e}") from e


def publish_model(
    session: Session,
    repo: TufRepository,
    spec: ModelSpec,
    staged: StagedFile,
    *,
    actor: str,
    now: datetime | None = None,
) -> ModelVersion:
    """Move ``staged`` into ``targets/``, add its registry row and audit entry to
    ``session`` and publish new metadata. The caller commits; if publishing fails the row
    is rolled back with the session and the staged file is removed.

    Re-publishing the same target with the same bytes (a retry after a crash between
    signing and commit) is allowed; the same path with different bytes is not."""
    now = now or datetime.now(UTC)
    try:
        check_new(session, repo, spec)
        state = repo.load()
        published = state.targets.signed.targets.get(spec.target_path)
        if published is not None and published.hashes.get("sha256") != staged.sha256:
            raise DuplicateError(
                f"target {spec.target_path} is already published with other content"
            )
        content_sha256 = _content_sha256(spec, staged.path)
        final = repo.target_file_path(spec.target_path, staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, final)
        fsync_dir(final.parent)
    except BaseException:
        staged.discard()
        raise
    row = ModelVersion(
        name=spec.name,
        version=spec.version,
        target_path=spec.target_path,
        sha256=staged.sha256,
        content_sha256=content_sha256,
        length=staged.length,
        runtime=spec.runtime,
        quantization=spec.quantization,
        device_classes=list(spec.device_classes),
        min_agent_version=spec.min_agent_version,
        expected_latency_ms=spec.expected_latency_ms,
        created_at=now,
        created_by=actor[:64],
    )
    target = TargetFile(
        length=staged.length,
        hashes={"sha256": staged.sha256},
        path=spec.target_path,
        unrecognized_fields={"custom": spec.custom()},
    )
    try:
        session.add(row)
        try:
            session.flush()
        except IntegrityError as e:
            raise DuplicateError(
                f"model {spec.name} version {spec.version} (or target {spec.target_path})"
                " already exists"
            ) from e
        new_state = repo.publish_targets([target], now=now)
    except BaseException:
        if published is None:  # nothing refers to the artifact: do not leave it behind
            final.unlink(missing_ok=True)
        raise
    versions = new_state.versions()
    audit(
        session,
        actor=actor,
        action="model.publish",
        target=f"model:{spec.name}/{spec.version}",
        reason="model version added",
        detail={
            "target_path": spec.target_path,
            "sha256": staged.sha256,
            "length": staged.length,
            "runtime": spec.runtime,
            "tuf_versions": versions,
        },
        at=now,
    )
    return row


def add_model_file(
    session: Session,
    repo: TufRepository,
    source: Path,
    spec: ModelSpec,
    *,
    actor: str,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> ModelVersion:
    """Check, stage and publish a local model file (what ``edgefleet models add`` does)."""
    check_new(session, repo, spec)
    if not repo.is_initialized():
        raise RepositoryStateError(
            f"no TUF repository at {repo.dir}: run 'edgefleet keys init' first"
        )
    staged = stage_file(repo, source, progress=progress)
    return publish_model(session, repo, spec, staged, actor=actor, now=now)


__all__ = [
    "CHUNK",
    "RUNTIMES",
    "ModelSpec",
    "Runtime",
    "StagedFile",
    "StagingWriter",
    "add_model_file",
    "check_new",
    "publish_model",
    "read_chunks",
    "stage_chunks",
    "stage_file",
]
