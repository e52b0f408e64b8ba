"""What a rollout reads of device-written data, on SQLite and PostgreSQL: a malformed
reported model or telemetry record is ignored (never fatal, never counted), and the
perception records of a classifier rollout feed its gates."""

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from controller.db import session_scope
from controller.ingest.apply import Received, apply_batch
from controller.rollouts.engine import TelemetryAggregate
from controller.rollouts.observe import wave_telemetry
from controller.rollouts.service import command
from controller.settings import RolloutSettings
from controller.updates.registry import ModelVersion
from shared.messages import Record, Reported, TelemetryBatch, encode_message
from tests.rollout_world import MODEL, NEW_TARGET, T0, World

FAST = RolloutSettings(default_soak_s=60, default_min_samples=20, default_device_timeout_s=120)
WAVES = ["canary:2", "100%"]


@pytest.fixture
def world(database_url: str) -> World:
    """A simulated fleet on each supported database (SQLite file, PostgreSQL)."""
    return World(database_url)


def send_records(
    world: World, device_id: str, bodies: list[dict[str, Any]], at: datetime, name: str
) -> None:
    """The device records one metric per body, sent through the real ingest."""
    first = world.seq.get(device_id, 0)
    world.seq[device_id] = first + len(bodies)
    records = [
        Record(epoch=1, seq=first + i, kind="metric", name=name, at=at, body=body)
        for i, body in enumerate(bodies)
    ]
    world.ingest([TelemetryBatch(device_id=device_id, ts=at, records=records)], at)


def start_canary(world: World, rid: int) -> list[str]:
    """Tick once (the canary is assigned) and return the canary's devices."""
    world.tick(T0)
    return sorted(d for d, m in world.desired_models().items() if m)


def install(world: World, device_id: str, rid: int, at: datetime, installed_at: Any) -> None:
    """The device reports the rollout's target active, with ``installed_at`` as given."""
    world.running[device_id].update(
        target=NEW_TARGET,
        version="1.1",
        status="active",
        error=None,
        desired_target=NEW_TARGET,
        rollout=rid,
        installed_at=installed_at,
    )
    world.report([device_id], at)


def aggregate(world: World, rid: int, model: str = MODEL) -> TelemetryAggregate:
    with Session(world.engine) as session:
        return wave_telemetry(session, rid, 0, model)


def run(world: World, rid: int, kind: Any, now: datetime) -> str:
    """An operator command through the service; the rollout's status after it."""
    with Session(world.engine) as session:
        return command(
            session, rid, kind, actor="user:ops", reason="", now=now, publish=world.publish
        ).status


@pytest.mark.parametrize(
    "installed_at",
    [1e18, -1.0, 10**400, 253402300800],
    ids=["1e18", "negative", "huge-integer", "year-10000"],
)
def test_unusable_install_time_is_ignored_and_the_rollout_steps_pauses_and_rolls_back(
    world: World, installed_at: Any
) -> None:
    """A canary device reporting an install time no datetime holds counts as not reporting:
    ticks still step the rollout, the other canary installs, and pause, resume and rollback
    all work."""
    world.add_model()
    world.add_devices(6)
    rid = world.create(waves=WAVES, settings=FAST)
    bad, good = start_canary(world, rid)
    now = T0 + timedelta(seconds=5)
    install(world, good, rid, now, now.timestamp())
    install(world, bad, rid, now, installed_at)

    now += timedelta(seconds=5)
    assert world.tick(now).stepped == [rid]
    outcomes = {m.device_id: m.outcome for m in world.members(rid)}
    assert (outcomes[good], outcomes[bad]) == ("installed", "assigned")

    assert run(world, rid, "pause", now) == "paused"
    assert world.tick(now + timedelta(seconds=5)).stepped == [rid]
    assert run(world, rid, "resume", now + timedelta(seconds=10)) == "running"
    assert run(world, rid, "rollback", now + timedelta(seconds=15)) == "rolling_back"
    world.respond(now + timedelta(seconds=20))
    assert world.tick(now + timedelta(seconds=25)).stepped == [rid]
    assert world.rollout(rid).status == "rolled_back"


