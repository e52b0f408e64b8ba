"""What a rollout's devices are doing, read from the database for the engine.

Two queries per step whatever the fleet size: one for the members (their rollout record,
quarantine flag, last contact and reported ``model`` key, contract 2), and the telemetry
aggregate of the current wave (contract 3), computed in SQL (counts, sums, the p95 by
``ORDER BY ... OFFSET``) so no inference row is loaded into Python.
"""

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float, and_, case, cast, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from controller.liveness import as_utc
from controller.models import Device
from controller.rollouts.engine import (
    DeviceView,
    ModelReport,
    Outcome,
    RolloutError,
    TelemetryAggregate,
    parse_model_report,
)
from controller.rollouts.tables import RolloutDevice
from controller.shadows import DeviceShadow
from controller.telemetry_store import TelemetryRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Member:
    """A member's row id (to update), what the engine sees, and its raw reported model."""

    row_id: int
    view: DeviceView
    reported_model: dict[str, Any] | None


def _utc(moment: datetime | None) -> datetime | None:
    return as_utc(moment) if moment is not None else None


def _report(device_id: str, doc: Any) -> ModelReport | None:
    try:
        return parse_model_report(doc)
    except RolloutError as e:
        # A device's bad report must not stop its rollout: treat it as no report.
        log.warning("ignoring %s's reported model: %s", device_id, e)
        return None


def load_members(session: Session, rollout_id: int) -> list[Member]:
    """Every member of the rollout with its live facts, in one query (plain rows: ORM
    objects for a thousand members cost more than the query)."""
    rd = RolloutDevice
    member_id = col(rd.device_id)
    rows = session.execute(
        sa_select(
            col(rd.id),
            member_id,
            col(rd.wave),
            col(rd.outcome),
            col(rd.assigned_at),
            col(rd.outcome_at),
            col(rd.previous_model),
            col(Device.quarantined),
            col(Device.last_seen),
            col(DeviceShadow.reported)["model"],
            col(DeviceShadow.reported_updated_at),
        )
        .join(Device, col(Device.id) == member_id, isouter=True)
        .join(DeviceShadow, col(DeviceShadow.device_id) == member_id, isouter=True)
        .where(col(rd.rollout_id) == rollout_id)
    ).all()
    members = []
    for (
        row_id,
        device_id,
        wave,
        outcome,
        assigned_at,
        outcome_at,
        previous,
        quarantined,
        last_seen,
        model_doc,
        reported_at,
    ) in rows:
        view = DeviceView(
            device_id=device_id,
            wave=wave,
            outcome=Outcome(outcome),
            assigned_at=_utc(assigned_at),
            outcome_at=_utc(outcome_at),
            # A member whose device row vanished is treated as quarantined: never assigned.
            quarantined=bool(quarantined) if quarantined is not None else True,
            last_seen=_utc(last_seen),
            report=_report(device_id, model_doc),
            reported_at=_utc(reported_at),
            previous=previous,
        )
        doc = model_doc if isinstance(model_doc, dict) else None
        members.append(Member(row_id=row_id, view=view, reported_model=doc))
    return members


def _db_time(moment: datetime) -> datetime:
    """Times are stored as UTC; SQLite compares them as text in that form."""
    return moment.astimezone(UTC)


def wave_telemetry(
    session: Session,
    rollout_id: int,
    wave: int,
    model: str,
    *,
    since: datetime | None = None,
) -> TelemetryAggregate:
    """Inference and drift telemetry of ``wave``'s installed devices for ``model``, each
    device counted from its install time (and from ``since``, when set)."""
    t = TelemetryRecord
    rd = RolloutDevice
    body = col(t.body)
    conditions = [
        col(rd.rollout_id) == rollout_id,
        col(rd.wave) == wave,
        col(rd.installed_at).is_not(None),
        col(t.at) >= col(rd.installed_at),
        body["model"].as_string() == model,
    ]
    if since is not None:
        conditions.append(col(t.at) >= _db_time(since))
    joined = and_(col(t.device_id) == col(rd.device_id))
    inference = [*conditions, col(t.kind) == "metric", col(t.name) == "inference"]

    status = body["status"].as_string()
    cascaded = body["cascaded"].as_boolean()
    latency = body["latency_ms"].as_float()
    counts = session.exec(
        select(
            func.count(),
            func.coalesce(func.sum(case((status != "ok", 1), else_=0)), 0),
            func.coalesce(func.sum(case((cascaded.is_(True), 1), else_=0)), 0),
            func.count(latency),
        )
        .select_from(t)
        .join(rd, joined)
        .where(*inference)
    ).one()
    inferences, errors, n_cascaded, n_latency = (int(v or 0) for v in counts)

    p95: float | None = None
    if n_latency:
        rank = math.ceil(0.95 * n_latency) - 1  # nearest-rank percentile
        value = session.exec(
            select(cast(latency, Float))
            .select_from(t)
            .join(rd, joined)
            .where(*inference, latency.is_not(None))
            .order_by(cast(latency, Float))
            .offset(rank)
            .limit(1)
        ).first()
        p95 = float(value) if value is not None else None

    score = body["score"].as_float()
    drift = session.exec(
        select(func.count(score), func.avg(score))
        .select_from(t)
        .join(rd, joined)
        .where(*conditions, col(t.name) == "drift")
    ).one()
    drift_samples = int(drift[0] or 0)
    return TelemetryAggregate(
        inferences=inferences,
        errors=errors,
        cascaded=n_cascaded,
        latency_p95_ms=p95,
        drift_score=float(drift[1]) if drift_samples else None,
        drift_samples=drift_samples,
    )


__all__ = ["Member", "load_members", "wave_telemetry"]
