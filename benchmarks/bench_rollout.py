"""A 4-wave rollout across 1,000 simulated devices: gate latency and time to converge.

Measured: the real rollout service (``controller.rollouts.service.tick``, the job the
controller's scheduler runs) on a SQLite file, driving a 1 % / 10 % / 50 % / 100 % rollout
of 1,000 devices. Devices are simulated by feeding protocol messages through the
controller's real ingest (``apply_batch``): each device installs the model one tick after
its assignment (its reported ``installed_at`` jittered uniformly within that tick, so soaks
end at arbitrary points between ticks) and every installed device of the current wave
records inference telemetry each tick.

Time is injected: a virtual clock advances by the tick interval per tick, so a soak can be
short without changing what the engine does. For each wave, the gate latency is

    (virtual time of the tick that decided + that tick's real duration) - soak end

which is what a controller ticking at that interval would show: at most one interval plus
the tick's own cost. Goal: <= 1 s. Also reported: the virtual time from creation to
``completed`` (dominated by the soaks), the controller's real work (sum of tick durations)
and the per-tick cost at 1,000 devices.

With ``--history-h``, the database first gets that many hours of raw telemetry from every
device before the rollout (per device and hour two ``inference`` records of the old model
and a ``drift.window``, written with COPY on PostgreSQL): a rollout on a controller that
has been running, whose gate queries must find the wave's few new records among them.

    .venv/bin/python -m benchmarks.bench_rollout [--devices 1000] [--soak-s 30]
        [--tick-s 0.5] [--runs 3] [--db sqlite|postgresql] [--history-h 0] [--json]

PostgreSQL: ``EDGEFLEET_BENCH_POSTGRES_URL`` names a server database the benchmark may
create and drop others beside (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
"""

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session

from benchmarks._common import machine, print_table
from benchmarks.bench_console_api import database
from controller.db import session_scope
from controller.ingest.telemetry_store import insert_sqlite_rows, json_text, sqlite_datetime
from controller.rollouts.service import get_rollout
from controller.settings import RolloutSettings
from tests.rollout_world import MODEL, T0, World
from tests.telemetry_world import drift_window

GOAL_GATE_LATENCY_S = 1.0
WAVES = ["1%", "10%", "50%", "100%"]


@dataclass
class Run:
    devices: int
    tick_s: float
    soak_s: float
    gate_latency_s: list[float] = field(default_factory=list)  # per wave
    converge_virtual_s: float = 0.0
    controller_work_s: float = 0.0
    tick_ms_median: float = 0.0
    tick_ms_max: float = 0.0
    ticks: int = 0
    wall_s: float = 0.0


def _state(world: World, rollout_id: int) -> dict[str, Any]:
    with Session(world.engine) as session:
        return dict(get_rollout(session, rollout_id).state)


def _install(world: World, now: datetime, tick_s: float, rng: random.Random) -> None:
    """Devices with a new desired model install it, each at a random moment of the tick."""
    changed = world.respond(now)
    for device_id in changed:
        jitter = rng.uniform(0, tick_s)
        world.running[device_id]["installed_at"] = (now - timedelta(seconds=jitter)).timestamp()
    if changed:  # report again with the jittered install times (a newer shadow version)
        world.report(changed, now)


def _history_rows(ids: list[str], hours: int) -> Iterator[tuple[Any, ...]]:
    """Raw rows of ``hours`` hours before T0 from every device (epoch 0: the live
    simulation's records are epoch 1), as (device, epoch, seq, kind, name, at, body)."""
    drift = json_text(drift_window(T0, prompt_tokens=[12.0, 40.0, 80.0]))
    for d in ids:
        seq = 0
        for h in range(hours, 0, -1):
            at = T0 - timedelta(hours=h)
            inference = json_text(
                {"status": "ok", "latency_ms": 55.0, "route": "local", "model": MODEL,
                 "cascaded": False, "escalated": False, "at": at.isoformat()}
            )  # fmt: skip
            for name, body in (("inference", inference), ("inference", inference),
                               ("drift.window", drift)):  # fmt: skip
                seq += 1
                yield d, 0, seq, "metric", name, at, body


def add_history(world: World, ids: list[str], hours: int) -> int:
    """Write the history (see ``_history_rows``); returns how many rows."""
    n = 0
    if world.engine.dialect.name == "postgresql":
        raw = world.engine.raw_connection()
        try:
            cursor = raw.cursor()
            copy = "COPY telemetry_record (device_id, epoch, seq, kind, name, at, body, received_at) FROM STDIN"  # noqa: E501
            with cursor.copy(copy) as out:
                for row in _history_rows(ids, hours):
                    out.write_row((*row, row[5]))
                    n += 1
            raw.commit()
            cursor.execute("ANALYZE telemetry_record")
            raw.commit()
        finally:
            raw.close()
        return n
    batch: list[Any] = []
    for device, epoch, seq, kind, name, at, body in _history_rows(ids, hours):
        batch.append((device, epoch, seq, kind, name, sqlite_datetime(at), body))
        if len(batch) >= 20_000:
            n += _insert_sqlite(world, batch)
            batch = []
    return n + _insert_sqlite(world, batch)


