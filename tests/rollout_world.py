"""A controller database with simulated devices for rollout tests and the benchmark.

Devices register, report their shadow and send inference telemetry as encoded protocol
messages through the controller's real ingest (``apply_batch``), so the rollout service
reads exactly what a live controller would store. Time is injected throughout.
"""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controller.db import make_engine, session_scope
from controller.devices.shadows import DeviceShadow, set_desired
from controller.ingest.apply import Received, apply_batch
from controller.migrations import init_db
from controller.rollouts.service import (
    Rollout,
    RolloutDevice,
    RolloutRequest,
    TickReport,
    create_rollout,
    tick,
)
from controller.settings import RolloutSettings
from controller.updates.registry import ModelVersion
from shared.messages import (
    Birth,
    HardwareInfo,
    Record,
    Reported,
    TelemetryBatch,
    encode_message,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC
MODEL = "smollm2"
OLD_TARGET = "smollm2/1.0/smollm2-1.0.gguf"
NEW_TARGET = "smollm2/1.1/smollm2-1.1.gguf"


def received(message: Any, at: datetime) -> Received:
    topic, payload = encode_message(message)
    return Received(topic, payload, at)


class World:
    """One controller database and its simulated fleet."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        init_db(self.engine)
        self.published: list[tuple[str, int]] = []
        self.reported_version: dict[str, int] = {}
        self.seq: dict[str, int] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.running: dict[str, dict[str, Any]] = {}  # what each device reports as its model
        self.failed_for: dict[str, str] = {}  # device -> the target it failed to install

    # --- the controller side -----------------------------------------------------------
    def restart(self) -> None:
        """Throw away every connection and cached object, as a controller restart does."""
        self.engine.dispose()
        self.engine = make_engine(self.url)
        init_db(self.engine)

    def publish(self, shadow: DeviceShadow) -> bool:
        self.published.append((shadow.device_id, shadow.desired_version))
        return True

    def tick(self, now: datetime) -> TickReport:
        with Session(self.engine) as session:
            return tick(session, now, self.publish)

    def add_model(
        self,
        version: str = "1.1",
        *,
        target: str = NEW_TARGET,
        device_classes: Iterable[str] = (),
        expected_latency_ms: float | None = 100.0,
    ) -> None:
        with session_scope(self.engine) as session:
            session.add(
                ModelVersion(
                    name=MODEL,
                    version=version,
                    target_path=target,
                    sha256=(version.replace(".", "") * 64)[:64],
                    length=1024,
                    runtime="llama.cpp",
                    device_classes=list(device_classes),
                    expected_latency_ms=expected_latency_ms,
                    created_by="test",
                )
            )

    def create(
        self, now: datetime = T0, settings: RolloutSettings | None = None, **request: Any
    ) -> int:
        body: dict[str, Any] = {"model": MODEL, "version": "1.1", "waves": ["canary:2", "100%"]}
        body.update(request)
        with session_scope(self.engine) as session:
            rollout = create_rollout(
                session,
                RolloutRequest.model_validate(body),
                actor="user:test",
                now=now,
                settings=settings,
            )
            assert rollout.id is not None
            return rollout.id

    # --- the device side ---------------------------------------------------------------
    def ingest(self, messages: list[Any], at: datetime) -> None:
        with session_scope(self.engine) as session:
            result = apply_batch(session, [received(m, at) for m in messages])
        assert not any(k.startswith("rejected") for k in result.outcome), result.outcome

    def add_devices(
        self,
        n: int,
        *,
        prefix: str = "dev",
        device_class: str = "x86_64-cpu",
        labels: dict[str, str] | None = None,
        at: datetime = T0 - timedelta(minutes=5),
    ) -> list[str]:
        """Register devices (birth) that report running the old model."""
        ids = [f"{prefix}-{i:04d}" for i in range(n)]
        births = [
            Birth(
                device_id=d,
                ts=at,
                bd_seq=1,
                agent_version="0.1.0",
                hardware=HardwareInfo(
                    device_class=device_class,
                    arch="x86_64",
                    accelerator="cpu",
                    cpu_count=2,
                    memory_mb=1024,
                ),
                heartbeat_interval_s=30,
            )
            for d in ids
        ]
        for i in range(0, len(births), 200):
            self.ingest(births[i : i + 200], at)
        if labels:  # the operator labels them (desired); devices echo them in reported
            with session_scope(self.engine) as session:
                for d in ids:
                    set_desired(session, d, {"labels": labels}, now=at, actor="user:ops")
        for d in ids:
            self.labels[d] = dict(labels or {})
            self.running[d] = {
                "name": MODEL,
                "target": OLD_TARGET,
                "version": "1.0",
                "sha256": "0" * 64,
                "slot": "a",
                "status": "active",
                "error": None,
                "desired_target": OLD_TARGET,
                "rollout": None,
                "installed_at": (at - timedelta(days=3)).timestamp(),
            }
        self.report(ids, at)
        return ids

    def report(self, device_ids: Iterable[str], at: datetime) -> None:
        """Each device sends its reported shadow (model key per contract 2, and labels)."""
        messages = []
        with Session(self.engine) as session:
            desired = {s.device_id: s.desired_version for s in session.exec(select(DeviceShadow))}
        for d in device_ids:
            self.reported_version[d] = self.reported_version.get(d, 0) + 1
            messages.append(
                Reported(
                    device_id=d,
                    ts=at,
                    version=self.reported_version[d],
                    applied_desired_version=desired.get(d, 0),
                    state={"model": self.running[d], "labels": self.labels[d]},
                )
            )
        for i in range(0, len(messages), 200):
            self.ingest(messages[i : i + 200], at)

    def inference(
        self,
        device_ids: Iterable[str],
        at: datetime,
        *,
        count: int = 5,
        latency_ms: float = 80.0,
        status: str = "ok",
        cascaded: bool = False,
        model: str = MODEL,
    ) -> None:
        """Each device records ``count`` inferences (contract 3) at ``at``."""
        batches = []
        for d in device_ids:
            first = self.seq.get(d, 0)
            self.seq[d] = first + count
            records = [
                Record(
                    epoch=1,
                    seq=first + i,
                    kind="metric",
                    name="inference",
                    at=at,
                    body={
                        "status": status,
                        "latency_ms": latency_ms,
                        "route": "local",
                        "model": model,
                        "cascaded": cascaded,
                        "escalated": False,
                        "at": at.isoformat(),
                    },
                )
                for i in range(count)
            ]
            batches.append(TelemetryBatch(device_id=d, ts=at, records=records))
        for i in range(0, len(batches), 200):
            self.ingest(batches[i : i + 200], at)

    def desired_models(self) -> dict[str, dict[str, Any] | None]:
        with Session(self.engine) as session:
            return {s.device_id: s.desired.get("model") for s in session.exec(select(DeviceShadow))}

    def respond(
        self,
        now: datetime,
        *,
        fail: Iterable[str] = (),
        silent: Iterable[str] = (),
    ) -> list[str]:
        """Devices whose desired model differs from what they run act on it (install, or
        fail to); returns those that changed."""
        fail, silent = set(fail), set(silent)
        changed = []
        for device_id, want in self.desired_models().items():
            if device_id in silent or device_id not in self.running:
                continue
            have = self.running[device_id]
            target = want["target"] if want else OLD_TARGET
            if have["target"] == target and have.get("rollout") == (want or {}).get("rollout"):
                continue
            if device_id in fail and target != OLD_TARGET:
                if self.failed_for.get(device_id) == target:
                    continue  # reported once; a real agent does not retry a failed target
                self.failed_for[device_id] = target
                have.update(
                    status="failed",
                    error="health check failed",
                    desired_target=target,
                    rollout=(want or {}).get("rollout"),
                )
            else:
                have.update(
                    target=target,
                    version=(want or {}).get("version", "1.0"),
                    status="active",
                    error=None,
                    desired_target=target,
                    rollout=(want or {}).get("rollout"),
                    installed_at=now.timestamp(),
                )
            changed.append(device_id)
        if changed:
            self.report(changed, now)
        return changed

    def on_target(self, target: str = NEW_TARGET) -> list[str]:
        return sorted(d for d, m in self.running.items() if m["target"] == target)

    def rollout(self, rollout_id: int) -> Rollout:
        with Session(self.engine) as session:
            row = session.get(Rollout, rollout_id)
            assert row is not None
            session.expunge(row)
            return row

    def members(self, rollout_id: int) -> list[RolloutDevice]:
        with Session(self.engine) as session:
            rows = list(
                session.exec(
                    select(RolloutDevice)
                    .where(RolloutDevice.rollout_id == rollout_id)
                    .order_by(RolloutDevice.device_id)  # type: ignore[arg-type]
                )
            )
            for r in rows:
                session.expunge(r)
            return rows
