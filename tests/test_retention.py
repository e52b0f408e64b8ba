"""The retention job (controller/retention.py) on SQLite and PostgreSQL: raw telemetry goes
only once old and rolled up, in bounded batches; rollups, status history, verdicts and dead
letters have their own retention; the audit log is kept unless configured."""

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, SQLModel, func, select

from controller.attestation.service import AttestationResult
from controller.audit import AuditEntry
from controller.db import session_scope
from controller.devices.tables import DeviceStatusEvent
from controller.ingest.tables import RejectedMessage
from controller.retention import plan, run_retention
from controller.services import _job_lock
from controller.settings import Settings, load_settings
from controller.telemetry.tables import (
    DeviceHealthHour,
    DeviceRequestHour,
    FleetRequestHour,
    TelemetryRecord,
)
from tests.telemetry_world import T0, TelemetryWorld, group, inference_window


def settings(**retention: Any) -> Settings:
    return load_settings(
        None,
        environment="development",
        telemetry={"commit_lag_s": 5, "raw_retention_h": 72},
        retention={"batch_rows": 100, **retention},
    )


def count(world: TelemetryWorld, table: type[SQLModel]) -> int:
    with Session(world.engine) as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


def send_windows(world: TelemetryWorld, at: datetime, devices: int, per_device: int) -> None:
    """``per_device`` inference windows (rolled up) and as many ``inference`` records (not
    rolled up, kept raw only) from each device, at ``at``."""
    for d in range(devices):
        records = [("inference.window", inference_window(at, group()))] * per_device
        records += [("inference", {"status": "ok", "latency_ms": 10.0})] * per_device
        world.send(f"dev-{d}", records, at)


def rollup_totals(world: TelemetryWorld) -> tuple[Any, ...]:
    fleet = sorted((r.hour, r.count) for r in world.all(FleetRequestHour))
    devices = sorted((r.device_id, r.hour, r.count) for r in world.all(DeviceRequestHour))
    return tuple(fleet), tuple(devices)


def test_old_raw_records_go_once_rolled_up_and_the_rollups_stay(database_url: str) -> None:
    """Raw records older than raw_retention_h are deleted only after the rollup passed
    them, but for each device's newest; younger ones stay, and the hourly rows made from the
    deleted ones are unchanged."""
    world = TelemetryWorld(database_url)
    send_windows(world, T0, devices=3, per_device=20)  # 120 rows, old at T0 + 72 h
    later = T0 + timedelta(hours=71)
    send_windows(world, later, devices=1, per_device=5)  # 10 rows, young then
    cfg = settings()
    now = T0 + timedelta(hours=72, minutes=1)

    report = run_retention(world.engine, cfg, now)  # nothing rolled up yet
    assert report.deleted == {} and count(world, TelemetryRecord) == 130

    world.rollup(now)
    before = rollup_totals(world)
    report = run_retention(world.engine, cfg, now)
    # dev-1's and dev-2's newest records are old but stay; dev-0's newest is young.
    assert report.deleted == {"telemetry_record": 118}
    assert report.batches >= 2  # 100 rows per transaction
    assert count(world, TelemetryRecord) == 12
    assert rollup_totals(world) == before
    assert run_retention(world.engine, cfg, now).deleted == {}


def test_records_the_rollup_has_not_reached_stay_whatever_their_age(database_url: str) -> None:
    """Rows after the rollup cursor (here: received after the rollup ran) are kept even
    when older than raw_retention_h; the next rollup lets them go."""
    world = TelemetryWorld(database_url)
    send_windows(world, T0, devices=1, per_device=5)
    world.rollup(T0)
    send_windows(world, T0 + timedelta(minutes=5), devices=1, per_device=5)
    now = T0 + timedelta(days=10)
    assert run_retention(world.engine, settings(), now).deleted == {"telemetry_record": 10}
    assert count(world, TelemetryRecord) == 10
    world.rollup(now)
    assert run_retention(world.engine, settings(), now).deleted == {"telemetry_record": 9}
    assert count(world, TelemetryRecord) == 1  # the device's newest


def test_a_run_stops_at_its_batch_limit_and_the_next_goes_on(database_url: str) -> None:
    """With max_batches 2 of 100 rows, a run deletes the due rows of the first 200 and
    says the table is unfinished; the next run deletes the rest (each of the three
    devices' newest record stays)."""
    world = TelemetryWorld(database_url)
    send_windows(world, T0, devices=3, per_device=50)
    now = T0 + timedelta(hours=80)
    world.rollup(now)
    cfg = settings(max_batches=2)
    first = run_retention(world.engine, cfg, now)
    assert first.deleted == {"telemetry_record": 198}
    assert first.unfinished == ["telemetry_record"]
    second = run_retention(world.engine, cfg, now)
    assert second.deleted == {"telemetry_record": 99} and second.unfinished == []
    assert count(world, TelemetryRecord) == 3


def test_a_silent_devices_newest_record_still_bounds_its_numbering(database_url: str) -> None:
    """After retention, a device silent for ten days still has its newest record stored, so
    ingest's plausibility check refuses a batch whose sequence numbers leap far past it."""
    world = TelemetryWorld(database_url)
    send_windows(world, T0, devices=1, per_device=10)
    now = T0 + timedelta(days=10)
    world.rollup(now)
    run_retention(world.engine, settings(), now)
    assert count(world, TelemetryRecord) == 1
    window = [("inference.window", inference_window(now, group()))]
    world.send("dev-0", window, now, seq=10**12)  # refused: implausible_seq
    assert count(world, TelemetryRecord) == 1
    world.send("dev-0", window, now, seq=20)  # the next number: stored
    assert count(world, TelemetryRecord) == 2


