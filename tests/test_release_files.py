"""What a release carries: one version everywhere (pyproject, both packages, both CLIs'
``--version``), the Apache-2.0 LICENSE pyproject declares, and a changelog entry."""

import hashlib
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import controller
import edge_agent

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PYPROJECT["version"]
# SHA-256 of https://www.apache.org/licenses/LICENSE-2.0.txt, the canonical text.
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
CHANGELOG = ROOT / "CHANGELOG.md"


def test_packages_carry_the_project_version() -> None:
    """controller and edge_agent state pyproject's version (images read edge_agent's)."""
    assert controller.__version__ == VERSION
    assert edge_agent.__version__ == VERSION


def test_installed_metadata_matches_pyproject() -> None:
    """The installed distribution's metadata has pyproject's version and licence."""
    assert importlib.metadata.version("edgefleet") == VERSION
    metadata = importlib.metadata.metadata("edgefleet")
    assert metadata["License-Expression"] == PYPROJECT["license"] == "Apache-2.0"


@pytest.mark.parametrize("program", ["edgefleet", "edge-agent"])
def test_version_option(program: str) -> None:
    """``edgefleet --version`` and ``edge-agent --version`` (the installed commands) print
    the name and version and exit 0."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / program), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{program} {VERSION}\n"


def test_license_is_the_full_apache_2_0_text() -> None:
    """LICENSE is the unmodified Apache License 2.0 and pyproject ships it as the licence."""
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256
    assert PYPROJECT["license"] == "Apache-2.0"
    assert PYPROJECT["license-files"] == ["LICENSE"]


def test_changelog_has_unreleased_and_the_current_version() -> None:
    """CHANGELOG.md keeps an Unreleased section on top and has an entry for pyproject's
    version, with its date."""
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", CHANGELOG.read_text(encoding="utf-8"), re.M)
    assert headings[0][0] == "Unreleased"
    entry = dict(headings).get(VERSION)
    assert entry is not None, f"CHANGELOG.md has no '## [{VERSION}]' section"
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", entry)
