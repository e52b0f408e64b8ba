"""The telemetry rollup: folding windowed records into hourly rows (pure), and the job
that does it on the database exactly once, whatever is re-run, re-delivered or malformed."""

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from controller.db import session_scope
from controller.services import _job_lock
from controller.telemetry.drift import set_reference
from controller.telemetry.fold import CLASSES, RawRecord, fold, hour_of, quantiles, utc
from controller.telemetry.rollup import run_rollup
from controller.telemetry.settings import TelemetrySettings
from controller.telemetry.tables import (
    DeviceHealthHour,
    DeviceRequestHour,
    DriftHour,
    DriftScore,
    FleetRequestHour,
    TelemetryRecord,
)
from shared import sketches
from tests.telemetry_world import (
    CFG,
    T0,
    TelemetryWorld,
    drift_window,
    group,
    inference_window,
    latency_sketch,
    sketch,
)


@pytest.fixture
def world(tmp_path: Path) -> TelemetryWorld:
    """A fresh controller database on SQLite."""
    return TelemetryWorld(f"sqlite:///{tmp_path / 'edgefleet.db'}")


def raw(i: int, device: str, name: str, body: Any, minutes: int = 0) -> RawRecord:
    return RawRecord(i, device, name, T0 + timedelta(minutes=minutes), body)


def test_fold_sums_windows_per_device_fleet_and_hour() -> None:
    """Two devices' windows of one hour add up per device and for the fleet (counts,
    tokens and latency sketches bin by bin); another hour stays apart; drift features and
    classes sum per model version; system samples keep sums, maxima and the newest."""
    w1 = inference_window(
        T0,
        group(latencies=[10.0, 30.0], errors=1, escalations=1, prompt_tokens=50),
        group("cloud", latencies=[900.0], completion_tokens=20),
    )
    w2 = inference_window(T0 + timedelta(minutes=5), group(latencies=[30.0], cascades=1))
    w3 = inference_window(T0 + timedelta(hours=1), group(latencies=[5.0]))
    d1 = drift_window(T0, prompt_tokens=[10, 100], classes={"cat": 2})
    d2 = drift_window(T0, prompt_tokens=[10], classes={"cat": 1, "dog": 1})
    out = fold(
        [
            raw(1, "a", "inference.window", w1),
            raw(2, "b", "inference.window", w2),
            raw(3, "a", "inference.window", w3),
            raw(4, "a", "drift.window", d1),
            raw(5, "b", "drift.window", d2),
            raw(6, "a", "system", {"cpu_percent": 20.0, "memory_percent": 50, "disk_percent": 7}),
            raw(7, "a", "system", {"cpu_percent": 60.0, "temperature_c": 51.5}, minutes=9),
        ]
    )
    hour = hour_of(T0)
    assert out.folded == 7 and not out.malformed
    local_a = out.requests[("a", hour, "local", "chat")]
    assert (local_a.count, local_a.errors, local_a.escalations, local_a.prompt_tokens) == (
        2,
        1,
        1,
        50,
    )
    fleet = out.fleet[(hour, "local", "chat")]
    assert (fleet.count, fleet.cascades) == (3, 1)
    assert fleet.latency == latency_sketch(10.0, 30.0, 30.0)
    assert out.fleet[(hour, "cloud", "chat")].completion_tokens == 20
    assert out.fleet[(hour + timedelta(hours=1), "local", "chat")].count == 1
    prompt = out.drift[("smollm2", "1.0", "prompt_tokens", hour)]
    assert prompt.counts == sketch("prompt_tokens", [10, 100, 10]) and prompt.samples == 3
    assert out.drift[("smollm2", "1.0", CLASSES, hour)].counts == {"cat": 3, "dog": 1}
    health = out.health[("a", hour)]
    assert (health.samples, health.cpu_sum, health.cpu_max) == (2, 80.0, 60.0)
    assert (health.memory_samples, health.memory_max, health.disk_max) == (1, 50, 7)
    assert health.temperature_max == 51.5 and health.last["cpu_percent"] == 60.0


def test_latency_quantiles_come_from_the_sketch() -> None:
    """p50 and p95 of a rolled-up latency sketch interpolate inside the right bins."""
    counts = latency_sketch(*([40.0] * 90 + [800.0] * 10))
    p50, p95 = quantiles(counts)
    assert p50 is not None and 35 < p50 <= 50
    assert p95 is not None and 750 < p95 <= 1000
    assert quantiles(sketches.empty("latency_ms")) == (None, None)


