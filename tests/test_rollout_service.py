"""Rollouts through the real service and database, with devices simulated through the
controller's real ingest: restarts, gates, timeouts, conflicts and telemetry aggregation."""

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from controller.audit import AuditEntry
from controller.db import session_scope
from controller.devices.tables import Device
from controller.rollouts.engine import CommandRefused, RolloutError, Status
from controller.rollouts.observe import wave_telemetry
from controller.rollouts.queries import rollout_view
from controller.rollouts.service import (
    RolloutConflict,
    StaleRollout,
    advance,
    command,
    get_rollout,
)
from controller.settings import RolloutSettings
from edge_agent.updates.decisions import FactoryModel, parse_desired_model
from tests.rollout_world import MODEL, NEW_TARGET, OLD_TARGET, T0, World

FAST = RolloutSettings(default_soak_s=60, default_min_samples=20, default_device_timeout_s=120)
WAVES = ["canary:2", "50%", "100%"]
FACTORY = {"name": MODEL, "factory": True}  # the desired marker of the configured model
# What an agent reports while it runs its configured (factory) model.
ON_FACTORY = {
    "target": None,
    "version": None,
    "slot": "factory",
    "status": "active",
    "error": None,
    "desired_target": None,
    "rollout": None,
    "installed_at": None,
}


@pytest.fixture
def world(database_url: str) -> World:
    """A simulated fleet on each supported database (SQLite file, PostgreSQL)."""
    return World(database_url)


def respond(
    world: World, now: datetime, *, fail: set[str] | None = None, silent: set[str] | None = None
) -> None:
    """``world.respond``, except as the agent does it: a device whose desired model is the
    factory marker goes back to its configured model, one with no desired model does nothing."""
    idle = set(silent or ())
    back = []
    for device_id, want in world.desired_models().items():
        if want is None or want.get("factory"):
            idle.add(device_id)
            have = world.running.get(device_id)
            if want and device_id not in (silent or ()) and have and have["target"] is not None:
                have.update(ON_FACTORY)
                back.append(device_id)
    if back:
        world.report(back, now)
    world.respond(now, fail=fail or set(), silent=idle)


def drive(
    world: World,
    rollout_id: int,
    start: datetime,
    seconds: float,
    *,
    tick_s: float = 5.0,
    latency_ms: float = 80.0,
    status: str = "ok",
    fail: set[str] | None = None,
    silent: set[str] | None = None,
    restart_each_tick: bool = False,
) -> datetime:
    """Tick, let devices react and produce telemetry, until the rollout stops moving."""
    now = start
    silent = silent or set()
    while now <= start + timedelta(seconds=seconds):
        if restart_each_tick:
            world.restart()
        world.tick(now)
        if world.rollout(rollout_id).status in ("completed", "rolled_back", "aborted", "halted"):
            break
        now += timedelta(seconds=tick_s)
        respond(world, now, fail=fail, silent=silent)
        talking = [d for d in world.on_target() if d not in silent]
        if talking:
            world.inference(talking, now, count=5, latency_ms=latency_ms, status=status)
    return now


def audit_actions(world: World, rollout_id: int) -> list[tuple[str, str]]:
    with Session(world.engine) as session:
        rows = session.exec(
            select(AuditEntry)
            .where(AuditEntry.target == f"rollout:{rollout_id}")
            .order_by(col(AuditEntry.id))
        ).all()
        return [(r.action, r.actor) for r in rows]


def test_first_tick_assigns_the_canary_and_publishes_desired(world: World) -> None:
    """The first tick puts the contract-2 desired ``model`` on exactly the canary's devices,
    publishes them and records each device's previous target."""
    world.add_model()
    world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    world.tick(T0)
    desired = {d: m for d, m in world.desired_models().items() if m}
    assert len(desired) == 2
    for model in desired.values():
        assert model == {"name": MODEL, "target": NEW_TARGET, "version": "1.1", "rollout": rid}
    assert sorted(d for d, _ in world.published) == sorted(desired)
    members = {m.device_id: m for m in world.members(rid)}
    assert {d for d, m in members.items() if m.outcome == "assigned"} == set(desired)
    assert all(members[d].previous_target == OLD_TARGET for d in desired)
    assert audit_actions(world, rid) == [
        ("rollout.create", "user:test"),
        ("rollout.start", "system:rollouts"),
    ]


