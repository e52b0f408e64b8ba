"""Telemetry ingest end to end: publisher → Mosquitto (MQTT 5) → controller ingest → SQLite
or PostgreSQL.

Two workloads, each measured against its own ceiling in the same run:

- ``batched``: outbox records in telemetry batches (200 records per message, like an agent
  draining its outbox); reports records/s into the database (goal ≥ 100,000).
- ``small``: one record per telemetry message, QoS 1; reports messages/s for one ingest
  worker (goal ≥ 5,000 and ≥ 0.85 of the ceiling).

Ceiling: a bare paho subscriber (MQTT 5, QoS 1, the ingest's own topic filters, TCP_NODELAY)
that only counts what arrives. Measured: the controller's ``Services`` with an external
broker (decode and validate, one executemany INSERT per ingest batch, an ack per telemetry
message, PUBACK after commit) until every record is committed; each run asserts that the
database holds exactly the records sent (none missing, none twice) and nothing was
rejected. ``--db postgresql`` writes to a throwaway database created per run on the server
at ``--postgres-url`` (dropped afterwards). Publisher: plain paho in a separate process (its
own GIL) sending payloads it encoded before the clock started; the same bytes for the
ceiling and the ingest. Every run uses a fresh broker and database; medians over runs.

    .venv/bin/python -m benchmarks.bench_sync_ingest [--runs 3] [--batched-messages 500]
        [--records-per-message 200] [--small-messages 20000] [--devices 100]
        [--db sqlite|postgresql] [--postgres-url postgresql://postgres@127.0.0.1:5432/test]
"""

import argparse
import json
import logging
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._common import (
    Publisher,
    machine,
    median,
    mosquitto_broker,
    print_table,
    set_nodelay,
)
from controller.ingest.subscriber import subscriptions
from controller.services import Services
from controller.settings import load_settings
from shared.messages import MAX_PAYLOAD_BYTES, Record, TelemetryBatch, encode_message

GOAL_BATCHED_RECORDS_S = 100_000
GOAL_SMALL_RATIO = 0.85  # of the bare paho ceiling in the same run
GOAL_SMALL_MSG_S = 5_000
SHARED_GROUP = "edgefleet"  # the ingest's default; the ceiling subscribes to the same filters
_BASE = datetime(2026, 11, 25, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    messages: int
    records_per_message: int
    devices: int

    @property
    def records(self) -> int:
        return self.messages * self.records_per_message


def build_payloads(work: Workload) -> list[tuple[str, bytes]]:
    """Telemetry batches round-robin over the devices, seqs consecutive per device."""
    next_seq = [0] * work.devices
    out: list[tuple[str, bytes]] = []
    for i in range(work.messages):
        device = i % work.devices
        first = next_seq[device]
        next_seq[device] += work.records_per_message
        records = [
            Record(
                epoch=0,
                seq=seq,
                kind="metric",
                name="inference",
                at=_BASE + timedelta(milliseconds=seq),
                # What an agent records per chat request (Agent.record_inference).
                body={
                    "route": "local",
                    "model": "smollm2-135m",
                    "runtime": "llama.cpp",
                    "latency_ms": 412.37,
                    "prompt_tokens": 31,
                    "completion_tokens": 16,
                    "stream": False,
                    "status": "ok",
                },
            )
            for seq in range(first, first + work.records_per_message)
        ]
        topic, payload = encode_message(
            TelemetryBatch(device_id=f"bench-{device:04d}", ts=_BASE, records=records)
        )
        assert len(payload) <= MAX_PAYLOAD_BYTES, f"{len(payload)} bytes: lower the batch size"
        out.append((topic, payload))
    return out


@dataclass(frozen=True, slots=True)
class Measurement:
    seconds: float  # first publish → last message counted / last record committed
    publish_seconds: float  # first publish → broker PUBACKed the last one

    def rate(self, units: int) -> float:
        return units / self.seconds


def run_bare(port: int, work: Workload) -> Measurement:
    publisher = Publisher(port, partial(build_payloads, work))
    done = threading.Event()
    subscribed = threading.Event()
    count = 0

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        set_nodelay(client)
        client.subscribe([(f, 1) for f in subscriptions(SHARED_GROUP)])

    def on_subscribe(*_: Any) -> None:
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == work.messages:
            done.set()

    sub = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-bare",
        protocol=mqtt.MQTTv5,
    )
    sub.on_connect = on_connect
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)  # clean start, no session kept
    sub.loop_start()
    assert subscribed.wait(10), "bare subscriber did not subscribe"
    start = publisher.go()
    assert done.wait(600), f"bare subscriber got {count}/{work.messages}"
    seconds = time.perf_counter() - start
    publish_seconds = publisher.finish()
    sub.disconnect()
    sub.loop_stop()
    return Measurement(seconds, publish_seconds)


