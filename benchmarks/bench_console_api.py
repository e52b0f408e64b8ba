"""Console latency with 10,000 devices and a week of rolled-up telemetry.

Measured: a real controller (uvicorn, the app factory, its services) over a database
holding ``--devices`` devices and ``--hours`` hours of hourly rollups per device (requests
per tier and task class with latency sketches, health) plus the fleet rollup, on SQLite
and on PostgreSQL. A *page load* is every request the page makes, in order, over HTTP
with a bearer token: the HTML and the JSON its script fetches first. Reported: p50/p95 of
a page load over ``--loads`` loads (device pages for random devices), and the same page on
a small fleet (``--small`` devices, same hours) measured in the same run as the baseline:
the ratio says what the fleet's size costs. Goal: fleet page and device page p95 <= 200 ms.

    .venv/bin/python -m benchmarks.bench_console_api [--devices 10000] [--hours 168]
        [--loads 60] [--db sqlite|postgresql|both] [--json]

PostgreSQL comes from ``EDGEFLEET_BENCH_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); the benchmark creates and drops its
own databases there.
"""

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from benchmarks._common import free_port, machine, print_table
from controller.app import create_app
from controller.auth.credentials import create_api_token
from controller.auth.users import create_user
from controller.db import session_scope
from controller.devices.tables import Device
from controller.services import Services
from controller.settings import load_settings
from controller.telemetry.tables import DeviceHealthHour, DeviceRequestHour, FleetRequestHour
from shared import sketches

GOAL_P95_MS = 200.0
TIERS = (("local", "chat"), ("local", "summarize"), ("cloud", "chat"))
CHUNK = 20_000


@dataclass
class PageResult:
    db: str
    page: str
    devices: int
    p50_ms: float
    p95_ms: float
    small_p95_ms: float
    ratio: float


def _sketch(rng: random.Random, n: int) -> list[int]:
    counts = sketches.empty("latency_ms")
    for _ in range(min(n, 40)):
        sketches.add(counts, "latency_ms", rng.lognormvariate(5.0, 0.6))
    return counts


def _chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _device_rows(rng: random.Random, ids: list[str], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "id": d,
            "device_class": rng.choice(["jetson", "npu", "x86-cpu"]),
            "runtimes": ["llama.cpp"],
            "models": [{"name": "smollm2-135m", "version": "1.0"}],
            "state": "online" if rng.random() < 0.9 else "offline",
            "quarantined": rng.random() < 0.01,
            "first_seen": now,
            "last_seen": now,
        }
        for d in ids
    ]


def _request_rows(
    rng: random.Random, ids: list[str], hour_list: list[datetime], sketch_pool: list[list[int]]
) -> Iterator[dict[str, Any]]:
    for d in ids:
        for h in hour_list:
            for tier, task in TIERS:
                n = rng.randint(5, 60)
                yield {
                    "device_id": d,
                    "hour": h,
                    "tier": tier,
                    "task_class": task,
                    "count": n,
                    "errors": n // 30,
                    "escalations": n // 10 if tier == "cloud" else 0,
                    "cascades": n // 5,
                    "fallbacks": 0,
                    "prompt_tokens": n * 60,
                    "completion_tokens": n * 20,
                    "latency": rng.choice(sketch_pool),
                }


def _health_rows(
    rng: random.Random, ids: list[str], hour_list: list[datetime]
) -> Iterator[dict[str, Any]]:
    for d in ids:
        for h in hour_list:
            cpu = rng.uniform(5, 90)
            yield {
                "device_id": d,
                "hour": h,
                "samples": 60,
                "cpu_samples": 60,
                "cpu_sum": cpu * 60,
                "cpu_max": min(cpu * 1.3, 100.0),
                "memory_samples": 60,
                "memory_sum": 40.0 * 60,
                "memory_max": 55.0,
                "disk_max": 61.0,
                "temperature_max": 58.0,
                "last_at": h + timedelta(minutes=59),
                "last": {"cpu_percent": cpu, "memory_percent": 40.0},
            }


def _fleet_rows(devices: int, hour_list: list[datetime], sketch: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "hour": h,
            "tier": tier,
            "task_class": task,
            "count": devices * 30,
            "errors": devices,
            "escalations": devices * 3 if tier == "cloud" else 0,
            "cascades": devices * 6,
            "fallbacks": 0,
            "prompt_tokens": devices * 1800,
            "completion_tokens": devices * 600,
            "latency": sketch,
        }
        for h in hour_list
        for tier, task in TIERS
    ]


