"""Two `edgefleet serve` replicas on one PostgreSQL and one Mosquitto (MQTT 5, one shared
subscription group), one of them SIGKILLed in the middle of a device storm and a rollout."""

import contextlib
import json
import re
import signal
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import MosquittoProcess, port_open, wait_for
from tests.procs import Proc, processes
from tests.rollout_world import World
from tests.sync_harness import ControllerProcess, agent_yaml

pytestmark = pytest.mark.e2e

# Two simulation processes of 20 devices each, 300 records per device (the fault).
GROUPS = ("sa", "sb")
PER_GROUP = 20
RECORDS = 300
RATE = 40.0
# Heartbeats every 2 s (offline after 3 missed): a 2-core CI runner starves 1 s ones.
HEARTBEAT_S = 2.0
ROLLOUT_DEVICES = 4


def _engine(database_url: str) -> Any:
    return create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))


def _appended(log: Path) -> dict[str, set[tuple[int, int]]]:
    """(epoch, seq) of every record each simulated device stored, from its process's log."""
    found: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith('{"event": "appended"'):
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                found[event["device"]].add((event["epoch"], event["seq"]))
    return found


def _start_together(replicas: list[ControllerProcess], workdir: Path) -> list[Proc]:
    """Start every replica, then wait for each (they boot in parallel)."""
    procs = []
    for replica in replicas:
        replica.proc = Proc(
            replica.name,
            ["-m", "controller", "serve", "--config", str(replica.config),
             "--port", str(replica.http_port)],
            workdir,
        )  # fmt: skip
        procs.append(replica.proc)
    for replica in replicas:
        port = replica.http_port
        wait_for(lambda: port_open(port), 60, what=f"{replica.name} HTTP")  # noqa: B023
        wait_for(lambda: replica.ingest_stats().get("broker_connected"), 30, what=replica.name)  # noqa: B023
    return procs


