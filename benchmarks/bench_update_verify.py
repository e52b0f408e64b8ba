"""Verify and install a 100 MB model artifact: hashing throughput and peak extra memory.

Setup: a real TUF repository (tests/tuf_simulator.py: python-tuf metadata, Ed25519 keys)
with one 100 MB target of random bytes, served over loopback HTTP by its own process, so
the server never shares a GIL or a memory budget with the device side.

Measured, each run in a fresh interpreter (the device): ``TufClient.refresh()`` and
``target()`` (ngclient), then ``download()`` of the artifact into the inactive slot of a
``Slots`` store (``fetch_artifact``: 1 MiB chunks, SHA-256 updated as each chunk is
written, length bounded, fsync and rename) and the atomic ``Slots.switch``. That is the
install path without the model load and health check (random bytes are not a model).

* hashing throughput: bytes / seconds spent inside ``sha256.update`` during the download,
  against raw ``hashlib.sha256(data)`` over the same bytes in memory, measured in this
  run (goal: ≥ 90 %);
* re-verify from disk: ``file_sha256`` of the installed file (what a resumed download or
  a switch back to a kept slot does), against the same raw figure;
* end to end: bytes / wall time of refresh + download + verify + switch (this includes
  the loopback transfer and the disk writes, so it is not a hashing figure);
* peak extra memory (goal: ≤ 32 MB): the child's resident memory sampled every 2 ms during
  the install, peak minus the value just before it; also the growth of the RSS high-water
  mark (``ru_maxrss``), and in a separate run the peak of Python allocations
  (``tracemalloc``) during the download.

Ratios are against the faster of two raw baselines measured in the same run, interleaved
with the installs: ``hashlib.sha256(data)`` in one call, and the same buffer fed in 1 MiB
slices.

Medians over the runs.

    .venv/bin/python -m benchmarks.bench_update_verify [--size-mb 100] [--runs 5] [--json-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import free_port, machine, median, print_table

ROOT = Path(__file__).resolve().parent.parent
TARGET = "bench/1/model.gguf"
MB = 1_000_000
MIB = 1024 * 1024


class _RssSampler:
    """Current RSS every 2 ms in a thread; ``stop()`` returns the peak minus the start."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._process = psutil.Process()
        self._baseline = self._process.memory_info().rss
        self._peak = self._baseline
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stopping.wait(0.002):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stopping.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        return self._peak - self._baseline


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """One device-side install in this (fresh) interpreter."""
    import httpx

    from edge_agent.updates.client import TufClient
    from edge_agent.updates.fetch import file_sha256
    from edge_agent.updates.slots import SlotRecord, Slots

    work = Path(args["work"])
    with httpx.Client(timeout=60) as http:
        client = TufClient(
            metadata_dir=work / "tuf",
            metadata_url=args["metadata_url"],
            targets_url=args["targets_url"],
            trusted_root=Path(args["trusted_root"]),
            http=http,
            max_artifact_bytes=1 << 40,
            clock=time.time,
        )
        slots = Slots(work / "models" / "bench", factory_path=work / "none", crash_loop_boots=3)
        tracing = args["tracemalloc"]
        if tracing:
            import tracemalloc

            tracemalloc.start()
        rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sampler = _RssSampler()
        sampler.start()
        started = time.perf_counter()
        target = client.target(TARGET)
        slot = slots.inactive()
        folder = slots.prepare(slot)
        result = client.download(target, folder / "model.gguf")
        slots.switch(
            slot,
            SlotRecord(
                target=TARGET,
                version="1",
                sha256=result.sha256,
                length=result.length,
                entry="model.gguf",
                runtime="llama.cpp",
                installed_at=time.time(),
            ),
        )
        total_s = time.perf_counter() - started
        sampled_extra = sampler.stop()
        rss_after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        traced_peak = None
        if tracing:
            traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        verify_started = time.perf_counter()
        length, sha = file_sha256(slots.active_path())
        verify_s = time.perf_counter() - verify_started
    if (length, sha) != (target.length, target.sha256):
        raise RuntimeError("installed file does not verify")
    return {
        "total_s": total_s,
        "hash_s": result.hash_seconds,
        "verify_s": verify_s,
        "hwm_extra_bytes": (rss_after_kib - rss_before_kib) * 1024,
        "sampled_extra_bytes": sampled_extra,
        "traced_peak_bytes": traced_peak,
    }


