"""A simulated week of telemetry from 10,000 devices: the database's size with retention
against the same week without it.

Driven by a virtual clock one hour at a time. Each virtual hour every device stores
``--per-hour`` raw records (an ``inference.window`` with three request groups, a
``drift.window`` of the prompt-token sketch and a ``system`` sample, in turn), the hour is
rolled up, and, in the retention run, the real retention job (``run_retention``) runs with
the default settings (raw telemetry 72 h, hourly rollups 30 days). On PostgreSQL each hour
ends with a plain ``VACUUM`` of the telemetry tables, standing in for autovacuum (which
makes deleted rows' space reusable; neither shrinks the files). Baseline: the same week
without retention, in the same run; the ratio is the retention run's size over the
baseline's.

Raw rows are written by ingest's own statement (``insert_records`` on PostgreSQL,
``insert_sqlite_rows`` on SQLite) or, with ``--writes copy``, by COPY into the same table
with the same JSON text (identical rows, several times faster). The rollup is the real job
(``--rollup real``: ~1,700 records/s here, too slow for a week at 10,000 devices) or
(``synthetic``, the default) its rows for these records written directly (three request
rows and one health row per device and hour, the fleet rows) with the cursor moved past
the hour: the same tables and row shapes (checked against ``real`` at 1,000 devices x 1 day:
equal sizes of ``telemetry_device_hour``).

The raw table grows with the record rate and the rollups with devices x hours, whatever
the rate; the report gives bytes per raw row so the size at another rate can be worked out.

    .venv/bin/python -m benchmarks.bench_retention [--devices 10000] [--days 7]
        [--per-hour 3] [--db postgresql|sqlite] [--rollup synthetic|real]
        [--writes ingest|copy] [--json]
"""

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import make_url, text
from sqlalchemy.engine import Engine

from benchmarks._common import machine, print_table
from benchmarks.bench_console_api import (
    _fleet_rows,
    _health_rows,
    _request_rows,
    _sketch,
    database,
)
from controller.db import make_engine, session_scope
from controller.ingest.telemetry_store import (
    insert_records,
    insert_sqlite_rows,
    json_text,
    sqlite_datetime,
)
from controller.migrations import init_db
from controller.retention import run_retention
from controller.settings import Settings, load_settings
from controller.telemetry.rollup import run_rollup
from controller.telemetry.tables import (
    DeviceHealthHour,
    DeviceRequestHour,
    FleetRequestHour,
    RollupCursor,
)
from tests.telemetry_world import drift_window, group, inference_window

T0 = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # a Monday
BATCH = 5_000  # rows per insert transaction, as an ingest batch
TABLES = (
    "telemetry_record",
    "telemetry_device_hour",
    "telemetry_health_hour",
    "telemetry_fleet_hour",
    "drift_hour",
    "drift_score",
)


@dataclass
class Run:
    db: str
    retention: bool
    devices: int
    hours: int
    rows_written: int = 0
    size_bytes: int = 0
    tables: dict[str, dict[str, int]] = field(default_factory=dict)  # rows, bytes
    deleted: int = 0
    write_s: float = 0.0
    rollup_s: float = 0.0
    retention_s: float = 0.0
    retention_max_s: float = 0.0  # the longest hourly retention run
    wall_s: float = 0.0


def _bodies(rng: random.Random, start: datetime) -> list[tuple[str, dict[str, Any]]]:
    """The three record kinds a device stores, each a realistic body."""
    return [
        (
            "inference.window",
            inference_window(
                start,
                group("local", "chat", latencies=[rng.uniform(30, 90) for _ in range(12)]),
                group("local", "classify", latencies=[rng.uniform(5, 20) for _ in range(8)]),
                group("cloud", "chat", latencies=[rng.uniform(300, 900) for _ in range(3)]),
            ),
        ),
        (
            "drift.window",
            drift_window(start, prompt_tokens=[rng.randint(5, 400) for _ in range(20)]),
        ),
        (
            "system",
            {
                "cpu_percent": rng.uniform(5, 90),
                "memory_percent": 41.0,
                "disk_percent": 61.0,
                "temperature_c": 55.0,
            },
        ),
    ]


