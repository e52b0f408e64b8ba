"""A fleet over mutual TLS for tests: the device CA from `edgefleet pki init`, and a
Mosquitto running the config `edgefleet broker mosquitto-config --tls` writes."""

import getpass
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from controller.db import make_engine, session_scope
from controller.migrations import init_db
from controller.pki.service import issue_device_certificate
from controller.pki.store import PkiStore
from controller.settings import PkiSettings
from shared.broker_url import Tls
from shared.certificates import csr_for, new_private_key, private_key_pem
from tests.conftest import free_port, mosquitto_binary, port_open, wait_for
from tests.procs import run_cli

PASSPHRASE = "tls-e2e-passphrase-for-the-ca"
CONTROLLER_ID = "edgefleet-controller"


@dataclass
class World:
    """A device CA, a Mosquitto from the generated config, and the controller's files."""

    tmp: Path
    config: Path
    store: PkiStore
    port: int
    log: Path
    database_url: str
    password_port: int | None = None
    broker: "subprocess.Popen[bytes] | None" = field(default=None)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE}
        return run_cli(["-m", "controller", *args, "-c", str(self.config)], env=env)

    def device_tls(self, device_id: str) -> Tls:
        """A key made here and a certificate the CA signs for it, recorded as issued."""
        key = new_private_key()
        engine = make_engine(self.database_url)
        with session_scope(engine) as session:
            issued = issue_device_certificate(
                session, self.store, device_id, csr_for(device_id, key), datetime.now(UTC)
            )
        engine.dispose()
        cert_file, key_file = self.tmp / f"{device_id}.crt", self.tmp / f"{device_id}.key"
        cert_file.write_bytes(issued.certificate_pem)
        key_file.write_bytes(private_key_pem(key))
        return Tls(self.store.ca_file, cert_file, key_file)

    def reload_broker(self) -> None:
        """What the systemd path unit of docs/tls.md does when crl.pem changes."""
        assert self.broker is not None
        self.broker.send_signal(signal.SIGHUP)

    def broker_settings(self) -> dict[str, object]:
        certs = self.tmp / "controller-certs"
        return {
            "mode": "external",
            "url": f"mqtts://127.0.0.1:{self.port}",
            "client_id": CONTROLLER_ID,
            "ca_file": str(self.store.ca_file),
            "cert_file": str(certs / f"{CONTROLLER_ID}.crt"),
            "key_file": str(certs / f"{CONTROLLER_ID}.key"),
        }


def _start_broker(conf: Path, ports: list[int], log: Path) -> "subprocess.Popen[bytes]":
    with log.open("ab") as out:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=out, stderr=out)
    up = lambda: all(port_open(p) for p in ports) or proc.poll() is not None  # noqa: E731
    wait_for(up, 10, what="mosquitto")
    if proc.poll() is not None:
        pytest.fail(f"mosquitto exited: {log.read_text()}")
    return proc


def write_config(tmp_path: Path, database_url: str) -> Path:
    config = tmp_path / "controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "database_url": database_url,
                "pki": {"dir": str(tmp_path / "pki")},
            }
        )
    )
    made = run_cli(["-m", "controller", "db", "init", "-c", str(config)])
    assert made.returncode == 0, made.stderr
    return config


@contextmanager
def tls_fleet(
    tmp_path: Path, *, password_port: bool = False, before_config: object = None
) -> Iterator[World]:
    """`pki init`, then `broker mosquitto-config --tls --controller-cert-out` (with a
    password listener if asked), and a Mosquitto running that config (as the current user,
    so it reads pytest's folders). ``before_config(world)`` runs before the config is
    written (to provision password devices)."""
    database_url = f"sqlite:///{tmp_path / 'controller.db'}"
    config = write_config(tmp_path, database_url)
    pki = tmp_path / "pki"
    world = World(
        tmp_path, config, PkiStore(pki, SecretStr(PASSPHRASE), PkiSettings(dir=pki)),
        free_port(), tmp_path / "mosquitto.log", database_url,
        free_port() if password_port else None,
    )  # fmt: skip
    done = world.cli("pki", "init", "--host", "127.0.0.1", "--host", "localhost")
    assert done.returncode == 0, done.stderr
    if callable(before_config):
        before_config(world)
    out = tmp_path / "broker"
    extra = [] if world.password_port is None else ["--password-port", str(world.password_port)]
    done = world.cli(
        "broker", "mosquitto-config", "--tls", "--port", str(world.port), "--out", str(out),
        "--controller-cert-out", str(tmp_path / "controller-certs"), *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    conf = out / "mosquitto.conf"
    conf.write_text(
        conf.read_text() + f"user {getpass.getuser()}\nlog_dest stderr\nlog_type error\n"
    )
    init_db(make_engine(database_url))
    ports = [world.port] + ([world.password_port] if world.password_port else [])
    world.broker = _start_broker(conf, ports, world.log)
    try:
        yield world
    finally:
        world.broker.terminate()
        world.broker.wait(10)
