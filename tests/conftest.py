"""Shared fixtures: a real Mosquitto per test, the demo model, and polling helpers."""

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import settings

# Property tests check logic, not speed: a busy 2-core CI box must not fail them on a
# per-example deadline.
settings.register_profile("edgefleet", deadline=None)
settings.load_profile("edgefleet")

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
        last = predicate()
    return last


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if found is None:
        pytest.fail("mosquitto is not installed (scripts/dev test installs it with apt-get)")
    return found


class MosquittoProcess:
    """A real Mosquitto with a generated config on a fixed free port; restartable, so
    tests can take it down mid-stream and bring it back with its persisted sessions."""

    def __init__(self, workdir: Path, *, persistence: bool = False, extra: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if persistence else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_packet_size 1048576",
            "max_queued_messages 100000",
        ]
        if persistence:
            # Started as root, Mosquitto switches to user 'mosquitto', who cannot write
            # pytest's folders: stay the current user so the persistence file is saved.
            lines += [f"persistence_location {workdir}/", f"user {getpass.getuser()}"]
        self.conf.write_text("\n".join(lines) + "\n" + extra)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def broker(self) -> Broker:
        return Broker("127.0.0.1", self.port, self.process)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.process
        wait_for(lambda: port_open(self.port) or proc.poll() is not None, 10, what="mosquitto")
        if proc.poll() is not None:
            pytest.fail(f"mosquitto exited: {self.log_path.read_text()}")

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file and exits."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Mosquitto on a free loopback port with a generated config, stopped after."""
    server = MosquittoProcess(tmp_path)
    server.start()
    try:
        yield server.broker
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real demo GGUF model (fetched by scripts/dev; tests never skip without it)."""
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} missing: run 'python scripts/fetch_demo_model.py'")
    return MODEL


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL database for this run (one per pytest process): the server
    named by EDGEFLEET_TEST_POSTGRES_URL, else a passwordless one at the default URL, else
    a throwaway cluster from Debian's postgresql package, stopped when the session ends."""
    from tests import pg_cluster

    try:
        url, cluster = pg_cluster.resolve_server(
            os.environ.get(pg_cluster.ENV_URL), pg_cluster.DEFAULT_URL
        )
    except pg_cluster.ClusterError as e:
        pytest.fail(str(e))
    try:
        yield url
    finally:
        if cluster is not None:
            cluster.stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A throwaway PostgreSQL database on the run's server, dropped after the test."""
    import uuid

    import psycopg

    name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = postgres_server.rsplit("/", 1)[0]
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database the controller supports: a SQLite file and a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'edgefleet.db'}"
    return str(request.getfixturevalue("postgres_url"))