class RolloutDevices:
    """The rollout's devices, answering through the database (tests/rollout_world.py) from a
    thread: they install what they are told and report healthy inferences."""

    def __init__(self, database_url: str) -> None:
        self.world = World(database_url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-devices", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            now = datetime.now(UTC)
            self.world.respond(now)
            if on_target := self.world.on_target():
                self.world.inference(on_target, now, count=2)

    def start(self) -> int:
        now = datetime.now(UTC)
        self.world.add_model()
        ids = self.world.add_devices(ROLLOUT_DEVICES, prefix="roll", at=now)
        rollout_id = self.world.create(
            now=now,
            waves=["canary:1", "50%", "100%"],
            cohort={"device_ids": ids},
            gates={"min_soak_s": 2, "min_samples": 1, "sample_timeout_s": 60},
        )
        self._thread.start()
        return rollout_id

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.world.engine.dispose()


def test_a_replica_killed_mid_storm_and_mid_rollout(tmp_path: Path, postgres_url: str) -> None:
    """SIGKILL one of two replicas while 40 devices stream and a rollout is in its first
    wave: every record lands exactly once, no device is marked offline for missed
    heartbeats, and the survivor finishes the rollout."""
    broker = MosquittoProcess(tmp_path)
    broker.start()
    replicas = [
        ControllerProcess(
            tmp_path,
            name,
            broker_url=broker.broker.url,
            database_url=postgres_url,
            broker={
                "mode": "external",
                "url": broker.broker.url,
                "protocol": "5",
                "client_id": f"edgefleet-{name}",
                "keepalive_s": 5,
                "session_expiry_s": 3,
            },
        )
        for name in ("replica-1", "replica-2")
    ]
    replicas[0].bootstrap()
    replicas[1].use_token_of(replicas[0])
    templates = [
        agent_yaml(tmp_path, group, broker.broker.url, heartbeat_interval_s=HEARTBEAT_S)
        for group in GROUPS
    ]
    rollout = RolloutDevices(postgres_url)
    engine = _engine(postgres_url)
    try:
        with processes(tmp_path) as procs:
            procs.extend(_start_together(replicas, tmp_path))
            sims = [
                Proc(
                    f"sim-{group}",
                    [
                        "-m",
                        "edge_agent",
                        "simulate",
                        "--config",
                        str(template),
                        "--devices",
                        str(PER_GROUP),
                        "--records",
                        str(RECORDS),
                        "--rate",
                        str(RATE),
                        "--log-appends",
                        "--log-level",
                        "warning",
                    ],
                    tmp_path,
                )
                for group, template in zip(GROUPS, templates, strict=True)
            ]
            procs.extend(sims)
            devices = [f"{g}-{i:04d}" for g in GROUPS for i in range(PER_GROUP)]

            def online() -> int:
                with engine.connect() as conn:
                    return int(conn.execute(text(
                        "SELECT count(*) FROM device WHERE state = 'online' AND id LIKE 's%'"
                    )).scalar_one())  # fmt: skip

            wait_for(lambda: online() == len(devices), 60, what="every simulated device online")
            rollout_id = rollout.start()
            wait_for(
                lambda: (
                    rollout.world.rollout(rollout_id).status == "running"
                    and rollout.world.on_target()
                ),
                30,
                what="the canary to install",
            )
            replicas[0].kill()  # SIGKILL, mid-storm and mid-rollout
            killed_at = datetime.now(UTC)
            killed = time.monotonic()
            wave_at_kill = rollout.world.rollout(rollout_id).state.get("wave", -1)

            for sim in sims:
                wait_for(
                    lambda: '"event": "drained"' in sim.log(),  # noqa: B023
                    90,
                    interval=0.5,
                    what=f"{sim.name} to have every record acknowledged",
                )
            drained_s = time.monotonic() - killed
            wait_for(
                lambda: rollout.world.rollout(rollout_id).status == "completed",
                60,
                interval=0.5,
                what="the survivor to finish the rollout",
            )
            rollout.stop()
            print(f"SIGKILL to drained {drained_s:.1f} s, to rollout done "
                  f"{time.monotonic() - killed:.1f} s")  # fmt: skip

            stored: dict[str, list[tuple[int, int]]] = defaultdict(list)
            with engine.connect() as conn:
                for device_id, epoch, seq in conn.execute(text(
                    "SELECT device_id, epoch, seq FROM telemetry_record WHERE name = 'sim'"
                )):  # fmt: skip
                    stored[device_id].append((int(epoch), int(seq)))
                timeouts = conn.execute(text(
                    "SELECT device_id, at FROM device_status_event "
                    "WHERE event = 'heartbeat_timeout'"
                )).all()  # fmt: skip
                still = conn.execute(text(
                    "SELECT id, state FROM device WHERE id LIKE 's%' AND state <> 'online'"
                )).all()  # fmt: skip
            appended: dict[str, set[tuple[int, int]]] = {}
            for sim in sims:
                appended.update(_appended(sim.log_path))
            assert sorted(appended) == sorted(devices)
            for device_id in devices:
                rows = stored[device_id]
                assert len(rows) == len(set(rows)), f"{device_id}: a record stored twice"
                assert set(rows) == appended[device_id], (
                    f"{device_id}: {len(appended[device_id] - set(rows))} records lost"
                )
                assert len(rows) == RECORDS
            assert not timeouts, f"healthy devices marked offline: {timeouts[:5]}"
            assert not still, still
            final = rollout.world.rollout(rollout_id)
            assert wave_at_kill < 2 and final.state.get("wave") == 2, (wave_at_kill, final.state)
            assert final.finished_at is not None
            assert final.finished_at.replace(tzinfo=UTC) > killed_at
            assert sorted(rollout.world.on_target()) == [
                f"roll-{i:04d}" for i in range(ROLLOUT_DEVICES)
            ]
            # The survivor holds the whole stream now: its batches grew, none refused.
            stats = replicas[1].ingest_stats()
            assert stats["rejected_total"] == 0, stats
    finally:
        rollout._stop.set()
        engine.dispose()
        broker.stop()


def _login(base_url: str, username: str, password: str) -> httpx.Client:
    """A browser that logged in through the console at ``base_url``."""
    browser = httpx.Client(base_url=base_url, timeout=30)
    page = browser.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text[:200]
    form = {"username": username, "password": password, "csrf_token": token.group(1)}
    response = browser.post("/login", data=form, follow_redirects=False)
    assert response.status_code == 303, response.text
    return browser


def test_console_sessions_csrf_and_login_limits_span_replicas(
    tmp_path: Path, postgres_url: str
) -> None:
    """A console session opened through one replica works through the other (its CSRF
    token too), a logout through either ends it on both, and failed logins through both
    replicas count against one limit."""
    broker = MosquittoProcess(tmp_path)
    broker.start()
    replicas = [
        ControllerProcess(
            tmp_path,
            name,
            broker_url=broker.broker.url,
            database_url=postgres_url,
            login_limit={"max_failures_per_user": 4},
        )
        for name in ("replica-1", "replica-2")
    ]
    replicas[0].bootstrap()
    replicas[1].use_token_of(replicas[0])
    try:
        with processes(tmp_path) as procs:
            procs.extend(_start_together(replicas, tmp_path))
            browser = _login(replicas[0].base_url, "ops", "a-long-enough-password")
            other = httpx.Client(base_url=replicas[1].base_url, timeout=30)
            other.cookies = browser.cookies
            assert other.get("/api/me").json()["username"] == "ops"
            page = other.get("/console")
            token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
            assert token, page.text[:200]
            assert other.post("/logout").status_code == 403  # no token: refused
            out = other.post("/logout", data={"csrf_token": token.group(1)}, follow_redirects=False)
            assert out.status_code == 303
            assert browser.get("/api/me").status_code == 401  # ended on both

            codes = []
            for n in range(6):
                client = httpx.Client(base_url=replicas[n % 2].base_url, timeout=30)
                login_page = client.get("/login")
                form_token = re.search(r'name="csrf_token" value="([^"]+)"', login_page.text)
                assert form_token
                form = {"username": "ops", "password": "wrong", "csrf_token": form_token.group(1)}
                codes.append(client.post("/login", data=form).status_code)
                client.close()
            assert codes[:4] == [401] * 4 and codes[4:] == [429, 429], codes
    finally:
        broker.stop()
        for replica in replicas:
            if replica.proc is not None:
                replica.proc.stop(signal.SIGKILL, 5)
