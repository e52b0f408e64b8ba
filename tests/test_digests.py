"""Model folder digests: what the controller computes from a published ort-genai archive
equals what a device measures on the folder it unpacks, so attestation recognises it."""

import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlmodel import Session

from controller.db import make_engine, session_scope
from controller.migrations import init_db
from controller.updates.errors import PublishError
from controller.updates.keys import KeyStore
from controller.updates.publish import ModelSpec, add_model_file
from controller.updates.registry import known_target_hashes
from controller.updates.repository import TufRepository
from edge_agent.updates.slots import unpack_archive
from shared.digests import folder_sha256, tar_folder_sha256


def model_folder(root: Path) -> Path:
    folder = root / "tiny-genai"
    (folder / "sub").mkdir(parents=True)
    (folder / "genai_config.json").write_text('{"model": {}}')
    (folder / "model.onnx").write_bytes(bytes(range(256)) * 4000)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    (folder / "empty.txt").write_bytes(b"")
    return folder


def pack(folder: Path, archive: Path, layout: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        if layout == "one-folder":
            tar.add(folder, arcname=folder.name)
        elif layout == "top-level":
            for child in sorted(folder.iterdir()):
                tar.add(child, arcname=child.name)
        else:  # "dot": GNU tar's `tar -C folder .`
            tar.add(folder, arcname=".")
    return archive


@pytest.mark.parametrize("layout", ["one-folder", "top-level", "dot"])
def test_archive_digest_matches_the_unpacked_folder(tmp_path: Path, layout: str) -> None:
    """For each archive layout, the digest read from the archive equals folder_sha256 of
    what the agent's unpacker produces, and equals the source folder's."""
    folder = model_folder(tmp_path / "src")
    archive = pack(folder, tmp_path / "model.tar.gz", layout)
    expected = tar_folder_sha256(archive)
    slot = tmp_path / "slot"
    slot.mkdir()
    entry = unpack_archive(archive, slot, max_bytes=10**8)
    assert folder_sha256(slot / entry) == expected == folder_sha256(folder)


def test_publishing_an_ort_genai_archive_records_its_folder_digest(tmp_path: Path) -> None:
    """The registry keeps the unpacked folder's digest for an ort-genai target and counts
    it among the known model hashes; a file that is not an archive is refused."""
    repo = TufRepository(tmp_path / "repo", KeyStore(tmp_path / "keys", SecretStr("x" * 20)))
    repo.initialize(now=datetime.now(UTC))
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    init_db(engine)
    folder = model_folder(tmp_path / "src")
    archive = pack(folder, tmp_path / "tiny.tar.gz", "one-folder")
    spec = ModelSpec(name="tiny", version="1", runtime="ort-genai", filename=archive.name)
    with session_scope(engine) as session:
        row = add_model_file(session, repo, archive, spec, actor="user:test")
        assert row.content_sha256 == folder_sha256(folder)
    with Session(engine) as session:
        assert folder_sha256(folder) in known_target_hashes(session)

    garbage = tmp_path / "bad.tar.gz"
    garbage.write_bytes(b"not an archive" * 100)
    bad = ModelSpec(name="tiny", version="2", runtime="ort-genai", filename=garbage.name)
    with pytest.raises(PublishError, match="tar archive"), session_scope(engine) as session:
        add_model_file(session, repo, garbage, bad, actor="user:test")
    assert not list((repo.dir / "targets" / "tiny").glob("2/*"))
