"""Heartbeat ingest end to end: publisher → Mosquitto → controller ingest → SQLite.

Ceiling: a bare paho subscriber that only counts messages. Measured: the controller's
ingest (decode, validate, liveness rules, batched transactions into SQLite). Same broker,
same publisher, same messages, in this run; reports messages/s (median of runs) and the
ratio ingest / ceiling.

    .venv/bin/python -m benchmarks.bench_ingest [--messages 20000] [--devices 50] [--runs 3]
"""

import argparse
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._common import machine, median, mosquitto
from controller.services import Services
from controller.settings import load_settings
from shared import Heartbeat, encode_message


def payloads(n: int, devices: int, offset: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        message = Heartbeat(
            device_id=f"bench-{i % devices:04d}",
            bd_seq=0,
            seq=offset + i // devices,
            uptime_s=1.0,
            cpu_percent=1.0,
            memory_percent=1.0,
            requests_total=i,
            local_tier_healthy=True,
        )
        out.append(encode_message(message))
    return out


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-pub")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


def bare_rate(port: int, messages: list[tuple[str, bytes]]) -> float:
    done = threading.Event()
    count = 0

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == len(messages):
            done.set()

    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-bare")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("ef/#", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    start = time.perf_counter()
    publish_all(port, messages)
    assert done.wait(120), f"bare subscriber got {count}/{len(messages)}"
    elapsed = time.perf_counter() - start
    sub.loop_stop()
    sub.disconnect()
    return len(messages) / elapsed


def ingest_rate(port: int, messages: list[tuple[str, bytes]], db: Path) -> float:
    settings = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{db}",
        # A client id per run: a persistent session left by the previous run would queue the
        # ceiling phase's heartbeats and deliver them again as duplicates.
        broker={
            "mode": "external",
            "url": f"mqtt://127.0.0.1:{port}",
            "client_id": f"bench-ingest-{db.stem}",
        },
    )
    services = Services.create(settings)
    services.start()
    assert services.ingest is not None and services.ingest.wait_connected(10)
    time.sleep(0.5)
    start = time.perf_counter()
    publish_all(port, messages)
    deadline = time.monotonic() + 300
    while services.stats.accepted < len(messages):
        assert time.monotonic() < deadline, services.stats.snapshot()
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    snapshot = services.stats.snapshot()
    services.stop()
    assert snapshot["rejected_total"] == 0 and snapshot["duplicates"] == 0, snapshot
    return len(messages) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bare: list[float] = []
    ingest: list[float] = []
    with mosquitto() as port, tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            messages = payloads(args.messages, args.devices, offset=run * args.messages)
            bare.append(bare_rate(port, messages))
            ingest.append(ingest_rate(port, messages, Path(tmp) / f"run{run}.db"))
    b, i = median(bare), median(ingest)
    print(f"machine: {machine()}")
    print(f"messages per run: {args.messages} heartbeats from {args.devices} devices, QoS 1")
    print(f"bare paho subscriber (ceiling)  median {b:10,.0f} msg/s")
    print(f"controller ingest -> SQLite     median {i:10,.0f} msg/s")
    print(f"ratio ingest/ceiling            {i / b:.3f}")


if __name__ == "__main__":
    main()