def _run_child(args: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_update_verify", "--child", json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _raw_sha256_s(data: bytes, runs: int) -> float:
    """Raw ``hashlib.sha256`` over the whole buffer in one call."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        times.append(time.perf_counter() - started)
    return median(times)


def _raw_sha256_chunked_s(data: bytes, runs: int) -> float:
    """Raw ``hashlib.sha256`` fed the same buffer in 1 MiB slices (no copies)."""
    view = memoryview(data)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        digest = hashlib.sha256()
        for offset in range(0, len(view), MIB):
            digest.update(view[offset : offset + MIB])
        digest.hexdigest()
        times.append(time.perf_counter() - started)
    return median(times)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100, help="artifact size in MB (10^6)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def _measure(
    args: argparse.Namespace, size: int
) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    """The installs (one child each, the last one under tracemalloc) against a served
    repository, interleaved with the raw hashlib baselines: (runs, raw, raw chunked)."""
    sys.path.insert(0, str(ROOT))
    from tests.tuf_simulator import TufRepo, model_custom

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        data = random.Random(0).randbytes(size)
        repo = TufRepo(base / "repo")
        repo.add_target(TARGET, data, model_custom(model="bench", version="1", runtime="llama.cpp"))
        repo.publish()
        trusted_root = base / "root.json"
        trusted_root.write_bytes(repo.trusted_root)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.tuf_simulator", str(repo.folder), str(port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "serving ..." once it listens
            url = f"http://127.0.0.1:{port}"
            runs: list[dict[str, Any]] = []
            raw: list[float] = []
            raw_chunked: list[float] = []
            for i in range(args.runs + 1):  # the extra run is the tracemalloc one
                work = base / f"device-{i}"
                child_args = {
                    "work": str(work),
                    "metadata_url": f"{url}/metadata/",
                    "targets_url": f"{url}/targets/",
                    "trusted_root": str(trusted_root),
                    "tracemalloc": i == args.runs,
                }
                # Raw hashlib interleaved with the installs, so both see the same machine.
                raw.append(_raw_sha256_s(data, 3))
                raw_chunked.append(_raw_sha256_chunked_s(data, 3))
                runs.append(_run_child(child_args))
                subprocess.run(["rm", "-rf", str(work)], check=True)
        finally:
            server.terminate()
            server.wait(10)
    return runs, raw, raw_chunked


def _summary(
    args: argparse.Namespace,
    size: int,
    runs: list[dict[str, Any]],
    raw: list[float],
    raw_chunked: list[float],
) -> tuple[dict[str, Any], tuple[float, float, float]]:
    """The JSON result, and the raw baselines' seconds (faster, one call, chunked)."""
    timed = runs[:-1]
    # The faster of the two raw baselines: the ratios are never flattered by a slow one.
    raw_one_s, raw_chunked_s = median(raw), median(raw_chunked)
    raw_s = min(raw_one_s, raw_chunked_s)
    hash_s = median([r["hash_s"] for r in timed])
    verify_s = median([r["verify_s"] for r in timed])
    total_s = median([r["total_s"] for r in timed])
    sampled_extra = max(r["sampled_extra_bytes"] for r in timed)
    hwm_extra = max(r["hwm_extra_bytes"] for r in timed)
    traced_peak = runs[-1]["traced_peak_bytes"]
    result = {
        "benchmark": "update_verify",
        "machine": machine(),
        "cpu_count": os.cpu_count(),
        "artifact_bytes": size,
        "runs": args.runs,
        "raw_hashlib_one_call_mb_s": round(size / raw_one_s / MB, 1),
        "raw_hashlib_1mib_updates_mb_s": round(size / raw_chunked_s / MB, 1),
        "raw_hashlib_mb_s": round(size / raw_s / MB, 1),
        "fetch_hash_mb_s": round(size / hash_s / MB, 1),
        "fetch_hash_ratio": round(raw_s / hash_s, 3),
        "reverify_mb_s": round(size / verify_s / MB, 1),
        "reverify_ratio": round(raw_s / verify_s, 3),
        "end_to_end_mb_s": round(size / total_s / MB, 1),
        "end_to_end_ratio": round(raw_s / total_s, 3),
        "end_to_end_s": round(total_s, 3),
        "peak_extra_rss_mib_sampled_max": round(sampled_extra / MIB, 2),
        "peak_extra_rss_hwm_mib_max": round(hwm_extra / MIB, 2),
        "peak_traced_python_mib": round(traced_peak / MIB, 2) if traced_peak else None,
    }
    return result, (raw_s, raw_one_s, raw_chunked_s)


def _print_report(
    args: argparse.Namespace, result: dict[str, Any], raw: tuple[float, float, float]
) -> None:
    raw_s, raw_one_s, raw_chunked_s = raw
    print(f"machine: {result['machine']}")
    print(f"artifact: {args.size_mb} MB of random bytes, {args.runs} runs (medians)\n")
    print_table(
        ["measure", "MB/s", "vs raw hashlib"],
        [
            [
                "raw hashlib.sha256, one call (in memory)",
                f"{result['raw_hashlib_one_call_mb_s']}",
                f"{raw_s / raw_one_s:.2f}",
            ],
            [
                "raw hashlib.sha256, 1 MiB updates (in memory)",
                f"{result['raw_hashlib_1mib_updates_mb_s']}",
                f"{raw_s / raw_chunked_s:.2f}",
            ],
            [
                "sha256 inside the download",
                f"{result['fetch_hash_mb_s']}",
                f"{result['fetch_hash_ratio']:.2f}",
            ],
            [
                "re-verify from disk (mapped 8 MiB windows)",
                f"{result['reverify_mb_s']}",
                f"{result['reverify_ratio']:.2f}",
            ],
            [
                "end to end (refresh+download+verify+switch)",
                f"{result['end_to_end_mb_s']}",
                f"{result['end_to_end_ratio']:.2f}",
            ],
        ],
    )
    print()
    print(
        "peak extra RSS during install (sampled every 2 ms, max of runs): "
        f"{result['peak_extra_rss_mib_sampled_max']} MiB; RSS high-water mark growth: "
        f"{result['peak_extra_rss_hwm_mib_max']} MiB"
    )
    print(f"peak Python allocations (tracemalloc): {result['peak_traced_python_mib']} MiB")
    print()


def main() -> None:
    args = _parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    size = args.size_mb * MB
    runs, raw, raw_chunked = _measure(args, size)
    result, raw_seconds = _summary(args, size, runs, raw, raw_chunked)
    if not args.json_only:
        _print_report(args, result, raw_seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
