"""The controller's TUF repository, checked the way devices see it: a real python-tuf
ngclient refreshing over HTTP from a loopback mirror of the repository folder."""

import functools
import http.server
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Timestamp
from tuf.ngclient import Updater

from controller.audit import AuditEntry
from controller.db import make_engine, session_scope
from controller.migrations import init_db
from controller.services import Services
from controller.settings import load_settings
from controller.updates.errors import DuplicateError, PublishError, RepositoryStateError
from controller.updates.keys import KeyStore, load_key_file
from controller.updates.publish import ModelSpec, add_model_file
from controller.updates.registry import get_model_version
from controller.updates.repository import (
    TufRepository,
    read_root_draft,
    sign_root_draft,
    write_root_draft,
)

PASSPHRASE = "repository tests passphrase"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Mirror:
    """A plain static HTTP server over the repository folder: an untrusted mirror."""

    url: str


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    repository = TufRepository(
        tmp_path / "repo", KeyStore(tmp_path / "keys", SecretStr(PASSPHRASE))
    )
    repository.initialize(now=datetime.now(UTC))
    return repository


@pytest.fixture
def mirror(repo: TufRepository) -> Iterator[Mirror]:
    handler = functools.partial(_QuietHandler, directory=str(repo.dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    init_db(db)
    yield db
    db.dispose()


def updater(mirror: Mirror, folder: Path, trusted_root: bytes | None) -> Updater:
    """A device's TUF client; ``trusted_root`` None means 'what it trusted last time'."""
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    (folder / "downloads").mkdir(parents=True, exist_ok=True)
    return Updater(
        str(folder / "metadata"),
        f"{mirror.url}/metadata/",
        str(folder / "downloads"),
        f"{mirror.url}/targets/",
        bootstrap=trusted_root,
    )


def trusted_root_version(folder: Path) -> int:
    return int(json.loads((folder / "metadata" / "root.json").read_bytes())["signed"]["version"])


def artifact(tmp_path: Path, name: str, size: int = 2_500_000) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def add(
    engine: Engine, repo: TufRepository, source: Path, version: str = "1.0", **extra: Any
) -> None:
    spec = ModelSpec(
        name="smollm2",
        version=version,
        runtime="llama.cpp",
        filename=source.name,
        **extra,
    )
    with session_scope(engine) as session:
        add_model_file(session, repo, source, spec, actor="user:test")


def test_client_downloads_a_published_model(
    tmp_path: Path, repo: TufRepository, mirror: Mirror, engine: Engine
) -> None:
    """A model added to a fresh repository is verified and downloaded by ngclient, with
    contract 1's custom metadata, and recorded in the registry under its content hash."""
    source = artifact(tmp_path, "model.gguf")
    add(
        engine,
        repo,
        source,
        quantization="Q4_1",
        device_classes=("jetson-orin", "cpu-x86"),
        min_agent_version="0.1.0",
        expected_latency_ms=849.6,
    )
    client = updater(mirror, tmp_path / "device", repo.root_bytes(1))
    client.refresh()
    info = client.get_targetinfo("smollm2/1.0/model.gguf")
    assert info is not None
    assert info.custom == {
        "edgefleet": {
            "model": "smollm2",
            "version": "1.0",
            "runtime": "llama.cpp",
            "quantization": "Q4_1",
            "device_classes": ["jetson-orin", "cpu-x86"],
            "min_agent_version": "0.1.0",
            "expected_latency_ms": 850,
        }
    }
    downloaded = Path(client.download_target(info))
    assert downloaded.read_bytes() == source.read_bytes()
    with Session(engine) as session:
        row = get_model_version(session, "smollm2", "1.0")
        assert row is not None
        assert (row.sha256, row.length) == (info.hashes["sha256"], source.stat().st_size)
        assert row.target_path == "smollm2/1.0/model.gguf" and row.created_by == "user:test"
    stored = repo.targets_dir / "smollm2" / "1.0" / f"{row.sha256}.model.gguf"
    assert stored.read_bytes() == source.read_bytes()
    assert list(repo.staging_dir.iterdir()) == []


def test_new_model_version_bumps_targets_snapshot_and_timestamp(
    tmp_path: Path, repo: TufRepository, mirror: Mirror, engine: Engine
) -> None:
    """Each added version publishes targets, snapshot and timestamp one version up (root
    unchanged), and a client that trusted the old set sees both models after refreshing."""
    add(engine, repo, artifact(tmp_path, "model.gguf"), "1.0")
    client_dir = tmp_path / "device"
    updater(mirror, client_dir, repo.root_bytes(1)).refresh()
    before = repo.load().versions()
    add(engine, repo, artifact(tmp_path, "model-1.1.gguf"), "1.1")
    after = repo.load().versions()
    assert after == {
        "root": before["root"],
        "targets": before["targets"] + 1,
        "snapshot": before["snapshot"] + 1,
        "timestamp": before["timestamp"] + 1,
    }
    client = updater(mirror, client_dir, None)
    client.refresh()
    assert client.get_targetinfo("smollm2/1.0/model.gguf") is not None
    assert client.get_targetinfo("smollm2/1.1/model-1.1.gguf") is not None


def test_duplicate_version_is_refused_and_changes_nothing(
    tmp_path: Path, repo: TufRepository, engine: Engine
) -> None:
    """Adding the same name and version again fails with a clear error before any bytes
    are copied or any metadata is signed."""
    add(engine, repo, artifact(tmp_path, "model.gguf"), "1.0")
    versions = repo.load().versions()
    files = sorted(p for p in repo.dir.rglob("*") if p.is_file())
    with pytest.raises(DuplicateError, match=r"smollm2 version 1\.0 already exists"):
        add(engine, repo, artifact(tmp_path, "other.gguf"), "1.0")
    assert repo.load().versions() == versions
    assert sorted(p for p in repo.dir.rglob("*") if p.is_file()) == files


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "../etc", "model name"),
        ("version", "1/2", "model version"),
        ("filename", ".hidden", "file name"),
        ("runtime", "tensorflow", "runtime"),
        ("expected_latency_ms", -1.0, "positive"),
    ],
    ids=["traversal-name", "slash-version", "hidden-file", "unknown-runtime", "bad-latency"],
)
def test_model_spec_refuses_bad_fields(field: str, value: object, message: str) -> None:
    """Names that would escape the target path, unknown runtimes and bad numbers are
    refused before anything is staged."""
    fields: dict[str, Any] = {
        "name": "m",
        "version": "1",
        "runtime": "onnx",
        "filename": "m.onnx",
        field: value,
    }
    with pytest.raises(PublishError, match=message):
        ModelSpec(**fields)


