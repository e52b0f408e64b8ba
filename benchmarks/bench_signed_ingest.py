"""What device signatures cost ingest: the same workload unsigned and signed, in one run.

Publisher → Mosquitto (MQTT 5) → the controller's ingest → SQLite, as in
``bench_sync_ingest``, twice per run on fresh brokers and databases:

- ``unsigned``: devices with no enrolled identity key, payloads without signatures (what
  ingest did before issue 21: decode, validate, store);
- ``signed``: every device's identity key enrolled beforehand, every payload signed with it
  (shared/message_signing.py), so ingest looks the keys up (one query per batch) and
  verifies an Ed25519 signature per message before storing.

Both workloads of ``bench_sync_ingest``: ``batched`` (200 records per message, records/s)
and ``small`` (one record per message, msg/s). Each run asserts exactly-once storage and no
rejection. Reports the medians and the ratio signed / unsigned (goal ≥ 0.8).

    .venv/bin/python -m benchmarks.bench_signed_ingest [--runs 3] [--batched-messages 500]
        [--small-messages 20000] [--devices 100]
"""

import argparse
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks._common import Publisher, machine, median, mosquitto_broker, print_table
from benchmarks.bench_sync_ingest import Workload, db_counts, start_ingest
from controller.attestation.service import register_identity
from controller.db import session_scope
from shared.attestation import encode_public_key, public_key_of
from shared.message_signing import DEVICE_DOMAIN, Signer, short_key_id
from shared.messages import MAX_PAYLOAD_BYTES, Record, TelemetryBatch, encode_message

GOAL_RATIO = 0.8


def device_key(device: int) -> Ed25519PrivateKey:
    """A fixed key per device number, so the publisher's process and the controller's
    agree without passing keys around."""
    seed = hashlib.sha256(f"bench-signed-{device}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def device_id(device: int) -> str:
    return f"bench-{device:04d}"


def build_payloads(work: Workload, signed: bool) -> list[tuple[str, bytes]]:
    """Telemetry batches round-robin over the devices (signed by each device's key when
    ``signed``), stamped now: a signed message older than a day is refused as a replay."""
    signers = [
        Signer(DEVICE_DOMAIN, short_key_id(public_key_of(k)), k.sign)
        for k in (device_key(d) for d in range(work.devices))
    ]
    now = datetime.now(UTC)
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
                at=now + timedelta(milliseconds=seq),
                body={
                    "route": "local",
                    "model": "smollm2-135m",
                    "latency_ms": 412.37,
                    "prompt_tokens": 31,
                    "completion_tokens": 16,
                    "status": "ok",
                },
            )
            for seq in range(first, first + work.records_per_message)
        ]
        batch = TelemetryBatch(device_id=device_id(device), ts=now, records=records)
        topic, payload = encode_message(batch, signers[device] if signed else None)
        assert len(payload) <= MAX_PAYLOAD_BYTES, f"{len(payload)} bytes: lower the batch size"
        out.append((topic, payload))
    return out


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    units: int

    @property
    def rate(self) -> float:
        return self.units / self.seconds


def run_once(port: int, work: Workload, db: Path, signed: bool, client_id: str) -> Run:
    publisher = Publisher(port, partial(build_payloads, work, signed))
    services = start_ingest(port, db, client_id)
    try:
        if signed:
            with session_scope(services.engine) as session:
                for d in range(work.devices):
                    key = encode_public_key(public_key_of(device_key(d)))
                    register_identity(session, device_id(d), key, how="api", actor="bench")
        start = publisher.go()
        deadline = time.monotonic() + 600
        while services.stats.records_inserted < work.records:
            assert time.monotonic() < deadline, services.stats.snapshot()
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        publisher.finish()
    finally:
        services.stop()
    snapshot = services.stats.snapshot()
    assert snapshot["rejected_total"] == 0, snapshot
    assert snapshot["records_duplicate"] == 0, snapshot
    rows, distinct = db_counts(db)
    assert rows == distinct == work.records, f"{rows} rows, {distinct} distinct"
    units = work.records if work.name == "batched" else work.messages
    return Run(seconds, units)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batched-messages", type=int, default=500)
    parser.add_argument("--records-per-message", type=int, default=200)
    parser.add_argument("--small-messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=100)
    args = parser.parse_args()
    workloads = [
        Workload("batched", args.batched_messages, args.records_per_message, args.devices),
        Workload("small", args.small_messages, 1, args.devices),
    ]
    runs: dict[tuple[str, bool], list[Run]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for work in workloads:
                # Alternate which goes first, so neither always gets the warmer machine.
                order = (False, True) if run % 2 == 0 else (True, False)
                for signed in order:
                    with mosquitto_broker() as port:
                        db = Path(tmp) / f"{work.name}-{run}-{signed}.db"
                        result = run_once(port, work, db, signed, f"bench-signed-{run}")
                    runs.setdefault((work.name, signed), []).append(result)
                    print(
                        f"run {run + 1}/{args.runs} {work.name:7s} "
                        f"{'signed  ' if signed else 'unsigned'}: {result.seconds:6.2f}s "
                        f"({result.rate:,.0f}/s)",
                        flush=True,
                    )
    results: dict[str, Any] = {
        "benchmark": "signed_ingest",
        "machine": machine(),
        "runs": args.runs,
    }
    rows: list[list[str]] = []
    for work in workloads:
        plain = median([r.rate for r in runs[(work.name, False)]])
        with_sig = median([r.rate for r in runs[(work.name, True)]])
        ratio = with_sig / plain
        unit = "records/s" if work.name == "batched" else "msg/s"
        rows.append(
            [
                f"{work.name} ({unit})",
                f"{plain:,.0f}",
                f"{with_sig:,.0f}",
                f"{ratio:.3f}",
                f">= {GOAL_RATIO}",
                "met" if ratio >= GOAL_RATIO else "missed",
            ]
        )
        results[work.name] = {
            "unit": unit,
            "unsigned": round(plain),
            "signed": round(with_sig),
            "ratio": round(ratio, 3),
            "unsigned_runs": [round(r.rate) for r in runs[(work.name, False)]],
            "signed_runs": [round(r.rate) for r in runs[(work.name, True)]],
        }
    print(f"\nmachine: {machine()}")
    print_table(["workload", "unsigned", "signed", "ratio", "goal", ""], rows)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
