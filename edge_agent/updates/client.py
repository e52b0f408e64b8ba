"""The device's TUF client: ``tuf.ngclient.Updater`` for metadata, our own fetch for artifacts.

python-tuf's ngclient does the whole TUF client workflow for metadata (root rotation,
thresholds, versions, expiry, consistent snapshots). Artifacts go through
``edge_agent.updates.fetch`` instead of ``Updater.download_target``, which buffers the
whole target in a temp file and cannot resume: ours streams into the slot, resumes with
HTTP ``Range`` and checks the length and SHA-256 from the verified ``TargetFile``.

Every tuf exception is translated here into the ``edge_agent.updates.decisions`` error
family, with the reason in words.
"""

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from edge_agent.updates.decisions import (
    EXPIRING_ROLES,
    MetadataExpired,
    UpdateError,
    UpdateRefused,
    check_declared_length,
    offline_error,
)
from edge_agent.updates.fetch import FetchResult, fetch_artifact
from shared.json_guard import JsonShapeError, loads_bounded

log = logging.getLogger(__name__)

# Every metadata download is bounded (python-tuf refuses a longer one with
# DownloadLengthMismatchError), stated here rather than left to ngclient's defaults. Our
# repository's roles are a few KiB; these are ngclient's documented defaults, which leave
# room for a fleet with thousands of targets. The bootstrap root read from disk gets the
# same bound as a downloaded root.
UPDATER_CONFIG = UpdaterConfig(
    max_root_rotations=32,
    max_delegations=32,
    root_max_length=512_000,
    timestamp_max_length=16_384,
    snapshot_max_length=2_000_000,
    targets_max_length=5_000_000,
)


