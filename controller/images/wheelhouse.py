"""The image's wheelhouse: the recipe's pinned wheels for the target platform, fetched with
``pip download`` (from the index, or from a pre-downloaded folder on an air-gapped build
host), plus the sdists of the packages the device compiles itself.

pip is run with ``--no-deps``: the recipe pins the whole dependency closure, so what lands
in the image is exactly what the recipe says, never what a resolver picked that day. The
result is the set of files pip wrote, sorted by name; their bytes are the published bytes.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from controller.images.recipe import Recipe, parse_pin

PIP_TIMEOUT_S = 1800.0
ARTIFACT_SUFFIXES = (".whl", ".tar.gz", ".zip")
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be assembled; the text names the package and the platform."""


def _pip(args: list[str], what: str, recipe: Recipe) -> None:
    env = dict(os.environ)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", *args],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise WheelhouseError(f"pip download of {what} took over {PIP_TIMEOUT_S:.0f} s") from e
    if done.returncode == 0:
        return
    output = done.stderr + done.stdout
    missing = _NO_MATCH.findall(output)
    platform = recipe.platform
    if missing:
        kind = "wheel" if what == "wheels" else "sdist"
        raise WheelhouseError(
            f"no {kind} of {', '.join(missing)} for {'/'.join(platform.pip_platforms)}"
            f" {platform.implementation}{platform.python_version}; pin a version that"
            " publishes one, or move the package to build_on_device"
        )
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
    raise WheelhouseError(f"pip download of {what} failed: {tail}")


def _copy_sdist(requirement: str, folder: Path, dest: Path) -> None:
    """Take a pinned sdist from a pre-downloaded folder by its file name (no build step:
    an air-gapped host may lack the package's build backend)."""
    name, version = parse_pin(requirement)
    stem = re.sub(r"[-_.]+", "_", name).lower()
    for path in sorted(folder.iterdir()):
        base = path.name.lower()
        for suffix in (".tar.gz", ".zip"):
            if base.endswith(suffix):
                file_name, _, file_version = base.removesuffix(suffix).rpartition("-")
                if re.sub(r"[-_.]+", "_", file_name) == stem and file_version == version:
                    shutil.copyfile(path, dest / path.name)
                    return
    raise WheelhouseError(f"no sdist of {requirement} in {folder}")


def fetch_wheelhouse(recipe: Recipe, dest: Path, *, find_links: Path | None = None) -> list[Path]:
    """Download the recipe's wheels and sdists into the empty folder ``dest``; return the
    files, sorted. ``find_links``: take them from that folder only (no index)."""
    dest.mkdir(parents=True, exist_ok=True)
    source = ["--no-index", "--find-links", str(find_links)] if find_links is not None else []
    common = ["--no-deps", "--dest", str(dest), "--quiet", *source]
    if recipe.requirements:
        requirements = dest.parent / f".{dest.name}.requirements.txt"
        requirements.write_text("".join(f"{r}\n" for r in recipe.requirements))
        platform = recipe.platform
        tags = [arg for tag in platform.pip_platforms for arg in ("--platform", tag)]
        _pip(
            [
                "--only-binary=:all:",
                *tags,
                "--python-version",
                platform.python_version,
                "--implementation",
                platform.implementation,
                "-r",
                str(requirements),
                *common,
            ],
            "wheels",
            recipe,
        )
    for build in recipe.build_on_device:
        if find_links is not None:
            _copy_sdist(build.requirement, find_links, dest)
        else:
            # pip prepares the sdist's metadata in an isolated build environment (fetched
            # from the index too); the sdist itself is what lands in the image.
            _pip(["--no-binary=:all:", build.requirement, *common], build.requirement, recipe)
    files = sorted(p for p in dest.iterdir() if p.is_file() and p.name.endswith(ARTIFACT_SUFFIXES))
    stray = sorted(p.name for p in dest.iterdir() if p not in files)
    if stray:
        raise WheelhouseError(f"pip download left unexpected files: {', '.join(stray)}")
    return files


__all__ = ["WheelhouseError", "fetch_wheelhouse"]