def test_a_reported_document_sqlite_cannot_read_is_no_report(tmp_path: Path) -> None:
    """A reported ``installed_at`` of 1e400 is stored by SQLite as ``Infinity``, which its
    JSON functions refuse: that device counts as not reporting and the rollout still steps."""
    world = World(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    world.add_model()
    world.add_devices(4)
    rid = world.create(waves=WAVES, settings=FAST)
    bad, good = start_canary(world, rid)
    now = T0 + timedelta(seconds=5)
    install(world, good, rid, now, now.timestamp())
    world.running[bad].update(
        target=NEW_TARGET,
        status="active",
        desired_target=NEW_TARGET,
        rollout=rid,
        installed_at=123.5,
    )
    world.reported_version[bad] += 1
    message = Reported(
        device_id=bad,
        ts=now,
        version=world.reported_version[bad],
        applied_desired_version=1,
        state={"model": world.running[bad], "labels": {}},
    )
    topic, payload = encode_message(message)
    assert payload.count(b'"installed_at":123.5') == 1
    payload = payload.replace(b'"installed_at":123.5', b'"installed_at":1e400')
    with session_scope(world.engine) as session:
        apply_batch(session, [Received(topic, payload, now)])

    assert world.tick(now + timedelta(seconds=5)).stepped == [rid]
    outcomes = {m.device_id: m.outcome for m in world.members(rid)}
    assert (outcomes[good], outcomes[bad]) == ("installed", "assigned")
    assert run(world, rid, "rollback", now + timedelta(seconds=10)) == "rolling_back"


def test_a_failure_report_with_unstorable_text_still_fails_the_device(world: World) -> None:
    """A device reporting ``failed`` with an error holding a NUL (which PostgreSQL text
    refuses) is recorded as failed, the NUL replaced in its reason, and the rollout steps on."""
    world.add_model()
    world.add_devices(4)
    rid = world.create(waves=WAVES, settings=FAST)
    bad, _ = start_canary(world, rid)
    now = T0 + timedelta(seconds=5)
    world.running[bad].update(
        status="failed", error="bad\x00blob", desired_target=NEW_TARGET, rollout=rid
    )
    world.report([bad], now)
    assert world.tick(now + timedelta(seconds=5)).stepped == [rid]
    (member,) = [m for m in world.members(rid) if m.device_id == bad]
    assert member.failure == "device reported failed: bad\ufffdblob"


GOOD = {"model": MODEL, "status": "ok", "route": "local", "escalated": False}
# Each would change a count or the p95 if it were counted (latency 5000 ms, an error, ...).
MALFORMED: list[dict[str, Any]] = [
    {**GOOD, "latency_ms": "x"},
    {**GOOD, "latency_ms": [1, 2]},
    {**GOOD, "latency_ms": {"ms": 5000}},
    {**GOOD, "latency_ms": None},
    {**GOOD, "latency_ms": "5000"},
    {**GOOD, "latency_ms": True},
    {**GOOD, "latency_ms": 10**400},
    {"model": MODEL, "status": "ok", "cascaded": False},  # no latency at all
    {**GOOD, "latency_ms": 5000.0, "cascaded": "yes"},
    {**GOOD, "latency_ms": 5000.0, "cascaded": 1},
    {**GOOD, "latency_ms": 5000.0, "cascaded": None},
    {**GOOD, "latency_ms": 5000.0, "status": 500},
    {**GOOD, "latency_ms": 5000.0, "status": None},
    {**GOOD, "latency_ms": 5000.0, "status": ["error"]},
    {"model": MODEL, "latency_ms": 5000.0, "cascaded": True},  # no status
    {**GOOD, "model": [MODEL], "latency_ms": 5000.0, "status": "error"},
    {**GOOD, "model": 7, "latency_ms": 5000.0, "status": "error"},
    # PostgreSQL's json operators refuse a document holding a NUL: left out on both.
    {**GOOD, "latency_ms": 5000.0, "route": "local\x00"},
]


def test_malformed_telemetry_is_left_out_of_the_aggregate(world: World) -> None:
    """Records with a latency that is text, a list, an object, null, a boolean, a number
    no double holds or missing, a non-boolean ``cascaded``, a non-string status or model, or
    a NUL anywhere, and the old ``drift`` score records (the gate reads ``drift.window``
    sketches, tests/test_telemetry_drift.py), are ignored on both databases while the good
    records count; the rollout keeps stepping."""
    world.add_model()
    world.add_devices(4)
    rid = world.create(waves=WAVES, settings=FAST)
    first, second = start_canary(world, rid)
    world.respond(T0 + timedelta(seconds=5))
    assert world.tick(T0 + timedelta(seconds=10)).stepped == [rid]
    at = T0 + timedelta(seconds=20)
    good = [
        {
            **GOOD,
            "latency_ms": 10.0 * i,
            "status": "runtime_error" if i == 20 else "ok",
            "cascaded": i <= 3,
        }
        for i in range(1, 21)
    ]
    send_records(world, first, good[:10] + MALFORMED, at, "inference")
    send_records(world, second, good[10:] + MALFORMED, at, "inference")
    drift = [{"model": MODEL, "score": s} for s in (0.2, 0.4, "x", None, [1], 10**400, True)]
    send_records(world, first, drift, at, "drift")

    assert aggregate(world, rid) == TelemetryAggregate(
        inferences=20,
        errors=1,
        cascaded=3,
        latency_p95_ms=190.0,  # nearest rank: the 19th of 10, 20, ..., 200
        drift_score=None,
        drift_samples=0,
    )
    assert world.tick(at + timedelta(seconds=5)).stepped == [rid]
    observation = world.rollout(rid).state["last_gate"]["observation"]
    assert (observation["inferences"], observation["latency_p95_ms"]) == (20, 190.0)


def test_a_telemetry_body_sqlite_cannot_read_is_left_out(tmp_path: Path) -> None:
    """A latency of 1e400 is stored by SQLite as ``Infinity``, which its JSON functions
    refuse: the record is left out and the good ones still count."""
    world = World(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    world.add_model()
    world.add_devices(4)
    rid = world.create(waves=WAVES, settings=FAST)
    first, _ = start_canary(world, rid)
    world.respond(T0 + timedelta(seconds=5))
    world.tick(T0 + timedelta(seconds=10))
    at = T0 + timedelta(seconds=20)
    send_records(world, first, [{**GOOD, "latency_ms": 40.0}], at, "inference")
    batch = TelemetryBatch(
        device_id=first,
        ts=at,
        records=[
            Record(
                epoch=1,
                seq=99,
                kind="metric",
                name="inference",
                at=at,
                body={**GOOD, "latency_ms": 123.5},
            )
        ],
    )
    topic, payload = encode_message(batch)
    payload = payload.replace(b'"latency_ms":123.5', b'"latency_ms":1e400')
    assert b"1e400" in payload
    with session_scope(world.engine) as session:
        apply_batch(session, [Received(topic, payload, at)])
    assert aggregate(world, rid) == TelemetryAggregate(inferences=1, latency_p95_ms=40.0)
    assert world.tick(at + timedelta(seconds=5)).stepped == [rid]


def add_classifier(world: World) -> tuple[str, str]:
    """Publish two versions of an ONNX classifier ``parts``; the old and new targets."""
    old, new = "parts/1.0/parts-1.0.onnx", "parts/1.1/parts-1.1.onnx"
    with session_scope(world.engine) as session:
        for version, target in (("1.0", old), ("1.1", new)):
            session.add(
                ModelVersion(
                    name="parts",
                    version=version,
                    target_path=target,
                    sha256=(version.replace(".", "") * 64)[:64],
                    length=1024,
                    runtime="onnx",
                    expected_latency_ms=20.0,
                    created_by="test",
                )
            )
    return old, new


def perception(status: str = "ok", latency_ms: float = 8.0) -> dict[str, Any]:
    """What the agent records per /v1/perception request."""
    body: dict[str, Any] = {"model": "parts", "status": status, "latency_ms": latency_ms}
    if status == "ok":
        body.update(label_index=2, confidence=0.91)
    return body


@pytest.mark.parametrize("status", ["ok", "invalid_inputs"])
def test_a_classifier_rollout_is_gated_on_its_perception_records(world: World, status: str) -> None:
    """A perception model's rollout counts its devices' ``perception`` records (not other
    models' inference records, nor records without a status): healthy ones let the canary
    pass its gates, failing ones roll it back."""
    old, new = add_classifier(world)
    ids = world.add_devices(6)
    for d in ids:
        world.running[d].update(name="parts", target=old, desired_target=old, version="1.0")
    world.report(ids, T0 - timedelta(minutes=4))
    rid = world.create(model="parts", version="1.1", waves=WAVES, settings=FAST)
    canary = start_canary(world, rid)
    world.respond(T0 + timedelta(seconds=5))
    assert world.on_target(new) == canary
    world.tick(T0 + timedelta(seconds=10))
    at = T0 + timedelta(seconds=15)
    for d in canary:
        send_records(world, d, [perception(status)] * 15, at, "perception")
        # An older agent's record (no status) and the chat model's inferences: not counted.
        send_records(world, d, [{"model": "parts", "latency_ms": 9.0}], at, "perception")
    world.inference(canary, at, count=5, latency_ms=900.0, status="error")

    errors = 30 if status != "ok" else 0
    assert aggregate(world, rid, "parts") == TelemetryAggregate(
        inferences=30, errors=errors, latency_p95_ms=8.0
    )
    now = at
    while now < T0 + timedelta(seconds=300):
        now += timedelta(seconds=10)
        world.tick(now)
        rollout = world.rollout(rid)
        if rollout.status != "running" or rollout.state["wave"] != 0:
            break
    rollout = world.rollout(rid)
    if status == "ok":
        assert rollout.state["wave"] == 1 and rollout.status == "running"
        assert rollout.state["last_gate"]["verdict"] == "advance"
    else:
        assert rollout.status == "rolling_back"
        assert "error_rate" in rollout.state["reason"]
    assert rollout.state["last_gate"]["observation"]["inferences"] == 30