def populate(engine: Engine, devices: int, hours: int, now: datetime) -> None:
    """``devices`` online/offline devices and ``hours`` hourly rollups each, bulk-inserted."""
    rng = random.Random(7)
    first = (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
    hour_list = [first + timedelta(hours=i) for i in range(hours)]
    sketch_pool = [_sketch(rng, 40) for _ in range(64)]
    dev_table = Device.__table__  # type: ignore[attr-defined]
    req_table = DeviceRequestHour.__table__  # type: ignore[attr-defined]
    health_table = DeviceHealthHour.__table__  # type: ignore[attr-defined]
    fleet_table = FleetRequestHour.__table__  # type: ignore[attr-defined]
    ids = [f"dev-{i:05d}" for i in range(devices)]
    with engine.begin() as conn:
        conn.execute(dev_table.insert(), _device_rows(rng, ids, now))
    for table, rows in (
        (req_table, _request_rows(rng, ids, hour_list, sketch_pool)),
        (health_table, _health_rows(rng, ids, hour_list)),
    ):
        for batch in _chunks(rows):
            with engine.begin() as conn:
                conn.execute(table.insert(), batch)
    with engine.begin() as conn:
        conn.execute(fleet_table.insert(), _fleet_rows(devices, hour_list, sketch_pool[0]))


@contextmanager
def database(kind: str, name: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty database URL of ``kind``; dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / (name + '.db')}"
        return
    base = os.environ.get(
        "EDGEFLEET_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def controller(url: str, workdir: Path) -> Iterator[tuple[str, str, Services]]:
    """A controller on ``url`` served by uvicorn on a free port: (base URL, token, services)."""
    settings = load_settings(
        None,
        environment="development",
        database_url=url,
        http_port=free_port(),
        broker={"mode": "embedded", "url": f"mqtt://127.0.0.1:{free_port()}"},
        secure_cookies=False,
        updates={"repo_dir": str(workdir / "tuf"), "keys_dir": str(workdir / "keys")},
    )
    services = Services.create(settings)
    with session_scope(services.engine) as session:
        admin = create_user(session, username="bench", password="bench-password-123", role="admin")
        token = create_api_token(session, admin, name="bench")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, services=services),
            host="127.0.0.1",
            port=settings.http_port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("controller did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.http_port}", token, services
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def fleet_page(hours: int) -> Callable[[random.Random, int], list[str]]:
    def paths(rng: random.Random, devices: int) -> list[str]:
        return [
            "/console",
            f"/api/fleet/summary?hours={hours}",
            "/api/devices?limit=50&offset=0",
        ]

    return paths


def device_page(hours: int) -> Callable[[random.Random, int], list[str]]:
    def paths(rng: random.Random, devices: int) -> list[str]:
        d = f"dev-{rng.randrange(devices):05d}"
        return [
            f"/console/devices/{d}",
            f"/api/devices/{d}",
            f"/api/devices/{d}/metrics?hours={hours}",
            f"/api/devices/{d}/shadow",
        ]

    return paths


def measure(
    base: str, token: str, page: Callable[[random.Random, int], list[str]], devices: int, loads: int
) -> list[float]:
    """Milliseconds per page load (all its requests, in order), after two warm-up loads."""
    rng = random.Random(11)
    times: list[float] = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        for i in range(loads + 2):
            paths = page(rng, devices)
            started = time.perf_counter()
            for path in paths:
                response = client.get(path)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
            if i >= 2:
                times.append((time.perf_counter() - started) * 1000)
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def run(kind: str, devices: int, small: int, hours: int, loads: int) -> list[PageResult]:
    now = datetime.now(UTC)
    pages = {"fleet": fleet_page(hours), "device": device_page(hours)}
    measured: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        workdir = Path(tmp)
        for n in (small, devices):
            name = f"edgefleet_bench_console_{n}"
            with database(kind, name, workdir) as url:
                sub = workdir / name
                sub.mkdir()
                with controller(url, sub) as (base, token, services):
                    started = time.perf_counter()
                    populate(services.engine, n, hours, now)
                    print(
                        f"[{kind}] {n} devices x {hours} h populated in "
                        f"{time.perf_counter() - started:.0f} s",
                        flush=True,
                    )
                    if kind == "postgresql":
                        with services.engine.begin() as conn:
                            conn.execute(text("ANALYZE"))
                    for page_name, page in pages.items():
                        measured[(n, page_name)] = measure(base, token, page, n, loads)
    results = []
    for page_name in pages:
        big = measured[(devices, page_name)]
        base_p95 = p95(measured[(small, page_name)])
        results.append(
            PageResult(
                db=kind,
                page=page_name,
                devices=devices,
                p50_ms=round(statistics.median(big), 1),
                p95_ms=round(p95(big), 1),
                small_p95_ms=round(base_p95, 1),
                ratio=round(p95(big) / base_p95, 2),
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--hours", type=int, default=168)
    parser.add_argument("--loads", type=int, default=60)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    results: list[PageResult] = []
    for kind in kinds:
        results += run(kind, args.devices, args.small, args.hours, args.loads)
    if args.json:
        print(json.dumps({"machine": machine(), "results": [asdict(r) for r in results]}))
        return
    print(f"machine: {machine()}")
    print_table(
        [
            "db",
            "page",
            "devices",
            "p50 ms",
            "p95 ms",
            f"p95 ms ({args.small} dev)",
            "ratio",
            "goal",
        ],
        [
            [
                r.db,
                r.page,
                str(r.devices),
                f"{r.p50_ms:.1f}",
                f"{r.p95_ms:.1f}",
                f"{r.small_p95_ms:.1f}",
                f"{r.ratio:.2f}",
                "met" if r.p95_ms <= GOAL_P95_MS else "MISSED",
            ]
            for r in results
        ],
    )


if __name__ == "__main__":
    main()