class HttpxFetcher(FetcherInterface):
    """ngclient's metadata downloads over the agent's httpx client (one HTTP stack, one
    set of timeouts). Errors become tuf's ``DownloadError`` family, as ngclient expects."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._client.send(self._client.build_request("GET", url), stream=True)
        except httpx.HTTPError as e:
            raise tuf_errors.DownloadError(f"cannot fetch {url}: {e}") from e
        if response.status_code != 200:
            response.close()
            raise tuf_errors.DownloadHTTPError(
                f"HTTP {response.status_code} for {url}", response.status_code
            )
        return self._chunks(response, url)

    @staticmethod
    def _chunks(response: httpx.Response, url: str) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(64 * 1024)
        except httpx.HTTPError as e:
            raise tuf_errors.DownloadError(f"download of {url} broke off: {e}") from e
        finally:
            response.close()


@dataclass(frozen=True, slots=True)
class VerifiedTarget:
    """A target found in verified targets metadata: what the artifact must be."""

    path: str
    length: int
    sha256: str
    custom: Any
    url: str  # where the mirror serves it (hash-prefixed under consistent snapshots)


def _translate(e: Exception, *, where: str) -> UpdateError:
    """A tuf (or I/O) error as one of ours. Network trouble is not decided here."""
    name = type(e).__name__
    if isinstance(e, tuf_errors.ExpiredMetadataError):
        return MetadataExpired(f"{where}: {e} (a freeze attack, or the repository is stale)")
    if isinstance(e, tuf_errors.DownloadLengthMismatchError):
        return UpdateRefused(f"{where}: metadata longer than allowed: {e}")
    if isinstance(e, tuf_errors.BadVersionNumberError):
        return UpdateRefused(f"{where}: version check failed (rollback or mix-and-match): {e}")
    if isinstance(e, tuf_errors.UnsignedMetadataError):
        return UpdateRefused(f"{where}: signatures do not meet the threshold: {e}")
    if isinstance(e, tuf_errors.LengthOrHashMismatchError):
        return UpdateRefused(f"{where}: metadata does not match its signed length/hash: {e}")
    if isinstance(e, tuf_errors.RepositoryError):
        return UpdateRefused(f"{where}: invalid metadata ({name}): {e}")
    if isinstance(e, OSError):
        return UpdateError(f"{where}: local metadata store: {e}")
    return UpdateError(f"{where}: {name}: {e}")


class TufClient:
    """One refresh-and-fetch session against a TUF repository.

    ``trusted_root`` is the root shipped with the device (``1.root.json`` or a later one):
    it bootstraps every ``Updater``; rotations already verified live in ``metadata_dir``'s
    ``root_history`` and are reused from there. Each ``refresh()`` builds a new
    ``Updater`` (ngclient refreshes once per instance).
    """

    def __init__(
        self,
        *,
        metadata_dir: Path,
        metadata_url: str,
        targets_url: str,
        trusted_root: Path,
        http: httpx.Client,
        max_artifact_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.metadata_dir = metadata_dir
        self.metadata_url = metadata_url.rstrip("/") + "/"
        self.targets_url = targets_url.rstrip("/") + "/"
        self.trusted_root = trusted_root
        self.max_artifact_bytes = max_artifact_bytes
        self._http = http
        self._clock = clock
        self._updater: Updater | None = None

    def _new_updater(self) -> Updater:
        bootstrap = read_trusted_root(self.trusted_root)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            return Updater(
                str(self.metadata_dir),
                self.metadata_url,
                fetcher=HttpxFetcher(self._http),
                bootstrap=bootstrap,
                config=UPDATER_CONFIG,
            )
        except (tuf_errors.RepositoryError, OSError, ValueError) as e:
            raise UpdateError(f"trusted root {self.trusted_root} is not usable: {e}") from e

    def local_expiries(self) -> dict[str, float]:
        """Expiry (unix time) of each locally stored top-level role that parses.

        These files were written by ngclient only after verification, so their expiry
        can be trusted for the offline decision without the network.
        """
        expiries: dict[str, float] = {}
        for role in EXPIRING_ROLES:
            try:
                # from_bytes, not from_file: a missing file (no refresh ever succeeded)
                # is an OSError here, not securesystemslib's StorageError.
                md = Metadata.from_bytes((self.metadata_dir / f"{role}.json").read_bytes())
            except (OSError, ValueError, tuf_errors.RepositoryError):
                continue
            expiries[role] = md.signed.expires.timestamp()
        return expiries

    def refresh(self) -> None:
        """Fetch and verify fresh top-level metadata, or raise one of our errors.

        When the repository cannot be reached, the offline policy decides: expired
        trusted metadata means ``MetadataExpired``, otherwise ``RepositoryUnreachable``.
        """
        updater = self._new_updater()
        try:
            updater.refresh()
        except tuf_errors.DownloadHTTPError as e:
            if e.status_code >= 500 or e.status_code in (404, 408, 429):
                raise offline_error(
                    f"HTTP {e.status_code}", self.local_expiries(), self._clock()
                ) from e
            raise UpdateError(f"metadata refresh: HTTP {e.status_code}") from e
        except tuf_errors.DownloadLengthMismatchError as e:
            raise _translate(e, where="metadata refresh") from e
        except tuf_errors.DownloadError as e:
            raise offline_error(str(e), self.local_expiries(), self._clock()) from e
        except (tuf_errors.RepositoryError, OSError) as e:
            raise _translate(e, where="metadata refresh") from e
        self._updater = updater

    def target(self, path: str) -> VerifiedTarget:
        """The verified ``TargetFile`` for ``path`` (after ``refresh()``)."""
        if self._updater is None:
            self.refresh()
        updater = self._updater
        if updater is None:  # pragma: no cover (refresh() either sets it or raises)
            raise RuntimeError("refresh did not produce an updater")
        try:
            info = updater.get_targetinfo(path)
        except tuf_errors.DownloadError as e:
            raise offline_error(str(e), self.local_expiries(), self._clock()) from e
        except (tuf_errors.RepositoryError, OSError) as e:
            raise _translate(e, where=f"target {path}") from e
        if info is None:
            raise UpdateRefused(f"target {path} is not in the signed targets metadata")
        sha256 = info.hashes.get("sha256")
        if not sha256:
            raise UpdateRefused(f"target {path} has no sha256 hash in its signed metadata")
        check_declared_length(info.length, max_bytes=self.max_artifact_bytes)
        return VerifiedTarget(
            path=path,
            length=info.length,
            sha256=sha256,
            custom=info.custom,
            url=self._artifact_url(path, sha256),
        )

    def _artifact_url(self, path: str, sha256: str) -> str:
        directory, _, basename = path.rpartition("/")
        if self._consistent_snapshot():
            basename = f"{sha256}.{basename}"
        name = f"{directory}/{basename}" if directory else basename
        return self.targets_url + quote(name)

    def _consistent_snapshot(self) -> bool:
        try:
            root = Metadata.from_bytes((self.metadata_dir / "root.json").read_bytes())
        except (OSError, ValueError, tuf_errors.RepositoryError):
            return True  # contract 1: the controller's repository uses consistent snapshots
        return bool(getattr(root.signed, "consistent_snapshot", True))

    def download(self, target: VerifiedTarget, dest: Path) -> FetchResult:
        """Stream the artifact to ``dest`` (resuming its partial file), verified."""
        return fetch_artifact(
            self._http,
            target.url,
            dest,
            length=target.length,
            sha256=target.sha256,
            partial=dest.parent / partial_name(target.sha256),
        )


def read_trusted_root(path: Path) -> bytes:
    """The bytes of the device's trusted root (shipped in its image), read before
    python-tuf sees them: at most ``root_max_length`` bytes of bounded JSON, or an
    ``UpdateError`` saying what is wrong with the file."""
    limit = UPDATER_CONFIG.root_max_length
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UpdateError(f"trusted root {path} is unreadable: {e}") from e
    try:
        document = loads_bounded(data, max_bytes=limit)
    except JsonShapeError as e:
        raise UpdateError(f"trusted root {path} is refused: {e}") from e
    if not isinstance(document, dict) or not isinstance(document.get("signed"), dict):
        raise UpdateError(f"trusted root {path} is not TUF metadata (no 'signed' object)")
    return data


def partial_name(sha256: str) -> str:
    """The partial download's file name: keyed by the hash, so it only ever resumes the
    artifact it belongs to (two versions may share a file name)."""
    return f".{sha256}.partial"
