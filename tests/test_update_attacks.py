"""Attacks on the update path (issue 5): each one is refused and the device keeps serving.

The device runs model v2, installed through TUF from a repository whose root and targets
roles need two signatures. Then an attacker (or a broken mirror) offers v3 in one of the
classic ways TUF defends against; the real agent must refuse it, keep the same runtime
object serving the same answers, leave its slots alone and say what happened in the
reported shadow and a ``model_install`` event. Offline cases follow.
"""

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import MetaFile

from edge_agent.agent import Agent
from edge_agent.runtimes.base import ChatMessage, ChatRequest
from edge_agent.updates.decisions import (
    MetadataExpired,
    RepositoryUnreachable,
    expired_roles,
    offline_error,
)
from tests.tiny_models import build_tiny_genai_model
from tests.tuf_simulator import RepoServer, UpdateWorld, model_custom, tar_folder

ASK = ChatRequest(messages=(ChatMessage("user", "hello world"),), max_tokens=4)
V2, V3 = "tiny/2/model.tar", "tiny/3/model.tar"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("attack-models")
    factory = build_tiny_genai_model(base / "factory", layers=1, seed=0)
    return {
        "factory": factory,
        "v2": tar_folder(build_tiny_genai_model(base / "v2", layers=1, seed=4)),
        "v3": tar_folder(build_tiny_genai_model(base / "v3", layers=1, seed=2)),
    }


@dataclass
class Device:
    """The world, the running agent and what it served before the attack."""

    world: UpdateWorld
    agent: Agent
    first_timestamp: bytes
    answer: str

    def offer_v3(self, archives: dict[str, Any], **publish: Any) -> None:
        self.world.repo.add_target(V3, archives["v3"], model_custom(version="3"))
        self.world.repo.publish(**publish)


def running_v2(folder: Path, archives: dict[str, Any], **world_args: Any) -> Device:
    world = UpdateWorld(
        folder, factory=archives["factory"], thresholds={"root": 2, "targets": 2}, **world_args
    )
    first_timestamp = world.repo.metadata_file("timestamp.json").read_bytes()
    world.repo.add_target(V2, archives["v2"], model_custom(version="2"))
    world.repo.publish()
    agent = world.start_agent()
    world.want(agent, V2, "2", rollout=1)
    assert agent.updates is not None
    agent.updates.reconcile()
    agent.updates.reconcile()  # confirmed
    model = agent.shadow.report().state["model"]
    assert model["status"] == "active" and model["target"] == V2 and model["confirmed"]
    return Device(world, agent, first_timestamp, agent.runtimes["tiny"].complete(ASK).text)


@pytest.fixture
def device(tmp_path: Path, archives: dict[str, Any]) -> Iterator[Device]:
    dev = running_v2(tmp_path, archives)
    yield dev
    dev.agent.stop()
    dev.world.close()


# --- the attacks ------------------------------------------------------------------------


def rollback_timestamp(dev: Device, archives: dict[str, Any]) -> None:
    """Replay the first timestamp (version 1) after the device trusted version 2."""
    dev.offer_v3(archives)
    dev.world.repo.metadata_file("timestamp.json").write_bytes(dev.first_timestamp)


def rollback_snapshot(dev: Device, archives: dict[str, Any]) -> None:
    """A newer timestamp (stolen timestamp key) pointing at snapshot version 1."""
    dev.offer_v3(archives)
    repo = dev.world.repo
    repo.timestamp.signed.version += 1
    repo.timestamp.signed.snapshot_meta = MetaFile(version=1)
    repo.write_timestamp()


def rollback_targets(dev: Device, archives: dict[str, Any]) -> None:
    """A newer snapshot (stolen snapshot key) listing targets version 1."""
    dev.offer_v3(archives)
    repo = dev.world.repo
    repo.snapshot.signed.version += 1
    repo.snapshot.signed.meta["targets.json"] = MetaFile(version=1)
    repo.write_snapshot()
    repo.timestamp.signed.version += 1
    repo.timestamp.signed.snapshot_meta = MetaFile(version=repo.snapshot.signed.version)
    repo.write_timestamp()


def freeze(dev: Device, archives: dict[str, Any]) -> None:
    """A mirror that serves a correctly signed but expired timestamp."""
    dev.offer_v3(archives, timestamp_expires=dev.world.repo.expiry(timedelta(hours=-1)))


def mix_targets(dev: Device, archives: dict[str, Any]) -> None:
    """Snapshot 3 with the (validly signed) targets of state 2 served as targets 3."""
    dev.offer_v3(archives)
    meta = dev.world.repo.metadata_dir
    (meta / "3.targets.json").write_bytes((meta / "2.targets.json").read_bytes())


