"""``edgefleet flash``: a signed image verified before anything is written, then written with
the device's identity, against a real controller (app, SQLite, TUF repository) in-process.

One image is built for the module with the real builder (no wheelhouse) from a small
recipe, signed by a real image key; tampered copies of it are made per test.
"""

import base64
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import Session
from typer.testing import CliRunner

from controller.auth.credentials import create_api_token
from controller.auth.users import create_user
from controller.broker.mosquitto_auth import hash_password, verify_password
from controller.broker.tables import BrokerCredential
from controller.cli.main import app as controller_cli
from controller.db import session_scope
from controller.images.build import build_image
from controller.images.flash import (
    AGENT_CONFIG,
    PASSWORD_FILE,
    TRUSTED_ROOT,
    ControllerApi,
    ControllerError,
    FlashError,
    FlashSummary,
    TargetError,
    VerifiedImage,
    flash,
    render_agent_config,
)
from controller.images.flashing import writing as flash_module
from controller.images.keys import ImageKey, generate_image_key, load_image_key
from controller.images.manifest import IMAGE_JSON, compute_image_id, image_json, sign_manifest
from edge_agent import __version__ as agent_version
from edge_agent.cli import app as agent_cli
from edge_agent.config import config_schema, load_config
from shared.canonical import canonical_json
from shared.provisioning import AGENT_CONFIG_SCHEMA, CONTROLLER_CA_FILE
from tests.controller_harness import LiveController, live_controller
from tests.pki_world import TestCa

PASSPHRASE = "correct horse battery staple, flashing"
DEVICE_CLASS = "test-cpu"
KEY_PATH = "var/lib/edgefleet-agent/identity/ed25519.pem"
CONTROLLER_KEYS_PATH = "var/lib/edgefleet-agent/identity/controller-keys.json"
AGENT_FILE = "rootfs/opt/edgefleet/agent/edge_agent/cli.py"
ROOTFS_PREFIX = "rootfs/"


def write_recipe(folder: Path, template: dict[str, object] | None = None) -> Path:
    """A small valid recipe (no requirements) and its agent config template."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {
        "format": 1,
        "name": "test-cpu",
        "device_class": DEVICE_CLASS,
        "platform": {
            "arch": "x86_64",
            "pip_platforms": ["manylinux2014_x86_64"],
            "python_version": "3.11",
        },
        "agent_version": agent_version,
        "runtime": {"execution_providers": ["CPUExecutionProvider"]},
        "latency": {"first_token_p95_ms": 500, "request_p95_ms": 2000},
        "resources": {"memory_max": "2G", "cpu_quota": "200%", "tasks_max": 256},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    agent = template or {
        "device_id": "{{device_id}}",
        "state_dir": "/var/lib/edgefleet-agent",
        "mqtt": {"url": "mqtt://controller.local:1883", "keepalive_s": 10},
        "api": {"host": "127.0.0.1", "port": 8080},
    }
    (folder / "agent.yaml").write_text(yaml.safe_dump(agent))
    return folder


def image_key_pair(keys_dir: Path) -> tuple[bytes, ImageKey]:
    """The image key as ``edgefleet image keygen`` makes it: (public, ImageKey)."""
    public = generate_image_key(keys_dir, SecretStr(PASSPHRASE))
    return public, load_image_key(keys_dir, SecretStr(PASSPHRASE))


def rewrite_tar(source: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of the image tar with members replaced (bytes), dropped (None) or added."""
    with tarfile.open(source) as src, tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as out:
        for member in src.getmembers():
            if member.name in change:
                data = change.pop(member.name)
                if data is None:
                    continue
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))
            else:
                out.addfile(member, src.extractfile(member))
        for name, data in change.items():
            assert data is not None
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dest


