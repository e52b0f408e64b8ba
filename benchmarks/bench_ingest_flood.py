"""Good-record ingest while one device floods hostile messages: publisher → Mosquitto (MQTT 5)
→ controller ingest → SQLite, with and without a 1,000 msg/s flood (issue 19).

Good traffic: telemetry batches from 20 devices (100 records per message, like agents
draining their outboxes), QoS 1, published as fast as the broker takes them by a plain paho
publisher in its own process, payloads encoded before the clock starts. Measured: records/s
from the first publish until every record is committed (each run asserts the database
holds exactly the records sent, none twice).

Flood: one device id (``flooder``) publishing, in a second process, 1,000 hostile msg/s
paced in 10 ms ticks: random bytes, the issue's 3,000-deep nesting, NaN, 1e400, a spoofed
device id, a controller-only kind, schema violations, an unsupported version and, one in
fifty, an oversized payload. It starts before the good publisher and runs until the last
good record is committed; every flood message must be refused (counted by reason).

Baseline: the same run without the flood, on a fresh broker and database; runs alternate
(baseline, flood, baseline, ...) and the ratio is of the medians (goal >= 0.8).

    .venv/bin/python -m benchmarks.bench_ingest_flood [--runs 5] [--messages 1000]
        [--records-per-message 100] [--devices 20] [--flood-rate 1000]
"""

import argparse
import json
import logging
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks._common import Publisher, machine, median, mosquitto_broker, print_table
from benchmarks.bench_sync_ingest import db_counts, start_ingest
from shared.messages import MAX_PAYLOAD_BYTES, Ack, Record, TelemetryBatch, encode_message

GOAL_RATIO = 0.8
_BASE = datetime(2026, 12, 7, tzinfo=UTC)


def good_payloads(messages: int, per_message: int, devices: int) -> list[tuple[str, bytes]]:
    """Telemetry batches round-robin over the devices, seqs consecutive per device."""
    next_seq = [0] * devices
    out = []
    for i in range(messages):
        device = i % devices
        first = next_seq[device]
        next_seq[device] += per_message
        records = [
            Record(epoch=0, seq=seq, kind="metric", name="inference",
                   at=_BASE + timedelta(milliseconds=seq),
                   body={"route": "local", "latency_ms": 412.37, "prompt_tokens": 31})
            for seq in range(first, first + per_message)
        ]  # fmt: skip
        batch = TelemetryBatch(device_id=f"good-{device:03d}", ts=_BASE, records=records)
        out.append(encode_message(batch))
    return out


def hostile_payloads() -> list[tuple[str, bytes]]:
    """One rotation of the flood: 50 messages, every kind of refusal, one oversized."""
    heartbeat = {
        "v": 1, "type": "heartbeat", "device_id": "flooder", "ts": "2026-12-07T00:00:00Z",
        "bd_seq": 1, "seq": 7, "uptime_s": 1.5, "cpu_percent": 3.0, "memory_percent": 40.0,
        "requests_total": 0, "local_tier_healthy": True,
    }  # fmt: skip
    hb = "ef/v1/flooder/heartbeat"
    kinds = [
        (hb, b"\xff" + os.urandom(200)),
        (hb, b"[" * 3000 + b"]" * 3000),
        (hb, json.dumps(heartbeat).replace("3.0", "NaN").encode()),
        (hb, json.dumps(heartbeat).replace('"seq": 7', '"seq": 1e400').encode()),
        (hb, json.dumps({**heartbeat, "device_id": "good-000"}).encode()),
        (
            "ef/v1/flooder/status",
            encode_message(Ack(device_id="flooder", epoch=0, first_seq=0, hwm=1))[1],
        ),
        (hb, json.dumps({**heartbeat, "seq": -1}).encode()),
        (hb, json.dumps({**heartbeat, "v": 2}).encode()),
    ]
    rotation = [kinds[i % len(kinds)] for i in range(49)]
    rotation.append(("ef/v1/flooder/telemetry", b"[" + b"0," * MAX_PAYLOAD_BYTES + b"0]"))
    return rotation