def _hour_rows(
    devices: int, per_hour: int, hour: datetime, seq: list[int], sqlite: bool
) -> Iterator[list[Any]]:
    """The hour's rows in insert batches, in the stored form of the database's path."""
    rng = random.Random(hour.timestamp())
    pool = [_bodies(rng, hour + timedelta(minutes=m)) for m in range(0, 60, 5)]
    batch: list[Any] = []
    for d in range(devices):
        device_id = f"dev-{d:05d}"
        minute = d % 12
        kinds = pool[minute]
        for i in range(per_hour):
            name, body = kinds[i % len(kinds)]
            at = hour + timedelta(minutes=minute * 5, seconds=i)
            seq[d] += 1
            if sqlite:
                batch.append((device_id, 1, seq[d], "metric", name, sqlite_datetime(at),
                              json_text(body)))  # fmt: skip
            else:
                batch.append({"device_id": device_id, "epoch": 1, "seq": seq[d],
                              "kind": "metric", "name": name, "at": at, "body": body})  # fmt: skip
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _sizes(engine: Engine, url: str) -> tuple[int, dict[str, dict[str, int]]]:
    tables: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for table in TABLES:
            rows = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0)
            tables[table] = {"rows": rows}
        if engine.dialect.name == "postgresql":
            for table in TABLES:
                size = conn.execute(text(f"SELECT pg_total_relation_size('{table}')")).scalar()
                tables[table]["bytes"] = int(size or 0)
            total = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
            return int(total or 0), tables
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        for table in TABLES:
            size = conn.execute(
                # dbstat names each b-tree; the table's indexes are its sqlite_master rows.
                text(
                    "SELECT sum(pgsize) FROM dbstat WHERE name IN "
                    "(SELECT name FROM sqlite_master WHERE tbl_name = :t)"
                ),
                {"t": table},
            ).scalar()
            tables[table]["bytes"] = int(size or 0)
    name = make_url(url).database or ""
    return os.path.getsize(name), tables


def _copy(
    engine: Engine, table: str, rows: list[dict[str, Any]], dumps: Callable[[Any], str]
) -> None:
    """COPY ``rows`` (dicts of one shape) into ``table`` on PostgreSQL, JSON values as
    ``dumps`` writes them (what the controller's own write would store)."""
    if not rows:
        return
    columns = list(rows[0])
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with cursor.copy(statement) as out:
            for row in rows:
                out.write_row([dumps(v) if isinstance(v, dict | list) else v for v in row.values()])
        raw.commit()
    finally:
        raw.close()


def _synthetic_rollup(engine: Engine, devices: int, hour: datetime, rng: random.Random) -> None:
    """The hour's rollup rows as the rollup writes them for these records (three request
    rows and a health row per device, the fleet rows), bulk-inserted, and the cursor moved
    past every raw row: a rollup that keeps up, at a fraction of its cost."""
    ids = [f"dev-{d:05d}" for d in range(devices)]
    pool = [_sketch(rng, 40) for _ in range(16)]
    tables: list[tuple[Any, list[dict[str, Any]]]] = [
        (DeviceRequestHour.__table__, list(_request_rows(rng, ids, [hour], pool))),  # type: ignore[attr-defined]
        (DeviceHealthHour.__table__, list(_health_rows(rng, ids, [hour]))),  # type: ignore[attr-defined]
        (FleetRequestHour.__table__, _fleet_rows(devices, [hour], pool[0])),  # type: ignore[attr-defined]
    ]
    if engine.dialect.name == "postgresql":
        for table, rows in tables:
            _copy(engine, table.name, rows, json.dumps)  # SQLAlchemy's JSON type
    else:
        with engine.begin() as conn:
            for table, rows in tables:
                conn.execute(table.insert(), rows)
    with session_scope(engine) as session:
        last = session.execute(text("SELECT max(id) FROM telemetry_record")).scalar() or 0
        cursor = session.get(RollupCursor, "rollup") or RollupCursor(name="rollup")
        cursor.last_id = int(last)
        cursor.updated_at = hour
        session.add(cursor)