def test_healthy_rollout_converges_through_every_wave(world: World) -> None:
    """With healthy devices the rollout walks all waves and every device ends on the new
    model, each step audited."""
    world.add_model()
    world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    drive(world, rid, T0, 3600)
    assert world.rollout(rid).status == "completed"
    assert len(world.on_target()) == 20
    assert {m.outcome for m in world.members(rid)} == {"installed"}
    actions = [a for a, _ in audit_actions(world, rid)]
    assert actions == [
        "rollout.create",
        "rollout.start",
        "rollout.advance",
        "rollout.advance",
        "rollout.complete",
    ]


def _history(world: World, rid: int) -> tuple[Any, ...]:
    members = [
        (m.device_id, m.wave, m.outcome, m.assigned_at, m.installed_at) for m in world.members(rid)
    ]
    with Session(world.engine) as session:
        audits = [
            (a.action, a.reason, a.at)
            for a in session.exec(select(AuditEntry).order_by(col(AuditEntry.id)))
        ]
    return members, audits, sorted(world.published)


def test_restart_before_every_tick_changes_nothing(tmp_path: Path) -> None:
    """A controller rebuilt from the database before every tick runs the rollout exactly as
    one that never restarted: same assignments at the same times, same audit trail, and no
    desired document sent twice."""
    histories = []
    for restart in (False, True):
        world = World(f"sqlite:///{tmp_path / f'restart-{restart}.db'}")
        world.add_model()
        world.add_devices(20)
        rid = world.create(waves=WAVES, settings=FAST)
        drive(world, rid, T0, 3600, restart_each_tick=restart)
        assert world.rollout(rid).status == "completed"
        histories.append(_history(world, rid))
    assert histories[0] == histories[1]
    published = histories[1][2]
    assert len(published) == len(set(published)), "a desired version was published twice"


def test_restart_mid_wave_resumes_the_soak_where_it_was(world: World) -> None:
    """Stopping mid-soak and starting again keeps the wave, its soak start and its devices:
    the gates decide at the same soak end, nobody is assigned again."""
    world.add_model()
    world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    now = drive(world, rid, T0, 30)  # canary installed, soaking
    before = world.rollout(rid)
    assert before.state["soaking_since"] is not None and before.state["wave"] == 0
    assigned_before = {m.device_id: m.assigned_at for m in world.members(rid) if m.assigned_at}
    published_before = list(world.published)
    world.restart()
    world.tick(now)  # the same instant: nothing new to do
    after = world.rollout(rid)
    assert after.state["soaking_since"] == before.state["soaking_since"]
    assert after.state["wave"] == 0
    assert world.published == published_before
    assert {m.device_id: m.assigned_at for m in world.members(rid) if m.assigned_at} == (
        assigned_before
    )
    drive(world, rid, now, 3600)
    assert world.rollout(rid).status == "completed"


def test_canary_latency_over_budget_halts(world: World) -> None:
    """A canary whose inferences run over the latency budget (1.5x the model's expected
    100 ms) halts the rollout after the canary: no other device is assigned."""
    world.add_model(expected_latency_ms=100.0)
    world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    drive(world, rid, T0, 3600, latency_ms=400.0)
    rollout = world.rollout(rid)
    assert rollout.status == "halted"
    assert "latency_p95" in rollout.state["reason"]
    assert len(world.on_target()) == 2
    gates = {g["gate"]: g for g in rollout.state["last_gate"]["gates"]}
    assert gates["latency_p95"]["status"] == "fail"
    assert gates["latency_p95"]["threshold"] == pytest.approx(150.0)
    assert ("rollout.halt", "system:rollouts") in audit_actions(world, rid)


def test_canary_error_rate_rolls_back_to_the_previous_model(world: World) -> None:
    """A canary whose inferences fail rolls back: its devices get their previous target as
    desired model again, report it, and the rollout ends rolled back."""
    world.add_model()
    world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    drive(world, rid, T0, 3600, status="runtime_error")
    rollout = world.rollout(rid)
    assert rollout.status == "rolled_back"
    with Session(world.engine) as session:
        (decision,) = session.exec(
            select(AuditEntry).where(AuditEntry.action == "rollout.rollback")
        ).all()
    assert decision.actor == "system:rollouts" and "error_rate" in decision.reason
    canary = [m for m in world.members(rid) if m.wave == 0]
    desired = world.desired_models()
    for member in canary:
        assert desired[member.device_id] == {"name": MODEL, "target": OLD_TARGET, "version": "1.0"}
        assert member.outcome == "reverted"
    assert world.on_target() == []
    assert {m.outcome for m in world.members(rid) if m.wave > 0} == {"skipped"}