_COUNTS = (
    "SELECT COUNT(*), (SELECT COUNT(*) FROM (SELECT DISTINCT device_id, epoch, seq "
    "FROM telemetry_record) AS d) FROM telemetry_record"
)


def db_counts(database: Path | str) -> tuple[int, int]:
    """(rows, distinct (device, epoch, seq)) in the telemetry table of ``database`` (a
    SQLite file, or a database URL)."""
    if isinstance(database, Path) or database.startswith("sqlite:///"):
        file = database if isinstance(database, Path) else database.removeprefix("sqlite:///")
        with sqlite3.connect(file) as conn:
            rows, distinct = conn.execute(_COUNTS).fetchone()
    else:
        import psycopg

        with psycopg.connect(database.replace("+psycopg", "")) as pg:
            found = pg.execute(_COUNTS).fetchone()
            assert found is not None
            rows, distinct = found
    return int(rows), int(distinct)


@contextmanager
def throwaway_database(kind: str, folder: Path, name: str, server: str) -> Iterator[str]:
    """A fresh database's URL: a SQLite file in ``folder``, or a PostgreSQL database created
    on ``server`` (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'{name}.db'}"
        return
    import psycopg

    db = f"bench_ingest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
        try:
            yield f"{server.rsplit('/', 1)[0]}/{db}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def start_ingest(
    port: int,
    db: Path | str,
    client_id: str,
    broker: dict[str, Any] | None = None,
    attestation: dict[str, Any] | None = None,
    **more: Any,
) -> Services:
    """The controller's long-lived parts on ``db`` (a SQLite file, or a database URL),
    ingesting from Mosquitto at
    ``port`` over MQTT 5 (shared subscription, persistent session), started; ``broker``
    overrides broker settings (a TLS URL and certificate files, another group),
    ``attestation`` attestation settings, ``more`` any other settings."""
    settings = load_settings(
        None,
        environment="development",
        database_url=db if isinstance(db, str) else f"sqlite:///{db}",
        broker={
            "mode": "external",
            "url": f"mqtt://127.0.0.1:{port}",
            "protocol": "5",
            "client_id": client_id,
            "shared_group": SHARED_GROUP,
            **(broker or {}),
        },
        attestation=attestation or {},
        **more,
    )
    # "job skipped: maximum number of running instances" while the sweep waits on the
    # database would bury the results; the storm counts false timeouts instead.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    services = Services.create(settings)
    services.start()
    if services.ingest is None or not services.ingest.wait_connected(10):
        services.stop()
        raise RuntimeError("controller ingest did not connect to the broker")
    time.sleep(0.5)  # let the SUBACK land before the first publish
    return services


def run_ingest(port: int, work: Workload, db: str, client_id: str) -> Measurement:
    publisher = Publisher(port, partial(build_payloads, work))
    services = start_ingest(port, db, client_id)
    try:
        start = publisher.go()
        deadline = time.monotonic() + 600
        while services.stats.records_inserted < work.records:
            assert time.monotonic() < deadline, services.stats.snapshot()
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        publish_seconds = publisher.finish()
    finally:
        services.stop()
    snapshot = services.stats.snapshot()
    assert snapshot["rejected_total"] == 0, snapshot
    assert snapshot["records_duplicate"] == 0, snapshot
    assert snapshot["dropped_queue_full"] == 0 and snapshot["db_errors"] == 0, snapshot
    assert snapshot["batches"] == work.messages, snapshot
    rows, distinct = db_counts(db)
    assert rows == distinct == work.records, (
        f"{rows} rows, {distinct} distinct, sent {work.records}"
    )
    return Measurement(seconds, publish_seconds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batched-messages", type=int, default=500)
    parser.add_argument("--records-per-message", type=int, default=200)
    parser.add_argument("--small-messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument(
        "--only", choices=["batched", "small"], default=None, help="run one workload only"
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a server where throwaway databases may be created (with --db postgresql)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    workloads = [
        Workload("batched", args.batched_messages, args.records_per_message, args.devices),
        Workload("small", args.small_messages, 1, args.devices),
    ]
    workloads = [w for w in workloads if args.only in (None, w.name)]
    bare: dict[str, list[Measurement]] = {w.name: [] for w in workloads}
    ingest: dict[str, list[Measurement]] = {w.name: [] for w in workloads}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for work in workloads:
                # A fresh broker per pair: no session or queue left over from the last one.
                with (
                    mosquitto_broker() as port,
                    throwaway_database(
                        args.db, Path(tmp), f"{work.name}-{run}", args.postgres_url
                    ) as db,
                ):
                    bare[work.name].append(run_bare(port, work))
                    ingest[work.name].append(
                        run_ingest(port, work, db, client_id=f"bench-ingest-{run}")
                    )
                b, i = bare[work.name][-1], ingest[work.name][-1]
                print(
                    f"run {run + 1}/{args.runs} {work.name:7s}: ceiling {b.seconds:6.2f}s "
                    f"(publisher {b.publish_seconds:5.2f}s), ingest {i.seconds:6.2f}s "
                    f"(publisher {i.publish_seconds:5.2f}s)",
                    flush=True,
                )

    print(f"\nmachine: {machine()}")
    results: dict[str, Any] = {
        "benchmark": "sync_ingest",
        "machine": machine(),
        "runs": args.runs,
        "db": args.db,
    }
    rows: list[list[str]] = []
    for work in workloads:
        units, unit = (
            (work.records, "records/s") if work.name == "batched" else (work.messages, "msg/s")
        )
        goal = GOAL_BATCHED_RECORDS_S if work.name == "batched" else GOAL_SMALL_MSG_S
        ceiling = median([m.rate(units) for m in bare[work.name]])
        measured = median([m.rate(units) for m in ingest[work.name]])
        met = measured >= goal and (
            work.name == "batched" or measured >= GOAL_SMALL_RATIO * ceiling
        )
        publisher = median([units / m.publish_seconds for m in bare[work.name]])
        rows.append(
            [
                f"{work.name} ({work.records_per_message} rec/msg, {unit})",
                f"{publisher:,.0f}",
                f"{ceiling:,.0f}",
                f"{measured:,.0f}",
                f"{measured / ceiling:.3f}",
                f">= {goal:,}" + ("" if work.name == "batched" else f", >= {GOAL_SMALL_RATIO}"),
                "met" if met else "missed",
            ]
        )
        results[work.name] = {
            **asdict(work),
            "unit": unit,
            "publisher_alone": round(publisher),
            "ceiling": round(ceiling),
            "ingest": round(measured),
            "ratio": round(measured / ceiling, 3),
            "goal": goal,
            "goal_met": met,
            "ceiling_runs": [round(m.rate(units)) for m in bare[work.name]],
            "ingest_runs": [round(m.rate(units)) for m in ingest[work.name]],
        }
    print(
        f"medians of {args.runs} runs; {args.devices} devices; QoS 1; MQTT 5; "
        "zero loss/duplicates/rejects asserted"
    )
    print_table(
        [
            "workload",
            "publisher",
            "ceiling (bare paho)",
            f"controller -> {args.db}",
            "ratio",
            "goal",
            "",
        ],
        rows,
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