def _vacuum(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in TABLES:
            conn.execute(text(f"VACUUM {table}"))


def run_once(
    url: str,
    *,
    retention: bool,
    devices: int,
    hours: int,
    per_hour: int,
    settings: Settings,
    real_rollup: bool,
    fast_writes: bool = False,
) -> Run:
    started = time.perf_counter()
    engine = make_engine(url)
    init_db(engine)
    sqlite = engine.dialect.name == "sqlite"
    result = Run(engine.dialect.name, retention, devices, hours)
    seq = [0] * devices
    cfg = settings.telemetry.model_copy(update={"rollup_chunk": 5_000, "rollup_max_chunks": 1_000})
    for h in range(hours):
        hour = T0 + timedelta(hours=h)
        stored_at = hour + timedelta(minutes=59)
        t = time.perf_counter()
        for batch in _hour_rows(devices, per_hour, hour, seq, sqlite):
            if fast_writes and not sqlite:
                rows = [{**r, "received_at": stored_at} for r in batch]
                _copy(engine, "telemetry_record", rows, json_text)  # ingest's encoder
                result.rows_written += len(batch)
                continue
            with session_scope(engine) as session:
                if sqlite:
                    result.rows_written += insert_sqlite_rows(session, batch, stored_at)
                else:
                    result.rows_written += insert_records(session, batch, stored_at)
        result.write_s += time.perf_counter() - t
        now = hour + timedelta(hours=1)
        t = time.perf_counter()
        if real_rollup:
            run_rollup(engine, cfg, now)
        else:
            _synthetic_rollup(engine, devices, hour, random.Random(h))
        result.rollup_s += time.perf_counter() - t
        if retention:
            t = time.perf_counter()
            report = run_retention(engine, settings, now)
            took = time.perf_counter() - t
            result.retention_s += took
            result.retention_max_s = max(result.retention_max_s, took)
            result.deleted += sum(report.deleted.values())
            if not sqlite:
                _vacuum(engine)
    result.size_bytes, result.tables = _sizes(engine, url)
    engine.dispose()
    result.wall_s = time.perf_counter() - started
    return result


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--per-hour", type=int, default=3)
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument(
        "--rollup",
        choices=["real", "synthetic"],
        default="synthetic",
        help="run the rollup job (slow at 10,000 devices) or write its rows directly",
    )
    parser.add_argument(
        "--writes",
        choices=["ingest", "copy"],
        default="ingest",
        help="raw rows through ingest's insert statement, or COPY (PostgreSQL; same rows)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hours = int(args.days * 24)
    settings = load_settings(None, environment="development")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        for retention in (False, True):
            name = f"bench_retention_{'on' if retention else 'off'}"
            with database(args.db, name, Path(tmp)) as url:
                runs.append(
                    run_once(
                        url,
                        retention=retention,
                        devices=args.devices,
                        hours=hours,
                        per_hour=args.per_hour,
                        settings=settings,
                        real_rollup=args.rollup == "real",
                        fast_writes=args.writes == "copy",
                    )
                )
    baseline, kept = runs
    if args.json:
        print(json.dumps({"machine": machine(), "runs": [asdict(r) for r in runs]}, indent=2))
        return
    print(f"machine: {machine()}")
    print(
        f"{args.devices} devices x {args.per_hour} records/hour x {hours} virtual hours "
        f"({baseline.rows_written:,} raw rows), {args.db}, {args.rollup} rollup, "
        f"{args.writes} writes\n"
    )
    rows = []
    for table in TABLES:
        off, on = baseline.tables[table], kept.tables[table]
        rows.append([table, f"{off['rows']:,}", _mb(off["bytes"]), f"{on['rows']:,}",
                     _mb(on["bytes"])])  # fmt: skip
    rows.append(["database", "", _mb(baseline.size_bytes), "", _mb(kept.size_bytes)])
    print_table(["table", "rows, no retention", "size", "rows, retention", "size"], rows)
    raw = baseline.tables["telemetry_record"]
    per_row = raw["bytes"] / max(1, raw["rows"])
    print(
        f"\nratio {kept.size_bytes / baseline.size_bytes:.3f}; {per_row:.0f} bytes per raw row; "
        f"retention deleted {kept.deleted:,} rows in {kept.retention_s:.1f} s "
        f"(longest hourly run {kept.retention_max_s:.2f} s); writes {kept.write_s:.0f} s, "
        f"rollup {kept.rollup_s:.0f} s"
    )


if __name__ == "__main__":
    main()