def test_devices_on_their_factory_model_roll_back_to_the_factory_marker(world: World) -> None:
    """Canary devices that ran their configured model roll back with the desired factory
    marker of the rollout's model (not a deleted key), go back to it and end reverted; a
    later rollout's desired model carries no trace of the marker."""
    world.add_model()
    ids = world.add_devices(20)
    for device_id in ids:
        world.running[device_id].update(ON_FACTORY)
    world.report(ids, T0 - timedelta(minutes=4))
    rid = world.create(waves=WAVES, settings=FAST)
    now = drive(world, rid, T0, 3600, status="runtime_error")
    assert world.rollout(rid).status == "rolled_back"
    canary = [m for m in world.members(rid) if m.wave == 0]
    assert len(canary) == 2
    desired = world.desired_models()
    for member in canary:
        assert member.previous_model == FACTORY and member.previous_target is None
        assert desired[member.device_id] == FACTORY
        assert parse_desired_model(desired[member.device_id]) == FactoryModel(MODEL)
        assert member.outcome == "reverted"
        assert world.running[member.device_id]["target"] is None
    assert world.on_target() == []

    again = world.create(now, waves=["100%"], rollout_key="again")
    world.tick(now)
    desired = world.desired_models()
    for member in canary:
        assert desired[member.device_id] == {
            "name": MODEL,
            "target": NEW_TARGET,
            "version": "1.1",
            "rollout": again,
        }


def test_previous_model_of_another_name_is_not_a_revert_target(world: World) -> None:
    """A device whose reported model status is about another of its models gets the factory
    marker of the rollout's model as its previous model, and a rollback sends that marker,
    never the other model's target."""
    world.add_model()
    ids = world.add_devices(10)
    for device_id in ids:
        world.running[device_id].update(
            name="yolo-detector", target="yolo-detector/2.0/model.onnx", version="2.0"
        )
    world.report(ids, T0 - timedelta(minutes=4))
    rid = world.create(waves=WAVES, settings=FAST)
    world.tick(T0)
    assigned = [m for m in world.members(rid) if m.assigned_at is not None]
    assert len(assigned) == 2
    assert all(m.previous_model == FACTORY and m.previous_target is None for m in assigned)
    with Session(world.engine) as session:
        command(
            session,
            rid,
            "rollback",
            actor="user:alice",
            reason="wrong build",
            now=T0 + timedelta(seconds=10),
            publish=world.publish,
        )
    desired = world.desired_models()
    assert {m.device_id: desired[m.device_id] for m in assigned} == {
        m.device_id: FACTORY for m in assigned
    }


def test_failed_installs_roll_back(world: World) -> None:
    """Canary devices that report a failed install break the install gate and roll back,
    and each reverted member still says why its install failed."""
    world.add_model()
    ids = world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    drive(world, rid, T0, 600, fail=set(ids))
    assert world.rollout(rid).status == "rolled_back"
    canary = [m for m in world.members(rid) if m.wave == 0]
    assert all(m.outcome == "reverted" for m in canary)
    assert {m.failure for m in canary} == {"device reported failed: health check failed"}


def test_silent_devices_time_out_instead_of_hanging(world: World) -> None:
    """Canary devices that never answer are marked timed out after the device timeout, and
    the rollout decides (here: rolls back, as timeouts count as failures) instead of waiting."""
    world.add_model()
    ids = world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    drive(world, rid, T0, 900, silent=set(ids))
    assert world.rollout(rid).status in ("rolling_back", "rolled_back")
    timeouts = [a for a, _ in audit_actions(world, rid) if a == "rollout.device_timeout"]
    assert len(timeouts) == 2
    with Session(world.engine) as session:
        reasons = session.exec(
            select(AuditEntry.reason).where(AuditEntry.action == "rollout.device_timeout")
        ).all()
    assert all("silent for" in r for r in reasons)


def test_silent_devices_excluded_by_policy_let_the_rollout_finish(world: World) -> None:
    """Under timeout_policy "exclude", a silent device times out and the rest carry on."""
    world.add_model()
    ids = world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST, timeout_policy="exclude")
    world.tick(T0)
    canary = [m.device_id for m in world.members(rid) if m.assigned_at]
    drive(world, rid, T0, 3600, silent={canary[0]})
    assert world.rollout(rid).status == "completed"
    outcomes = {m.device_id: m.outcome for m in world.members(rid)}
    assert outcomes[canary[0]] == "timed_out"
    assert sum(o == "installed" for o in outcomes.values()) == len(ids) - 1


