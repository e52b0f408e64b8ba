"""Telemetry ingest over mutual TLS against plaintext, in the same run on the same broker.

One Mosquitto with two listeners: plaintext, and TLS requiring client certificates (CA,
broker and client certificates made by the project's own CA code, ECDSA P-256). For each
run, the same encoded telemetry batches (``bench_sync_ingest``'s batched workload) go
publisher → Mosquitto → the controller's ingest → SQLite, once over each listener, the
publisher and the controller both on that listener (mutual TLS: each with its certificate).
Reports records/s for both and the ratio TLS / plaintext (goal ≥ 0.8). Every run asserts the
database holds exactly the records sent. Medians over runs; the order alternates per run.

    .venv/bin/python -m benchmarks.bench_tls_ingest [--runs 3] [--messages 500]
        [--records-per-message 200] [--devices 100]
"""

import argparse
import getpass
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks._common import Publisher, free_port, machine, median, print_table
from benchmarks.bench_sync_ingest import Workload, build_payloads, db_counts, start_ingest
from controller.pki.authority import device_certificate, new_authority, server_certificate
from controller.services import Services
from shared.certificates import certificate_pem, csr_for, new_private_key, private_key_pem

GOAL_RATIO = 0.8
SHARED_GROUP = "edgefleet"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    controller: tuple[Path, Path]
    publisher: tuple[Path, Path]


def make_pki(folder: Path) -> Pki:
    """A CA, the broker's certificate for 127.0.0.1 and two client certificates."""
    now = datetime.now(UTC)
    ca = new_authority("bench CA", now=now, days=2)
    (folder / "ca.crt").write_bytes(certificate_pem(ca.cert))

    def write(name: str, cert: Any, key: Any) -> tuple[Path, Path]:
        (folder / f"{name}.crt").write_bytes(certificate_pem(cert))
        (folder / f"{name}.key").write_bytes(private_key_pem(key))
        return folder / f"{name}.crt", folder / f"{name}.key"

    server_key = new_private_key()
    server = write(
        "broker", server_certificate(ca, ["127.0.0.1"], server_key, now=now, days=1), server_key
    )

    def client(name: str) -> tuple[Path, Path]:
        key = new_private_key()
        return write(name, device_certificate(ca, csr_for(name, key), name, now=now, days=1), key)

    return Pki(folder / "ca.crt", server, client("bench-ingest"), client("bench-publisher"))


@contextmanager
def two_listener_broker(pki: Pki, folder: Path) -> Iterator[tuple[int, int]]:
    """Mosquitto with a plaintext and a mutual-TLS listener; yields (plain, tls) ports."""
    plain, tls = free_port(), free_port()
    conf = folder / "m.conf"
    conf.write_text(
        f"user {getpass.getuser()}\npersistence false\nmax_queued_messages 1000000\n"
        "allow_anonymous true\n"
        f"listener {plain} 127.0.0.1\n"
        f"listener {tls} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server[0]}\n"
        f"keyfile {pki.server[1]}\nrequire_certificate true\nuse_identity_as_username true\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("mosquitto did not start")
        yield plain, tls
    finally:
        proc.terminate()
        proc.wait(10)


def start_tls_ingest(port: int, db: Path, client_id: str, pki: Pki | None) -> Services:
    """``bench_sync_ingest``'s controller, over mutual TLS with ``pki``."""
    # A group per measurement: a session the previous measurement left behind (see
    # issue 15) must not take a share of this one's messages.
    broker: dict[str, Any] = {"shared_group": f"{SHARED_GROUP}-{client_id}"}
    if pki is not None:
        broker |= {
            "url": f"mqtts://127.0.0.1:{port}",
            "ca_file": str(pki.ca),
            "cert_file": str(pki.controller[0]),
            "key_file": str(pki.controller[1]),
        }
    return start_ingest(port, db, client_id, broker)


def run(port: int, work: Workload, db: Path, run_id: str, pki: Pki | None) -> float:
    """Records/s from the first publish to the last record committed."""
    tls = (str(pki.ca), str(pki.publisher[0]), str(pki.publisher[1])) if pki else None
    publisher = Publisher(port, partial(build_payloads, work), tls=tls)
    services = start_tls_ingest(port, db, f"bench-ingest-{run_id}", pki)
    try:
        start = publisher.go()
        deadline = time.monotonic() + 600
        while services.stats.records_inserted < work.records:
            assert time.monotonic() < deadline, services.stats.snapshot()
            time.sleep(0.005)
        seconds = time.perf_counter() - start
        publisher.finish()
    finally:
        services.stop()
    rows, distinct = db_counts(db)
    assert rows == distinct == work.records, f"{rows} rows, {distinct} distinct"
    return work.records / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--records-per-message", type=int, default=200)
    parser.add_argument("--devices", type=int, default=100)
    args = parser.parse_args()
    work = Workload("batched", args.messages, args.records_per_message, args.devices)
    rates: dict[str, list[float]] = {"plaintext": [], "mutual TLS": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pki = make_pki(folder)
        for i in range(args.runs):
            order = ["plaintext", "mutual TLS"] if i % 2 == 0 else ["mutual TLS", "plaintext"]
            with two_listener_broker(pki, folder) as (plain, tls):
                for mode in order:
                    tls_pki = pki if mode == "mutual TLS" else None
                    db = folder / f"{mode.replace(' ', '-')}-{i}.db"
                    rate = run(tls if tls_pki else plain, work, db, f"{i}-{mode[0]}", tls_pki)
                    rates[mode].append(rate)
                    print(f"run {i + 1}/{args.runs} {mode:10s}: {rate:,.0f} records/s", flush=True)
    plain_rate, tls_rate = median(rates["plaintext"]), median(rates["mutual TLS"])
    ratio = tls_rate / plain_rate
    print(f"\nmachine: {machine()}")
    print(f"medians of {args.runs} runs; {work.records:,} records in {work.messages} batches")
    print_table(
        ["ingest into SQLite", "records/s"],
        [["plaintext", f"{plain_rate:,.0f}"], ["mutual TLS", f"{tls_rate:,.0f}"]],
    )
    print(
        f"ratio TLS / plaintext: {ratio:.3f} (goal >= {GOAL_RATIO}: "
        f"{'met' if ratio >= GOAL_RATIO else 'missed'})"
    )
    print(
        json.dumps(
            {
                "benchmark": "tls_ingest",
                "machine": machine(),
                "runs": args.runs,
                "plaintext_records_s": round(plain_rate),
                "tls_records_s": round(tls_rate),
                "ratio": round(ratio, 3),
                "goal": GOAL_RATIO,
                "plaintext_runs": [round(r) for r in rates["plaintext"]],
                "tls_runs": [round(r) for r in rates["mutual TLS"]],
            }
        )
    )


if __name__ == "__main__":
    main()