BAD_BODIES: list[tuple[str, Any]] = [
    ("inference.window", {"start": T0.isoformat(), "window_s": 60, "groups": []}),
    ("inference.window", inference_window(T0, {**group(), "latency_ms": [1, 2, 3]})),
    ("inference.window", inference_window(T0, {**group(), "count": -1})),
    ("inference.window", inference_window(T0, {**group(), "tier": "lo cal"})),
    ("inference.window", {**inference_window(T0, group()), "start": "2026-03-02T10:00:00"}),
    ("inference.window", {**inference_window(T0, group()), "extra": 1}),
    ("drift.window", {**drift_window(T0), "features": {"bogus": [1]}}),
    ("drift.window", {**drift_window(T0), "features": {"prompt_tokens": [1.5] * 13}}),
    ("drift.window", {**drift_window(T0), "classes": {"": 1}}),
    ("drift.window", {**drift_window(T0), "kind": "audio"}),
    ("system", {"cpu_percent": 500.0}),
    ("system", {"cpu_percent": "12"}),
    ("system", {"memory_percent": True}),
]


def test_fold_counts_malformed_bodies_and_keeps_the_good_ones() -> None:
    """Every malformed body is counted by record name and adds nothing; the good records
    around them are all folded."""
    records = [raw(0, "a", "inference.window", inference_window(T0, group()))]
    records += [raw(i + 1, "a", name, body) for i, (name, body) in enumerate(BAD_BODIES)]
    records += [raw(99, "a", "inference.window", inference_window(T0, group()))]
    records += [raw(100, "a", "system", "not an object")]
    out = fold(records)
    assert out.folded == 2
    assert sum(out.malformed.values()) == len(BAD_BODIES) + 1
    assert out.malformed["system"] == 4
    assert out.fleet[(hour_of(T0), "local", "chat")].count == 2
    assert not out.drift and not out.health


def totals(world: TelemetryWorld) -> dict[str, Any]:
    fleet = world.all(FleetRequestHour)
    devices = world.all(DeviceRequestHour)
    return {
        "fleet": sorted((r.hour, r.tier, r.count, r.errors, tuple(r.latency)) for r in fleet),
        "devices": sorted((r.device_id, r.hour, r.count) for r in devices),
        "drift": sorted((r.feature, r.samples) for r in world.all(DriftHour)),
        "health": sorted((r.device_id, r.samples) for r in world.all(DeviceHealthHour)),
    }


def test_rerunning_or_redelivering_never_counts_twice(world: TelemetryWorld) -> None:
    """Running the job again, and a device re-sending a batch already stored, leave every
    hourly row as it was; a new record afterwards is added once."""
    at = T0 + timedelta(minutes=1)
    batch = [
        ("inference.window", inference_window(T0, group(latencies=[20.0, 40.0], errors=1))),
        ("drift.window", drift_window(T0, prompt_tokens=[12, 40])),
        ("system", {"cpu_percent": 10.0}),
        ("inference", {"status": "ok", "latency_ms": 12.0}),  # per-request: not rolled up
    ]
    world.send("dev-1", batch, at)
    world.send("dev-2", batch[:1], at)
    first = world.rollup(at)
    assert first.folded == 4 and first.malformed == 0
    before = totals(world)
    assert before["fleet"][0][2:4] == (4, 2)

    assert world.rollup(at + timedelta(minutes=1)).folded == 0
    world.send("dev-1", batch, at, seq=0)  # the same records again (a lost ack)
    assert world.rollup(at + timedelta(minutes=2)).folded == 0
    assert totals(world) == before

    world.send("dev-1", batch[:1], at + timedelta(minutes=3))
    world.rollup(at + timedelta(minutes=3))
    after = totals(world)
    assert after["fleet"][0][2] == 6
    assert ("dev-1", hour_of(T0), 4) in after["devices"]
    cursor = world.cursor()
    assert cursor is not None and cursor.processed == 5 and cursor.malformed == 0