def test_overlapping_rollouts_are_refused_until_the_first_ends(world: World) -> None:
    """A second rollout touching a device already in an active rollout is refused with the
    devices and rollout named; once the first is aborted, it can be created."""
    world.add_model()
    world.add_model("1.2", target="smollm2/1.2/smollm2-1.2.gguf")
    ids = world.add_devices(10)
    first = world.create(waves=WAVES, settings=FAST)
    with pytest.raises(RolloutConflict) as refused:
        world.create(version="1.2", waves=["100%"], cohort={"device_ids": ids[:3]})
    assert refused.value.conflicts == dict.fromkeys(ids[:3], first)
    assert f"{ids[0]} (rollout {first})" in str(refused.value)
    with Session(world.engine) as session:
        command(
            session,
            first,
            "abort",
            actor="user:alice",
            reason="wrong build",
            now=T0,
            publish=world.publish,
        )
    second = world.create(version="1.2", waves=["100%"], cohort={"device_ids": ids[:3]})
    assert second != first


def test_cohort_by_class_tag_and_compatibility(world: World) -> None:
    """The cohort takes devices by class and shadow label, leaves out classes the model
    does not run on, and refuses explicit ids of an unsupported class."""
    world.add_model(device_classes=["jetson-orin"])
    orin = world.add_devices(6, prefix="orin", device_class="jetson-orin", labels={"site": "a"})
    world.add_devices(4, prefix="orin-b", device_class="jetson-orin", labels={"site": "b"})
    cpu = world.add_devices(5, prefix="cpu", device_class="x86_64-cpu", labels={"site": "a"})
    # A device claiming a label in its own report does not join: labels are the operator's.
    world.add_devices(2, prefix="liar", device_class="jetson-orin", labels=None)
    for d in ("liar-0000", "liar-0001"):
        world.labels[d] = {"site": "a"}
    world.report(["liar-0000", "liar-0001"], T0)
    rid = world.create(waves=["100%"], cohort={"tags": ["site=a"]})
    assert sorted(m.device_id for m in world.members(rid)) == orin
    with Session(world.engine) as session:
        command(session, rid, "abort", actor="user:t", reason="", now=T0, publish=world.publish)
    with pytest.raises(RolloutError, match="class the model does not support"):
        world.create(waves=["100%"], cohort={"device_ids": [cpu[0], orin[0]]})
    with pytest.raises(RolloutError, match="cohort is empty"):
        world.create(waves=["100%"], cohort={"device_classes": ["x86_64-cpu"]})
    with pytest.raises(RolloutError, match="not published"):
        world.create(version="9.9", waves=["100%"])


def test_quarantined_devices_are_never_assigned(world: World) -> None:
    """A quarantined member stays unassigned through every wave and ends skipped."""
    world.add_model()
    ids = world.add_devices(10)
    with session_scope(world.engine) as session:
        for d in ids[:3]:
            device = session.get(Device, d)
            assert device is not None
            device.quarantined = True
            device.quarantine_reason = "attestation failed"
            session.add(device)
    rid = world.create(waves=WAVES, settings=FAST)
    drive(world, rid, T0, 3600)
    assert world.rollout(rid).status == "completed"
    outcomes = {m.device_id: m.outcome for m in world.members(rid)}
    assert all(outcomes[d] == "skipped" for d in ids[:3])
    assert not set(ids[:3]) & set(world.on_target())
    assert all(d not in {p for p, _ in world.published} for d in ids[:3])


def test_pause_and_resume_commands(world: World) -> None:
    """Pause holds the rollout (ticks assign nobody), resume continues it; each is audited
    with the operator's name, and a nonsensical command is refused."""
    world.add_model()
    world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    now = drive(world, rid, T0, 20)
    with Session(world.engine) as session:
        command(
            session, rid, "pause", actor="user:alice", reason="", now=now, publish=world.publish
        )
        with pytest.raises(CommandRefused):
            command(
                session, rid, "pause", actor="user:alice", reason="", now=now, publish=world.publish
            )
    published = len(world.published)
    drive(world, rid, now, 600)
    assert world.rollout(rid).status == "paused"
    assert len(world.published) == published
    with Session(world.engine) as session:
        command(session, rid, "resume", actor="user:bob", reason="", now=now, publish=world.publish)
    drive(world, rid, now + timedelta(seconds=600), 3600)
    assert world.rollout(rid).status == "completed"
    assert ("rollout.pause", "user:alice") in audit_actions(world, rid)
    assert ("rollout.resume", "user:bob") in audit_actions(world, rid)


