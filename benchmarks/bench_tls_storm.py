"""Reconnect storm over mutual TLS against the same storm in plaintext, in one run.

``bench_reconnect_storm``'s storm (N ``edge-agent simulate`` devices with buffered records
released at one barrier against a fresh Mosquitto, the controller's ingest into SQLite,
exactly-once asserted) twice per run: once on a plaintext listener, once on a mutual-TLS
listener where every device and the controller present their own certificate (ECDSA P-256
from a CA made for the storm with the project's own CA code; the broker requires client
certificates and takes the CN as the user name). Reports the time from the barrier until
every record is in the database for both, and the ratio TLS / plaintext (goal ≤ 1.5).
The order of the two storms alternates per run; medians over runs.

    .venv/bin/python -m benchmarks.bench_tls_storm [--devices 1000] [--prefill 100]
        [--processes 8] [--lead-s 30] [--runs 1] [--attestation-timeout-s 600]
"""

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks._common import machine, median, print_table, raise_nofile
from benchmarks.bench_reconnect_storm import NOFILE, StormResult, run_storm

GOAL_RATIO = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--prefill", type=int, default=100)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--lead-s", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument(
        "--attestation-timeout-s",
        type=float,
        default=None,
        help="the controller's attestation.timeout_s (and nonce_ttl_s); default 60 s",
    )
    args = parser.parse_args()
    raise_nofile(NOFILE)
    results: dict[str, list[StormResult]] = {"plaintext": [], "mutual TLS": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for run in range(args.runs):
            order = ["plaintext", "mutual TLS"] if run % 2 == 0 else ["mutual TLS", "plaintext"]
            for k, mode in enumerate(order):
                result = run_storm(
                    root,
                    args.devices,
                    args.prefill,
                    args.processes,
                    args.lead_s,
                    run * 2 + k,  # its own folders, databases and device ids
                    timeout_s=args.timeout_s,
                    sim_log_level="warning",
                    tls=mode == "mutual TLS",
                    attestation_timeout_s=args.attestation_timeout_s,
                )
                results[mode].append(result)
                print(
                    f"run {run + 1}/{args.runs} {mode:10s}: all records in DB "
                    f"{result.to_db_s:.2f}s, births {result.births_s:.2f}s, slowest drained "
                    f"{result.max_drained_s:.2f}s, redelivered {result.redelivered:,}, "
                    f"heartbeat timeouts {result.heartbeat_timeouts}, CPU s "
                    + ", ".join(f"{k} {v:.1f}" for k, v in result.cpu_s.items()),
                    flush=True,
                )
    plain = median([r.to_db_s for r in results["plaintext"]])
    tls = median([r.to_db_s for r in results["mutual TLS"]])
    ratio = tls / plain
    records = results["plaintext"][0].records
    print(f"\nmachine: {machine()}")
    print(
        f"{args.devices} devices, {records:,} records; median of {args.runs} run(s); "
        "exactly-once asserted"
    )
    print_table(
        ["storm: barrier -> all records in DB", "seconds", "births", "slowest drained"],
        [
            [
                mode,
                f"{median([r.to_db_s for r in rs]):.2f}",
                f"{median([r.births_s for r in rs]):.2f}",
                f"{median([r.max_drained_s for r in rs]):.2f}",
            ]
            for mode, rs in results.items()
        ],
    )
    verdict = "met" if ratio <= GOAL_RATIO else "missed"
    print(f"ratio TLS / plaintext: {ratio:.2f} (goal <= {GOAL_RATIO}: {verdict})")
    print(
        json.dumps(
            {
                "benchmark": "tls_storm",
                "machine": machine(),
                "devices": args.devices,
                "records": records,
                "runs": args.runs,
                "plaintext_to_db_s": round(plain, 3),
                "tls_to_db_s": round(tls, 3),
                "ratio": round(ratio, 3),
                "goal": GOAL_RATIO,
                "heartbeat_timeouts": {
                    mode: [r.heartbeat_timeouts for r in rs] for mode, rs in results.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
