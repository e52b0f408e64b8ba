"""``edgefleet image build``: a recipe in, one reproducible signed ``.tar`` out.

Same inputs (recipe folder, agent code, wheelhouse files, image key, ``SOURCE_DATE_EPOCH``)
give the same bytes: entries are sorted, every entry is a regular file with uid/gid 0, no
user or group names, mode 0644 or 0755 and mtime ``SOURCE_DATE_EPOCH`` (0 when unset), in
the plain ustar format (no pax headers carrying timestamps), uncompressed. Ed25519
signatures are deterministic, so the signature is reproducible too. ``SOURCE_DATE_EPOCH``
only changes the tar headers: the manifest, hence the image id, does not depend on it.

Layout of the tar (paths in ``rootfs/`` are the device's, relative to its root)::

    manifest.json                      canonical, see controller.images.manifest
    manifest.sig                       {"keyid", "sig"} by the controller's image key
    rootfs/etc/edgefleet/agent.yaml    the recipe's agent config template
    rootfs/etc/edgefleet/agent-config.schema.json   the packed agent's config JSON Schema
    rootfs/etc/edgefleet/image.json    {"image_id", "device_class", "agent_version"}
    rootfs/etc/edgefleet/recipe.json   the recipe as loaded (runtime, budgets, models)
    rootfs/etc/systemd/system/edgefleet-agent.service
    rootfs/opt/edgefleet/agent/{edge_agent,shared}/...   the agent source
    rootfs/opt/edgefleet/install.sh    first-boot install of the wheelhouse (0755)
    rootfs/opt/edgefleet/requirements.txt
    rootfs/opt/edgefleet/wheelhouse/*  wheels (and sdists built on the device)
    rootfs/var/lib/edgefleet-agent/models/<model>/{a,b}/.keep   A/B slots per default model

``verify_image`` checks an image before anything of it is used: the signature by the
trusted image key, the manifest's image id, and every file's size, mode and hash; it says
exactly what is wrong (bad signature, wrong key, tampered, unknown or missing file).
"""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from controller.images.keys import ImageKey
from controller.images.manifest import (
    FORMAT,
    IMAGE_JSON,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MODE_EXEC,
    MODE_FILE,
    ROOTFS,
    SIGNATURE,
    ImageError,
    Manifest,
    check_signature,
    compute_image_id,
    image_json,
    parse_manifest,
    sign_manifest,
)
from controller.images.recipe import Recipe, RecipeError, load_recipe
from controller.images.wheelhouse import fetch_wheelhouse
from shared.attestation import AGENT_PACKAGES, package_dir, tree_digest
from shared.canonical import canonical_json
from shared.provisioning import AGENT_CONFIG, AGENT_CONFIG_SCHEMA, STATE_DIR
from shared.yaml_guard import YamlShapeError, read_yaml_file

AGENT_DIR = "opt/edgefleet/agent"
WHEELHOUSE_DIR = "opt/edgefleet/wheelhouse"
UNIT_PATH = "etc/systemd/system/edgefleet-agent.service"
_VERSION = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
_SKIP_DIRS = {"__pycache__"}
# verify_image names each unlisted member; past this many it stops (a tar of a million
# empty members would otherwise make a million problems).
MAX_UNLISTED_MEMBERS = 100


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """A written image: where, its manifest and its size in bytes."""

    path: Path
    manifest: Manifest
    size: int


# --- inputs -----------------------------------------------------------------------------------
def agent_sources() -> dict[str, Path]:
    """The agent packages next to this controller (found without importing the agent)."""
    return {name: package_dir(name) for name in AGENT_PACKAGES}