def test_a_step_on_a_stale_rollout_is_discarded(world: World) -> None:
    """If an operator command lands between a tick's read and its write, the tick's step
    is refused (StaleRollout) rather than overwriting the command."""
    world.add_model()
    world.add_devices(5)
    rid = world.create(waves=WAVES, settings=FAST)
    with Session(world.engine) as ticking:
        stale = get_rollout(ticking, rid)
        _ = stale.state  # loaded now, like a tick that has read the rollout
        with Session(world.engine) as other:
            command(
                other, rid, "pause", actor="user:alice", reason="", now=T0, publish=world.publish
            )
        with pytest.raises(StaleRollout):
            advance(ticking, stale, T0)
        ticking.rollback()
    assert world.rollout(rid).status == "paused"


def test_wave_telemetry_is_aggregated_in_sql_from_install_time(database_url: str) -> None:
    """The gate input counts only this wave's installed devices, only this model, only
    since each install; error, cascade counts and the nearest-rank p95 match a direct
    computation, on SQLite and PostgreSQL."""
    world = World(database_url)
    world.add_model()
    ids = world.add_devices(6)
    rid = world.create(waves=["canary:3", "100%"], settings=FAST)
    world.tick(T0)
    canary = sorted(m.device_id for m in world.members(rid) if m.wave == 0)
    others = sorted(set(ids) - set(canary))
    world.inference(canary, T0 - timedelta(seconds=1), count=50, latency_ms=5000)  # before
    installed_at = T0 + timedelta(seconds=10)
    world.respond(installed_at)
    world.tick(installed_at)
    latencies = []
    for i, d in enumerate(canary):
        for j in range(7):
            latency = 10.0 * (i * 7 + j + 1)
            status = "ok" if j else "timeout"
            world.inference(
                [d],
                installed_at + timedelta(seconds=j + 1),
                count=1,
                latency_ms=latency,
                status=status,
                cascaded=j == 2,
            )
            latencies.append(latency)
    world.inference(others, installed_at + timedelta(seconds=5), count=9)  # other wave
    world.inference(canary, installed_at + timedelta(seconds=5), count=4, model="cloud-gpt")
    with Session(world.engine) as session:
        agg = wave_telemetry(session, rid, 0, MODEL)
        later = wave_telemetry(session, rid, 0, MODEL, since=installed_at + timedelta(seconds=4))
    ordered = sorted(latencies)
    assert agg.inferences == len(latencies) == 21
    assert agg.errors == len(canary)
    assert agg.cascaded == len(canary)
    assert agg.latency_p95_ms == ordered[math.ceil(0.95 * len(ordered)) - 1]
    assert agg.drift_score is None and agg.drift_samples == 0
    assert later.inferences == sum(1 for j in range(7) if j + 1 >= 4) * len(canary)


def test_rollout_view_reports_per_wave_progress(world: World) -> None:
    """The API view shows each wave's size, members, phase and outcome counts."""
    world.add_model()
    world.add_devices(20)
    rid = world.create(waves=WAVES, settings=FAST)
    drive(world, rid, T0, 30)
    with Session(world.engine) as session:
        view = rollout_view(session, get_rollout(session, rid))
    assert view["status"] == Status.RUNNING.value
    waves = view["waves"]
    assert [w["cumulative_size"] for w in waves] == [2, 10, 20]
    assert [w["members"] for w in waves] == [2, 8, 10]
    assert waves[0]["phase"] == "soaking" and waves[0]["outcomes"] == {"installed": 2}
    assert waves[1]["phase"] == "waiting" and waves[1]["outcomes"] == {"pending": 8}
    assert view["gates"]["wave"] == 0


def test_an_oversized_reported_target_cannot_wedge_the_assigning_step(world: World) -> None:
    """A device reporting a target longer than the column that records it gets the factory
    marker as its previous model, and the wave is still assigned (on PostgreSQL too, where
    the longer value would fail the whole step)."""
    world.add_model()
    ids = world.add_devices(10)
    for device_id in ids:
        world.running[device_id].update(target="x/" + "y" * 400, version="v" * 100)
    world.report(ids, T0 - timedelta(minutes=4))
    rid = world.create(waves=WAVES, settings=FAST)
    world.tick(T0)
    assigned = [m for m in world.members(rid) if m.assigned_at is not None]
    assert len(assigned) == 2
    assert all(m.previous_model == FACTORY and m.previous_target is None for m in assigned)