@dataclass
class World:
    """The controller (in-process), the built image and the image key."""

    folder: Path
    live: LiveController
    image: Path
    public_key: bytes
    operator_token: str

    def api(self, token: str | None = None) -> ControllerApi:
        self.live.client.headers["Authorization"] = f"Bearer {token or self.live.token}"
        # TestClient is an httpx.Client (mypy does not see it through starlette's stubs).
        return ControllerApi(cast(httpx.Client, self.live.client), "http://testserver")

    def flash(self, target: Path, device_id: str, **kwargs: object) -> FlashSummary:
        args: dict[str, object] = {"image_key": self.public_key, **kwargs}
        return flash(
            Path(str(args.pop("image", self.image))),
            target=target,
            device_id=device_id,
            controller=self.api(),
            **args,  # type: ignore[arg-type]
        )

    def get(self, path: str) -> TestClient:
        return self.live.client.get(path, headers=self.live.auth)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("flash")
    (folder / "passphrase").write_text(PASSPHRASE)
    updates = {
        "repo_dir": str(folder / "tuf"),
        "keys_dir": str(folder / "keys"),
        "passphrase_file": str(folder / "passphrase"),
    }
    public, key = image_key_pair(folder / "keys")
    image = build_image(
        write_recipe(folder / "recipe"),
        folder / "image.tar",
        keys=key,
        fetch=False,
    ).path
    broker: dict[str, object] = {"mode": "embedded", "url": "mqtt://127.0.0.1:0"}
    with live_controller(folder, broker, updates=updates) as live:
        assert live.services.tuf is not None
        live.services.tuf.initialize(now=datetime.now(UTC))
        with session_scope(live.services.engine) as session:
            operator = create_user(
                session, username="op", password="operator-password", role="operator"
            )
            operator_token = create_api_token(session, operator, name="tests")
        yield World(folder, live, image, public, operator_token)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_flash_writes_root_identity_credentials_and_config(world: World, tmp_path: Path) -> None:
    """A flashed folder holds the image's rootfs, a 0600 identity key in the agent's key
    folder (0700) whose public half the controller now expects, a 0600 broker password
    matching the controller's hash, the controller's TUF root and an agent.yaml that the
    agent loads under that root."""
    target = tmp_path / "device"
    summary = world.flash(target, "flashed-1", broker_url="mqtt://10.0.0.5:1883")

    with tarfile.open(world.image) as tar:
        image_files = [m.name for m in tar.getmembers() if m.name.startswith("rootfs/")]
    for name in image_files:
        if name != "rootfs/" + AGENT_CONFIG:
            assert (target / name.removeprefix("rootfs/")).is_file(), name
    # identity key, controller message keys, password, TUF root
    assert summary.files_written == len(image_files) + 4
    keys_file = target / CONTROLLER_KEYS_PATH
    assert mode_of(keys_file) == 0o600
    served = world.get("/api/pki/message-keys").json()  # type: ignore[attr-defined]
    assert json.loads(keys_file.read_text())["keys"] == served["keys"]

    key_file = target / KEY_PATH
    assert mode_of(key_file) == 0o600 and mode_of(key_file.parent) == 0o700
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public = base64.b64encode(private.public_key().public_bytes_raw()).decode()
    assert summary.identity_public_key == public
    enrolled = world.get("/api/devices/flashed-1/attestation").json()  # type: ignore[attr-defined]
    assert enrolled["identity"]["public_key"] == public
    assert enrolled["identity"]["how"] == "api"

    password_file = target / PASSWORD_FILE
    assert mode_of(password_file) == 0o600
    password = password_file.read_text().strip()
    with Session(world.live.services.engine) as session:
        credential = session.get(BrokerCredential, "flashed-1")
        assert credential is not None and credential.revoked_at is None
        assert verify_password(password, credential.password_hash)
    assert password not in repr(summary) and password not in str(summary.as_dict())
    assert "PRIVATE KEY" not in str(summary.as_dict())

    assert world.live.services.tuf is not None
    root_file = world.live.services.tuf.metadata_dir / "1.root.json"
    assert (target / TRUSTED_ROOT).read_bytes() == root_file.read_bytes()

    config = load_config(target / AGENT_CONFIG, root=target.resolve())
    assert config.device_id == "flashed-1"
    assert config.state_dir == target.resolve() / "var/lib/edgefleet-agent"
    assert config.mqtt is not None and config.mqtt.url == "mqtt://10.0.0.5:1883"
    assert config.mqtt.username == "flashed-1" and config.mqtt.password() == password
    assert config.updates.enabled
    assert config.updates.metadata_url == "http://testserver/tuf/metadata/"
    assert config.updates.trusted_root == target.resolve() / TRUSTED_ROOT
    assert password not in (target / AGENT_CONFIG).read_text()


