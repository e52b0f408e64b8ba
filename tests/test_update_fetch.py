"""The resumable artifact download against a real loopback HTTP server with Range support."""

import hashlib
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.updates.decisions import HashMismatch, LengthExceeded, RepositoryUnreachable
from edge_agent.updates.fetch import (
    CHUNK,
    MAP_WINDOW,
    FetchResult,
    fetch_artifact,
    hash_prefix,
    partial_path,
)
from tests.conftest import free_port
from tests.tuf_simulator import RepoServer

SIZE = 5 * 1024 * 1024 + 123  # not a multiple of the chunk size


@pytest.fixture(scope="module")
def blob() -> bytes:
    return random.Random(5).randbytes(SIZE)


@pytest.fixture
def server(tmp_path: Path, blob: bytes) -> Iterator[RepoServer]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "blob.bin").write_bytes(blob)
    srv = RepoServer(tmp_path / "www")
    yield srv
    srv.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def fetch(
    http: httpx.Client,
    server: RepoServer,
    dest: Path,
    blob: bytes,
    *,
    length: int | None = None,
    sha256: str | None = None,
    max_attempts: int = 5,
) -> FetchResult:
    """Fetch the served blob, verified against ``blob`` unless told otherwise."""
    return fetch_artifact(
        http,
        f"{server.url}/blob.bin",
        dest,
        length=len(blob) if length is None else length,
        sha256=hashlib.sha256(blob).hexdigest() if sha256 is None else sha256,
        max_attempts=max_attempts,
    )


def ranges(server: RepoServer) -> list[str | None]:
    return [r for _, r in server.faults.requests]


def test_download_is_verified_and_moved_into_place(
    http: httpx.Client, server: RepoServer, blob: bytes, tmp_path: Path
) -> None:
    """One plain GET; the file appears under its final name only once verified."""
    dest = tmp_path / "slot" / "model.bin"
    result = fetch(http, server, dest, blob)
    assert dest.read_bytes() == blob
    assert result.sha256 == hashlib.sha256(blob).hexdigest()
    assert (result.resumed_from, result.attempts) == (0, 1)
    assert not partial_path(dest).exists()
    assert ranges(server) == [None]


@pytest.mark.parametrize(
    "drops",
    [
        pytest.param([1_500_000], id="one-cut"),
        pytest.param([100, 2_000_000, CHUNK], id="three-cuts"),
        pytest.param([0, 3_000_000], id="cut-before-any-byte"),
    ],
)
def test_resume_after_the_connection_drops_mid_body(
    http: httpx.Client, server: RepoServer, blob: bytes, tmp_path: Path, drops: list[int]
) -> None:
    """Each cut is resumed with a Range request from the bytes kept so far, and the
    result has the right hash."""
    server.faults.drop_after["/blob.bin"] = list(drops)
    dest = tmp_path / "model.bin"
    result = fetch(http, server, dest, blob)
    assert dest.read_bytes() == blob
    assert result.sha256 == hashlib.sha256(blob).hexdigest()
    offsets = 0
    expected: list[str | None] = [None]
    for cut in drops:
        offsets += cut
        expected.append(f"bytes={offsets}-" if offsets else None)
    assert ranges(server) == expected


def test_resume_from_a_partial_file_left_by_an_earlier_run(
    http: httpx.Client, server: RepoServer, blob: bytes, tmp_path: Path
) -> None:
    """A partial file on disk (say, before a reboot) is re-hashed and continued."""
    dest = tmp_path / "model.bin"
    partial_path(dest).write_bytes(blob[: 2 * CHUNK + 7])
    result = fetch(http, server, dest, blob)
    assert result.resumed_from == 2 * CHUNK + 7
    assert ranges(server) == [f"bytes={2 * CHUNK + 7}-"]
    assert dest.read_bytes() == blob


def test_damaged_partial_file_is_downloaded_again(
    http: httpx.Client, server: RepoServer, blob: bytes, tmp_path: Path
) -> None:
    """A kept prefix that is not the artifact's fails the hash once, then the whole
    artifact is fetched again from scratch and verifies."""
    dest = tmp_path / "model.bin"
    partial_path(dest).write_bytes(b"\0" * CHUNK)
    fetch(http, server, dest, blob)
    assert dest.read_bytes() == blob
    assert ranges(server) == [f"bytes={CHUNK}-", None]