def test_timestamp_key_rotation_client_follows_and_refuses_the_old_key(
    tmp_path: Path, repo: TufRepository, mirror: Mirror, engine: Engine
) -> None:
    """After rotating the timestamp key a client trusting root v1 moves to root v2 and
    accepts the new key's timestamp; a timestamp signed only by the revoked key is refused
    by the client and by the repository itself."""
    add(engine, repo, artifact(tmp_path, "model.gguf"))
    client_dir = tmp_path / "device"
    updater(mirror, client_dir, repo.root_bytes(1)).refresh()
    old_root = repo.load().root.signed
    [old_id] = old_root.roles["timestamp"].keyids
    old_signer = repo.keys.signers({old_id: old_root.keys[old_id]})[old_id]

    rotation = repo.rotate("timestamp", now=datetime.now(UTC))
    assert rotation.published and rotation.version == 2
    assert rotation.revoked_keyids == [old_id] and rotation.resigned == ["timestamp"]

    client = updater(mirror, client_dir, None)
    client.refresh()
    assert trusted_root_version(client_dir) == 2
    assert client.get_targetinfo("smollm2/1.0/model.gguf") is not None

    # An attacker holding the revoked key publishes a newer timestamp with it.
    current = Metadata[Timestamp].from_bytes((repo.metadata_dir / "timestamp.json").read_bytes())
    current.signed.version += 1
    current.sign(old_signer)
    (repo.metadata_dir / "timestamp.json").write_bytes(current.to_bytes())
    with pytest.raises(UnsignedMetadataError):
        updater(mirror, client_dir, None).refresh()
    with pytest.raises(RepositoryStateError, match="replaced"):
        repo.refresh(now=datetime.now(UTC))


