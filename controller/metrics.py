"""The controller's Prometheus metrics: a collector that reads current values from the
database (devices, rollouts, telemetry) and the ingest counters at scrape time (nothing is
kept between scrapes, so every replica reports the same fleet-wide numbers, and its own
ingest counters).

No metric has a per-device label: a fleet of 10,000 devices would be 10,000 series. Drift
gauges are labelled by model and feature, bounded too: only models scored in the last
``metrics_drift_hours`` hours, at most ``metrics_drift_models`` of them (the most recently
scored first).
"""

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.attestation.policy import AUTHENTICITY_CODES
from controller.rollouts.queries import rollouts_by_status
from controller.telemetry.fold import hour_of, utc
from controller.telemetry.queries import device_counts, latest_drift, rollup_status
from controller.telemetry.settings import TelemetrySettings
from controller.telemetry.tables import DriftScore, RollupCursor, TelemetryAlert
from controller.updates.signing_health import SigningHealth
from shared.mqtt_transport import SessionHealth
from shared.supervision import WorkerStatus

PREFIX = "edgefleet"
INGEST_COUNTERS = (
    "accepted",
    "rebirths_requested",
    "batches",
    "records_inserted",
    "records_duplicate",
    "reported",
    "duplicates",
    "stale",
    "quotes",
    "certificates_issued",
    "db_errors",
    "dropped_queue_full",
    "callback_errors",
    "rejections_dropped",
)


