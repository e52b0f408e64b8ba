"""Firmware images: recipes, the reproducible signed build, verification, the image key,
golden values and the wheelhouse (``controller/images``, ``docs/images.md``)."""

import base64
import hashlib
import io
import json
import shutil
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select
from typer.testing import CliRunner

import edge_agent
from controller.attestation.service import GoldenMeasurement
from controller.audit import AuditEntry
from controller.cli.main import app as cli_app
from controller.db import make_engine, session_scope
from controller.images.build import build_image, load_manifest, verify_image
from controller.images.keys import ImageKey
from controller.images.manifest import IMAGE_JSON, ImageError, compute_image_id
from controller.images.recipe import RecipeError, load_recipe
from controller.images.registry import FirmwareImage
from controller.images.wheelhouse import WheelhouseError
from controller.migrations import init_db
from edge_agent.config import config_schema, load_config
from shared.attestation import installed_agent_code
from shared.canonical import canonical_json
from shared.provisioning import AGENT_CONFIG_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("jetson-orin", "npu-board", "x86-cpu")
PASSPHRASE = "image-key-passphrase-for-tests"


@pytest.fixture(scope="module")
def key() -> ImageKey:
    return ImageKey(Ed25519PrivateKey.generate())


def recipe_copy(tmp_path: Path, name: str = "x86-cpu", **changes: object) -> Path:
    """A copy of a shipped recipe folder with top-level recipe keys replaced."""
    folder = tmp_path / f"recipe-{name}"
    shutil.copytree(ROOT / "firmware_images" / name, folder)
    if changes:
        doc = yaml.safe_load((folder / "recipe.yaml").read_text())
        doc.update(changes)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(doc))
    return folder


def build(tmp_path: Path, key: ImageKey, name: str = "img.tar", **kw: object) -> Path:
    folder = kw.pop("recipe_dir", None) or recipe_copy(tmp_path)
    out = tmp_path / name
    build_image(folder, out, keys=key, fetch=False, **kw)  # type: ignore[arg-type]
    return out


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def rewrite(src: Path, dst: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy an image tar with ``change`` applied to its members (name -> bytes)."""
    files = members(src)
    change(files)
    with tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith("install.sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return dst


def tiny_wheel(folder: Path, name: str = "tinypkg", version: str = "1.0") -> Path:
    """A minimal valid pure-Python wheel (so the offline wheelhouse path needs no network)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},"
        f"{len(d)}\n"
        for p, d in files.items()
    )
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, d in files.items():
            z.writestr(zipfile.ZipInfo(p, (1980, 1, 1, 0, 0, 0)), d)
    return path


def tiny_recipe(tmp_path: Path, requirements: list[str]) -> Path:
    """The x86 recipe reduced to ``requirements`` (and no on-device builds)."""
    return recipe_copy(tmp_path, requirements=requirements, build_on_device=[])


# --- recipes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CLASSES)
def test_shipped_recipes_load(name: str, tmp_path: Path) -> None:
    """Every device class's recipe loads for the agent version in this tree, and its agent
    config template is a valid agent config naming each default model."""
    folder = ROOT / "firmware_images" / name
    recipe = load_recipe(folder, agent_version=edge_agent.__version__)
    assert recipe.device_class == name
    assert recipe.runtime.execution_providers[-1] == "CPUExecutionProvider"
    secret = tmp_path / "mqtt-password"
    secret.write_text("device-secret\n")
    text = (folder / "agent.yaml").read_text().replace("/etc/edgefleet/mqtt-password", str(secret))
    (tmp_path / "agent.yaml").write_text(text)
    config = load_config(tmp_path / "agent.yaml")
    assert config.device_class == name
    assert {m.name for m in recipe.default_models} <= {m.name for m in config.models}
    if name == "jetson-orin":
        assert "TensorrtExecutionProvider" in recipe.runtime.execution_providers
        assert "-DGGML_CUDA=on" in recipe.build_on_device[0].env["CMAKE_ARGS"]