def test_two_of_three_root_rotation_signed_with_offline_keys(
    tmp_path: Path, engine: Engine
) -> None:
    """With root 2-of-3 and every root key exported offline, a new root that replaces one
    root key is published only once two old keys have signed it; a client trusting v1
    follows to v2, and a root signed by too few keys is refused."""
    keys = KeyStore(tmp_path / "keys", SecretStr(PASSPHRASE))
    repo = TufRepository(tmp_path / "repo", keys)
    repo.initialize(now=datetime.now(UTC), root_keys=3, root_threshold=2)
    add(engine, repo, artifact(tmp_path, "model.gguf"))
    k1, k2, k3 = repo.load().root.signed.roles["root"].keyids
    offline = {}
    for keyid in (k1, k2, k3):
        offline[keyid] = tmp_path / "vault" / f"{keyid[:8]}.pem"
        keys.export([keyid], offline[keyid], keep=False)

    handler = functools.partial(_QuietHandler, directory=str(repo.dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = Mirror(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        client_dir = tmp_path / "device"
        updater(mirror, client_dir, repo.root_bytes(1)).refresh()

        rotation = repo.rotate("root", now=datetime.now(UTC), revoke=[k3])
        assert not rotation.published and rotation.draft_path is not None
        [k_new] = rotation.new_keyids
        draft_path = rotation.draft_path
        previous = repo.load_root_chain()[-1].signed

        draft = read_root_draft(draft_path)
        sign_root_draft(draft, load_key_file(offline[k1], SecretStr(PASSPHRASE)), previous)
        write_root_draft(draft, draft_path)
        with pytest.raises(PublishError, match=r"1/2 keys of root v1 and 2/2 of its own"):
            repo.publish_root(read_root_draft(draft_path), now=datetime.now(UTC))
        assert not (repo.metadata_dir / "2.root.json").exists()

        draft = read_root_draft(draft_path)
        sign_root_draft(draft, load_key_file(offline[k2], SecretStr(PASSPHRASE)), previous)
        repo.publish_root(draft, now=datetime.now(UTC))
        root = repo.load().root.signed
        assert root.version == 2 and root.roles["root"].keyids == [k1, k2, k_new]

        client = updater(mirror, client_dir, None)
        client.refresh()
        assert trusted_root_version(client_dir) == 2
        info = client.get_targetinfo("smollm2/1.0/model.gguf")
        assert info is not None and Path(client.download_target(info)).is_file()

        # Root v3 signed by the one online root key: below the threshold of 2.
        forged = read_root_draft(draft_path)
        forged.signed.version = 3
        forged.signatures.clear()
        online_root = keys.signers({k_new: forged.signed.keys[k_new]})
        sign_root_draft(forged, list(online_root.values()), root)
        (repo.metadata_dir / "3.root.json").write_bytes(forged.to_bytes())
        with pytest.raises(UnsignedMetadataError):
            updater(mirror, client_dir, None).refresh()
        with pytest.raises(RepositoryStateError, match=r"3\.root\.json fails verification"):
            repo.load_root_chain()
    finally:
        server.shutdown()
        server.server_close()


def test_refresh_resigns_only_what_is_due(
    repo: TufRepository, tmp_path: Path, mirror: Mirror
) -> None:
    """refresh() re-signs timestamp once less than half its lifetime is left, snapshot (and
    timestamp) likewise, leaves targets alone, writes nothing when nothing is due, and the
    client accepts the result."""
    start = repo.load()
    now = datetime.now(UTC)
    assert repo.refresh(now=now + timedelta(hours=1)) == []
    later = now + timedelta(hours=13)
    assert repo.refresh(now=later) == ["timestamp"]
    state = repo.load()
    assert state.timestamp.signed.version == start.timestamp.signed.version + 1
    assert state.timestamp.signed.expires == (later + timedelta(days=1)).replace(microsecond=0)
    assert repo.refresh(now=later) == []
    assert repo.refresh(now=now + timedelta(days=4)) == ["snapshot", "timestamp"]
    assert repo.load().targets.signed.version == start.targets.signed.version
    updater(mirror, tmp_path / "device", repo.root_bytes(1)).refresh()


def test_services_job_extends_expiry_and_is_restart_safe(tmp_path: Path) -> None:
    """The controller's scheduled job re-signs a timestamp near expiry and audits it; a
    restarted controller at the same moment finds nothing due."""
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    settings = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{tmp_path / 'controller.db'}",
        updates={
            "repo_dir": str(tmp_path / "repo"),
            "keys_dir": str(tmp_path / "keys"),
            "passphrase_file": str(passphrase_file),
            "expiry": {"timestamp": "PT2H"},
        },
    )
    TufRepository.from_settings(settings).initialize(now=datetime.now(UTC))
    now = datetime.now(UTC) + timedelta(hours=1, minutes=30)
    services = Services.create(settings)
    try:
        assert services.tuf is not None
        before = services.tuf.load().timestamp.signed
        assert services.refresh_tuf_metadata(now=now) == ["timestamp"]
        after = services.tuf.load().timestamp.signed
        assert after.version == before.version + 1 and after.expires > before.expires
        with Session(services.engine) as session:
            entries = session.exec(select(AuditEntry).where(AuditEntry.action == "tuf.resign"))
            assert [e.detail for e in entries] == [{"roles": ["timestamp"]}]
    finally:
        services.engine.dispose()
    restarted = Services.create(settings)
    try:
        assert restarted.refresh_tuf_metadata(now=now) == []
    finally:
        restarted.engine.dispose()


def test_a_crash_mid_publish_stays_invisible(
    tmp_path: Path, repo: TufRepository, mirror: Mirror, engine: Engine
) -> None:
    """Files a crashed publish left behind (a targets version no timestamp refers to) change
    nothing clients see, and the next publish moves past them instead of rewriting them."""
    add(engine, repo, artifact(tmp_path, "model.gguf"), "1.0")
    state = repo.load()
    orphan = repo.metadata_dir / f"{state.targets.signed.version + 1}.targets.json"
    orphan.write_bytes(b'{"half": ')
    assert repo.load().versions() == state.versions()
    updater(mirror, tmp_path / "device", repo.root_bytes(1)).refresh()
    add(engine, repo, artifact(tmp_path, "model-2.gguf"), "2.0")
    assert repo.load().targets.signed.version == state.targets.signed.version + 2
    assert orphan.read_bytes() == b'{"half": '


def test_tampered_metadata_is_never_resigned(repo: TufRepository) -> None:
    """A targets file edited on disk no longer verifies, so the repository refuses to load
    it (and so to re-sign it) instead of laundering the change."""
    state = repo.load()
    path = repo.metadata_dir / f"{state.targets.signed.version}.targets.json"
    doc = json.loads(path.read_bytes())
    doc["signed"]["targets"]["evil/1/x.bin"] = {"length": 1, "hashes": {"sha256": "0" * 64}}
    path.write_text(json.dumps(doc))
    with pytest.raises(RepositoryStateError, match="not signed by a threshold"):
        repo.refresh(now=datetime.now(UTC), force=["targets"])


def test_root_draft_with_online_root_key_renews_root_expiry(repo: TufRepository) -> None:
    """With the root key online, a root draft is fully signed and publishing it makes a
    root v2 that expires a year after the draft was made."""
    later = datetime.now(UTC) + timedelta(days=300)
    draft = repo.draft_root(now=later)
    assert repo.check_root_draft(draft).verified
    assert repo.publish_root(draft, now=later) == []
    chain = repo.load_root_chain()
    assert [md.signed.version for md in chain] == [1, 2]
    assert chain[-1].signed.expires == (later + timedelta(days=365)).replace(microsecond=0)
    assert isinstance(chain[-1].signed, Root)
