"""The telemetry API on a real database: fleet summary, device metrics, drift and alerts,
their shapes and numbers, and their errors as problem details."""

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from controller.audit import AuditEntry
from controller.cli.telemetry import app as cli_app
from controller.db import session_scope
from controller.devices.tables import Device
from controller.metrics import ControllerCollector, render
from controller.telemetry.fold import hour_of
from controller.telemetry.settings import TelemetrySettings
from controller.telemetry.tables import DeviceRequestHour, DriftScore
from tests.conftest import free_port, wait_for
from tests.rollout_world import MODEL, World
from tests.telemetry_world import (
    Api,
    TelemetryWorld,
    drift_window,
    group,
    inference_window,
)

NORMAL = [20.0] * 30 + [100.0] * 10
SHIFTED = [3000.0] * 30 + [100.0] * 10


class Fleet:
    """Three devices (one quarantined) that sent an hour's windows and system samples."""

    def __init__(self, url: str) -> None:
        self.api = Api(url)
        self.world = World(url)
        self.tw = TelemetryWorld(url, self.world.seq)
        self.now = datetime.now(UTC)
        self.ids = self.world.add_devices(3, at=self.now - timedelta(minutes=5))
        with session_scope(self.world.engine) as session:
            device = session.get(Device, self.ids[2])
            assert device is not None
            device.quarantined = True

    def send_requests(self) -> None:
        at = self.now - timedelta(minutes=2)
        window = inference_window(
            at,
            group(latencies=[10.0, 20.0, 30.0], errors=1, prompt_tokens=300, completion_tokens=150),
            group(
                "cloud", latencies=[900.0], escalations=1, prompt_tokens=100, completion_tokens=50
            ),
        )
        system = [
            ("system", {"cpu_percent": 20.0, "memory_percent": 40.0, "disk_percent": 10.0}),
            ("system", {"cpu_percent": 60.0, "memory_percent": 50.0, "temperature_c": 55.0}),
        ]
        self.tw.send(self.ids[0], [("inference.window", window), *system], at)
        other = inference_window(
            at,
            group(
                "private",
                "summarize",
                latencies=[50.0, 70.0],
                cascades=1,
                fallbacks=1,
                prompt_tokens=200,
                completion_tokens=100,
            ),
        )
        self.tw.send(self.ids[1], [("inference.window", other)], at)

    def send_drift(self) -> None:
        early = self.now - timedelta(hours=3)
        late = self.now - timedelta(minutes=2)
        for d in self.ids:
            self.tw.send(d, [("drift.window", drift_window(early, prompt_tokens=NORMAL))], early)
            shifted = drift_window(late, version="1.1", prompt_tokens=SHIFTED)
            self.tw.send(d, [("drift.window", shifted)], late)

    def rollup(self) -> None:
        self.tw.rollup(self.now)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    """The fleet on a SQLite file."""
    return Fleet(f"sqlite:///{tmp_path / 'edgefleet.db'}")


def test_fleet_summary_without_requests_has_null_rates(fleet: Fleet) -> None:
    """Before any window is rolled up the summary still counts devices, every rate is null
    and the series has one zeroed point per hour."""
    body = fleet.api.get("/api/fleet/summary", hours=6).json()
    assert body["devices"]["total"] == 3 and body["devices"]["quarantined"] == 1
    assert body["requests"] == {"total": 0, "by_tier": {}}
    rates = ("escalation_rate", "cascade_rate", "fallback_rate", "error_rate")
    assert all(body[r] is None for r in rates)
    assert len(body["series"]) == 6 and body["series"][-1]["by_tier"] == {}