def agent_version_of(sources: Mapping[str, Path]) -> str:
    """``__version__`` of the ``edge_agent`` package in ``sources``, read from its file."""
    init = sources["edge_agent"] / "__init__.py"
    match = _VERSION.search(init.read_text(encoding="utf-8"))
    if match is None:
        raise RecipeError(f"{init} states no __version__")
    return match.group(1)


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.iterdir()):
        if path.is_symlink():
            raise RecipeError(f"agent source {path} is a symlink; images hold regular files")
        if path.is_dir():
            if path.name not in _SKIP_DIRS:
                yield from _walk(path)
        elif path.is_file() and not path.name.endswith((".pyc", ".pyo")):
            yield path


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_template(recipe: Recipe, template: Path) -> None:
    try:
        doc = read_yaml_file(template)
    except OSError as e:
        raise RecipeError(f"{template}: not a readable YAML file: {e}") from e
    except YamlShapeError as e:
        raise RecipeError(f"agent config template {e}") from e
    if not isinstance(doc, dict):
        raise RecipeError(f"{template}: an agent config is a YAML mapping")
    configured = {
        m.get("name")
        for key in ("models", "perception")
        for m in doc.get(key) or []
        if isinstance(m, dict)
    }
    missing = [m.name for m in recipe.default_models if m.name not in configured]
    if missing:
        raise RecipeError(
            f"{template}: default model(s) {', '.join(missing)} are not configured; the agent"
            " installs updates only for models its config names"
        )


