"""The controller's ``/metrics``: Prometheus text that prometheus_client's own parser reads,
with current values from the database and ingest, and no per-device series."""

from collections import Counter
from datetime import timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from controller.db import session_scope
from controller.rollouts.engine import Status
from controller.rollouts.tables import Rollout
from tests.rollout_world import MODEL
from tests.test_telemetry_api import Fleet


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_report_the_fleet(tmp_path: Path) -> None:
    """A viewer's bearer token scrapes devices by state, quarantined, ingest counters and
    rejects by reason, rollouts by status, open alerts, the newest drift PSI per model and
    feature and the rollup's progress; no series carries a device label; anonymous scrapes
    are refused."""
    fleet = Fleet(f"sqlite:///{tmp_path / 'edgefleet.db'}")
    fleet.send_requests()
    fleet.send_drift()
    fleet.rollup()
    window = {"window_end": (fleet.now - timedelta(minutes=150)).isoformat()}
    assert fleet.api.post(f"/api/drift/{MODEL}/reference", window).status_code == 200
    with session_scope(fleet.world.engine) as session:
        session.add(Rollout(model=MODEL, version="1.1", target_path="t", status=Status.PAUSED))
    stats = fleet.api.services.stats
    stats.add("accepted", 7)
    stats.merge(Counter({"rejected:schema": 2}))

    response = fleet.api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("edgefleet_devices", (("state", "online"),))] == 3
    assert found[("edgefleet_devices_quarantined", ())] == 1
    assert found[("edgefleet_ingest_accepted_total", ())] == 7
    assert found[("edgefleet_ingest_rejected_total", (("reason", "schema"),))] == 2
    assert found[("edgefleet_rollouts", (("status", "paused"),))] == 1
    assert found[("edgefleet_alerts_open", (("kind", "drift"),))] == 1
    psi = found[("edgefleet_drift_psi", (("feature", "prompt_tokens"), ("model", MODEL)))]
    assert psi > 0.2
    assert found[("edgefleet_telemetry_rollup_records_total", ())] >= 8
    assert found[("edgefleet_telemetry_rollup_malformed_total", ())] == 0
    assert ("edgefleet_telemetry_rollup_lag_seconds", ()) in found
    assert all("device" not in label for _, labels in found for label, _ in labels)

    anonymous = fleet.api.client.get("/metrics")
    assert anonymous.status_code == 401
