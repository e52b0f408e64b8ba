"""What a quote measures on this device, each value a string the controller can compare.

- ``agent_code``: the tree hash of the ``.py`` files of the ``edge_agent`` and ``shared``
  packages *as imported by this process* (so a copy run from elsewhere measures the copy),
  recomputed for every quote so a file changed on disk since start shows up at once.
- ``config``: SHA-256 of the agent's config file bytes (of the canonical JSON of the
  validated config when the agent was not started from a file, as in simulations).
- ``model:<name>``: SHA-256 of each active model file, as hashed when it was loaded (the
  TUF target hash when the update manager installed it).
- ``image_id``: the firmware image id from ``<root>/etc/edgefleet/image.json``, ``"none"``
  when the device was not flashed from an edgefleet image, ``"invalid"`` when unreadable.
- ``boot_epoch``: the outbox epoch, bumped and fsynced once per agent boot.
"""

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path

import edge_agent
import shared
from edge_agent.config import AgentConfig
from shared.attestation import (
    AGENT_CODE,
    BOOT_EPOCH,
    CONFIG,
    IMAGE_ID,
    MODEL_PREFIX,
    tree_hash,
)
from shared.canonical import canonical_json
from shared.json_guard import JsonShapeError, loads_bounded
from shared.provisioning import IMAGE_FILE as IMAGE_PATH
from shared.recent import Recent

IMAGE_FILE = Path(IMAGE_PATH)
NO_IMAGE = "none"
INVALID_IMAGE = "invalid"
# image.json is three short strings (controller.images.manifest.image_json).
MAX_IMAGE_JSON_BYTES = 64 * 1024


def _hash_agent_code() -> str:
    return tree_hash(
        {
            "edge_agent": Path(edge_agent.__file__).resolve().parent,
            "shared": Path(shared.__file__).resolve().parent,
        }
    )


# A quote's agent_code is the code tree as it was at most this long before the quote, or,
# while another quote of the process is measuring it, the last measurement: the agents of a
# simulation process answer their birth challenges within the same second, and one walk
# serves them all without any of them waiting on another (shared/recent.py).
AGENT_CODE_MAX_AGE_S = 1.0
_AGENT_CODE = Recent(_hash_agent_code, max_age_s=AGENT_CODE_MAX_AGE_S)


def agent_code() -> str:
    """The tree hash of the agent code this process runs, measured at most
    ``AGENT_CODE_MAX_AGE_S`` ago (or the last measurement, while one is underway). An
    agent calls it once at start, so quotes never wait for a first walk."""
    return _AGENT_CODE.get(time.monotonic())


def config_hash(config: AgentConfig, path: Path | None) -> str:
    if path is not None:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(canonical_json(config.model_dump(mode="json"))).hexdigest()


def image_id(root: Path) -> str:
    """The ``image_id`` of ``<root>/etc/edgefleet/image.json`` (written by the image build)."""
    path = root / IMAGE_FILE
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_IMAGE_JSON_BYTES + 1)
    except FileNotFoundError:
        return NO_IMAGE
    except OSError:
        return INVALID_IMAGE
    try:
        doc = loads_bounded(raw, max_bytes=MAX_IMAGE_JSON_BYTES)
    except JsonShapeError:
        return INVALID_IMAGE
    value = doc.get("image_id") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not 1 <= len(value) <= 256:
        return INVALID_IMAGE
    return value


def measure(
    *,
    config: AgentConfig,
    config_path: Path | None,
    root: Path,
    model_hashes: Mapping[str, str],
    boot_epoch: int,
) -> dict[str, str]:
    """Every measurement of this device right now."""
    values = {
        AGENT_CODE: agent_code(),
        CONFIG: config_hash(config, config_path),
        IMAGE_ID: image_id(root),
        BOOT_EPOCH: str(boot_epoch),
    }
    for name, digest in model_hashes.items():
        values[f"{MODEL_PREFIX}{name}"] = digest
    return values


__all__ = ["IMAGE_FILE", "agent_code", "config_hash", "image_id", "measure"]