def mix_snapshot(dev: Device, archives: dict[str, Any]) -> None:
    """Timestamp 3 with the (validly signed) snapshot of state 2 served as snapshot 3."""
    dev.offer_v3(archives)
    meta = dev.world.repo.metadata_dir
    (meta / "3.snapshot.json").write_bytes((meta / "2.snapshot.json").read_bytes())


def wrong_key(dev: Device, archives: dict[str, Any]) -> None:
    """Targets signed by two keys the root never delegated to."""
    attacker = [CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()]
    dev.offer_v3(archives, targets_signers=attacker)


def targets_threshold(dev: Device, archives: dict[str, Any]) -> None:
    """Targets signed by one of the two targets keys (threshold 2)."""
    dev.offer_v3(archives, targets_signers=dev.world.repo.signers["targets"][:1])


def root_threshold(dev: Device, archives: dict[str, Any]) -> None:
    """A new root handing the timestamp role to the attacker, signed by one of two root keys."""
    repo = dev.world.repo
    attacker = CryptoSigner.generate_ed25519()
    for signer in repo.signers["timestamp"]:
        repo.root.signed.revoke_key(signer.public_key.keyid, "timestamp")
    repo.root.signed.add_key(attacker.public_key, "timestamp")
    repo.root.signed.version += 1
    repo.write_root(signers=repo.signers["root"][:1])
    repo.signers["timestamp"] = [attacker]
    dev.offer_v3(archives)


def longer_artifact(dev: Device, archives: dict[str, Any]) -> None:
    """The mirror keeps sending bytes after the signed length (no Content-Length)."""
    dev.offer_v3(archives)
    path = dev.world.server.url_path(dev.world.repo, V3)
    dev.world.server.faults.extra_bytes[path] = 2 << 20


def tampered_artifact(dev: Device, archives: dict[str, Any]) -> None:
    """The mirror serves different bytes of the signed length."""
    dev.offer_v3(archives)
    path = dev.world.repo.artifact_path(V3)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@dataclass(frozen=True)
class Attack:
    make: Callable[[Device, dict[str, Any]], None]
    status: str
    reason: str  # a phrase the reported error must contain


ATTACKS = {
    "rollback-timestamp": Attack(rollback_timestamp, "refused", "timestamp version 1 must be >= 2"),
    "rollback-snapshot": Attack(
        rollback_snapshot, "refused", "New snapshot version must be >= 2, got version 1"
    ),
    "rollback-targets": Attack(
        rollback_targets, "refused", "Expected targets.json version 1, got 2"
    ),
    "freeze": Attack(freeze, "metadata_expired", "timestamp.json is expired"),
    "mix-and-match-targets": Attack(mix_targets, "refused", "Expected targets v3, got v2"),
    "mix-and-match-snapshot": Attack(mix_snapshot, "refused", "Expected snapshot version 3, got 2"),
    "wrong-key": Attack(wrong_key, "refused", "targets was signed by 0/2 keys"),
    "broken-threshold-targets": Attack(
        targets_threshold, "refused", "targets was signed by 1/2 keys"
    ),
    "broken-threshold-root": Attack(root_threshold, "refused", "root was signed by 1/2 keys"),
    "artifact-longer-than-declared": Attack(longer_artifact, "refused", "more than the signed"),
    "tampered-artifact": Attack(tampered_artifact, "refused", "differs from the signed"),
}


@pytest.mark.parametrize("attack", list(ATTACKS.values()), ids=list(ATTACKS))
def test_attack_is_refused_and_current_model_keeps_serving(
    device: Device, archives: dict[str, Any], attack: Attack
) -> None:
    """The attack is refused with a reason in the reported shadow and an event; the same
    runtime keeps answering the same way and the slots do not move."""
    agent, world = device.agent, device.world
    serving = agent.runtimes["tiny"]
    slots_before = (world.state_dir / "models" / "tiny" / "slots.json").read_text()
    attack.make(device, archives)
    world.want(agent, V3, "3", rollout=2)
    assert agent.updates is not None
    agent.updates.reconcile()

    reported = agent.shadow.report().state["model"]
    assert reported["status"] == attack.status, reported["error"]
    assert attack.reason in reported["error"]
    assert reported["target"] == V2 and reported["slot"] == "a"
    assert reported["desired_target"] == V3
    event = world.events(agent)[-1]
    outcome = "refused" if attack.status == "refused" else "metadata_expired"
    assert (event["target"], event["outcome"], event["rollout"]) == (V3, outcome, 2)
    assert attack.reason in event["reason"]

    assert agent.runtimes["tiny"] is serving
    assert serving.complete(ASK).text == device.answer
    slots_now = (world.state_dir / "models" / "tiny" / "slots.json").read_text()
    assert json.loads(slots_now)["active"] == json.loads(slots_before)["active"] == "a"
    assert [p.name for p in (world.state_dir / "models" / "tiny" / "b").iterdir()] == []


