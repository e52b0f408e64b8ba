"""``edgefleet flash`` with an ``mqtts://`` broker: the device's TLS key made for the target,
only a CSR sent, the signed certificate and the CA written, the config naming them; the
flashed device then connects to a real Mosquitto set up from ``pki init``'s files."""

import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import Session, select

from controller.broker.tables import BrokerCredential
from controller.images.build import build_image
from controller.images.flash import AGENT_CONFIG, ControllerApi, ControllerError, flash
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate
from edge_agent.config import load_config
from shared.certificates import certificate_info, load_private_key, read_certificate
from shared.provisioning import MQTT_CA_FILE
from tests.controller_harness import LiveController, live_controller
from tests.pki_world import BrokerFiles, tls_mosquitto
from tests.test_flash import PASSPHRASE, image_key_pair, write_recipe
from tests.test_pki import connects

STATE = "var/lib/edgefleet-agent"


@dataclass
class World:
    folder: Path
    live: LiveController
    image: Path
    public_key: bytes
    store: PkiStore

    def flash(self, target: Path, device_id: str, broker_url: str) -> object:
        api = ControllerApi(cast(httpx.Client, self.live.client), "http://testserver")
        self.live.client.headers["Authorization"] = f"Bearer {self.live.token}"
        return flash(self.image, target=target, device_id=device_id, controller=api,
                     broker_url=broker_url, image_key=self.public_key)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("flash-tls")
    (folder / "passphrase").write_text(PASSPHRASE)
    updates = {"repo_dir": str(folder / "tuf"), "keys_dir": str(folder / "keys"),
               "passphrase_file": str(folder / "passphrase")}  # fmt: skip
    public, key = image_key_pair(folder / "keys")
    image = build_image(write_recipe(folder / "recipe"), folder / "image.tar", keys=key,
                        fetch=False).path  # fmt: skip
    broker: dict[str, object] = {"mode": "embedded", "url": "mqtt://127.0.0.1:0"}
    pki = {"dir": str(folder / "pki")}
    with live_controller(folder, broker, updates=updates, pki=pki) as live:
        assert live.services.tuf is not None
        live.services.tuf.initialize(now=datetime.now(UTC))
        store = PkiStore(folder / "pki", SecretStr(PASSPHRASE), live.services.settings.pki)
        yield World(folder, live, image, public, store)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_flash_without_a_ca_is_refused_before_anything_is_issued(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no device CA at the controller, an mqtts flash stops saying to run ``pki init``:
    no broker credential, no certificate, no target."""
    monkeypatch.setattr(world.live.services.settings.pki, "dir", tmp_path / "no-ca")
    with pytest.raises(ControllerError, match="edgefleet pki init"):
        world.flash(tmp_path / "device", "tls-none", "mqtts://127.0.0.1:8883")
    assert not (tmp_path / "device").exists()
    with Session(world.live.services.engine) as session:
        assert session.get(BrokerCredential, "tls-none") is None
        issued = select(IssuedCertificate).where(IssuedCertificate.device_id == "tls-none")
        assert session.exec(issued).all() == []


def test_flashed_device_connects_over_mutual_tls(world: World, tmp_path: Path) -> None:
    """An mqtts flash writes a 0600 P-256 key (folder 0700) whose certificate from the CA
    names the device, and the CA certificate; the agent config (valid for the image's
    schema and the agent) names them; with them the device connects to a Mosquitto whose
    CA and server certificate come from the controller's store."""
    if not world.store.exists():
        world.store.initialize(now=datetime.now(UTC))
    server = world.store.write_server_certificate(
        ["127.0.0.1"], tmp_path / "srv", now=datetime.now(UTC)
    )
    broker = tls_mosquitto(tmp_path, BrokerFiles(world.store.ca_file, *server))
    target = tmp_path / "device"
    summary = world.flash(target, "tls-1", f"mqtts://127.0.0.1:{broker.port}")
    assert "PRIVATE KEY" not in str(summary)

    config = load_config(target / AGENT_CONFIG, root=target.resolve())
    assert config.mqtt is not None
    tls = config.mqtt.tls()
    assert tls is not None and tls.ca_file and tls.cert_file and tls.key_file
    assert tls.ca_file == target.resolve() / MQTT_CA_FILE
    assert tls.key_file == target.resolve() / STATE / "tls/device.key"
    assert mode_of(tls.key_file) == 0o600 and mode_of(tls.key_file.parent) == 0o700
    key = load_private_key(tls.key_file.read_bytes())
    cert_pem = tls.cert_file.read_bytes()
    assert read_certificate(cert_pem).public_key() == key.public_key()
    info = certificate_info(cert_pem)
    assert info.subject_cn == "tls-1"
    assert tls.ca_file.read_bytes() == world.store.ca_file.read_bytes()
    with Session(world.live.services.engine) as session:
        row = session.exec(
            select(IssuedCertificate).where(IssuedCertificate.device_id == "tls-1")
        ).one()
        assert row.fingerprint == info.fingerprint_sha256

    broker.start()
    try:
        assert connects(broker.port, "tls-1", tls)
    finally:
        broker.stop()


def test_flash_into_a_tar_carries_the_tls_files(world: World, tmp_path: Path) -> None:
    """Into a ``.tar``, the TLS key is a 0600 member in a 0700 folder next to its
    certificate, and the CA certificate is there for the config that names them."""
    if not world.store.exists():
        world.store.initialize(now=datetime.now(UTC))
    target = tmp_path / "device.tar"
    world.flash(target, "tls-tar", "mqtts://broker.example:8883")
    with tarfile.open(target) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert stat.S_IMODE(members[f"{STATE}/tls/device.key"].mode) == 0o600
        assert stat.S_IMODE(members[f"{STATE}/tls"].mode) == 0o700
        assert f"{STATE}/tls/device.crt" in members and MQTT_CA_FILE in members
        tar.extractall(tmp_path / "root", filter="data")
    root = (tmp_path / "root").resolve()
    config = load_config(root / AGENT_CONFIG, root=root)
    assert config.mqtt is not None and config.mqtt.url == "mqtts://broker.example:8883"
    assert config.mqtt.cert_file == root / STATE / "tls/device.crt"
    cert = certificate_info(config.mqtt.cert_file.read_bytes())
    assert cert.subject_cn == "tls-tar"