BAD_RECIPES = {
    "unpinned": ({"requirements": ["six>=1.16"]}, "not pinned as name==version"),
    "pinned twice": ({"requirements": ["six==1.16.0", "Six==1.17.0"]}, "pinned more than once"),
    "unknown key": ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    "bad platform tag": (
        {"platform": {"arch": "x86_64", "pip_platforms": ["win_amd64"], "python_version": "3.11"}},
        "is not a pip platform tag",
    ),
    "platform for another arch": (
        {
            "platform": {
                "arch": "aarch64",
                "pip_platforms": ["manylinux2014_x86_64"],
                "python_version": "3.11",
            }
        },
        "is not for arch aarch64",
    ),
    "cpu not last": (
        {"runtime": {"execution_providers": ["CPUExecutionProvider", "CUDAExecutionProvider"]}},
        "CPUExecutionProvider must come last",
    ),
    "bad memory limit": (
        {"resources": {"memory_max": "lots", "cpu_quota": "100%", "tasks_max": 64}},
        "is not a systemd size",
    ),
    "missing latency": ({"latency": None}, "latency"),
    "template outside": ({"agent_config": "../agent.yaml"}, "inside the recipe folder"),
    "wrong agent version": ({"agent_version": "9.9.9"}, "agent code being packed is version"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipes_are_refused_with_the_reason(case: str, tmp_path: Path) -> None:
    """Each kind of bad recipe is refused with a message naming the file and the problem."""
    changes, message = BAD_RECIPES[case]
    folder = recipe_copy(tmp_path, **changes)
    with pytest.raises(RecipeError, match=message) as caught:
        load_recipe(folder, agent_version=edge_agent.__version__)
    assert str(folder / "recipe.yaml") in str(caught.value)


def test_default_model_must_be_configured(tmp_path: Path, key: ImageKey) -> None:
    """A default model the agent config template does not name is refused at build."""
    folder = recipe_copy(tmp_path, default_models=[{"name": "ghost", "version": "1"}])
    with pytest.raises(RecipeError, match="ghost are not configured"):
        build_image(folder, tmp_path / "x.tar", keys=key, fetch=False)
    assert not (tmp_path / "x.tar").exists()


# --- the build --------------------------------------------------------------------------------
def test_build_is_reproducible(tmp_path: Path, key: ImageKey) -> None:
    """Same inputs give the same bytes; SOURCE_DATE_EPOCH changes only the tar headers (the
    bytes), never the image id; entries are sorted, root-owned, 0644/0755, plain ustar."""
    folder = recipe_copy(tmp_path)
    first = build(tmp_path, key, "a.tar", recipe_dir=folder)
    second = build(tmp_path, key, "b.tar", recipe_dir=folder)
    assert first.read_bytes() == second.read_bytes()
    later = build(tmp_path, key, "c.tar", recipe_dir=folder, source_date_epoch=1_700_000_000)
    assert later.read_bytes() != first.read_bytes()
    assert load_manifest(later).image_id == load_manifest(first).image_id
    with tarfile.open(first) as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos[:2]] == ["manifest.json", "manifest.sig"]
        assert [i.name for i in infos[2:]] == sorted(i.name for i in infos[2:])
        assert all(i.isfile() and i.uid == 0 and i.gid == 0 and i.mtime == 0 for i in infos)
        assert all(i.uname == "" and i.gname == "" and not i.pax_headers for i in infos)
        assert {i.mode for i in infos} == {0o644, 0o755}
    assert b"PaxHeader" not in first.read_bytes()


def test_manifest_lists_every_file_with_its_hash(tmp_path: Path, key: ImageKey) -> None:
    """The manifest lists each file of the tar with its size, mode and SHA-256; agent_code
    is the agent's own measurement of the packed code; image.json carries the image id."""
    image = build(tmp_path, key)
    files = members(image)
    manifest = verify_image(image, key.public)
    listed = {f.path: f for f in manifest.files}
    assert set(listed) == set(files) - {"manifest.json", "manifest.sig"}
    for path, entry in listed.items():
        assert entry.size == len(files[path])
        assert entry.sha256 == hashlib.sha256(files[path]).hexdigest()
    assert listed["rootfs/opt/edgefleet/install.sh"].mode == 0o755
    assert manifest.agent_code == installed_agent_code()
    assert json.loads(files[IMAGE_JSON]) == {
        "image_id": manifest.image_id,
        "device_class": "x86-cpu",
        "agent_version": edge_agent.__version__,
    }
    raw = json.loads(files["manifest.json"])
    assert canonical_json(raw) == files["manifest.json"]
    assert compute_image_id(raw) == manifest.image_id
    for expected in (
        "rootfs/opt/edgefleet/agent/edge_agent/attestation/measure.py",
        "rootfs/opt/edgefleet/agent/shared/attestation.py",
        "rootfs/etc/edgefleet/agent.yaml",
        "rootfs/etc/edgefleet/agent-config.schema.json",
        "rootfs/etc/systemd/system/edgefleet-agent.service",
        "rootfs/var/lib/edgefleet-agent/models/smollm2-135m/a/.keep",
        "rootfs/var/lib/edgefleet-agent/models/smollm2-135m/b/.keep",
    ):
        assert expected in listed
    assert not any("__pycache__" in p for p in listed)
    unit = files["rootfs/etc/systemd/system/edgefleet-agent.service"].decode()
    assert "MemoryMax=4G" in unit and "CPUQuota=350%" in unit and "TasksMax=256" in unit


def test_image_carries_the_packed_agents_config_schema(tmp_path: Path, key: ImageKey) -> None:
    """The build stores the agent config's JSON Schema as the packed agent exports it (run
    from the packed source, not imported by the controller): a field only the packed agent
    has is in it."""
    folder = recipe_copy(tmp_path)
    image = build(tmp_path, key, recipe_dir=folder)
    schema = members(image)["rootfs/" + AGENT_CONFIG_SCHEMA]
    assert schema == canonical_json(config_schema())
    packed = tmp_path / "agent-src"
    shutil.copytree(ROOT / "edge_agent", packed / "edge_agent")
    config_py = packed / "edge_agent" / "config.py"
    config_py.write_text(
        config_py.read_text().replace(
            "    device_class: str | None = None\n",
            "    device_class: str | None = None\n    only_in_the_packed_agent: int = 0\n",
        )
    )
    sources = {"edge_agent": packed / "edge_agent", "shared": ROOT / "shared"}
    other = build(tmp_path, key, "other.tar", recipe_dir=folder, agent_src=sources)
    exported = json.loads(members(other)["rootfs/" + AGENT_CONFIG_SCHEMA])
    assert "only_in_the_packed_agent" in exported["properties"]
    assert "only_in_the_packed_agent" not in config_schema()["properties"]


def _flip_byte(files: dict[str, bytes]) -> None:
    path = "rootfs/opt/edgefleet/agent/shared/canonical.py"
    files[path] = files[path][:-2] + b"#\n"


def _edit_manifest(recompute: bool) -> Callable[[dict[str, bytes]], None]:
    def change(files: dict[str, bytes]) -> None:
        doc = json.loads(files["manifest.json"])
        doc["agent_version"] = "6.6.6"
        if recompute:
            doc["image_id"] = compute_image_id(doc)
        files["manifest.json"] = canonical_json(doc)

    return change


TAMPERING: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "changed byte": (_flip_byte, "tampered file rootfs/opt/edgefleet/agent/shared/canonical.py"),
    "extra file": (
        lambda f: f.__setitem__("rootfs/etc/cron.d/evil", b"* * * * * root sh\n"),
        "unknown file rootfs/etc/cron.d/evil",
    ),
    "removed file": (
        lambda f: f.pop("rootfs/etc/edgefleet/agent.yaml"),
        "missing file rootfs/etc/edgefleet/agent.yaml",
    ),
    "edited manifest": (_edit_manifest(False), "bad signature"),
    "edited manifest, new image id": (_edit_manifest(True), "bad signature"),
    "signature removed": (lambda f: f.pop("manifest.sig"), "manifest.sig is missing"),
    "hundreds of unlisted files": (
        lambda f: f.update({f"rootfs/junk/{i}": b"" for i in range(150)}),
        "more than 100 members beyond the manifest's",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_verify_refuses_a_tampered_image(case: str, tmp_path: Path, key: ImageKey) -> None:
    """Each tampering is refused by verify with a message that names what is wrong."""
    change, message = TAMPERING[case]
    image = rewrite(build(tmp_path, key), tmp_path / "bad.tar", change)
    with pytest.raises(ImageError, match=message):
        verify_image(image, key.public)


def test_verify_refuses_another_key(tmp_path: Path, key: ImageKey) -> None:
    """An image signed by another key is refused as signed by the wrong key."""
    image = build(tmp_path, key)
    other = ImageKey(Ed25519PrivateKey.generate())
    with pytest.raises(ImageError, match="wrong key: the image is signed by key"):
        verify_image(image, other.public)


# --- the wheelhouse ---------------------------------------------------------------------------
def test_offline_wheelhouse_is_packed_and_missing_wheels_fail(
    tmp_path: Path, key: ImageKey
) -> None:
    """--wheelhouse DIR (air-gapped host) packs the pinned wheel from the folder, nothing
    else; a pin the folder cannot satisfy fails naming the package and the platform."""
    wheel = tiny_wheel(tmp_path / "wheels")
    tiny_wheel(tmp_path / "wheels", "otherpkg", "2.0")  # in the folder, not pinned
    folder = tiny_recipe(tmp_path, ["tinypkg==1.0"])
    out = tmp_path / "img.tar"
    build_image(folder, out, keys=key, wheelhouse=tmp_path / "wheels")
    files = members(out)
    assert [p for p in files if "/wheelhouse/" in p] == [
        f"rootfs/opt/edgefleet/wheelhouse/{wheel.name}"
    ]
    assert files[f"rootfs/opt/edgefleet/wheelhouse/{wheel.name}"] == wheel.read_bytes()
    assert files["rootfs/opt/edgefleet/requirements.txt"] == b"tinypkg==1.0\n"
    verify_image(out, key.public)
    folder = tiny_recipe(tmp_path / "2", ["tinypkg==1.0", "absentpkg==3.1"])
    with pytest.raises(WheelhouseError, match=r"no wheel of absentpkg==3\.1 for manylinux"):
        build_image(folder, tmp_path / "y.tar", keys=key, wheelhouse=tmp_path / "wheels")


def _pypi_reachable() -> bool:
    try:
        return httpx.head("https://pypi.org/simple/six/", timeout=10).status_code < 500
    except httpx.HTTPError:
        return False


def test_wheelhouse_download_from_pypi(tmp_path: Path, key: ImageKey) -> None:
    """pip download fetches the pinned wheel for the recipe's platform, and two builds give
    the same bytes (the wheel's bytes are as published)."""
    if not _pypi_reachable():
        pytest.skip(
            "pypi.org is unreachable from this host"
            " (the offline wheelhouse test covers the build path)"
        )
    folder = tiny_recipe(tmp_path, ["six==1.16.0"])
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    build_image(folder, first, keys=key)
    build_image(folder, second, keys=key)
    assert first.read_bytes() == second.read_bytes()
    wheels = [p for p in members(first) if "/wheelhouse/" in p]
    assert wheels == ["rootfs/opt/edgefleet/wheelhouse/six-1.16.0-py2.py3-none-any.whl"]


# --- CLI, golden values, API ------------------------------------------------------------------
def run(*args: str, env: dict[str, str] | None = None) -> "object":
    return CliRunner().invoke(cli_app, list(args), env=env)


def test_cli_keygen_build_register_verify(tmp_path: Path) -> None:
    """keygen makes an encrypted key (short passphrase refused, second key refused); key
    prints the public half; build --config writes the image and registers image_id and
    agent_code as golden values plus a firmware_image row, audited; verify says OK, and
    names the problem and exits 1 for a tampered image or a wrong key."""
    keys_dir = tmp_path / "keys"
    config = tmp_path / "controller.yaml"
    db = tmp_path / "controller.db"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "database_url": f"sqlite:///{db}",
                "updates": {"keys_dir": str(keys_dir)},
            }
        )
    )
    assert run("db", "init", "--config", str(config)).exit_code == 0  # type: ignore[attr-defined]
    weak = run(
        "image", "keygen", "--config", str(config), env={"EDGEFLEET_KEY_PASSPHRASE": "short"}
    )
    assert weak.exit_code == 1 and "shorter than" in weak.output  # type: ignore[attr-defined]
    env = {"EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE}
    made = run("image", "keygen", "--config", str(config), env=env)
    assert made.exit_code == 0, made.output  # type: ignore[attr-defined]
    pem = next(keys_dir.glob("image.*.pem"))
    assert pem.stat().st_mode & 0o777 == 0o600 and b"ENCRYPTED" in pem.read_bytes()
    again = run("image", "keygen", "--config", str(config), env=env)
    assert again.exit_code == 1 and "exists already" in again.output  # type: ignore[attr-defined]
    public = run("image", "key", "--config", str(config), "--out", str(tmp_path / "image.pub"))
    assert public.output.strip() in made.output  # type: ignore[attr-defined]

    out = tmp_path / "x86.tar"
    built = run("image", "build", str(ROOT / "firmware_images" / "x86-cpu"), "--out", str(out),
                "--no-wheelhouse", "--config", str(config), "--json", env=env)  # fmt: skip
    assert built.exit_code == 0, built.output  # type: ignore[attr-defined]
    report = json.loads(built.output)  # type: ignore[attr-defined]
    assert report["registered"] == {"image": True, "image_id": True, "agent_code": True}
    engine = make_engine(f"sqlite:///{db}")
    init_db(engine)
    with session_scope(engine) as session:
        golden = {(g.kind, g.value, g.source) for g in session.exec(select(GoldenMeasurement))}
        assert golden == {
            ("image_id", report["image_id"], "image-build"),
            ("agent_code", installed_agent_code(), "image-build"),
        }
        row = session.get(FirmwareImage, report["image_id"])
        assert row is not None and row.recipe == "x86-cpu" and row.size == out.stat().st_size
        actions = [a.action for a in session.exec(select(AuditEntry))]
        assert actions.count("attestation.golden_add") == 2 and "image.register" in actions
        assert "image.keygen" in actions
    engine.dispose()

    ok = run("image", "verify", str(out), "--image-key", str(tmp_path / "image.pub"))
    assert ok.exit_code == 0 and "OK" in ok.output, ok.output  # type: ignore[attr-defined]
    bad = rewrite(out, tmp_path / "bad.tar", _flip_byte)
    refused = run("image", "verify", str(bad), "--config", str(config))
    assert refused.exit_code == 1  # type: ignore[attr-defined]
    assert "tampered file rootfs/opt/edgefleet/agent/shared/canonical.py" in refused.output  # type: ignore[attr-defined]
    other = tmp_path / "other.pub"
    other.write_text(
        base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    )
    wrong = run("image", "verify", str(out), "--image-key", str(other))
    assert wrong.exit_code == 1 and "wrong key" in wrong.output  # type: ignore[attr-defined]
    bad_recipe = run("image", "build", str(tmp_path), "--out", str(tmp_path / "n.tar"),
                     "--no-wheelhouse", "--config", str(config), env=env)  # fmt: skip
    assert bad_recipe.exit_code == 2 and "no such recipe file" in bad_recipe.output  # type: ignore[attr-defined]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A real controller app on a loopback port (routes only: no broker or scheduler)."""
    from controller.app import create_app
    from controller.auth.credentials import create_api_token
    from controller.auth.users import create_user
    from controller.services import Services
    from controller.settings import load_settings

    keys_dir = tmp_path / "ctl-keys"
    settings = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{tmp_path / 'served.db'}",
        secure_cookies=False,
        updates={"keys_dir": str(keys_dir)},
    )
    engine = make_engine(settings.database_url)
    init_db(engine)
    with session_scope(engine) as session:
        admin = create_user(session, username="ad", password="a-long-password", role="admin")
        token = create_api_token(session, admin, name="t")
    app = create_app(settings, services=Services(settings=settings, engine=engine))
    app.state.services = Services(settings=settings, engine=engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off",
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", token, keys_dir
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


def test_images_api_and_register_through_it(tmp_path: Path, served: tuple[str, str, Path]) -> None:
    """GET /api/images/key is public (404 before keygen); build --register URL adds the
    golden values through the API (again: already there, no error); verify --url fetches
    the key; /api/images needs a login."""
    url, token, keys_dir = served
    assert httpx.get(f"{url}/api/images/key").status_code == 404
    env = {"EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE}
    assert run("image", "keygen", "--keys-dir", str(keys_dir), env=env).exit_code == 0
    served_key = httpx.get(f"{url}/api/images/key").json()
    out = tmp_path / "img.tar"
    args = ["image", "build", str(ROOT / "firmware_images" / "npu-board"), "--out", str(out),
            "--no-wheelhouse", "--keys-dir", str(keys_dir), "--register", url, "--token", token,
            "--json"]  # fmt: skip
    first = run(*args, env=env)
    assert first.exit_code == 0, first.output  # type: ignore[attr-defined]
    assert json.loads(first.output)["registered"] == {"image_id": True, "agent_code": True}  # type: ignore[attr-defined]
    second = run(*args, env=env)
    assert json.loads(second.output)["registered"] == {"image_id": False, "agent_code": False}  # type: ignore[attr-defined]
    golden = httpx.get(
        f"{url}/api/attestation/golden", headers={"Authorization": f"Bearer {token}"}
    )
    image_id = json.loads(first.output)["image_id"]  # type: ignore[attr-defined]
    assert {(g["kind"], g["value"]) for g in golden.json()} >= {("image_id", image_id)}
    checked = run("image", "verify", str(out), "--url", url, "--json")
    assert checked.exit_code == 0 and json.loads(checked.output)["image_id"] == image_id  # type: ignore[attr-defined]
    assert (
        served_key["keyid"]
        == hashlib.sha256(base64.b64decode(served_key["public_key"])).hexdigest()
    )
    assert httpx.get(f"{url}/api/images").status_code == 401
    listed = httpx.get(f"{url}/api/images", headers={"Authorization": f"Bearer {token}"})
    assert (
        listed.status_code == 200 and listed.json() == []
    )  # the API path registers golden values only