def test_malformed_records_are_counted_and_never_block(world: TelemetryWorld) -> None:
    """A chunk holding malformed bodies folds its good records, counts the bad ones in the
    cursor and moves past them; records after them are rolled up next time."""
    at = T0 + timedelta(minutes=1)
    good = ("inference.window", inference_window(T0, group()))
    world.send("dev-1", [good, *BAD_BODIES, good], at)
    report = world.rollup(at)
    assert report.folded == 2 and report.malformed == len(BAD_BODIES)
    cursor = world.cursor()
    assert cursor is not None and cursor.malformed == len(BAD_BODIES)
    world.send("dev-1", [good], at + timedelta(minutes=1))
    assert world.rollup(at + timedelta(minutes=1)).folded == 1
    assert sum(r.count for r in world.all(FleetRequestHour)) == 3


def test_rows_younger_than_the_commit_lag_wait_with_everything_after_them(
    world: TelemetryWorld,
) -> None:
    """A row received less than the commit lag ago is not rolled up, nor is any row after
    it (even an older one): the cursor stops before it, and the next run takes them."""
    at = T0 + timedelta(minutes=1)
    rec = ("inference.window", inference_window(T0, group()))
    world.send("dev-1", [rec], at)
    world.send("dev-2", [rec], at + timedelta(seconds=30))
    world.send("dev-3", [rec], at, received_at=at)  # received long ago, stored last
    report = world.rollup(at + timedelta(seconds=30), settle=False)
    assert report.folded == 1
    assert world.rollup(at + timedelta(seconds=30)).folded == 2
    assert sum(r.count for r in world.all(FleetRequestHour)) == 3


def test_a_run_works_through_many_chunks(world: TelemetryWorld) -> None:
    """With a small chunk, one run commits chunk after chunk until it is caught up, and
    the result equals folding everything at once."""
    at = T0 + timedelta(minutes=1)
    for d in range(7):
        world.send(
            f"dev-{d}",
            [("inference.window", inference_window(T0, group(latencies=[float(d + 1)])))] * 1,
            at,
        )
    cfg = TelemetrySettings(commit_lag_s=CFG.commit_lag_s, rollup_chunk=2)
    report = world.rollup(at, cfg)
    assert report.chunks == 4 and report.folded == 7
    (fleet,) = world.all(FleetRequestHour)
    assert fleet.count == 7
    assert fleet.latency == latency_sketch(*[float(d + 1) for d in range(7)])


@pytest.mark.postgres
def test_two_replicas_rolling_up_at_once_count_each_record_once(postgres_url: str) -> None:
    """Two controllers running the job at the same moment on PostgreSQL (each with the
    advisory job lock) fold every record exactly once."""
    world = TelemetryWorld(postgres_url)
    at = T0 + timedelta(minutes=1)
    for d in range(20):
        world.send(f"dev-{d}", [("inference.window", inference_window(T0, group()))] * 5, at)
    cfg = TelemetrySettings(commit_lag_s=CFG.commit_lag_s, rollup_chunk=7)
    when = at + timedelta(seconds=CFG.commit_lag_s + 1)
    barrier = threading.Barrier(2)

    def replica() -> None:
        barrier.wait()
        for _ in range(5):
            run_rollup(world.engine, cfg, when, lock=_job_lock)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    run_rollup(world.engine, cfg, when, lock=_job_lock)
    (fleet,) = world.all(FleetRequestHour)
    assert fleet.count == 100
    assert sum(r.count for r in world.all(DeviceRequestHour)) == 100


def test_a_sketch_count_too_large_for_a_float_is_malformed_and_never_blocks(
    world: TelemetryWorld,
) -> None:
    """A drift window counting 10**400 in one bin is counted as malformed once, the good
    window after it is scored, and the cursor moves past both (it used to stop forever)."""
    base = T0 - timedelta(hours=2)
    world.send("dev-1", [("drift.window", drift_window(base, prompt_tokens=[10] * 200))], base)
    world.rollup(base)
    with Session(world.engine) as session:
        set_reference(session, CFG, "smollm2", now=base + timedelta(minutes=30), actor="user:x")
        session.commit()
    bad = drift_window(T0, prompt_tokens=[10])
    bad["features"]["prompt_tokens"][0] = 10**400
    world.send("dev-1", [("drift.window", bad)], T0)
    world.send("dev-1", [("drift.window", drift_window(T0, prompt_tokens=[10] * 200))], T0)
    report = world.rollup(T0)
    assert (report.folded, report.malformed) == (1, 1)
    cursor = world.cursor()
    assert cursor is not None and cursor.last_id == 3 and cursor.malformed == 1
    assert world.rollup(T0 + timedelta(minutes=1)).folded == 0
    assert sorted(s.hour for s in world.all(DriftScore)) == [hour_of(base), hour_of(T0)]


