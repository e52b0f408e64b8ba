"""Benchmark helpers: a throwaway Mosquitto, medians and the machine description."""

import getpass
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mosquitto() -> Iterator[int]:
    """A throwaway Mosquitto on a free loopback port (see ``mosquitto_broker``)."""
    with mosquitto_broker() as port:
        yield port


# --- added for the sync benchmarks (ingest, reconnect storm, agent memory) ----------------


def raise_nofile(limit: int) -> None:
    """Raise this process's open-file limit to ``limit`` (capped at the hard limit).

    Usable as a ``preexec_fn`` so a child (Mosquitto, a simulation) can hold thousands of
    sockets and SQLite files without touching the parent's limit.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@contextmanager
def mosquitto_broker(
    extra_conf: str = "", nofile: int = 0, tls: tuple[Path, Path, Path] | None = None
) -> Iterator[int]:
    """A throwaway Mosquitto on a free loopback port, with extra config lines.

    Like ``mosquitto()``, plus ``extra_conf`` (e.g. ``max_inflight_messages``), an optional
    open-file limit for the broker process (for thousands of connections) and, with
    ``tls`` = (CA, server certificate, key), a mutual-TLS listener instead of plaintext
    (client certificates required, the CN as user name, as in production).
    """
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "m.conf"
        listener = f"listener {port} 127.0.0.1\n"
        if tls is not None:
            listener += (
                f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\n"
                "require_certificate true\nuse_identity_as_username true\n"
                # stay the current user: 'mosquitto' could not read the key files
                f"user {getpass.getuser()}\n"
            )
        conf.write_text(
            listener + "allow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\nmax_connections -1\n" + extra_conf
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: raise_nofile(nofile)) if nofile else None,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"mosquitto did not listen on {port} within 10 s")
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A plain aligned text table (first column left-aligned, the rest right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def set_nodelay(client: Any) -> None:
    """TCP_NODELAY on a connected paho client (as the agent and the ingest do)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _publisher_main(
    port: int,
    build: Callable[[], list[tuple[str, bytes]]],
    ready: Any,
    go: Any,
    result: Any,
    tls: tuple[str, str, str] | None = None,
) -> None:
    """Publisher process: build (encode) every message, connect, publish them at ``go``."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    messages = build()
    connected = threading.Event()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        set_nodelay(client)
        connected.set()

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if tls is not None:  # (CA file, client certificate, key): mutual TLS like a device
        import ssl

        ctx = ssl.create_default_context(cafile=tls[0])
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls[1], tls[2])
        client.tls_set_context(ctx)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("publisher could not connect")
    ready.set()
    if not go.wait(600):
        raise RuntimeError("publisher was never told to go")
    start = time.perf_counter()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(600)
    result.put(time.perf_counter() - start)
    client.disconnect()
    client.loop_stop()


class Publisher:
    """A plain paho QoS 1 publisher (MQTT 5) in its own process, so it never shares a GIL
    with what is measured. ``build`` (picklable: a module-level function or a partial of
    one) runs in the child before the clock starts; ``go()`` starts publishing and returns
    the ``perf_counter`` start time; ``finish()`` returns the seconds until the broker had
    acknowledged every message."""

    def __init__(
        self,
        port: int,
        build: Callable[[], list[tuple[str, bytes]]],
        tls: tuple[str, str, str] | None = None,
    ) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._go = ctx.Event()
        self._result: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=_publisher_main,
            args=(port, build, self._ready, self._go, self._result, tls),
            daemon=True,
        )
        self._proc.start()

    def go(self) -> float:
        if not self._ready.wait(600):
            raise RuntimeError("publisher never became ready")
        start = time.perf_counter()
        self._go.set()
        return start

    def finish(self) -> float:
        seconds = float(self._result.get(timeout=600))
        self._proc.join(30)
        return seconds