def test_server_that_ignores_range_is_read_from_the_start(
    http: httpx.Client, server: RepoServer, blob: bytes, tmp_path: Path
) -> None:
    """A 200 answer to a Range request replaces the kept prefix instead of appending."""
    dest = tmp_path / "model.bin"
    partial_path(dest).write_bytes(blob[:CHUNK])
    server.faults.ignore_range.add("/blob.bin")
    fetch(http, server, dest, blob)
    assert dest.read_bytes() == blob


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("extra-bytes-without-length", id="close-delimited-extra-bytes"),
        pytest.param("announced-length", id="content-length-over-signed"),
    ],
)
def test_more_bytes_than_signed_are_refused(
    http: httpx.Client, server: RepoServer, blob: bytes, tmp_path: Path, how: str
) -> None:
    """Whether announced in headers or just streamed, bytes past the signed length are
    refused and nothing is kept."""
    dest = tmp_path / "model.bin"
    signed = blob
    if how == "extra-bytes-without-length":
        server.faults.extra_bytes["/blob.bin"] = 10
    else:  # the signed length is shorter than what the server has
        signed = blob[: SIZE - 1000]
    with pytest.raises(LengthExceeded, match="signed length"):
        fetch(http, server, dest, signed)
    assert not dest.exists() and not partial_path(dest).exists()


def test_tampered_artifact_is_refused_and_discarded(
    http: httpx.Client, server: RepoServer, blob: bytes, tmp_path: Path
) -> None:
    """Right length, wrong bytes: refused on the hash, the partial file deleted."""
    dest = tmp_path / "model.bin"
    with pytest.raises(HashMismatch, match="differs from the signed"):
        fetch(http, server, dest, blob, sha256="0" * 64)
    assert not dest.exists() and not partial_path(dest).exists()


def test_repeated_failures_keep_the_partial_for_later(
    http: httpx.Client, server: RepoServer, blob: bytes, tmp_path: Path
) -> None:
    """When requests stop making progress the download gives up as unreachable, keeps
    what it has, and the next call resumes from there."""
    server.faults.drop_after["/blob.bin"] = [1_000_000, 0, 0, 0]
    dest = tmp_path / "model.bin"
    with pytest.raises(RepositoryUnreachable, match="1000000 of"):
        fetch(http, server, dest, blob, max_attempts=3)
    assert partial_path(dest).stat().st_size == 1_000_000
    result = fetch(http, server, dest, blob)
    assert result.resumed_from == 1_000_000 and dest.read_bytes() == blob


def test_unreachable_server(http: httpx.Client, blob: bytes, tmp_path: Path) -> None:
    """Nothing listening: RepositoryUnreachable (a retry later can help)."""
    with pytest.raises(RepositoryUnreachable) as raised:
        fetch_artifact(
            http,
            f"http://127.0.0.1:{free_port()}/blob.bin",
            tmp_path / "model.bin",
            length=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
        )
    assert raised.value.retry and raised.value.outcome is None


def test_memory_stays_bounded_by_the_chunk_size(tmp_path: Path) -> None:
    """A 32 MiB download never holds more than a few chunks in Python memory."""
    data = random.Random(1).randbytes(32 * 1024 * 1024)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "blob.bin").write_bytes(data)
    srv = RepoServer(tmp_path / "www")
    try:
        with httpx.Client(timeout=30) as client:
            digest = hashlib.sha256(data).hexdigest()
            del data
            tracemalloc.start()
            try:
                fetch_artifact(
                    client,
                    f"{srv.url}/blob.bin",
                    tmp_path / "model.bin",
                    length=32 * 1024 * 1024,
                    sha256=digest,
                )
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        srv.stop()
    assert peak < 4 * CHUNK


def test_hash_prefix_reads_only_the_requested_bytes(tmp_path: Path, blob: bytes) -> None:
    """Re-hashing a kept prefix covers exactly that many bytes, in chunk-sized reads."""
    path = tmp_path / "f"
    path.write_bytes(blob)
    hasher = hash_prefix(path, limit=CHUNK + 5)
    assert hasher.length == CHUNK + 5
    assert hasher.digest.hexdigest() == hashlib.sha256(blob[: CHUNK + 5]).hexdigest()


@pytest.mark.parametrize(
    "size,limit",
    [
        pytest.param(0, None, id="empty"),
        pytest.param(MAP_WINDOW, None, id="one-window"),
        pytest.param(2 * MAP_WINDOW + 7, None, id="windows-and-a-tail"),
        pytest.param(2 * MAP_WINDOW + 7, MAP_WINDOW + 1, id="limit-past-a-window"),
        pytest.param(100, 1000, id="limit-past-the-end"),
    ],
)
def test_hash_prefix_is_exact_across_map_windows(
    tmp_path: Path, size: int, limit: int | None
) -> None:
    """Hashing from disk in mapped windows gives hashlib's digest for any size and limit,
    including an empty file and a limit beyond the end."""
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = data if limit is None else data[:limit]
    hasher = hash_prefix(path, limit=limit)
    assert hasher.length == len(expected)
    assert hasher.digest.hexdigest() == hashlib.sha256(expected).hexdigest()