class ControllerCollector(Collector):
    """Reads the fleet from ``engine`` and ingest counters from ``stats`` per scrape."""

    def __init__(
        self,
        engine: Engine,
        stats: Callable[[], dict[str, Any]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cfg: TelemetrySettings | None = None,
        workers: Callable[[], list[WorkerStatus]] | None = None,
        tuf: Callable[[], SigningHealth] | None = None,
        forged_quotes: Callable[[], Mapping[str, int]] | None = None,
        broker_session: Callable[[], SessionHealth | None] | None = None,
    ) -> None:
        self._engine = engine
        self._stats = stats
        self._clock = clock
        self._cfg = cfg or TelemetrySettings()
        self._workers = workers
        self._tuf = tuf
        self._forged = forged_quotes
        self._session = broker_session

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest()
        yield from self._security()
        yield from self._supervised()
        yield from self._tuf_signing()
        with Session(self._engine) as session:
            yield from self._devices(session)
            yield from self._rollouts(session)
            yield from self._alerts(session)
            yield from self._drift(session)
            yield from self._rollup(session)

    def _ingest(self) -> Iterator[Metric]:
        snapshot = self._stats()
        for name in INGEST_COUNTERS:
            yield CounterMetricFamily(
                f"{PREFIX}_ingest_{name}",
                f"Ingest: {name.replace('_', ' ')} (this replica, since it started).",
                value=float(snapshot.get(name, 0)),
            )
        rejected = CounterMetricFamily(
            f"{PREFIX}_ingest_rejected",
            "Messages ingest refused, by reason (this replica, since it started).",
            labels=["reason"],
        )
        reasons: dict[str, int] = snapshot.get("rejected", {})
        for reason, n in sorted(reasons.items()):
            rejected.add_metric([reason], float(n))
        yield rejected

    def _security(self) -> Iterator[Metric]:
        forged = CounterMetricFamily(
            f"{PREFIX}_attestation_forged_quotes",
            "Attestation quotes not signed by the device's enrolled key, by reason "
            "(not_enrolled, wrong_key, bad_signature): ignored, never a verdict (this "
            "replica, since it started).",
            labels=["reason"],
        )
        counted = self._forged() if self._forged is not None else {}
        for reason in sorted(AUTHENTICITY_CODES):
            forged.add_metric([reason], float(counted.get(reason, 0)))
        yield forged
        health = self._session() if self._session is not None else None
        yield CounterMetricFamily(
            f"{PREFIX}_broker_session_takeovers",
            "Times another client took over ingest's broker session by connecting with its "
            "client id (this replica, since it started).",
            value=float(health.takeovers if health is not None else 0),
        )

    def _supervised(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            f"{PREFIX}_worker_restarts",
            "Crashes of supervised workers (threads restarted, failed job runs), by worker "
            "(this replica, since it started).",
            labels=["worker"],
        )
        up = GaugeMetricFamily(
            f"{PREFIX}_worker_up",
            "1 while a supervised worker runs, 0 while it is down (crashed, restart pending).",
            labels=["worker"],
        )
        for status in sorted(self._workers() if self._workers else [], key=lambda w: w.name):
            restarts.add_metric([status.name], float(status.restarts))
            up.add_metric([status.name], 0.0 if status.state == "down" else 1.0)
        yield restarts
        yield up

    def _tuf_signing(self) -> Iterator[Metric]:
        health = self._tuf() if self._tuf is not None else None
        if health is None or health.status == "off":
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_tuf_can_sign",
            "1 while this controller can re-sign the TUF timestamp (passphrase set, last"
            " re-signing worked), else 0.",
            value=0.0 if health.problem is not None else 1.0,
        )
        if health.timestamp_expires is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_tuf_timestamp_expiry_timestamp_seconds",
                "When the published TUF timestamp expires (Unix time): devices refuse every"
                " update after it.",
                value=health.timestamp_expires.timestamp(),
            )

    def _devices(self, session: Session) -> Iterator[Metric]:
        counts = device_counts(session)
        by_state = GaugeMetricFamily(
            f"{PREFIX}_devices", "Registered devices by liveness state.", labels=["state"]
        )
        for state in ("online", "offline", "unknown"):
            by_state.add_metric([state], float(counts[state]))
        yield by_state
        yield GaugeMetricFamily(
            f"{PREFIX}_devices_quarantined",
            "Devices quarantined by attestation.",
            value=float(counts["quarantined"]),
        )

    def _rollouts(self, session: Session) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(f"{PREFIX}_rollouts", "Rollouts by status.", labels=["status"])
        for status, n in rollouts_by_status(session):
            gauge.add_metric([status], float(n))
        yield gauge

    def _alerts(self, session: Session) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(f"{PREFIX}_alerts_open", "Open alerts by kind.", labels=["kind"])
        for kind, n in session.exec(
            select(TelemetryAlert.kind, func.count())
            .where(col(TelemetryAlert.state) == "open")
            .group_by(col(TelemetryAlert.kind))
        ):
            gauge.add_metric([kind], float(n))
        yield gauge

    def _drift(self, session: Session) -> Iterator[Metric]:
        psi = GaugeMetricFamily(
            f"{PREFIX}_drift_psi",
            "PSI of the newest scored hour against the reference, per model and feature "
            "(the largest over the versions scored that hour).",
            labels=["model", "feature"],
        )
        ks = GaugeMetricFamily(
            f"{PREFIX}_drift_ks",
            "KS statistic of the newest scored hour, per model and feature.",
            labels=["model", "feature"],
        )
        now = self._clock()
        since = now - timedelta(hours=self._cfg.metrics_drift_hours)
        newest = func.max(DriftScore.hour)
        recent = session.exec(
            select(DriftScore.model, newest)
            .where(col(DriftScore.hour) >= hour_of(since), col(DriftScore.hour) <= hour_of(now))
            .group_by(col(DriftScore.model))
            .order_by(newest.desc(), col(DriftScore.model))
            .limit(self._cfg.metrics_drift_models)
        ).all()
        models = [model for model, _ in recent]
        worst: dict[tuple[str, str], tuple[float, float | None]] = {}
        rows = latest_drift(session, now=now, since=since, models=models) if models else []
        for row in rows:
            key = (row.model, row.feature)
            seen_psi, seen_ks = worst.get(key, (0.0, None))
            row_ks = seen_ks if row.ks is None else max(seen_ks or 0.0, row.ks)
            worst[key] = (max(seen_psi, row.psi), row_ks)
        for (model, feature), (p, k) in sorted(worst.items()):
            psi.add_metric([model, feature], p)
            if k is not None:  # none for "classes": PSI only
                ks.add_metric([model, feature], k)
        yield psi
        yield ks

    def _rollup(self, session: Session) -> Iterator[Metric]:
        status = rollup_status(session)
        yield GaugeMetricFamily(
            f"{PREFIX}_telemetry_rollup_behind_records",
            "Raw telemetry records not yet rolled up (an upper bound by id).",
            value=float(status["behind_ids"]),
        )
        cursor = session.get(RollupCursor, "rollup")
        lag = 0.0
        if cursor is not None:
            updated = utc(cursor.updated_at)
            lag = max(0.0, (self._clock() - updated).total_seconds())
        yield GaugeMetricFamily(
            f"{PREFIX}_telemetry_rollup_lag_seconds",
            "Seconds since the rollup job last committed a run (0 before its first run).",
            value=lag,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_telemetry_rollup_records",
            "Windowed records rolled up.",
            value=float(status["processed"]),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_telemetry_rollup_malformed",
            "Windowed records skipped because their body did not conform.",
            value=float(status["malformed"]),
        )


def render(collector: Collector) -> bytes:
    """The collector's metrics in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


__all__ = ["ControllerCollector", "render"]
