"""The device side of attestation: the identity key file, the measurements, the signed quote,
and what a quarantine does to the agent's routing."""

import base64
import hashlib
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from controller.drills.openai_server import FakeProvider, start_provider
from edge_agent.agent import Agent
from edge_agent.api.app import create_agent_app
from edge_agent.attestation.attester import Attester
from edge_agent.attestation.identity import FileIdentityKey
from edge_agent.attestation.measure import measure
from edge_agent.config import AgentConfig
from shared.attestation import installed_agent_code, key_id, quote_payload, verify
from shared.messages import Challenge, Desired


def test_identity_key_is_created_private_and_reused(tmp_path: Path) -> None:
    """The first start creates ed25519.pem (0600 in a 0700 folder); later starts load the
    same key; its repr never shows key material."""
    folder = tmp_path / "state" / "identity"
    first = FileIdentityKey.load_or_create(folder)
    path = folder / "ed25519.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    again = FileIdentityKey.load_or_create(folder)
    assert again.public_key_raw() == first.public_key_raw()
    assert "PRIVATE" not in repr(first) and path.read_text() not in repr(first)
    assert first.key_id == key_id(first.public_key_raw())
    signature = first.sign(b"bytes")
    assert verify(again.public_key_raw(), b"bytes", base64.b64encode(signature).decode())


def test_identity_key_readable_by_others_is_tightened(tmp_path: Path) -> None:
    """A key file left group/world-readable is set back to 0600 on load."""
    key = FileIdentityKey.load_or_create(tmp_path)
    key.path.chmod(0o644)
    FileIdentityKey.load_or_create(tmp_path)
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600


def test_unreadable_identity_key_is_refused_without_its_contents(tmp_path: Path) -> None:
    """A corrupt key file stops the agent with the path in the error, never the contents."""
    (tmp_path / "ed25519.pem").write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n")
    (tmp_path / "ed25519.pem").chmod(0o600)
    with pytest.raises(RuntimeError) as info:
        FileIdentityKey.load_or_create(tmp_path)
    assert "ed25519.pem" in str(info.value) and "c2VjcmV0" not in str(info.value)


def _config(tmp_path: Path, **extra: object) -> tuple[AgentConfig, Path]:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"device_id": "dev-m", "state_dir": "state", **extra}))
    return AgentConfig.model_validate(yaml.safe_load(path.read_text())), path


def test_measurements(tmp_path: Path) -> None:
    """agent_code is the tree hash of the code this process runs (what the controller computes
    for its local install), config the file's SHA-256, models their hashes, image_id from
    etc/edgefleet/image.json ('none' without one, 'invalid' when unreadable)."""
    config, path = _config(tmp_path)
    root = tmp_path / "root"
    values = measure(
        config=config, config_path=path, root=root, model_hashes={"m": "ab" * 32}, boot_epoch=7
    )
    assert values == {
        "agent_code": installed_agent_code(),
        "config": hashlib.sha256(path.read_bytes()).hexdigest(),
        "image_id": "none",
        "boot_epoch": "7",
        "model:m": "ab" * 32,
    }
    image = root / "etc" / "edgefleet" / "image.json"
    image.parent.mkdir(parents=True)
    image.write_text(json.dumps({"image_id": "jetson-orin-2026.11.1", "built": "x"}))
    assert measure(config=config, config_path=None, root=root, model_hashes={}, boot_epoch=0)[
        "image_id"
    ] == ("jetson-orin-2026.11.1")
    image.write_text("{broken")
    assert (
        measure(config=config, config_path=None, root=root, model_hashes={}, boot_epoch=0)[
            "image_id"
        ]
        == "invalid"
    )
    without_file = measure(
        config=config, config_path=None, root=root, model_hashes={}, boot_epoch=0
    )
    changed, _ = _config(tmp_path, heartbeat_interval_s=2.0)
    assert (
        measure(config=changed, config_path=None, root=root, model_hashes={}, boot_epoch=0)[
            "config"
        ]
        != without_file["config"]
    ), "without a file, the validated config is measured"