def test_fleet_summary_adds_up_the_rolled_up_hours(fleet: Fleet) -> None:
    """Requests by tier, rates as fractions, cost saved (local and private tokens) and spent
    (cloud tokens) at the configured prices, and an hourly series that sums to the totals."""
    fleet.send_requests()
    fleet.rollup()
    body = fleet.api.get("/api/fleet/summary").json()
    assert body["devices"] == {
        "total": 3,
        "online": 3,
        "offline": 0,
        "unknown": 0,
        "quarantined": 1,
        "by_class": {"x86_64-cpu": 3},
    }
    assert body["window_hours"] == 24
    assert body["requests"] == {"total": 6, "by_tier": {"cloud": 1, "local": 3, "private": 2}}
    for rate in ("escalation_rate", "cascade_rate", "fallback_rate", "error_rate"):
        assert body[rate] == pytest.approx(1 / 6)
    prices = fleet.api.services.settings.telemetry
    saved = 500 * prices.cloud_price_prompt_per_1k + 250 * prices.cloud_price_completion_per_1k
    spent = 100 * prices.cloud_price_prompt_per_1k + 50 * prices.cloud_price_completion_per_1k
    assert body["cloud_cost_saved_usd"] == pytest.approx(saved / 1000)
    assert body["cloud_cost_spent_usd"] == pytest.approx(spent / 1000)
    assert len(body["series"]) == 24
    assert sum(sum(p["by_tier"].values()) for p in body["series"]) == 6
    assert sum(p["errors"] for p in body["series"]) == 1
    assert (body["alerts_open"], body["rollouts_active"]) == (0, 0)
    assert fleet.api.get("/api/fleet/summary", hours=0).status_code == 422


def test_device_metrics_show_health_latency_and_the_newest_sample(fleet: Fleet) -> None:
    """Hourly health (averages and maxima), latency per tier and task class with p50/p95,
    totals over the window and the newest system sample; an unknown device is a 404
    problem."""
    fleet.send_requests()
    fleet.rollup()
    body = fleet.api.get(f"/api/devices/{fleet.ids[0]}/metrics").json()
    assert body["device_id"] == fleet.ids[0] and body["hours"] == 24
    (health,) = body["health"]
    assert health["cpu_avg"] == pytest.approx(40.0) and health["cpu_max"] == 60.0
    assert health["memory_avg"] == pytest.approx(45.0) and health["memory_max"] == 50.0
    assert (health["disk_max"], health["temperature_max"]) == (10.0, 55.0)
    assert [(p["tier"], p["task_class"], p["count"]) for p in body["latency"]] == [
        ("cloud", "chat", 1),
        ("local", "chat", 3),
    ]
    totals = {t["tier"]: t for t in body["totals"]}
    assert totals["local"]["errors"] == 1
    assert 10 <= totals["local"]["p50_ms"] <= 35 and totals["local"]["p95_ms"] <= 35
    assert 750 <= totals["cloud"]["p95_ms"] <= 1000
    latest = body["latest_system"]
    assert latest["cpu_percent"] == 60.0 and latest["temperature_c"] == 55.0
    assert latest["at"].endswith("+00:00")

    quiet = fleet.api.get(f"/api/devices/{fleet.ids[2]}/metrics").json()
    assert quiet["health"] == [] and quiet["latest_system"] is None
    missing = fleet.api.get("/api/devices/nope/metrics")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_drift_reference_scores_and_alerts_through_the_api(fleet: Fleet) -> None:
    """An operator sets the reference from an earlier window (audited as that user); the
    recent hours are scored against it, a shifted hour shows as an alert in the drift list,
    the model's series and the alert list; viewers cannot set references and a window
    without data is a 404 problem."""
    fleet.send_drift()
    fleet.rollup()
    assert fleet.api.get("/api/drift").json()["data"] == []
    window = {
        "window_start": (fleet.now - timedelta(hours=4)).isoformat(),
        "window_end": (fleet.now - timedelta(minutes=150)).isoformat(),
    }
    assert fleet.api.post(f"/api/drift/{MODEL}/reference", window, role="viewer").status_code == 403
    response = fleet.api.post(f"/api/drift/{MODEL}/reference", window)
    assert response.status_code == 200, response.text
    reference = response.json()
    assert reference["version"] == "1.0" and reference["samples"] == 120
    assert reference["features"] == ["prompt_tokens"]
    assert reference["reason"] == "set by an operator"

    listing = fleet.api.get("/api/drift").json()
    assert listing["thresholds"] == {"psi": 0.2, "ks": 0.1}
    (latest,) = listing["data"]
    assert (latest["model"], latest["version"], latest["feature"]) == (
        MODEL,
        "1.1",
        "prompt_tokens",
    )
    assert latest["psi"] > 0.2 and latest["samples"] == 120 and latest["alert"] is True

    shown = fleet.api.get(f"/api/drift/{MODEL}").json()
    assert shown["reference"]["window_end"] is not None
    points = shown["series"]["prompt_tokens"]
    assert [p["version"] for p in points] == ["1.0", "1.1"]
    assert points[0]["psi"] == pytest.approx(0.0)
    assert fleet.api.get("/api/drift/unknown-model").json()["reference"] is None

    open_alerts = fleet.api.get("/api/alerts").json()
    assert open_alerts["count"] == 1
    alert = open_alerts["data"][0]
    assert set(alert) == {
        "id",
        "kind",
        "subject",
        "feature",
        "value",
        "threshold",
        "state",
        "opened_at",
        "closed_at",
        "detail",
    }
    assert (alert["kind"], alert["subject"], alert["state"]) == ("drift", MODEL, "open")
    assert fleet.api.get("/api/alerts", state="closed").json() == {"data": [], "count": 0}
    assert fleet.api.get("/api/alerts", state="all").json()["count"] == 1
    assert fleet.api.get("/api/alerts", state="bogus").status_code == 422

    empty = fleet.api.post("/api/drift/nothing/reference", {})
    assert empty.status_code == 404
    assert empty.headers["content-type"] == "application/problem+json"
    backwards = {"window_start": window["window_end"], "window_end": window["window_start"]}
    assert fleet.api.post(f"/api/drift/{MODEL}/reference", backwards).status_code == 422
    with Session(fleet.world.engine) as session:
        actors = session.exec(
            select(AuditEntry.actor).where(col(AuditEntry.action) == "drift.reference")
        ).all()
    assert actors == ["user:operator"]


