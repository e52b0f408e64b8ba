"""Build, flash, boot, enroll, attest and update one device, every part a real process.

Mosquitto with per-device logins and the generated ACL (the production broker setup), a
controller (`edgefleet serve`) that trusts only keys registered beforehand and only the
agent code of registered images, an image built with `edgefleet image build
--no-wheelhouse` (golden values registered by the build), `edgefleet flash` into a folder,
and the agent booted from that folder with `edge-agent run --root DIR`, running the agent
code from the image (PYTHONPATH as the image's systemd unit sets it). The device comes
online, attests trusted, and installs a rollout of a tiny ONNX classifier.
"""

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.broker.mosquitto_auth import render_mosquitto_conf
from tests.conftest import free_port, mosquitto_binary, port_open, wait_for
from tests.procs import run_cli
from tests.sync_harness import ControllerProcess
from tests.test_flash import write_recipe
from tests.tiny_models import build_tiny_classifier

pytestmark = pytest.mark.e2e

DEVICE = "flashed-e2e"
MODEL = "parts"
PASSPHRASE = "correct horse battery staple, e2e flashing"
CONTROLLER_USER = "edgefleet-controller"
CONTROLLER_PASSWORD = "controller-Secret-for-flash-e2e-42"
FACTORY_PATH = "/var/lib/edgefleet-agent/models/parts-factory.onnx"
TEMPLATE: dict[str, Any] = {
    "device_id": "{{device_id}}",
    "state_dir": "/var/lib/edgefleet-agent",
    "mqtt": {
        "url": "mqtt://controller.local:1883",
        "keepalive_s": 2,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 2.0,
        "protocol": "5",
    },
    "api": {"host": "127.0.0.1", "port": 8080},
    "heartbeat_interval_s": 1.0,
    "outbox": {"ack_timeout_s": 3.0},
    "perception": [{"name": MODEL, "path": FACTORY_PATH, "threads": 1}],
    "updates": {"confirm_after_s": 2.0, "retry_max_s": 5.0},
}