# --- rendered files ---------------------------------------------------------------------------
def render_unit(recipe: Recipe) -> bytes:
    """The systemd unit: resource limits and environment from the recipe."""
    service, res = recipe.service, recipe.resources
    env = {"PYTHONPATH": f"/{AGENT_DIR}", "PYTHONDONTWRITEBYTECODE": "1", **service.environment}
    after = " ".join(service.after)
    lines = [
        "# Rendered by 'edgefleet image build' from the recipe; edit the recipe, not this.",
        "[Unit]",
        f"Description={service.description}",
        f"After={after}",
        f"Wants={after}",
        "",
        "[Service]",
        "Type=simple",
        # First boot installs the wheelhouse (and compiles on-device packages); later boots
        # find the install stamp and return at once.
        # "+": the install step runs outside the sandbox below (it creates the venv).
        "ExecStartPre=+/opt/edgefleet/install.sh",
        "ExecStart=/opt/edgefleet/venv/bin/python -m edge_agent run"
        " --config /etc/edgefleet/agent.yaml",
        *(f'Environment="{k}={v}"' for k, v in sorted(env.items())),
        "TimeoutStartSec=3600",
        "Restart=on-failure",
        "RestartSec=5",
        f"MemoryMax={res.memory_max}",
        f"CPUQuota={res.cpu_quota}",
        f"TasksMax={res.tasks_max}",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        f"ReadWritePaths=/{STATE_DIR}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines).encode()


def render_install(recipe: Recipe) -> bytes:
    """First-boot install: a venv from the image's wheelhouse, offline; on-device builds
    with their recipe environment (e.g. ``CMAKE_ARGS`` for llama.cpp with CUDA)."""
    python = f"python{recipe.platform.python_version}"
    lines = [
        "#!/bin/sh",
        "# Rendered by 'edgefleet image build'. Installs the image's wheelhouse once, offline.",
        "set -eu",
        "PREFIX=/opt/edgefleet",
        'WANT=$(cat "$PREFIX/requirements.txt" "$0" | sha256sum | cut -d" " -f1)',
        'STAMP="$PREFIX/venv/.installed"',
        'if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then',
        "    exit 0",
        "fi",
        f'{python} -m venv --clear "$PREFIX/venv"',
        'PIP="$PREFIX/venv/bin/pip install --no-index --find-links $PREFIX/wheelhouse --no-deps"',
        '$PIP -r "$PREFIX/requirements.txt"',
    ]
    for build in recipe.build_on_device:
        env = " ".join(f'{k}="{v}"' for k, v in sorted(build.env.items()))
        lines.append(f"{env + ' ' if env else ''}$PIP --no-build-isolation '{build.requirement}'")
    lines += ['echo "$WANT" > "$STAMP"', ""]
    return "\n".join(lines).encode()


# --- the tar ----------------------------------------------------------------------------------
Source = bytes | Path


def _entry_bytes(source: Source) -> tuple[int, str]:
    if isinstance(source, bytes):
        return len(source), hashlib.sha256(source).hexdigest()
    return source.stat().st_size, _file_sha256(source)


def _open(source: Source) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")


def _tarinfo(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _source_date_epoch(value: int | None) -> int:
    if value is not None:
        return value
    text = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        epoch = int(text)
    except ValueError as e:
        raise ValueError(f"SOURCE_DATE_EPOCH={text!r} is not an integer") from e
    if epoch < 0:
        raise ValueError("SOURCE_DATE_EPOCH is negative")
    return epoch


def agent_config_schema(sources: Mapping[str, Path]) -> bytes:
    """The JSON Schema of the agent config, as canonical JSON, printed by the agent being
    packed (``python -m edge_agent config-schema`` with only ``sources`` on its path, run
    from an empty folder), so flash checks a config against the agent in the image. The
    controller never imports the agent: the two ship to different machines."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-agent-src-") as tmp:
        for name in AGENT_PACKAGES:
            (Path(tmp) / name).symlink_to(sources[name].resolve(), target_is_directory=True)
        env = {**os.environ, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-P", "-m", "edge_agent", "config-schema"]
        try:
            done = subprocess.run(
                command, cwd=tmp, env=env, capture_output=True, text=True, timeout=300, check=False
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise RecipeError(f"cannot run the agent to export its config schema: {e}") from e
    if done.returncode != 0:
        raise RecipeError(
            f"the agent could not export its config schema (exit {done.returncode}):"
            f" {done.stderr.strip()[-2000:]}"
        )
    try:
        schema = json.loads(done.stdout)
    except ValueError as e:
        raise RecipeError(f"the agent's config schema is not JSON: {e}") from e
    if not isinstance(schema, dict):
        raise RecipeError("the agent's config schema is not a JSON object")
    return canonical_json(schema)


def _rootfs(
    recipe: Recipe, template: Path, sources: Mapping[str, Path]
) -> tuple[dict[str, tuple[Source, int]], str]:
    """Every file of the image but the wheelhouse and image.json, by its path in the tar,
    with its mode; and the agent code digest."""
    files: dict[str, tuple[Source, int]] = {}

    def add(path: str, source: Source, mode: int = MODE_FILE) -> None:
        files[ROOTFS + path] = (source, mode)

    code: list[tuple[str, str]] = []
    for name in AGENT_PACKAGES:
        root = sources[name]
        for path in _walk(root):
            relative = f"{name}/{path.relative_to(root).as_posix()}"
            add(f"{AGENT_DIR}/{relative}", path)
            # Every packed file is agent code for attestation (the term lists too).
            code.append((relative, _file_sha256(path)))
    add(AGENT_CONFIG, template.read_bytes())
    add(AGENT_CONFIG_SCHEMA, agent_config_schema(sources))
    add("etc/edgefleet/recipe.json", canonical_json(recipe.model_dump(mode="json")))
    add(UNIT_PATH, render_unit(recipe))
    add("opt/edgefleet/install.sh", render_install(recipe), MODE_EXEC)
    pins = [*recipe.requirements]
    add("opt/edgefleet/requirements.txt", "".join(f"{p}\n" for p in pins).encode())
    for model in recipe.default_models:
        for slot in ("a", "b"):
            add(f"{STATE_DIR}/models/{model.name}/{slot}/.keep", b"")
    return files, tree_digest(code)


def _manifest(recipe: Recipe, files: dict[str, tuple[Source, int]], agent_code: str) -> bytes:
    """The canonical manifest of ``files``; adds ``image.json`` (which carries the image
    id the manifest fixes) to ``files``."""
    entries = []
    for tar_name in sorted(files):
        source, mode = files[tar_name]
        size, digest = _entry_bytes(source)
        entries.append({"path": tar_name, "size": size, "sha256": digest, "mode": mode})
    recipe_doc = recipe.model_dump(mode="json")
    body: dict[str, Any] = {
        "format": FORMAT,
        "recipe": recipe_doc,
        "device_class": recipe.device_class,
        "platform": recipe_doc["platform"],
        "agent_version": recipe.agent_version,
        "agent_code": agent_code,
        "files": entries,
    }
    image_id = compute_image_id(body)
    identity = image_json(
        image_id=image_id,
        device_class=recipe.device_class,
        agent_version=recipe.agent_version,
    )
    files[IMAGE_JSON] = (identity, MODE_FILE)
    body["files"] = sorted(
        [*entries, {"path": IMAGE_JSON, "size": len(identity),
                    "sha256": hashlib.sha256(identity).hexdigest(), "mode": MODE_FILE}],
        key=lambda e: str(e["path"]),
    )  # fmt: skip
    body["image_id"] = image_id
    return canonical_json(body)


def build_image(
    recipe_dir: Path,
    out: Path,
    *,
    keys: ImageKey,
    wheelhouse: Path | None = None,
    fetch: bool = True,
    agent_src: Mapping[str, Path] | None = None,
    source_date_epoch: int | None = None,
) -> BuiltImage:
    """Build and sign the image of ``recipe_dir`` into ``out`` (written atomically).

    ``wheelhouse``: a pre-downloaded folder to take the pinned wheels and sdists from
    (air-gapped hosts); else they are downloaded when ``fetch``, and left out otherwise
    (a quick development image). ``agent_src``: the ``edge_agent`` and ``shared`` package
    folders to pack (default: those next to this controller). ``source_date_epoch``: tar
    mtimes (default: ``SOURCE_DATE_EPOCH`` or 0). Raises ``RecipeError`` for a bad recipe,
    ``WheelhouseError`` when a pinned package has no artifact for the platform.
    """
    sources = dict(agent_src) if agent_src is not None else agent_sources()
    missing = [name for name in AGENT_PACKAGES if name not in sources]
    if missing:
        raise ValueError(f"agent_src lacks {', '.join(missing)}")
    recipe = load_recipe(recipe_dir, agent_version=agent_version_of(sources))
    template = recipe_dir / recipe.agent_config
    _check_template(recipe, template)
    mtime = _source_date_epoch(source_date_epoch)
    files, agent_code = _rootfs(recipe, template, sources)
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheelhouse-") as tmp:
        if wheelhouse is not None or fetch:
            for artifact in fetch_wheelhouse(recipe, Path(tmp) / "w", find_links=wheelhouse):
                files[f"{ROOTFS}{WHEELHOUSE_DIR}/{artifact.name}"] = (artifact, MODE_FILE)
        manifest_bytes = _manifest(recipe, files, agent_code)
        manifest = parse_manifest(manifest_bytes)
        signature = sign_manifest(manifest_bytes, keys.private)
        size = _write_tar(out, manifest_bytes, signature, files, mtime)
    return BuiltImage(path=out, manifest=manifest, size=size)


def _write_tar(
    out: Path,
    manifest: bytes,
    signature: bytes,
    files: Mapping[str, tuple[Source, int]],
    mtime: int,
) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                tar.addfile(_tarinfo(MANIFEST, len(manifest), MODE_FILE, mtime),
                            io.BytesIO(manifest))  # fmt: skip
                tar.addfile(_tarinfo(SIGNATURE, len(signature), MODE_FILE, mtime),
                            io.BytesIO(signature))  # fmt: skip
                for path in sorted(files):
                    source, mode = files[path]
                    size = len(source) if isinstance(source, bytes) else source.stat().st_size
                    with _open(source) as f:
                        tar.addfile(_tarinfo(path, size, mode, mtime), f)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out.stat().st_size


# --- reading and verifying --------------------------------------------------------------------
def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise ImageError(f"{member.name} is {member.size} bytes, more than {limit}")
    f = tar.extractfile(member)
    if f is None:
        raise ImageError(f"{member.name} is not a regular file")
    return f.read()


def _member_sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    f = tar.extractfile(member)
    if f is None:
        raise ImageError(f"{member.name} is not a regular file")
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _open_tar(tar_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tar_path, mode="r|*")
    except (OSError, tarfile.TarError) as e:
        raise ImageError(f"{tar_path} is not a readable image tar: {e}") from e


def _head(tar: tarfile.TarFile, tar_path: Path) -> tuple[bytes, bytes]:
    """``manifest.json`` and ``manifest.sig``: the first two members of every image."""
    found: list[bytes] = []
    for name in (MANIFEST, SIGNATURE):
        member = tar.next()
        if member is None or member.name != name or not member.isfile():
            raise ImageError(f"{tar_path}: {name} is missing (it must be member {len(found) + 1})")
        found.append(_read_member(tar, member, MAX_MANIFEST_BYTES))
    return found[0], found[1]


def load_manifest(tar_path: Path) -> Manifest:
    """The image's manifest, parsed and self-consistent but NOT signature-checked (for
    display; use ``verify_image`` before trusting anything in it)."""
    with _open_tar(tar_path) as tar:
        manifest, _sig = _head(tar, tar_path)
    return parse_manifest(manifest)


def verify_image(tar_path: Path, public_key: bytes) -> Manifest:
    """Check the whole image against the image key ``public_key`` (raw 32 bytes): the
    signature, the image id, and every member's size, mode and SHA-256; no member may be
    missing, extra, duplicated or anything but a regular file. Returns the manifest;
    raises ``ImageError`` listing every problem found."""
    problems: list[str] = []
    try:
        with _open_tar(tar_path) as tar:
            manifest_bytes, signature = _head(tar, tar_path)
            check_signature(manifest_bytes, signature, public_key)
            manifest = parse_manifest(manifest_bytes)
            expected = {f.path: f for f in manifest.files}
            seen: set[str] = set()
            # next() rather than iteration: iterating a stream re-yields the members read.
            count = 0
            while (member := tar.next()) is not None:
                count += 1
                if count > len(expected) + MAX_UNLISTED_MEMBERS:
                    problems.append(
                        f"more than {MAX_UNLISTED_MEMBERS} members beyond the manifest's; the"
                        " rest was not read"
                    )
                    break
                name = member.name
                if name in seen:
                    problems.append(f"duplicate file {name}")
                    continue
                seen.add(name)
                entry = expected.get(name)
                if not member.isfile():
                    problems.append(f"unexpected non-file member {name} (type {member.type!r})")
                    continue
                if entry is None:
                    problems.append(f"unknown file {name} (not in the manifest)")
                    continue
                if member.size != entry.size:
                    problems.append(
                        f"tampered file {name}: {member.size} bytes, manifest says {entry.size}"
                    )
                    continue
                digest = _member_sha256(tar, member)
                if digest != entry.sha256:
                    problems.append(f"tampered file {name}: sha256 differs from the manifest")
                if member.mode & 0o7777 != entry.mode:
                    problems.append(
                        f"file {name} has mode {member.mode:o}, manifest says {entry.mode:o}"
                    )
            problems += [f"missing file {p}" for p in sorted(set(expected) - seen)]
    except (OSError, tarfile.TarError) as e:
        raise ImageError(f"{tar_path}: damaged tar: {e}") from e
    identity = manifest.file(IMAGE_JSON)
    wanted = image_json(
        image_id=manifest.image_id,
        device_class=manifest.device_class,
        agent_version=manifest.agent_version,
    )
    if identity is None:
        problems.append(f"the manifest lists no {IMAGE_JSON}")
    elif identity.sha256 != hashlib.sha256(wanted).hexdigest():
        problems.append(f"{IMAGE_JSON} does not carry this image's id")
    if problems:
        raise ImageError(problems)
    return manifest


__all__ = [
    "AGENT_DIR",
    "UNIT_PATH",
    "WHEELHOUSE_DIR",
    "BuiltImage",
    "agent_config_schema",
    "agent_sources",
    "agent_version_of",
    "build_image",
    "load_manifest",
    "render_install",
    "render_unit",
    "verify_image",
]