@pytest.mark.postgres
def test_the_telemetry_api_on_postgresql(postgres_url: str) -> None:
    """Summary, device metrics and drift give the same answers on PostgreSQL."""
    fleet = Fleet(postgres_url)
    fleet.send_requests()
    fleet.send_drift()
    fleet.rollup()
    summary: dict[str, Any] = fleet.api.get("/api/fleet/summary").json()
    assert summary["requests"]["total"] == 6 and summary["devices"]["quarantined"] == 1
    metrics = fleet.api.get(f"/api/devices/{fleet.ids[0]}/metrics").json()
    assert metrics["health"][0]["cpu_max"] == 60.0
    assert metrics["latest_system"]["cpu_percent"] == 60.0
    window = {"window_end": (fleet.now - timedelta(minutes=150)).isoformat()}
    assert fleet.api.post(f"/api/drift/{MODEL}/reference", window).status_code == 200
    (latest,) = fleet.api.get("/api/drift").json()["data"]
    assert latest["alert"] is True and latest["version"] == "1.1"
    assert fleet.api.get("/api/alerts").json()["count"] == 1


def test_the_cli_prints_tables_and_json(fleet: Fleet) -> None:
    """``fleet summary``, ``drift reference|list|show`` and ``alerts list`` talk to a real
    HTTP server: tables by default, the API's JSON with ``--json``, and a clear one-line
    error (exit 1) when the controller refuses."""
    fleet.send_requests()
    fleet.send_drift()
    fleet.rollup()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            fleet.api.client.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    runner = CliRunner()
    try:
        wait_for(lambda: server.started, 20, what="uvicorn to start")
        auth = ["--url", f"http://127.0.0.1:{port}", "--token", fleet.api.tokens["operator"]]
        summary = runner.invoke(cli_app, ["fleet", "summary", *auth, "--json"])
        assert summary.exit_code == 0, summary.output
        assert json.loads(summary.output)["requests"]["total"] == 6
        table = runner.invoke(cli_app, ["fleet", "summary", *auth])
        assert table.exit_code == 0 and "quarantined" in table.output

        end = (fleet.now - timedelta(minutes=150)).isoformat()
        ref = runner.invoke(cli_app, ["drift", "reference", MODEL, "--end", end, *auth])
        assert ref.exit_code == 0, ref.output
        assert "set by an operator" in ref.output
        listed = runner.invoke(cli_app, ["drift", "list", *auth, "--json"])
        assert json.loads(listed.output)["data"][0]["alert"] is True
        shown = runner.invoke(cli_app, ["drift", "show", MODEL, *auth])
        assert shown.exit_code == 0 and "prompt_tokens" in shown.output
        alerts = runner.invoke(cli_app, ["alerts", "list", "--state", "all", *auth, "--json"])
        assert json.loads(alerts.output)["count"] == 1
        assert "1 open alerts" in runner.invoke(cli_app, ["alerts", "list", *auth]).output

        refused = runner.invoke(cli_app, ["drift", "reference", "nothing", *auth])
        assert refused.exit_code == 1
        assert "404" in refused.output and "Traceback" not in refused.output
    finally:
        server.should_exit = True
        thread.join(20)