def test_a_record_that_fails_to_apply_is_skipped_and_the_rest_of_its_chunk_kept(
    world: TelemetryWorld,
) -> None:
    """A record that conforms but cannot be merged into its stored hour (the sum no longer
    fits the column) is counted as malformed and passed; the good records of the same
    chunk, before and after it, are rolled up, and the next run moves on."""
    with session_scope(world.engine) as session:
        session.add(
            DriftHour(
                model="smollm2",
                version="1.0",
                feature="prompt_tokens",
                hour=hour_of(T0),
                samples=2**63 - 1,
                counts=sketch("prompt_tokens", [10.0]),
            )
        )
    at = T0 + timedelta(minutes=1)
    good = ("inference.window", inference_window(T0, group()))
    poisoned = ("drift.window", drift_window(T0, prompt_tokens=[10.0]))
    other_hour = ("drift.window", drift_window(T0 - timedelta(hours=1), prompt_tokens=[10.0]))
    world.send("dev-1", [good, poisoned, other_hour, good], at)
    report = world.rollup(at)
    assert (report.folded, report.malformed) == (3, 1)
    cursor = world.cursor()
    assert cursor is not None and cursor.last_id == 4 and cursor.malformed == 1
    assert sum(r.count for r in world.all(FleetRequestHour)) == 2
    assert sorted((r.hour, r.samples) for r in world.all(DriftHour)) == [
        (hour_of(T0 - timedelta(hours=1)), 1),
        (hour_of(T0), 2**63 - 1),
    ]
    world.send("dev-1", [good], at + timedelta(minutes=1))
    assert world.rollup(at + timedelta(minutes=1)).folded == 1


def test_windows_far_from_the_controller_clock_are_malformed(world: TelemetryWorld) -> None:
    """A window starting hours after it was received (a device clock ahead) or weeks
    before it, and a system sample from the future, are counted as malformed and make no
    hour; a window of the last hour is kept."""
    at = T0 + timedelta(minutes=1)
    world.send(
        "dev-1",
        [
            ("inference.window", inference_window(T0 + timedelta(days=400), group())),
            ("inference.window", inference_window(T0 - timedelta(days=30), group())),
            ("drift.window", drift_window(T0 + timedelta(hours=3), prompt_tokens=[10.0])),
            ("inference.window", inference_window(T0 - timedelta(minutes=30), group())),
        ],
        at,
    )
    report = world.rollup(at)
    assert (report.folded, report.malformed) == (1, 3)
    assert [r.hour for r in world.all(FleetRequestHour)] == [hour_of(T0 - timedelta(minutes=30))]
    assert world.all(DriftHour) == []
    out = fold(
        [
            RawRecord(1, "a", "system", T0 + timedelta(hours=2), {"cpu_percent": 1.0}, T0),
            RawRecord(2, "a", "system", T0, {"cpu_percent": 1.0}, T0),
        ]
    )
    assert out.malformed["system"] == 1 and list(out.health) == [("a", hour_of(T0))]


def test_the_commit_lag_runs_from_when_a_row_was_written(world: TelemetryWorld) -> None:
    """A message received long ago but written only now (an ingest backlog) waits out the
    commit lag from its write, with the rows after it; the cursor never passes it early."""
    at = T0 + timedelta(minutes=1)
    written = at + timedelta(minutes=10)
    rec = ("inference.window", inference_window(T0, group()))
    world.send("dev-1", [rec], at)
    world.send("dev-2", [rec], at, received_at=at, stored_at=written)
    (row,) = [r for r in world.all(TelemetryRecord) if r.device_id == "dev-2"]
    assert utc(row.received_at) == written
    report = world.rollup(written, settle=False)
    assert report.folded == 1
    cursor = world.cursor()
    assert cursor is not None and cursor.last_id == 1
    assert world.rollup(written).folded == 1


@pytest.mark.postgres
def test_the_write_stamp_on_postgresql(postgres_url: str) -> None:
    """On PostgreSQL too every row of a batch carries the write time, not the message's."""
    world = TelemetryWorld(postgres_url)
    at = T0 + timedelta(minutes=1)
    written = at + timedelta(minutes=10)
    rec = ("inference.window", inference_window(T0, group()))
    world.send("dev-1", [rec, rec], at, received_at=at, stored_at=written)
    assert [utc(r.received_at) for r in world.all(TelemetryRecord)] == [written, written]