def test_refused_attack_is_not_retried_but_expired_metadata_is(
    device: Device, archives: dict[str, Any]
) -> None:
    """A verification failure is final for that desired target (no more requests), while
    a frozen repository is asked again later (it may be re-signed)."""
    tampered_artifact(device, archives)
    device.world.want(device.agent, V3, "3", rollout=2)
    manager = device.agent.updates
    assert manager is not None
    assert manager.reconcile() is None
    requests = len(device.world.server.faults.requests)
    assert manager.reconcile() is None
    assert len(device.world.server.faults.requests) == requests


def test_frozen_repository_recovers_when_re_signed(
    device: Device, archives: dict[str, Any]
) -> None:
    """After a freeze is reported, a properly re-signed timestamp lets the install through."""
    freeze(device, archives)
    device.world.want(device.agent, V3, "3")
    manager = device.agent.updates
    assert manager is not None
    retry_in = manager.reconcile()
    assert retry_in is not None and retry_in > 0
    device.world.repo.publish()  # fresh timestamp
    manager.clock = lambda: time.time() + 3600  # past the retry time
    manager.reconcile()
    assert device.agent.shadow.report().state["model"]["target"] == V3


# --- offline ------------------------------------------------------------------------------


@pytest.fixture
def short_lived(tmp_path: Path, archives: dict[str, Any]) -> Iterator[Device]:
    """Like ``device``, but the repository's metadata expires one hour after signing."""
    dev = running_v2(tmp_path, archives, expires_in=timedelta(hours=1))
    yield dev
    dev.agent.stop()
    dev.world.close()


def test_offline_with_expired_metadata_keeps_model_and_refuses(
    short_lived: Device, archives: dict[str, Any]
) -> None:
    """Controller unreachable and the trusted metadata expired: keep serving, refuse the
    install, report metadata_expired (and an event), and keep trying later."""
    dev = short_lived
    dev.offer_v3(archives)
    dev.world.server.stop()
    manager = dev.agent.updates
    assert manager is not None
    manager.clock = lambda: time.time() + 2 * 3600
    dev.world.want(dev.agent, V3, "3")
    retry_in = manager.reconcile()

    reported = dev.agent.shadow.report().state["model"]
    assert reported["status"] == "metadata_expired"
    assert "controller unreachable" in reported["error"] and "expired" in reported["error"]
    assert reported["target"] == V2
    assert dev.world.events(dev.agent)[-1]["outcome"] == "metadata_expired"
    assert retry_in is not None
    assert dev.agent.runtimes["tiny"].complete(ASK).text == dev.answer


def test_offline_with_valid_metadata_waits_then_installs(
    short_lived: Device, archives: dict[str, Any]
) -> None:
    """Controller unreachable but metadata still valid: no refusal, no event, a retry;
    when the controller is back the install completes."""
    dev = short_lived
    dev.offer_v3(archives)
    port = dev.world.server.port
    dev.world.server.stop()
    manager = dev.agent.updates
    assert manager is not None
    events_before = len(dev.world.events(dev.agent))
    dev.world.want(dev.agent, V3, "3")
    retry_in = manager.reconcile()
    reported = dev.agent.shadow.report().state["model"]
    assert reported["status"] == "downloading" and "unreachable" in reported["error"]
    assert len(dev.world.events(dev.agent)) == events_before
    assert retry_in is not None and manager.reconcile() == pytest.approx(retry_in, abs=1)

    dev.world.server = RepoServer(dev.world.repo.folder, port=port)
    manager.clock = lambda: time.time() + 3600
    manager.reconcile()
    assert dev.agent.shadow.report().state["model"]["target"] == V3
    assert dev.world.events(dev.agent)[-1]["outcome"] == "installed"


@pytest.mark.parametrize(
    ("expiries", "now", "error"),
    [
        pytest.param({}, 100.0, RepositoryUnreachable, id="nothing-trusted-yet"),
        pytest.param(
            {"timestamp": 200.0, "targets": 300.0}, 100.0, RepositoryUnreachable, id="valid"
        ),
        pytest.param({"timestamp": 100.0}, 100.0, MetadataExpired, id="expires-now"),
        pytest.param({"timestamp": 200.0, "targets": 50.0}, 100.0, MetadataExpired, id="targets"),
    ],
)
def test_offline_policy(expiries: dict[str, float], now: float, error: type) -> None:
    """Offline, expired timestamp, snapshot or targets metadata means metadata_expired;
    otherwise the outage is only a pause."""
    result = offline_error("connection refused", expiries, now)
    assert type(result) is error
    assert (type(result) is MetadataExpired) == bool(expired_roles(expiries, now))