def _insert_sqlite(world: World, rows: list[Any]) -> int:
    with session_scope(world.engine) as session:
        return insert_sqlite_rows(session, rows, T0 - timedelta(minutes=10))


@contextmanager
def _database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    with database("postgresql", "bench_rollout", tmp) as url:
        yield url


def run_once(
    devices: int, soak_s: float, tick_s: float, seed: int, db: str = "sqlite", history_h: int = 0
) -> Run:
    rng = random.Random(seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, _database(db, Path(tmp)) as url:
        world = World(url)
        world.add_model(expected_latency_ms=100.0)
        ids = world.add_devices(devices)
        if history_h:
            add_history(world, ids, history_h)
        settings = RolloutSettings(
            tick_interval_s=tick_s,
            default_soak_s=soak_s,
            default_min_samples=20,
            default_device_timeout_s=600,
        )
        rollout_id = world.create(T0, settings=settings, waves=WAVES)
        result = Run(devices=devices, tick_s=tick_s, soak_s=soak_s)
        tick_times: list[float] = []
        now = T0
        previous_wave = -1
        while True:
            before = _state(world, rollout_id)
            t = time.perf_counter()
            world.tick(now)
            took = time.perf_counter() - t
            tick_times.append(took)
            after = _state(world, rollout_id)
            decided = (after["wave"], after["status"]) != (before["wave"], before["status"])
            if decided and before["wave"] >= 0 and before["soaking_since"] is not None:
                soak_end = datetime.fromisoformat(before["soaking_since"]) + timedelta(
                    seconds=soak_s
                )
                latency = (now - soak_end).total_seconds() + took
                result.gate_latency_s.append(latency)
            if after["status"] in ("completed", "halted", "rolled_back", "aborted"):
                if after["status"] != "completed":
                    raise RuntimeError(f"rollout ended {after['status']}: {after['reason']}")
                result.converge_virtual_s = (now - T0).total_seconds() + took
                break
            if after["wave"] != previous_wave:
                previous_wave = after["wave"]
            now += timedelta(seconds=tick_s)
            _install(world, now, tick_s, rng)
            on_new = set(world.on_target())
            wave_members = {
                m.device_id for m in world.members(rollout_id) if m.wave == after["wave"]
            }
            talking = sorted(on_new & wave_members)
            if talking:
                world.inference(talking, now, count=2, latency_ms=rng.uniform(40, 90))
            if now - T0 > timedelta(hours=2):
                raise RuntimeError("the rollout did not converge in two virtual hours")
        world.engine.dispose()
    result.ticks = len(tick_times)
    result.controller_work_s = sum(tick_times)
    result.tick_ms_median = statistics.median(tick_times) * 1000
    result.tick_ms_max = max(tick_times) * 1000
    result.wall_s = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--soak-s", type=float, default=30.0)
    parser.add_argument("--tick-s", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--history-h", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [
        run_once(args.devices, args.soak_s, args.tick_s, seed, args.db, args.history_h)
        for seed in range(args.runs)
    ]
    if args.json:
        print(json.dumps({"machine": machine(), "runs": [asdict(r) for r in runs]}, indent=2))
        return
    print(f"machine: {machine()}")
    print(
        f"{args.devices} devices, waves {'/'.join(WAVES)}, soak {args.soak_s:g} s, "
        f"tick {args.tick_s:g} s (virtual clock), {args.db}, {args.history_h} h of history, "
        f"{args.runs} runs\n"
    )
    rows = []
    for i, r in enumerate(runs):
        rows.append(
            [
                f"run {i + 1}",
                " / ".join(f"{x:.3f}" for x in r.gate_latency_s),
                f"{max(r.gate_latency_s):.3f}",
                f"{r.converge_virtual_s:.1f}",
                f"{r.controller_work_s:.2f}",
                f"{r.tick_ms_median:.1f}",
                f"{r.tick_ms_max:.1f}",
                str(r.ticks),
            ]
        )
    print_table(
        [
            "",
            "gate latency per wave (s)",
            "worst (s)",
            "converge (virtual s)",
            "tick work (s)",
            "tick p50 (ms)",
            "tick max (ms)",
            "ticks",
        ],
        rows,
    )
    worst = max(max(r.gate_latency_s) for r in runs)
    verdict = "meets" if worst <= GOAL_GATE_LATENCY_S else "MISSES"
    print(f"\nworst gate latency {worst:.3f} s: {verdict} the {GOAL_GATE_LATENCY_S:g} s goal")


if __name__ == "__main__":
    main()
