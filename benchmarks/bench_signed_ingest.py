"""What device signatures cost ingest: the same workload unsigned and signed, in one run.

Publisher → Mosquitto (MQTT 5) → the controller's ingest → SQLite, as in
``bench_sync_ingest``, three times per run on fresh brokers and databases:

- ``unsigned``: devices with no enrolled identity key, payloads without signatures (what
  ingest did before issue 21: decode, validate, store);
- ``signed``: every device's identity key enrolled beforehand, every payload signed with it
  (shared/message_signing.py), so ingest looks the keys up (one query per batch) and
  verifies an Ed25519 signature per message before storing;
- ``session``: what agents do: each device first publishes a birth signed by its identity
  key that opens a session (an X25519 key agreed with the controller's exchange key), and
  MACs the rest with the session key (HMAC-SHA256); ingest derives each session's key once.

Both workloads of ``bench_sync_ingest``: ``batched`` (200 records per message, records/s)
and ``small`` (one record per message, msg/s). Each run asserts exactly-once storage and no
rejection. Reports the medians and the ratios signed / unsigned and session / unsigned
(goal ≥ 0.8).

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
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from benchmarks._common import Publisher, machine, median, mosquitto_broker, print_table
from benchmarks.bench_sync_ingest import Workload, db_counts, start_ingest
from controller.attestation.service import register_identity
from controller.db import session_scope
from controller.pki.message_keys import MessageKeyStore
from shared.attestation import encode_public_key, public_key_of
from shared.message_signing import (
    DEVICE_DOMAIN,
    SessionMac,
    Signer,
    session_mac_key,
    short_key_id,
)
from shared.messages import (
    MAX_PAYLOAD_BYTES,
    Birth,
    HardwareInfo,
    Record,
    TelemetryBatch,
    encode_message,
)

GOAL_RATIO = 0.8


def device_key(device: int) -> Ed25519PrivateKey:
    """A fixed key per device number, so the publisher's process and the controller's
    agree without passing keys around."""
    seed = hashlib.sha256(f"bench-signed-{device}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def device_id(device: int) -> str:
    return f"bench-{device:04d}"


def session_births(
    work: Workload, exchange: tuple[str, bytes], now: datetime
) -> tuple[list[tuple[str, bytes]], list[SessionMac]]:
    """A birth per device opening a session with the controller's exchange key (signed by
    the identity key), and each session's MAC, as an agent's link makes them."""
    kid, controller_key = exchange
    births: list[tuple[str, bytes]] = []
    macs: list[SessionMac] = []
    for d in range(work.devices):
        key = device_key(d)
        ephemeral = X25519PrivateKey.generate()
        public = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(controller_key))
        macs.append(
            SessionMac(DEVICE_DOMAIN, short_key_id(public),
                       session_mac_key(shared, device_id(d), public))
        )  # fmt: skip
        birth = Birth(
            device_id=device_id(d),
            ts=now,
            bd_seq=1,
            agent_version="0.1.0",
            hardware=HardwareInfo(device_class="x86-cpu", arch="x86_64", accelerator="cpu",
                                  cpu_count=2, memory_mb=1024),
            heartbeat_interval_s=60,
            identity_key=encode_public_key(public_key_of(key)),
            controller_key_ids=[kid],
            session_key=encode_public_key(public),
        )  # fmt: skip
        signer = Signer(DEVICE_DOMAIN, short_key_id(public_key_of(key)), key.sign)
        births.append(encode_message(birth, signer))
    return births, macs


def build_payloads(
    work: Workload, mode: str, exchange: tuple[str, bytes] | None = None
) -> list[tuple[str, bytes]]:
    """Telemetry batches round-robin over the devices: unsigned, signed by each device's
    key, or (``session``) after a birth per device, MACed with its session key. Stamped
    now: a signed message older than a day is refused as a replay."""
    now = datetime.now(UTC)
    signers: list[Signer] | list[SessionMac] = [
        Signer(DEVICE_DOMAIN, short_key_id(public_key_of(k)), k.sign)
        for k in (device_key(d) for d in range(work.devices))
    ]
    out: list[tuple[str, bytes]] = []
    if mode == "session":
        assert exchange is not None
        out, signers = session_births(work, exchange, now)
    next_seq = [0] * work.devices
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
        topic, payload = encode_message(batch, signers[device] if mode != "unsigned" else None)
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


def run_once(port: int, work: Workload, db: Path, mode: str, client_id: str) -> Run:
    pki = db.parent / f"{db.stem}-pki"
    ring = MessageKeyStore(pki, None).load(create=True)
    exchange = ring.exchange_public(ring.current_kid)
    assert exchange is not None
    publisher = Publisher(port, partial(build_payloads, work, mode, (ring.current_kid, exchange)))
    services = start_ingest(port, db, client_id, pki={"dir": str(pki)})
    try:
        if mode != "unsigned":
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
    modes = ("unsigned", "signed", "session")
    runs: dict[tuple[str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for work in workloads:
                # Rotate which goes first, so none always gets the warmer machine.
                order = modes[run % 3 :] + modes[: run % 3]
                for mode in order:
                    with mosquitto_broker() as port:
                        db = Path(tmp) / f"{work.name}-{run}-{mode}.db"
                        result = run_once(port, work, db, mode, f"bench-signed-{run}")
                    runs.setdefault((work.name, mode), []).append(result)
                    print(
                        f"run {run + 1}/{args.runs} {work.name:7s} {mode:8s}: "
                        f"{result.seconds:6.2f}s ({result.rate:,.0f}/s)",
                        flush=True,
                    )
    results: dict[str, Any] = {
        "benchmark": "signed_ingest",
        "machine": machine(),
        "runs": args.runs,
    }
    rows: list[list[str]] = []
    for work in workloads:
        unit = "records/s" if work.name == "batched" else "msg/s"
        rates = {mode: median([r.rate for r in runs[(work.name, mode)]]) for mode in modes}
        signed_ratio = rates["signed"] / rates["unsigned"]
        session_ratio = rates["session"] / rates["unsigned"]
        rows.append(
            [
                f"{work.name} ({unit})",
                f"{rates['unsigned']:,.0f}",
                f"{rates['signed']:,.0f}",
                f"{signed_ratio:.3f}",
                f"{rates['session']:,.0f}",
                f"{session_ratio:.3f}",
                f">= {GOAL_RATIO}",
                "met" if session_ratio >= GOAL_RATIO else "missed",
            ]
        )
        results[work.name] = {
            "unit": unit,
            **{mode: round(rate) for mode, rate in rates.items()},
            "signed_ratio": round(signed_ratio, 3),
            "session_ratio": round(session_ratio, 3),
            **{f"{mode}_runs": [round(r.rate) for r in runs[(work.name, mode)]] for mode in modes},
        }
    print(f"\nmachine: {machine()}")
    header = ["workload", "unsigned", "signed", "ratio", "session", "ratio", "goal", "session"]
    print_table(header, rows)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
