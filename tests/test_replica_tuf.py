"""TUF publishing from two controller replicas at once: one repository folder shared by
both (as over NFS), one PostgreSQL registry, checked by a device's TUF client."""

import functools
import http.server
import multiprocessing
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import Session, select

from controller.db import make_engine, session_scope
from controller.migrations import init_db
from controller.updates.keys import KeyStore
from controller.updates.publish import ModelSpec, add_model_file
from controller.updates.registry import ModelVersion
from controller.updates.repository import TufRepository
from tests.test_tuf_repository import PASSPHRASE, Mirror, _QuietHandler, updater

VERSIONS_EACH = 4


def _repository(shared: Path) -> TufRepository:
    return TufRepository(shared / "repo", KeyStore(shared / "keys", SecretStr(PASSPHRASE)))


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    """The repository folder both replicas share, initialized once."""
    repository = _repository(tmp_path)
    repository.initialize(now=datetime.now(UTC))
    return repository


@pytest.fixture
def mirror(repo: TufRepository) -> Iterator[Mirror]:
    """A static HTTP server over the shared folder, as devices reach it."""
    handler = functools.partial(_QuietHandler, directory=str(repo.dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def _replica(shared: Path, database_url: str, name: str, start: Any) -> None:
    """One replica's process: publishes its versions as an operator's uploads would, and
    re-signs timestamp and snapshot between them as its refresh job does."""
    repository = _repository(shared)
    engine = make_engine(database_url)
    start.wait(30)
    try:
        for i in range(VERSIONS_EACH):
            source = shared / f"{name}-{i}.gguf"
            source.write_bytes(os.urandom(64 * 1024))
            spec = ModelSpec(
                name="smollm2", version=f"{name}.{i}", runtime="llama.cpp", filename=source.name
            )
            with session_scope(engine) as session:
                add_model_file(session, repository, source, spec, actor=f"user:{name}")
            repository.refresh(now=datetime.now(UTC), force={"timestamp", "snapshot"})
    finally:
        engine.dispose()


def test_two_replicas_publish_into_one_shared_repository(
    tmp_path: Path, postgres_url: str, repo: TufRepository, mirror: Mirror
) -> None:
    """Both replicas publish and re-sign at the same time: every version lands in the signed
    targets (none lost to the other's write), metadata versions only grow, and a device's
    TUF client verifies the whole chain and downloads every model."""
    engine = make_engine(postgres_url)
    init_db(engine)
    engine.dispose()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    replicas = [
        ctx.Process(target=_replica, args=(tmp_path, postgres_url, name, start))
        for name in ("r1", "r2")
    ]
    for proc in replicas:
        proc.start()
    start.set()
    for proc in replicas:
        proc.join(120)
        assert proc.exitcode == 0, f"{proc.name} exited {proc.exitcode}"

    expected = {f"smollm2/{n}.{i}/{n}-{i}.gguf" for n in ("r1", "r2") for i in range(VERSIONS_EACH)}
    state = repo.load()
    assert set(state.targets.signed.targets) == expected
    assert state.targets.signed.version == 1 + len(expected)
    engine = make_engine(postgres_url)
    with Session(engine) as session:
        rows = session.exec(select(ModelVersion)).all()
        assert {r.target_path for r in rows} == expected
    engine.dispose()

    client = updater(mirror, tmp_path / "device", repo.root_bytes(1))
    client.refresh()
    for path in sorted(expected):
        info = client.get_targetinfo(path)
        assert info is not None, path
        downloaded = Path(client.download_target(info)).read_bytes()
        assert downloaded == (tmp_path / Path(path).name).read_bytes()