def test_tampered_image_is_refused_and_nothing_is_written(world: World, tmp_path: Path) -> None:
    """An image with one agent file changed after signing is refused with that file's
    name: no target folder, no broker credential and no device at the controller."""
    with tarfile.open(world.image) as tar:
        original = tar.extractfile(AGENT_FILE).read()  # type: ignore[union-attr]
    tampered = rewrite_tar(
        world.image, tmp_path / "tampered.tar", {AGENT_FILE: original + b"\nimport os\n"}
    )
    target = tmp_path / "device"
    with pytest.raises(FlashError, match=f"image refused: .*{AGENT_FILE}"):
        world.flash(target, "tampered-1", image=tampered)
    assert not target.exists()
    assert world.get("/api/devices/tampered-1").status_code == 404  # type: ignore[attr-defined]


def test_image_signed_by_another_key_is_refused(world: World, tmp_path: Path) -> None:
    """A genuine image checked against a different image key is refused as signed by the
    wrong key, before anything is written."""
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    target = tmp_path / "device"
    with pytest.raises(FlashError, match="wrong key"):
        world.flash(target, "wrong-key-1", image_key=other)
    assert not target.exists()


@pytest.mark.parametrize(
    "name",
    ["rootfs/../../escaped.txt", "/etc/escaped.txt", "../escaped.txt"],
    ids=["dotdot-inside-rootfs", "absolute", "dotdot"],
)
def test_path_traversal_in_the_tar_is_refused(world: World, tmp_path: Path, name: str) -> None:
    """A member whose name would land outside the target is refused as path traversal and
    nothing is written, inside the target or next to it."""
    evil = rewrite_tar(world.image, tmp_path / "evil.tar", {name: b"owned\n"})
    target = tmp_path / "deep" / "device"
    target.parent.mkdir()
    with pytest.raises(FlashError, match=r"path traversal|outside the image"):
        world.flash(target, "traversal-1", image=evil)
    assert not target.exists()
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))