def test_attester_signs_a_quote_bound_to_the_challenge(tmp_path: Path) -> None:
    """The quote echoes the nonce and issued_at, carries measurements taken for it, and its
    signature verifies over quote_payload with the device's key; a new nonce is measured
    afresh, while the same challenge delivered again gets the very quote already sent (a
    second quote for one nonce is what the controller calls a replay)."""
    key = FileIdentityKey.load_or_create(tmp_path)
    calls: list[int] = []

    def measurements() -> dict[str, str]:
        calls.append(1)
        return {"agent_code": "aa" * 32, "boot_epoch": str(len(calls))}

    at = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
    attester = Attester(key, measurements, clock=lambda: at + timedelta(seconds=1))
    challenge = Challenge(
        device_id="dev-q", nonce="cd" * 32, issued_at=at, expires_at=at + timedelta(minutes=1)
    )
    quote = attester.answer(challenge)
    again = attester.answer(challenge)
    fresh = attester.answer(challenge.model_copy(update={"nonce": "ef" * 32}))
    assert (quote.nonce, quote.issued_at, quote.key_id) == (challenge.nonce, at, key.key_id)
    assert again == quote and attester.repeated == 1
    assert (quote.measurements["boot_epoch"], fresh.measurements["boot_epoch"]) == ("1", "2")
    assert fresh.nonce == "ef" * 32 and len(calls) == 2
    payload = quote_payload(
        device_id="dev-q",
        nonce=quote.nonce,
        key_id=quote.key_id,
        measurements=quote.measurements,
        issued_at=quote.issued_at,
        answered_at=quote.answered_at,
    )
    assert verify(key.public_key_raw(), payload, quote.signature)


@pytest.fixture
def cloud() -> Iterator[FakeProvider]:
    provider = start_provider("cloud")
    yield provider
    assert provider.server is not None
    provider.server.shutdown()


def test_quarantine_refuses_the_cloud_tier_until_cleared(
    tmp_path: Path, cloud: FakeProvider
) -> None:
    """With the desired quarantine key the router refuses the cloud tier (503, reason
    'quarantined', nothing sent); once desired drops the key the cloud answers again."""
    config = AgentConfig.model_validate(
        {
            "device_id": "dev-q",
            "state_dir": str(tmp_path / "state"),
            "mqtt": None,
            "tiers": {"cloud": {"base_url": cloud.base_url, "model": "frontier"}},
        }
    )
    agent = Agent(config)
    try:
        agent.load_models()
        client = TestClient(create_agent_app(agent))

        def chat() -> tuple[int, str]:
            body = {"messages": [{"role": "user", "content": "Name a colour."}]}
            response = client.post("/v1/chat/completions", json=body)
            return response.status_code, response.text

        assert chat()[0] == 200 and cloud.count() == 1
        reported = agent.on_desired(
            Desired(device_id="dev-q", version=1, state={"quarantine": {"reason": "agent_code"}})
        )
        assert reported.state["quarantine"] == {"reason": "agent_code"}
        assert agent.quarantine == "agent_code"
        status, text = chat()
        assert status == 503 and "quarantined" in text
        assert cloud.count() == 1, "nothing reached the cloud while quarantined"

        malformed = agent.on_desired(
            Desired(device_id="dev-q", version=2, state={"quarantine": "yes"})
        )
        assert "quarantine" in malformed.rejected
        cleared = agent.on_desired(Desired(device_id="dev-q", version=3, state={}))
        assert "quarantine" not in cleared.state and agent.quarantine is None
        assert chat()[0] == 200 and cloud.count() == 2
    finally:
        agent.stop()


def test_agent_code_covers_data_files_but_not_bytecode(tmp_path: Path) -> None:
    """Editing a data file of the agent (a sensitivity term list) changes ``agent_code``;
    bytecode caches Python writes beside the modules do not."""
    from shared.attestation import tree_hash

    pkg = tmp_path / "edge_agent"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "terms.txt").write_text("diagnosis\n")
    before = tree_hash({"edge_agent": pkg})
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (pkg / "y.pyc").write_bytes(b"\0")
    assert tree_hash({"edge_agent": pkg}) == before
    (pkg / "data" / "terms.txt").write_text("")
    assert tree_hash({"edge_agent": pkg}) != before
