"""A controller database fed windowed telemetry through the real ingest, for the telemetry
tests: devices send ``inference.window``, ``drift.window`` and ``system`` records as
encoded protocol messages (``apply_batch``), and the rollup job runs at an injected time."""

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controller.app import create_app
from controller.auth.credentials import create_api_token
from controller.auth.users import create_user
from controller.db import make_engine, session_scope
from controller.ingest.apply import Received, apply_batch
from controller.migrations import init_db
from controller.services import Services
from controller.settings import load_settings
from controller.telemetry.rollup import RollupReport, run_rollup
from controller.telemetry.settings import TelemetrySettings
from controller.telemetry.tables import RollupCursor
from shared import sketches
from shared.messages import Record, TelemetryBatch, encode_message

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC
CFG = TelemetrySettings(commit_lag_s=5, drift_min_samples=20)


def latency_sketch(*values: float) -> list[int]:
    counts = sketches.empty("latency_ms")
    for v in values:
        sketches.add(counts, "latency_ms", v)
    return counts


def sketch(feature: sketches.Feature, values: list[float]) -> list[int]:
    counts = sketches.empty(feature)
    for v in values:
        sketches.add(counts, feature, v)
    return counts


def group(tier: str = "local", task_class: str | None = "chat", **counts: Any) -> dict[str, Any]:
    """One request group of an ``inference.window`` body."""
    latencies = counts.pop("latencies", [40.0] * counts.get("count", 1))
    body: dict[str, Any] = {"tier": tier, "task_class": task_class, "count": len(latencies)}
    body.update(counts)
    body["latency_ms"] = latency_sketch(*latencies)
    return body


def inference_window(start: datetime, *groups: dict[str, Any]) -> dict[str, Any]:
    return {"start": start.isoformat(), "window_s": 60, "groups": list(groups)}


def drift_window(
    start: datetime,
    *,
    model: str = "smollm2",
    version: str | None = "1.0",
    prompt_tokens: list[float] | None = None,
    classes: dict[str, int] | None = None,
    kind: str = "chat",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "start": start.isoformat(),
        "window_s": 60,
        "model": model,
        "kind": kind,
        "features": {},
    }
    if version is not None:
        body["version"] = version
    if prompt_tokens is not None:
        body["features"]["prompt_tokens"] = sketch("prompt_tokens", prompt_tokens)
    if classes is not None:
        body["classes"] = classes
    return body


class TelemetryWorld:
    """One controller database and the sequence numbers of its simulated devices."""

    def __init__(self, url: str, seq: dict[str, int] | None = None) -> None:
        self.engine: Engine = make_engine(url)
        init_db(self.engine)
        # Shared with a rollout World on the same database, so records never reuse a seq.
        self.seq: dict[str, int] = seq if seq is not None else {}

    def send(
        self,
        device_id: str,
        records: list[tuple[str, dict[str, Any]]],
        at: datetime,
        *,
        received_at: datetime | None = None,
        stored_at: datetime | None = None,
        seq: int | None = None,
    ) -> None:
        """The device sends ``(name, body)`` metric records at ``at`` through real ingest
        (received at ``received_at``, written at ``stored_at``; both default to ``at``);
        ``seq`` re-sends from that sequence number (a re-delivery)."""
        first = self.seq.get(device_id, 0) if seq is None else seq
        self.seq[device_id] = max(self.seq.get(device_id, 0), first + len(records))
        batch = TelemetryBatch(
            device_id=device_id,
            ts=at,
            records=[
                Record(epoch=1, seq=first + i, kind="metric", name=name, at=at, body=body)
                for i, (name, body) in enumerate(records)
            ],
        )
        topic, payload = encode_message(batch)
        with session_scope(self.engine) as session:
            apply_batch(session, [Received(topic, payload, received_at or at)], stored_at=stored_at)

    def rollup(
        self, now: datetime, cfg: TelemetrySettings = CFG, *, settle: bool = True
    ) -> RollupReport:
        """Run the rollup job at ``now`` (``settle``: past the commit lag of ``now``)."""
        when = now + timedelta(seconds=cfg.commit_lag_s + 1) if settle else now
        return run_rollup(self.engine, cfg, when)

    def cursor(self) -> RollupCursor | None:
        with Session(self.engine) as session:
            return session.exec(select(RollupCursor)).first()

    def all(self, table: type[Any]) -> list[Any]:
        with Session(self.engine) as session:
            return list(session.exec(select(table)).all())


PASSWORD = "correct-horse-battery"


class Api:
    """The controller app on a real database, called through TestClient without starting
    its broker, ingest or scheduler (the rollup is run by the test), with a token per role."""

    def __init__(self, url: str) -> None:
        settings = load_settings(
            None,
            environment="development",
            database_url=url,
            secure_cookies=False,
            telemetry={"commit_lag_s": CFG.commit_lag_s, "drift_min_samples": 20},
        )
        engine = make_engine(url)
        init_db(engine)
        self.services = Services(settings=settings, engine=engine)
        app = create_app(settings, services=self.services)
        app.state.services = self.services  # what the lifespan would set
        self.client = TestClient(app)
        self.tokens: dict[str, str] = {}
        with session_scope(engine) as session:
            for role in ("viewer", "operator"):
                user = create_user(session, username=role, password=PASSWORD, role=role)
                self.tokens[role] = create_api_token(session, user, name="tests")

    def get(self, path: str, role: str = "viewer", **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        return self.client.get(path, params=params, headers=headers)

    def post(self, path: str, body: Any, role: str = "operator") -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        return self.client.post(path, json=body, headers=headers)