def test_device_metrics_survive_stored_counts_no_sketch_holds(fleet: Fleet) -> None:
    """A stored latency sketch with counts too large for a float gives null quantiles, not
    a server error."""
    with session_scope(fleet.world.engine) as session:
        session.add(
            DeviceRequestHour(
                device_id=fleet.ids[0],
                hour=hour_of(fleet.now),
                tier="local",
                task_class="chat",
                count=1,
                latency=[10**400] + [0] * 23,
            )
        )
    response = fleet.api.get(f"/api/devices/{fleet.ids[0]}/metrics")
    assert response.status_code == 200, response.text
    (row,) = response.json()["latency"]
    assert (row["p50_ms"], row["p95_ms"]) == (None, None)


def test_model_names_with_a_slash_reach_their_drift_routes(fleet: Fleet) -> None:
    """A model named ``org/model`` (allowed by the protocol's labels) has its drift page,
    series and reference routes, encoded or not."""
    name = "org/model"
    early = fleet.now - timedelta(hours=3)
    for d in fleet.ids:
        window = drift_window(early, model=name, prompt_tokens=NORMAL)
        fleet.tw.send(d, [("drift.window", window)], early)
    fleet.rollup()
    window = {"window_end": (fleet.now - timedelta(minutes=150)).isoformat()}
    response = fleet.api.post("/api/drift/org%2Fmodel/reference", window)
    assert response.status_code == 200, response.text
    for path in ("/api/drift/org/model", "/api/drift/org%2Fmodel"):
        shown = fleet.api.get(path).json()
        assert shown["model"] == name and shown["reference"]["samples"] == 120
    page = fleet.api.get("/console/drift/org%2Fmodel")
    assert page.status_code != 404


def test_drift_gauges_cover_recently_scored_models_only(tmp_path: Path) -> None:
    """/metrics reports drift of models scored in the last hours, at most the configured
    number (the most recently scored), and none without KS for ``classes``."""
    world = TelemetryWorld(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    now = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    with session_scope(world.engine) as session:
        for i, hours_ago in enumerate([100, 3, 2, 1]):
            for feature, ks in (("prompt_tokens", 0.1), ("classes", None)):
                session.add(
                    DriftScore(
                        model=f"m{i}", feature=feature, psi=0.5, ks=ks, samples=100,
                        hour=hour_of(now - timedelta(hours=hours_ago)),
                    )
                )  # fmt: skip
        session.add(
            DriftScore(
                model="future", feature="prompt_tokens", psi=0.5, ks=0.1, samples=100,
                hour=hour_of(now + timedelta(days=3)),
            )
        )  # fmt: skip
    cfg = TelemetrySettings(metrics_drift_hours=48, metrics_drift_models=2)
    collector = ControllerCollector(world.engine, lambda: {}, clock=lambda: now, cfg=cfg)
    text = render(collector).decode()
    psi = {
        (s.labels["model"], s.labels["feature"])
        for family in text_string_to_metric_families(text)
        if family.name == "edgefleet_drift_psi"
        for s in family.samples
    }
    ks = {
        (s.labels["model"], s.labels["feature"])
        for family in text_string_to_metric_families(text)
        if family.name == "edgefleet_drift_ks"
        for s in family.samples
    }
    assert psi == {("m2", "prompt_tokens"), ("m2", "classes"), ("m3", "prompt_tokens"),
                   ("m3", "classes")}  # fmt: skip
    assert ks == {("m2", "prompt_tokens"), ("m3", "prompt_tokens")}