def test_rollups_keep_their_own_retention(database_url: str) -> None:
    """Per-device hourly rows go after hourly_retention_days, fleet rows only after
    fleet_retention_days."""
    world = TelemetryWorld(database_url)
    send_windows(world, T0, devices=2, per_device=1)
    send_windows(world, T0 + timedelta(days=5), devices=2, per_device=1)
    world.rollup(T0 + timedelta(days=5))
    cfg = load_settings(
        None,
        environment="development",
        telemetry={"hourly_retention_days": 3, "fleet_retention_days": 30},
    )
    now = T0 + timedelta(days=4)
    run_retention(world.engine, cfg, now)
    hours = {r.hour for r in world.all(DeviceRequestHour)}
    assert len(hours) == 1 and count(world, DeviceRequestHour) == 2
    assert count(world, DeviceHealthHour) == 0  # no system records sent
    assert count(world, FleetRequestHour) == 2
    run_retention(world.engine, cfg, T0 + timedelta(days=31))
    assert count(world, FleetRequestHour) == 1


def add(world: TelemetryWorld, rows: list[SQLModel]) -> None:
    with session_scope(world.engine) as session:
        for row in rows:
            session.add(row)


def test_attestation_verdicts_keep_each_devices_newest_and_newest_passing(
    database_url: str,
) -> None:
    """Old verdicts go, except each device's newest verdict and its newest passing one
    (the boot-epoch check reads it), however old they are."""
    world = TelemetryWorld(database_url)
    old = T0 - timedelta(days=200)
    rows: list[SQLModel] = []
    for i in range(5):  # dev-a: passes, passes, ..., then fails (all old)
        rows.append(AttestationResult(device_id="dev-a", at=old + timedelta(hours=i), ok=i < 4))
    for i in range(3):  # dev-b: old passing ones, then a recent one
        rows.append(AttestationResult(device_id="dev-b", at=old + timedelta(hours=i), ok=True))
    rows.append(AttestationResult(device_id="dev-b", at=T0, ok=True))
    add(world, rows)
    run_retention(world.engine, settings(), T0 + timedelta(hours=1))
    kept = sorted(
        (r.device_id, r.ok, r.at.replace(tzinfo=None)) for r in world.all(AttestationResult)
    )
    base = old.replace(tzinfo=None)
    assert kept == [
        ("dev-a", False, base + timedelta(hours=4)),
        ("dev-a", True, base + timedelta(hours=3)),
        ("dev-b", True, T0.replace(tzinfo=None)),
    ]


def test_history_tables_and_the_audit_log(database_url: str) -> None:
    """Status events and dead letters past their days go; the audit log is kept by
    default and goes only once audit_days is set."""
    world = TelemetryWorld(database_url)
    old, new = T0 - timedelta(days=400), T0
    add(
        world,
        [
            DeviceStatusEvent(device_id="d", at=old, event="birth"),
            DeviceStatusEvent(device_id="d", at=new, event="birth"),
            RejectedMessage(received_at=old, topic="t", reason="r", detail="", size=1),
            RejectedMessage(received_at=new, topic="t", reason="r", detail="", size=1),
            AuditEntry(at=old, actor="user:a", action="x", target="y"),
            AuditEntry(at=new, actor="user:a", action="x", target="y"),
        ],
    )
    report = run_retention(world.engine, settings(), T0)
    assert report.deleted == {"device_status_event": 1, "rejected_message": 1}
    assert count(world, AuditEntry) == 2
    assert "audit_entry" not in {s.name for s in plan(settings())}
    report = run_retention(world.engine, settings(audit_days=365), T0)
    assert report.deleted == {"audit_entry": 1}
    assert [e.at.replace(tzinfo=None) for e in world.all(AuditEntry)] == [new.replace(tzinfo=None)]


def test_a_retention_of_none_keeps_a_table(database_url: str) -> None:
    """A table whose days are null is left out of the plan and keeps every row."""
    world = TelemetryWorld(database_url)
    add(world, [DeviceStatusEvent(device_id="d", at=T0 - timedelta(days=999), event="birth")])
    cfg = settings(status_events_days=None)
    assert "device_status_event" not in {s.name for s in plan(cfg)}
    run_retention(world.engine, cfg, T0)
    assert count(world, DeviceStatusEvent) == 1


@pytest.mark.postgres
def test_two_replicas_delete_at_once_without_error(postgres_url: str) -> None:
    """Two controllers running the job at the same moment on PostgreSQL (each with the
    advisory job lock) leave exactly the young rows and each device's newest, whichever of
    them did the work."""
    world = TelemetryWorld(postgres_url)
    send_windows(world, T0, devices=10, per_device=30)
    send_windows(world, T0 + timedelta(hours=79), devices=1, per_device=3)
    now = T0 + timedelta(hours=80)
    world.rollup(now)
    cfg = settings()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def replica() -> None:
        barrier.wait()
        try:
            for _ in range(3):
                run_retention(world.engine, cfg, now, lock=_job_lock)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    run_retention(world.engine, cfg, now, lock=_job_lock)
    assert errors == []
    assert count(world, TelemetryRecord) == 6 + 9  # the young rows, 9 devices' newest
