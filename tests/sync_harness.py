"""Real processes for sync and fault tests: `edgefleet serve` replicas and simulated devices.

The controller runs as `python -m controller serve` and the devices as
`python -m edge_agent simulate` (real agents without models), so SIGKILL means SIGKILL.
Checks read the database directly: what a device stored is compared with what landed.
"""

import contextlib
import json
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import create_engine, text

from tests.conftest import free_port, port_open, wait_for
from tests.procs import Proc, run_cli


class ControllerProcess:
    """One controller replica (`edgefleet serve`) on an external broker."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        broker_url: str,
        database_url: str,
        **settings: Any,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.http_port = free_port()
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "environment": "development",
                    "database_url": database_url,
                    "broker": {
                        "mode": "external",
                        "url": broker_url,
                        "protocol": "5",
                        "client_id": f"edgefleet-{name}",
                        "keepalive_s": 5,
                    },
                    "liveness_sweep_s": 0.5,
                    "desired_republish_s": 1.0,
                    "secure_cookies": False,
                    **settings,
                }
            )
        )
        self.proc: Proc | None = None
        self.token = ""
        self.restarts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def bootstrap(self) -> None:
        """Create the database, the first admin and an API token (once per database)."""
        made = run_cli(["-m", "controller", "db", "init", "--config", str(self.config)])
        assert made.returncode == 0, made.stderr
        created = run_cli(
            ["-m", "controller", "admin", "create", "--username", "ops", "--password-stdin",
             "--config", str(self.config)],
            stdin="a-long-enough-password\n",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        self.use_token_of(self)

    def use_token_of(self, other: "ControllerProcess") -> None:
        issued = run_cli(
            ["-m", "controller", "token", "create", "--username", "ops",
             "--config", str(other.config)]
        )  # fmt: skip
        assert issued.returncode == 0, issued.stderr
        self.token = issued.stdout.strip()

    def start(self) -> Proc:
        suffix = f"-{self.restarts}" if self.restarts else ""
        self.proc = Proc(
            f"{self.name}{suffix}",
            ["-m", "controller", "serve", "--config", str(self.config),
             "--port", str(self.http_port)],
            self.workdir,
        )  # fmt: skip
        self.restarts += 1
        wait_for(lambda: port_open(self.http_port), 30, what=f"{self.name} HTTP")
        wait_for(
            lambda: self.ingest_stats().get("broker_connected"), 30, what=f"{self.name} ingest"
        )
        return self.proc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.stop(signal.SIGKILL)

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def ingest_stats(self) -> dict[str, Any]:
        try:
            with self.api() as api:
                response = api.get("/api/ingest/stats")
        except httpx.HTTPError:
            return {}
        return dict(response.json()) if response.status_code == 200 else {}

    def patch_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        with self.api() as api:
            response = api.patch(f"/api/devices/{device_id}/shadow/desired", json=patch)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def shadow(self, device_id: str) -> dict[str, Any]:
        with self.api() as api:
            response = api.get(f"/api/devices/{device_id}/shadow")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_in_sync(self, device_id: str, version: int, timeout: float = 60) -> dict[str, Any]:
        """Until the device reports desired ``version`` (or later) as applied."""
        return wait_for(
            lambda: (s := self.shadow(device_id))["applied_desired_version"] >= version and s,
            timeout,
            interval=0.3,
            what=f"{device_id} to apply desired version {version}",
        )


def agent_yaml(workdir: Path, device_id: str, broker_url: str, **overrides: Any) -> Path:
    """A simulated device's config with short timeouts, so faults resolve in seconds."""
    mqtt = {
        "url": broker_url,
        "keepalive_s": 2,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 2.0,
        "protocol": "5",
        "session_expiry_s": 3600,
        **overrides.pop("mqtt", {}),
    }
    outbox = {"ack_timeout_s": 3.0, "batch_records": 100, **overrides.pop("outbox", {})}
    path = workdir / f"{device_id}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "device_id": device_id,
                "state_dir": str(workdir / device_id),
                "mqtt": mqtt,
                "heartbeat_interval_s": 1.0,
                "outbox": outbox,
                **overrides,
            }
        )
    )
    return path


class SimulatedDevice:
    """`edge-agent simulate` for one device, logging every stored record."""

    def __init__(self, workdir: Path, config: Path, *, records: int, rate: float) -> None:
        self.workdir = workdir
        self.config = config
        self.records = records
        self.rate = rate
        self.runs = 0
        self.proc: Proc | None = None

    def start(self, records: int | None = None) -> Proc:
        self.proc = Proc(
            f"{self.config.stem}-{self.runs}",
            ["-m", "edge_agent", "simulate", "--config", str(self.config), "--log-appends",
             "--records", str(self.records if records is None else records),
             "--rate", str(self.rate), "--log-level", "info"],
            self.workdir,
        )  # fmt: skip
        self.runs += 1
        return self.proc

    def _lines(self, run: int) -> list[dict[str, Any]]:
        path = self.workdir / f"{self.config.stem}-{run}.log"
        lines = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith('{"event"'):
                # The last line of a SIGKILLed run may be cut short.
                with contextlib.suppress(json.JSONDecodeError):
                    lines.append(json.loads(line))
        return lines

    def events(self, event: str, run: int | None = None) -> list[dict[str, Any]]:
        """Every ``event`` line printed by one run, or by all runs so far."""
        runs = range(self.runs) if run is None else [run]
        return [line for n in runs for line in self._lines(n) if line["event"] == event]

    def appended(self) -> set[tuple[int, int]]:
        return {(e["epoch"], e["seq"]) for e in self.events("appended")}

    def wait_drained(self, timeout: float = 90) -> None:
        """Until the current run has every record it holds acknowledged by the controller."""
        wait_for(
            lambda: self.events("drained", self.runs - 1),
            timeout,
            interval=0.3,
            what=f"{self.config.stem} to have every record acknowledged",
        )


def stored_records(database_url: str, device_id: str) -> list[tuple[int, int, str, Any]]:
    """(epoch, seq, name, body) of every record the controller stored for ``device_id``."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT epoch, seq, name, body FROM telemetry_record "
                    "WHERE device_id = :d ORDER BY epoch, seq"
                ),
                {"d": device_id},
            ).all()
    finally:
        engine.dispose()
    return [
        (int(e), int(s), str(n), json.loads(b) if isinstance(b, str) else b) for e, s, n, b in rows
    ]


def assert_exactly_once(database_url: str, device: SimulatedDevice, device_id: str) -> int:
    """Every record the device stored is in the database once; each boot's numbering has
    no gap; no measurement is stored twice. Returns the number of records stored."""
    rows = stored_records(database_url, device_id)
    keys = [(e, s) for e, s, _, _ in rows]
    assert len(keys) == len(set(keys)), "a record is stored twice"
    missing = device.appended() - set(keys)
    assert not missing, (
        f"{len(missing)} acknowledged-by-disk records never landed: {sorted(missing)[:5]}"
    )
    by_epoch: dict[int, list[int]] = defaultdict(list)
    measurements: dict[int, list[int]] = defaultdict(list)
    for epoch, seq, name, body in rows:
        by_epoch[epoch].append(seq)
        if name == "sim":
            measurements[epoch].append(int(body["n"]))
    for epoch, seqs in by_epoch.items():
        assert seqs == list(range(len(seqs))), f"epoch {epoch} has gaps: {seqs[:10]}..."
    for epoch, ns in measurements.items():
        assert sorted(ns) == list(range(len(ns))), f"epoch {epoch} measurements repeat or skip"
    return len(rows)