class Broker:
    """Mosquitto on the files `edgefleet broker mosquitto-config` generates; reloaded with
    SIGHUP after they are regenerated (new device logins)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.files = workdir / "broker"
        self.port, self.controller_port = free_port(), free_port()
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def generate(self, config: Path) -> None:
        done = run_cli(
            ["-m", "controller", "broker", "mosquitto-config", "--out", str(self.files),
             "--port", str(self.port), "--controller-port", str(self.controller_port),
             "-c", str(config)]
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            render_mosquitto_conf(
                host="127.0.0.1",
                port=self.port,
                password_file=self.files / "passwd",
                acl_file=self.files / "acl",
                controller_port=self.controller_port,
                controller_password_file=self.files / "passwd-controller",
            )
            # As root, Mosquitto would become user 'mosquitto', who cannot read the 0600
            # password files in pytest's folders: stay the user who generated them.
            + f"user {getpass.getuser()}\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.proc
        wait_for(
            lambda: (
                (port_open(self.port) and port_open(self.controller_port))
                or proc.poll() is not None
            ),
            10,
            what="mosquitto",
        )
        assert proc.poll() is None, self.log.read_text()

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class BootedDevice:
    """`edge-agent run --root DIR` as the image's unit starts it: the image's agent code
    first on the path, from a folder outside the repository."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.log_path = workdir / f"{DEVICE}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(root / "opt/edgefleet/agent"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--root", str(root),
                 "--log-level", "info"],
                cwd=workdir,  # not the repository: its edge_agent must not shadow the image's
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class World:
    """Broker, controller, the built image and the flashed, booted device."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = Broker(workdir)
        passphrase = workdir / "passphrase"
        passphrase.write_text(PASSPHRASE + "\n")
        passphrase.chmod(0o600)
        self.controller = ControllerProcess(
            workdir,
            "controller",
            broker_url="",
            database_url=f"sqlite:///{workdir / 'controller.db'}",
            broker={
                "mode": "external",
                "url": f"mqtt://127.0.0.1:{self.broker.controller_port}",
                "username": CONTROLLER_USER,
                "password": CONTROLLER_PASSWORD,
                "protocol": "5",
                "keepalive_s": 5,
            },
            updates={
                "repo_dir": str(workdir / "tuf"),
                "keys_dir": str(workdir / "keys"),
                "passphrase_file": str(passphrase),
            },
            rollouts={"tick_interval_s": 0.3},
            attestation={
                "enrollment": "provisioned",
                "trust_local_agent_code": False,  # only the image's agent code is golden
                "timeout_s": 60.0,
                "nonce_ttl_s": 120.0,
            },
            require_provisioned_devices=True,
        )
        self.root = workdir / "device-root"
        self.device: BootedDevice | None = None

    def cli(self, *args: str) -> str:
        done = run_cli(["-m", "controller", *args, "--config", str(self.controller.config)])
        assert done.returncode == 0, f"edgefleet {' '.join(args)}: {done.stderr}"
        return done.stdout

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.controller.api() as api:
            response = api.request(method, path, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.text}"
        return response.json()

    def publish(self, version: str, artifact: Path) -> dict[str, Any]:
        self.cli(
            "models", "add", str(artifact), "--name", MODEL, "--version", version,
            "--runtime", "onnx", "--filename", f"{MODEL}-{version}.onnx",
        )  # fmt: skip
        return dict(self.api("GET", f"/api/models/{MODEL}/{version}"))

    def stop(self) -> None:
        if self.device is not None:
            self.device.stop()
        if self.controller.proc is not None:
            self.controller.proc.stop()
        self.broker.stop()

    def logs(self) -> str:
        parts = [f"----- mosquitto -----\n{self.broker.log.read_text()[-2000:]}"]
        if self.controller.proc is not None:
            parts.append(f"----- controller -----\n{self.controller.proc.log()[-5000:]}")
        if self.device is not None:
            parts.append(f"----- {DEVICE} -----\n{self.device.log()[-5000:]}")
        return "\n".join(parts)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """The world, stopped after the test; every log tail is printed when it fails."""
    world = World(tmp_path)
    try:
        yield world
    except BaseException:
        print(world.logs())
        raise
    finally:
        world.stop()


def test_flashed_device_boots_enrolls_attests_and_takes_a_rollout(
    world: World, tmp_path: Path
) -> None:
    """An image built and flashed by the CLIs boots from its folder, connects with its own
    broker login, attests trusted with the key flashing registered and the image's golden
    image_id and agent_code, and installs a rolled-out model version; the broker password
    is never printed."""
    models = tmp_path / "models"
    models.mkdir()
    factory = build_tiny_classifier(models / "factory.onnx", seed=0)
    candidate = build_tiny_classifier(models / "v2.onnx", seed=5)

    # Controller host: TUF and image keys, broker files, the controller, the first admin.
    world.cli("db", "init")
    world.cli("keys", "init")
    world.cli("image", "keygen")
    world.broker.generate(world.controller.config)
    world.broker.start()
    world.controller.bootstrap()
    world.controller.start()
    factory_version = world.publish("1.0", factory)

    # Build the image; the build registers its image_id and agent_code as golden values.
    recipe = write_recipe(tmp_path / "recipe", TEMPLATE)
    out = str(tmp_path / "image.tar")
    built = json.loads(
        world.cli("image", "build", str(recipe), "--out", out, "--no-wheelhouse", "--json")
    )
    golden = world.api("GET", "/api/attestation/golden")
    assert {(g["kind"], g["value"]) for g in golden} >= {
        ("image_id", built["image_id"]),
        ("agent_code", built["agent_code"]),
    }

    # Flash from the operator's side: only the controller URL and an admin token.
    flashed = run_cli(
        ["-m", "controller", "flash", str(tmp_path / "image.tar"), "--target", str(world.root),
         "--device-id", DEVICE, "--url", world.controller.base_url,
         "--token", world.controller.token,
         "--broker-url", f"mqtt://127.0.0.1:{world.broker.port}", "--json"]
    )  # fmt: skip
    assert flashed.returncode == 0, flashed.stderr
    summary = json.loads(flashed.stdout)
    password = (world.root / "etc/edgefleet/mqtt-password").read_text().strip()
    assert password and password not in flashed.stdout + flashed.stderr
    assert summary["image_id"] == built["image_id"]

    # The new login reaches the broker; the device gets a free API port and its factory
    # model (what an image with default model bytes would carry).
    world.broker.generate(world.controller.config)
    world.broker.reload()
    config_file = world.root / "etc/edgefleet/agent.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["api"]["port"] = free_port()
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    factory_copy = world.root / FACTORY_PATH.lstrip("/")
    factory_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(factory, factory_copy)

    world.device = BootedDevice(world.root.resolve(), tmp_path)
    wait_for(
        lambda: (
            (world.api("GET", f"/api/devices/{DEVICE}")["state"] == "online")
            or world.device is None
            or world.device.proc.poll() is not None
        ),
        45,
        interval=0.3,
        what=f"{DEVICE} online",
    )
    assert world.device.proc.poll() is None, world.device.log()

    def verdict() -> dict[str, Any]:  # empty until the first quote is judged
        results = world.api("GET", f"/api/devices/{DEVICE}/attestation")["results"]
        return dict(results[0]) if results else {}

    first = wait_for(verdict, 45, interval=0.3, what=f"{DEVICE}'s first attestation verdict")
    assert first["ok"], first["reasons"]
    assert first["measurements"]["image_id"] == built["image_id"]
    assert first["measurements"]["agent_code"] == built["agent_code"]
    assert first["measurements"][f"model:{MODEL}"] == factory_version["sha256"]
    attestation = world.api("GET", f"/api/devices/{DEVICE}/attestation")
    assert not attestation["quarantined"]
    assert attestation["identity"]["public_key"] == summary["identity_public_key"]
    assert attestation["identity"]["how"] == "api"  # registered by flashing, not first use

    # A rollout of a new version reaches the flashed device and is installed.
    published = world.publish("1.1", candidate)
    rollout = world.api(
        "POST",
        "/api/rollouts",
        json={
            "model": MODEL,
            "version": "1.1",
            "waves": ["100%"],
            "gates": {"min_soak_s": 0, "min_samples": 0},
            "device_timeout_s": 60,
            "install_timeout_s": 60,
        },
    )

    def finished() -> dict[str, Any]:  # empty while the rollout runs
        view = dict(world.api("GET", f"/api/rollouts/{rollout['id']}"))
        return view if view["status"] in ("completed", "rolled_back", "aborted") else {}

    done = wait_for(finished, 60, interval=0.3, what="the rollout to finish")
    assert done["status"] == "completed", done
    reported = world.api("GET", f"/api/devices/{DEVICE}/shadow")["reported"]["model"]
    assert reported["status"] == "active" and reported["sha256"] == published["sha256"]
    assert reported["slot"] in ("a", "b")
    assert (world.root / "var/lib/edgefleet-agent/models" / MODEL).is_dir()
    assert password not in world.device.log()