def _flood_main(port: int, rate: float, ready: Any, stop: Any, sent: Any) -> None:
    """Flood process: publish the rotation at ``rate`` msg/s (10 ms ticks) until ``stop``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    rotation = hostile_payloads()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-flood-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.set()
    count = 0
    infos = []
    start = time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - start) * rate)
        while count < due:
            topic, payload = rotation[count % len(rotation)]
            infos.append(client.publish(topic, payload, qos=1))
            count += 1
        time.sleep(0.01)
    for info in infos:  # all of them with the broker before counting them as sent
        info.wait_for_publish(60)
    sent.put(count)
    client.disconnect()
    client.loop_stop()


@dataclass(frozen=True, slots=True)
class Run:
    records_s: float
    flood_sent: int
    rejected: int
    # CPU time of this process (the controller's ingest and scheduler threads; the
    # publishers are other processes) per 1,000 good records: the flood's cost to the
    # controller itself, apart from what the flooder and the broker take on a shared box.
    cpu_ms_per_1k: float


def one_run(tmp: Path, name: str, args: argparse.Namespace, flood: bool) -> Run:
    records = args.messages * args.records_per_message
    build = partial(good_payloads, args.messages, args.records_per_message, args.devices)
    with mosquitto_broker() as port:
        db = tmp / f"{name}.db"
        publisher = Publisher(port, build)
        services = start_ingest(port, db, client_id=f"bench-{name}")
        ctx = mp.get_context("spawn")
        ready, stop, sent = ctx.Event(), ctx.Event(), ctx.Queue()
        flooder = None
        try:
            if flood:
                flooder = ctx.Process(
                    target=_flood_main, args=(port, args.flood_rate, ready, stop, sent)
                )
                flooder.start()
                if not ready.wait(30):
                    raise RuntimeError("flood publisher did not connect")
                time.sleep(0.5)  # the flood is under way before the good records start
            cpu = time.process_time()
            start = publisher.go()
            deadline = time.monotonic() + 600
            while services.stats.records_inserted < records:
                assert time.monotonic() < deadline, services.stats.snapshot()
                time.sleep(0.005)
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu
            publisher.finish()
            flood_sent = 0
            if flooder is not None:
                stop.set()
                flood_sent = int(sent.get(timeout=30))
                flooder.join(30)
                # Every flood message is refused and counted (none is left unread).
                deadline = time.monotonic() + 60
                while services.stats.snapshot()["rejected_total"] < flood_sent:  # type: ignore[operator]
                    assert time.monotonic() < deadline, services.stats.snapshot()
                    time.sleep(0.05)
        finally:
            stop.set()
            services.stop()
    snapshot = services.stats.snapshot()
    assert snapshot["records_duplicate"] == 0 and snapshot["db_errors"] == 0, snapshot
    rows, distinct = db_counts(db)
    assert rows == distinct == records, f"{rows} rows, {distinct} distinct, sent {records}"
    rejected = int(snapshot["rejected_total"])  # type: ignore[call-overload]
    return Run(records / seconds, flood_sent, rejected, cpu * 1e6 / records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--records-per-message", type=int, default=100)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--flood-rate", type=float, default=1000.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    baseline: list[Run] = []
    flooded: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            baseline.append(one_run(Path(tmp), f"base-{run}", args, flood=False))
            flooded.append(one_run(Path(tmp), f"flood-{run}", args, flood=True))
            b, f = baseline[-1], flooded[-1]
            print(
                f"run {run + 1}/{args.runs}: without flood {b.records_s:9,.0f} records/s, "
                f"with flood {f.records_s:9,.0f} records/s ({f.flood_sent} hostile sent, "
                f"{f.rejected} refused); controller CPU per 1,000 records "
                f"{b.cpu_ms_per_1k:.0f} / {f.cpu_ms_per_1k:.0f} ms",
                flush=True,
            )
    base = median([r.records_s for r in baseline])
    under = median([r.records_s for r in flooded])
    ratio = under / base
    cpu_base = median([r.cpu_ms_per_1k for r in baseline])
    cpu_under = median([r.cpu_ms_per_1k for r in flooded])
    print(f"\nmachine: {machine()}")
    print(
        f"medians of {args.runs} runs; {args.messages} messages x {args.records_per_message} "
        f"records from {args.devices} devices; flood {args.flood_rate:,.0f} msg/s from one device"
    )
    print_table(
        ["workload", "without flood", "with flood", "ratio", "goal", ""],
        [
            [
                "good records/s",
                f"{base:,.0f}",
                f"{under:,.0f}",
                f"{ratio:.3f}",
                f">= {GOAL_RATIO}",
                "met" if ratio >= GOAL_RATIO else "missed",
            ],
            [
                "controller CPU ms / 1,000 records",
                f"{cpu_base:.0f}",
                f"{cpu_under:.0f}",
                f"{cpu_base / cpu_under:.3f}",
                "",
                "",
            ],
        ],
    )
    print(
        json.dumps(
            {
                "benchmark": "ingest_flood",
                "machine": machine(),
                "runs": args.runs,
                "without_flood": round(base),
                "with_flood": round(under),
                "ratio": round(ratio, 3),
                "goal": GOAL_RATIO,
                "goal_met": ratio >= GOAL_RATIO,
                "without_flood_runs": [round(r.records_s) for r in baseline],
                "with_flood_runs": [round(r.records_s) for r in flooded],
                "flood_sent": [r.flood_sent for r in flooded],
                "cpu_ms_per_1k_without": round(cpu_base, 1),
                "cpu_ms_per_1k_with": round(cpu_under, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