def test_non_empty_target_needs_force_and_symlinks_are_never_followed(
    world: World, tmp_path: Path
) -> None:
    """A non-empty folder is refused without force; with force, a symlink planted in the
    target (etc -> a folder outside) is refused rather than written through."""
    target = tmp_path / "device"
    target.mkdir()
    (target / "leftover").write_text("x")
    with pytest.raises(TargetError, match="not empty"):
        world.flash(target, "symlink-1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "etc").symlink_to(outside)
    with pytest.raises(TargetError, match="symlink"):
        world.flash(target, "symlink-1", force=True, rotate=True)
    assert list(outside.iterdir()) == []


def test_flash_into_a_tar_file(world: World, tmp_path: Path) -> None:
    """A ``.tar`` target gets the device root (paths relative to its /) in a 0600 file,
    with the identity key, the controller's message keys and password at 0600, and
    extracts to a bootable root."""
    target = tmp_path / "device.tar"
    summary = world.flash(target, "tarred-1")
    assert summary.target_kind == "tar" and mode_of(target) == 0o600
    with tarfile.open(target) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert stat.S_IMODE(members[KEY_PATH].mode) == 0o600
        assert stat.S_IMODE(members[PASSWORD_FILE].mode) == 0o600
        assert "opt/edgefleet/agent/edge_agent/cli.py" in members
        assert not any(n.startswith(("/", "rootfs/")) or ".." in n for n in members)
        tar.extractall(tmp_path / "root", filter="data")
    root = (tmp_path / "root").resolve()
    config = load_config(root / AGENT_CONFIG, root=root)
    assert config.device_id == "tarred-1"
    key = serialization.load_pem_private_key((root / KEY_PATH).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes_raw()
    assert base64.b64encode(raw).decode() == summary.identity_public_key


def test_reflashing_needs_rotate_and_refusal_writes_nothing(world: World, tmp_path: Path) -> None:
    """Flashing an id that already has a broker credential is refused by the controller
    (and nothing is written) unless rotate is given; then the new key replaces the old."""
    first = world.flash(tmp_path / "one", "again-1")
    with pytest.raises(ControllerError, match=r"409.*already has a broker credential"):
        world.flash(tmp_path / "two", "again-1")
    assert not (tmp_path / "two").exists()
    second = world.flash(tmp_path / "two", "again-1", rotate=True)
    assert second.identity_public_key != first.identity_public_key
    enrolled = world.get("/api/devices/again-1/attestation").json()  # type: ignore[attr-defined]
    assert enrolled["identity"]["public_key"] == second.identity_public_key


def test_an_operator_token_cannot_flash(world: World, tmp_path: Path) -> None:
    """Issuing broker credentials is admin-only: an operator's flash is refused with 403
    and leaves nothing behind."""
    api = world.api(world.operator_token)
    try:
        with pytest.raises(ControllerError, match="403"):
            flash(
                world.image,
                target=tmp_path / "device",
                device_id="operator-1",
                controller=api,
                image_key=world.public_key,
            )
    finally:
        world.api()  # back to the admin token
    assert not (tmp_path / "device").exists()


@pytest.mark.parametrize(
    ("template", "error"),
    [
        (b"device_id: '{{serial}}'\n", "unknown placeholder"),
        (b"- not a mapping\n", "not a YAML mapping"),
        (b"device_id: x\nbogus_key: 1\n", "bogus_key"),
        (b"device_id: x\nmqtt:\n  bogus_mqtt_key: 1\n", r"mqtt: .*bogus_mqtt_key"),
        (b"device_id: x\napi:\n  port: eighty\n", r"api\.port: 'eighty' is not of type"),
    ],
    ids=["unknown-placeholder", "not-a-mapping", "unknown-key", "unknown-nested-key", "wrong-type"],
)
def test_bad_config_templates_are_refused(template: bytes, error: str) -> None:
    """A template the agent would not accept once filled in is refused before flashing."""
    with pytest.raises(ValueError, match=error):
        render_agent_config(
            template,
            schema=config_schema(),
            device_id="d-1",
            broker_url="mqtt://h:1883",
            controller_url="http://h",
        )


def without_schema(image: Path, dest: Path, key: ImageKey) -> Path:
    """``image`` as built before images carried the agent config schema: that file left
    out, the manifest (and image.json, which carries the image id) redone and re-signed."""
    schema = ROOTFS_PREFIX + AGENT_CONFIG_SCHEMA
    with tarfile.open(image) as tar:
        body = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    body["files"] = [f for f in body["files"] if f["path"] != schema]
    body["image_id"] = compute_image_id(body)
    identity = image_json(
        image_id=body["image_id"],
        device_class=body["device_class"],
        agent_version=body["agent_version"],
    )
    entry = next(f for f in body["files"] if f["path"] == IMAGE_JSON)
    entry.update(size=len(identity), sha256=hashlib.sha256(identity).hexdigest())
    manifest = canonical_json(body)
    change: dict[str, bytes | None] = {
        schema: None,
        IMAGE_JSON: identity,
        "manifest.json": manifest,
        "manifest.sig": sign_manifest(manifest, key.private),
    }
    return rewrite_tar(image, dest, change)


def test_an_image_without_the_config_schema_is_refused(world: World, tmp_path: Path) -> None:
    """An image built before images carried the agent config schema (validly signed) is
    refused, telling the operator to rebuild it; nothing is written or registered."""
    key = load_image_key(world.folder / "keys", SecretStr(PASSPHRASE))
    old = without_schema(world.image, tmp_path / "old.tar", key)
    with pytest.raises(FlashError, match=r"agent-config\.schema\.json.*rebuild it"):
        world.flash(tmp_path / "device", "old-image-1", image=old)
    assert not (tmp_path / "device").exists()
    assert world.get("/api/devices/old-image-1").status_code == 404  # type: ignore[attr-defined]


def test_load_config_takes_absolute_paths_under_the_root(tmp_path: Path) -> None:
    """With a root, every absolute path of the config lands under it; relative ones still
    resolve against the config's folder."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/pw").write_text("secret\n")
    config_file = root / "etc/agent.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "device_id": "d-1",
                "state_dir": "/var/lib/agent",
                "mqtt": {"password_file": "/etc/pw"},
                "models": [{"name": "m", "path": "models/m.gguf"}],
                "perception": [{"name": "p", "path": "/opt/p.onnx"}],
                "updates": {"trusted_root": "/etc/root.json"},
            }
        )
    )
    config = load_config(config_file, root=root)
    assert config.state_dir == root / "var/lib/agent"
    assert config.mqtt is not None and config.mqtt.password() == "secret"
    assert config.models[0].path == root / "etc/models/m.gguf"
    assert config.perception[0].path == root / "opt/p.onnx"
    assert config.updates.trusted_root == root / "etc/root.json"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "give --config FILE, or --root DIR"),
        (["--root", "{tmp}/missing"], "is not a folder"),
        (["--root", "{tmp}"], "is not a flashed device: no etc/edgefleet/agent.yaml"),
    ],
    ids=["nothing", "missing-folder", "not-flashed"],
)
def test_booting_a_folder_that_is_not_a_flashed_device_fails_clearly(
    tmp_path: Path, args: list[str], error: str
) -> None:
    """``edge-agent run`` without --config needs the root of a flashed device; anything
    else exits 2 saying what is missing."""
    done = CliRunner().invoke(agent_cli, ["run", *(a.format(tmp=tmp_path) for a in args)])
    assert done.exit_code == 2
    assert error in done.output


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: a file's bytes, a link's target, or ``"dir"``."""
    found: dict[str, bytes | str] = {}
    for path in root.rglob("*"):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = path.read_bytes()
    return found


def changed_read(mode: str) -> object:
    """``_image_files`` as flash uses it, except that the agent file reads back different
    bytes of the same size (``changed``) or is left out (``missing``)."""
    original = flash_module._image_files

    def image_files(image: VerifiedImage) -> object:
        for relative, entry, reader in original(image):
            if ROOTFS_PREFIX + relative != AGENT_FILE:
                yield relative, entry, reader
            elif mode == "changed":
                data = b"#" * entry.size
                yield relative, entry, flash_module._HashingReader(io.BytesIO(data))

    return image_files


@pytest.mark.parametrize(
    ("mode", "error"),
    [("changed", "content changed since"), ("missing", "missing: " + AGENT_FILE)],
)
def test_a_file_that_reads_back_wrong_while_writing_replaces_nothing(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, error: str
) -> None:
    """When an image file reads back different from its manifest entry (or not at all)
    while being written, the flash is refused naming it, and neither a previously
    flashed folder nor a tar target changes."""
    target = tmp_path / "device"
    world.flash(target, f"readback-{mode}")
    before = snapshot(target)
    monkeypatch.setattr(flash_module, "_image_files", changed_read(mode))
    with pytest.raises(FlashError, match=error):
        world.flash(target, f"readback-{mode}", force=True, rotate=True)
    assert snapshot(target) == before
    tar_target = tmp_path / "device.tar"
    with pytest.raises(FlashError, match=error):
        world.flash(tar_target, f"readback-{mode}", rotate=True)
    assert [p.name for p in tmp_path.iterdir() if "device.tar" in p.name] == []


def test_force_removes_stale_image_files_without_following_links(
    world: World, tmp_path: Path
) -> None:
    """Reflashing with force removes files an earlier flash left in the image's trees
    (a stray agent module, a stray config, a link, never its target) and keeps files
    outside those trees."""
    target = tmp_path / "device"
    world.flash(target, "stale-1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.py").write_text("keep me\n")
    agent = target / "opt/edgefleet/agent/edge_agent"
    (agent / "leftover.py").write_text("import os\n")
    (agent / "oldpkg").mkdir()
    (agent / "oldpkg/__init__.py").write_text("")
    (target / "etc/edgefleet/old.yaml").write_text("x: 1\n")
    (target / "opt/edgefleet/link").symlink_to(outside)
    (target / "opt/edgefleet/file-link").symlink_to(outside / "precious.py")
    (target / "home").mkdir()
    (target / "home/notes.txt").write_text("mine\n")
    summary = world.flash(target, "stale-1", force=True, rotate=True)
    assert not (agent / "leftover.py").exists() and not (agent / "oldpkg").exists()
    assert not (target / "etc/edgefleet/old.yaml").exists()
    assert not (target / "opt/edgefleet/link").is_symlink()
    assert not (target / "opt/edgefleet/file-link").is_symlink()
    assert (outside / "precious.py").read_text() == "keep me\n"
    assert (target / "home/notes.txt").read_text() == "mine\n"
    assert (target / PASSWORD_FILE).is_file() and (target / KEY_PATH).is_file()
    assert (target / "etc/systemd/system/edgefleet-agent.service").is_file()
    with tarfile.open(world.image) as tar:
        listed = {m.name.removeprefix(ROOTFS_PREFIX) for m in tar if m.name.startswith("rootfs/")}
    trees = {
        str(p.relative_to(target))
        for tree in ("opt/edgefleet", "etc/edgefleet")
        for p in (target / tree).rglob("*")
        if not p.is_dir()
    }
    assert trees == {n for n in listed if n.startswith(("opt/edgefleet/", "etc/edgefleet/"))} | {
        PASSWORD_FILE,
        TRUSTED_ROOT,
    }
    assert summary.files_written == len(listed) + 4
    assert not any(p.name.startswith(".edgefleet-flash") for p in target.iterdir())


def test_flash_leaves_no_secret_readable_by_others(world: World, tmp_path: Path) -> None:
    """Nothing in a flashed root that holds a secret is readable by group or others."""
    target = tmp_path / "device"
    world.flash(target, "modes-1")
    for path in (target / KEY_PATH, target / PASSWORD_FILE):
        assert mode_of(path) & 0o077 == 0, path
    assert os.access(target / AGENT_CONFIG, os.R_OK)


def test_cli_refuses_a_tampered_image_with_exit_2(world: World, tmp_path: Path) -> None:
    """``edgefleet flash`` with the image key given refuses a tampered image before it
    contacts the controller: exit 2, the file named, no target written."""
    tampered = rewrite_tar(
        world.image, tmp_path / "tampered.tar", {AGENT_FILE: b"print('owned')\n"}
    )
    key_file = tmp_path / "image.pub"
    key_file.write_text(base64.b64encode(world.public_key).decode() + "\n")
    target = tmp_path / "device"
    done = CliRunner().invoke(
        controller_cli,
        ["flash", str(tampered), "--target", str(target), "--device-id", "cli-1",
         "--image-key", str(key_file), "--url", "http://127.0.0.1:9", "--token", "unused"],
    )  # fmt: skip
    assert done.exit_code == 2, done.output
    assert "image refused" in done.output and AGENT_FILE in done.output
    assert not target.exists()


def test_credential_route_generates_or_takes_a_hash(world: World) -> None:
    """Without a hash the controller generates the password and returns it once (no-store);
    a malformed hash or device id is refused with 422."""
    client, auth = world.live.client, world.live.auth
    issued = client.post("/api/devices/route-1/broker-credential", json={}, headers=auth)
    assert issued.status_code == 201, issued.text
    assert issued.headers["cache-control"] == "no-store"
    password = issued.json()["password"]
    with Session(world.live.services.engine) as session:
        credential = session.get(BrokerCredential, "route-1")
        assert credential is not None and verify_password(password, credential.password_hash)
    bad_hash = client.post(
        "/api/devices/route-2/broker-credential", json={"password_hash": "$7$x"}, headers=auth
    )
    assert bad_hash.status_code == 422 and "$7$" in bad_hash.text
    bad_id = client.post("/api/devices/Bad_Id!/broker-credential", json={}, headers=auth)
    assert bad_id.status_code == 422


def test_credential_route_refuses_a_weak_hash(world: World) -> None:
    """A well-formed ``$7$`` hash with fewer iterations than ``hash_password`` uses is
    refused with 422; the default count is taken."""
    client, auth = world.live.client, world.live.auth
    weak = hash_password("a long enough password", iterations=1)
    refused = client.post(
        "/api/devices/weak-1/broker-credential", json={"password_hash": weak}, headers=auth
    )
    assert refused.status_code == 422 and "iterations" in refused.text
    taken = client.post(
        "/api/devices/weak-1/broker-credential",
        json={"password_hash": hash_password("a long enough password")},
        headers=auth,
    )
    assert taken.status_code == 201, taken.text


def test_a_controller_ca_becomes_the_devices_updates_ca_file(world: World, tmp_path: Path) -> None:
    """Given the CA of an https controller's certificate, flash writes it onto the device
    and names it as the agent's ``updates.ca_file`` (which the agent loads and checks); for
    a plain-http controller, or a file that is not a certificate, it refuses before
    writing anything."""
    pem = TestCa(tmp_path / "ca").ca_file.read_bytes()
    with pytest.raises(FlashError, match="https://"):
        world.flash(tmp_path / "plain", "flashed-ca-0", controller_ca=pem)
    assert not (tmp_path / "plain").exists()
    https = ControllerApi(cast(httpx.Client, world.live.client), "https://testserver")
    world.api()  # the admin token in the client's headers
    with pytest.raises(FlashError, match="controller CA"):
        flash(
            world.image,
            target=tmp_path / "bad",
            device_id="flashed-ca-0",
            controller=https,
            image_key=world.public_key,
            controller_ca=b"not a certificate",
        )
    target = tmp_path / "device"
    flash(
        world.image,
        target=target,
        device_id="flashed-ca-1",
        controller=https,
        image_key=world.public_key,
        broker_url="mqtt://10.0.0.5:1883",
        controller_ca=pem,
    )
    assert (target / CONTROLLER_CA_FILE).read_bytes() == pem
    config = load_config(target / AGENT_CONFIG, root=target.resolve())
    assert config.updates.metadata_url == "https://testserver/tuf/metadata/"
    assert config.updates.ca_file == target.resolve() / CONTROLLER_CA_FILE
