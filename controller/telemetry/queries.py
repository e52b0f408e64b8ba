"""What the API, console, CLI and ``/metrics`` read of fleet telemetry.

Every query is bounded (a window of hours, a page) and served by an index: the hourly
tables' unique keys lead with what is filtered on (device and hour; hour; model, feature
and hour). Device counts are SQL aggregates, never a load of the device table.
"""

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from controller.devices.tables import Device
from controller.telemetry.drift import PENDING
from controller.telemetry.fold import (
    RequestAgg,
    as_counts,
    hour_of,
    merge_counts,
    quantiles,
    utc,
)
from controller.telemetry.settings import TelemetrySettings
from controller.telemetry.tables import (
    DeviceHealthHour,
    DeviceRequestHour,
    DriftReference,
    DriftScore,
    FleetRequestHour,
    RollupCursor,
    TelemetryAlert,
    TelemetryRecord,
)
from shared import sketches

TIERS = ("local", "private", "cloud", "none")
LATENCY_BINS = sketches.bins("latency_ms")
SAVING_TIERS = ("local", "private")  # requests that did not go to a paid cloud API


def iso(moment: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC, with its offset."""
    return utc(moment).isoformat() if moment is not None else None


def _rate(part: int, total: int) -> float | None:
    return part / total if total else None


def _first_hour(now: datetime, hours: int) -> datetime:
    return hour_of(now) - timedelta(hours=hours - 1)


def device_counts(session: Session) -> dict[str, Any]:
    """Devices by state and class, and how many are quarantined (aggregates only)."""
    by_state = dict(
        session.exec(select(Device.state, func.count()).group_by(col(Device.state))).all()
    )
    by_class = {
        cls or "unknown": n
        for cls, n in session.exec(
            select(Device.device_class, func.count()).group_by(col(Device.device_class))
        ).all()
    }
    quarantined = session.exec(
        select(func.count()).select_from(Device).where(col(Device.quarantined))
    ).one()
    return {
        "total": int(sum(by_state.values())),
        "online": int(by_state.get("online", 0)),
        "offline": int(by_state.get("offline", 0)),
        "unknown": int(by_state.get("unknown", 0)),
        "quarantined": int(quarantined),
        "by_class": dict(sorted(by_class.items())),
    }


def count_open_alerts(session: Session) -> int:
    return int(
        session.exec(
            select(func.count())
            .select_from(TelemetryAlert)
            .where(col(TelemetryAlert.state) == "open")
        ).one()
    )


def fleet_summary(
    session: Session, cfg: TelemetrySettings, *, now: datetime, hours: int
) -> dict[str, Any]:
    """The fleet page: device counts, request mix and rates, cost estimates, an hourly
    series and open alerts over the last ``hours`` hours (the API adds active rollouts,
    ``controller.rollouts.queries``)."""
    first = _first_hour(now, hours)
    f = FleetRequestHour
    # Summed in SQL per (hour, tier): plain tuples, no sketch JSON (loading thousands of
    # ORM rows cost most of this query's time).
    rows = session.execute(
        sa_select(
            col(f.hour),
            col(f.tier),
            *(func.sum(getattr(f, name)).label(name) for name in RequestAgg.COUNTERS),
        )
        .where(col(f.hour) >= first, col(f.hour) <= hour_of(now))
        .group_by(col(f.hour), col(f.tier))
    ).all()
    total = RequestAgg()
    by_tier: dict[str, int] = defaultdict(int)
    tokens: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    series: dict[datetime, dict[str, Any]] = {
        first + timedelta(hours=i): {
            "by_tier": {},
            "escalations": 0,
            "cascades": 0,
            "errors": 0,
        }
        for i in range(hours)
    }
    for hour, tier, *sums in rows:
        row = RequestAgg()
        for name, value in zip(RequestAgg.COUNTERS, sums, strict=True):
            setattr(row, name, int(value or 0))
        total.merge(row)
        by_tier[tier] += row.count
        prompt, completion = tokens[tier]
        tokens[tier] = (prompt + row.prompt_tokens, completion + row.completion_tokens)
        point = series.setdefault(
            utc(hour), {"by_tier": {}, "escalations": 0, "cascades": 0, "errors": 0}
        )
        point["by_tier"][tier] = point["by_tier"].get(tier, 0) + row.count
        point["escalations"] += row.escalations
        point["cascades"] += row.cascades
        point["errors"] += row.errors

    def cost(tiers: tuple[str, ...]) -> float:
        prompt = sum(tokens[t][0] for t in tiers if t in tokens)
        completion = sum(tokens[t][1] for t in tiers if t in tokens)
        usd = (
            prompt * cfg.cloud_price_prompt_per_1k + completion * cfg.cloud_price_completion_per_1k
        ) / 1000
        return round(usd, 6)

    n = total.count
    return {
        "devices": device_counts(session),
        "window_hours": hours,
        "requests": {"total": n, "by_tier": dict(sorted(by_tier.items()))},
        "escalation_rate": _rate(total.escalations, n),
        "cascade_rate": _rate(total.cascades, n),
        "fallback_rate": _rate(total.fallbacks, n),
        "error_rate": _rate(total.errors, n),
        "cloud_cost_saved_usd": cost(SAVING_TIERS),
        "cloud_cost_spent_usd": cost(("cloud",)),
        "series": [{"hour": iso(h), **series[h]} for h in sorted(series)],
        "alerts_open": count_open_alerts(session),
    }


def _latency_sketch(value: Any) -> list[int] | None:
    """A stored latency sketch, or None if it is not one (never an error)."""
    counts = as_counts(value)
    if isinstance(counts, list) and len(counts) == LATENCY_BINS:
        return counts
    return None


def _quantiles(counts: list[int] | None) -> dict[str, float | None]:
    p50, p95 = quantiles(counts) if counts else (None, None)
    return {"p50_ms": p50, "p95_ms": p95}


def device_metrics(
    session: Session, device_id: str, *, now: datetime, hours: int
) -> dict[str, Any]:
    """The device page: hourly health, latency per tier and task class (per hour and over
    the window) and the newest system sample. Plain column reads (no ORM objects): the
    device page asks for a week of hours."""
    first = _first_hour(now, hours)
    h = DeviceHealthHour
    health = [
        {
            "hour": iso(hour),
            "samples": samples,
            "cpu_avg": cpu_sum / cpu_n if cpu_n else None,
            "cpu_max": cpu_max,
            "memory_avg": mem_sum / mem_n if mem_n else None,
            "memory_max": mem_max,
            "disk_max": disk_max,
            "temperature_max": temp_max,
        }
        for hour, samples, cpu_n, cpu_sum, cpu_max, mem_n, mem_sum, mem_max, disk_max, temp_max in (
            session.execute(
                sa_select(
                    col(h.hour),
                    col(h.samples),
                    col(h.cpu_samples),
                    col(h.cpu_sum),
                    col(h.cpu_max),
                    col(h.memory_samples),
                    col(h.memory_sum),
                    col(h.memory_max),
                    col(h.disk_max),
                    col(h.temperature_max),
                )
                .where(
                    col(h.device_id) == device_id,
                    col(h.hour) >= first,
                    col(h.hour) <= hour_of(now),
                )
                .order_by(col(h.hour))
            ).all()
        )
    ]
    r = DeviceRequestHour
    latency: list[dict[str, Any]] = []
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for hour, tier, task, count, errors, stored in session.execute(
        sa_select(
            col(r.hour), col(r.tier), col(r.task_class), col(r.count), col(r.errors), col(r.latency)
        )
        .where(col(r.device_id) == device_id, col(r.hour) >= first, col(r.hour) <= hour_of(now))
        .order_by(col(r.hour), col(r.tier), col(r.task_class))
    ).all():
        task_class = task or None
        sketch = _latency_sketch(stored)
        latency.append(
            {
                "hour": iso(hour),
                "tier": tier,
                "task_class": task_class,
                "count": count,
                "errors": errors,
                **_quantiles(sketch),
            }
        )
        total = totals.setdefault(
            (tier, task),
            {"tier": tier, "task_class": task_class, "count": 0, "errors": 0, "sketch": None},
        )
        total["count"] += count
        total["errors"] += errors
        if sketch is not None:
            total["sketch"] = (
                sketch if total["sketch"] is None else merge_counts(total["sketch"], sketch)
            )
    newest = session.execute(
        sa_select(col(h.last_at), col(h.last))
        .where(col(h.device_id) == device_id, col(h.hour) <= hour_of(now))
        .order_by(col(h.hour).desc())
        .limit(1)
    ).first()
    latest = None
    if newest is not None and newest[0] is not None and isinstance(newest[1], dict):
        latest = {"at": iso(newest[0]), **newest[1]}
    return {
        "device_id": device_id,
        "hours": hours,
        "health": health,
        "latency": latency,
        "totals": [
            {**{k: v for k, v in t.items() if k != "sketch"}, **_quantiles(t["sketch"])}
            for _, t in sorted(totals.items())
        ],
        "latest_system": latest,
    }


def open_drift_alerts(session: Session) -> set[tuple[str, str]]:
    """(model, feature) of every open drift alert."""
    return {
        (subject, feature)
        for subject, feature in session.exec(
            select(TelemetryAlert.subject, TelemetryAlert.feature).where(
                col(TelemetryAlert.state) == "open", col(TelemetryAlert.kind) == "drift"
            )
        )
    }


def thresholds_view(cfg: TelemetrySettings) -> dict[str, float]:
    return {"psi": cfg.drift_psi_threshold, "ks": cfg.drift_ks_threshold}


def latest_drift(
    session: Session,
    *,
    now: datetime | None = None,
    since: datetime | None = None,
    models: list[str] | None = None,
) -> list[DriftScore]:
    """The newest scored hour of every (model, feature), each version scored then; hours
    after ``now``'s hour and before ``since`` are left out, and only ``models`` when
    given."""
    bounds: list[Any] = []
    if now is not None:
        bounds.append(col(DriftScore.hour) <= hour_of(now))
    if since is not None:
        bounds.append(col(DriftScore.hour) >= hour_of(since))
    if models is not None:
        bounds.append(col(DriftScore.model).in_(models))
    newest = (
        select(
            col(DriftScore.model).label("model"),
            col(DriftScore.feature).label("feature"),
            func.max(DriftScore.hour).label("hour"),
        )
        .where(*bounds)
        .group_by(col(DriftScore.model), col(DriftScore.feature))
        .subquery()
    )
    return list(
        session.exec(
            select(DriftScore)
            .join(
                newest,
                and_(
                    col(DriftScore.model) == newest.c.model,
                    col(DriftScore.feature) == newest.c.feature,
                    col(DriftScore.hour) == newest.c.hour,
                ),
            )
            .order_by(col(DriftScore.model), col(DriftScore.feature), col(DriftScore.version))
        ).all()
    )


def drift_list(
    session: Session, cfg: TelemetrySettings, *, now: datetime | None = None
) -> dict[str, Any]:
    alerts = open_drift_alerts(session)
    data = [
        {
            "model": row.model,
            "version": row.version or None,
            "feature": row.feature,
            "hour": iso(row.hour),
            "psi": row.psi,
            "ks": row.ks,
            "samples": row.samples,
            "alert": (row.model, row.feature) in alerts,
        }
        for row in latest_drift(session, now=now)
    ]
    return {"data": data, "count": len(data), "thresholds": thresholds_view(cfg)}


def reference_view(rows: list[DriftReference]) -> dict[str, Any] | None:
    """A model's reference as one object (its feature rows share window and origin)."""
    taken = [r for r in rows if not r.pending]
    if not taken:
        return None
    first = taken[0]
    return {
        "version": first.version or None,
        "window_start": iso(first.window_start),
        "window_end": iso(first.window_end),
        "samples": max(r.samples for r in taken),
        "features": sorted(r.feature for r in taken),
        "set_at": iso(first.set_at),
        "set_by": first.set_by,
        "reason": first.reason,
    }


def drift_model(
    session: Session, cfg: TelemetrySettings, model: str, *, now: datetime, hours: int
) -> dict[str, Any]:
    """One model's reference and its hourly scores by feature."""
    refs = list(session.exec(select(DriftReference).where(col(DriftReference.model) == model)))
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in session.exec(
        select(DriftScore)
        .where(
            col(DriftScore.model) == model,
            col(DriftScore.hour) >= _first_hour(now, hours),
            col(DriftScore.hour) <= hour_of(now),
        )
        .order_by(col(DriftScore.feature), col(DriftScore.hour), col(DriftScore.version))
    ):
        series[row.feature].append(
            {
                "hour": iso(row.hour),
                "version": row.version or None,
                "psi": row.psi,
                "ks": row.ks,
                "samples": row.samples,
            }
        )
    pending = next((r for r in refs if r.feature == PENDING), None)
    return {
        "model": model,
        "reference": reference_view(refs),
        "reference_pending": (
            {"since": iso(pending.window_start), "reason": pending.reason} if pending else None
        ),
        "thresholds": thresholds_view(cfg),
        "series": dict(series),
    }


def alert_view(alert: TelemetryAlert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "subject": alert.subject,
        "feature": alert.feature or None,
        "value": alert.value,
        "threshold": alert.threshold,
        "state": alert.state,
        "opened_at": iso(alert.opened_at),
        "closed_at": iso(alert.closed_at),
        "detail": alert.detail,
    }


def list_alerts(
    session: Session,
    *,
    state: Literal["open", "closed", "all"] = "open",
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """Alerts, newest first."""
    query = select(TelemetryAlert)
    counter = select(func.count()).select_from(TelemetryAlert)
    if state != "all":
        query = query.where(col(TelemetryAlert.state) == state)
        counter = counter.where(col(TelemetryAlert.state) == state)
    rows = session.exec(query.order_by(col(TelemetryAlert.id).desc()).offset(offset).limit(limit))
    return {"data": [alert_view(a) for a in rows], "count": int(session.exec(counter).one())}


def rollup_status(session: Session) -> dict[str, Any]:
    """The cursor, and how many raw rows are past it (ids: an upper bound, found by the
    primary key's maximum)."""
    cursor = session.get(RollupCursor, "rollup")
    newest = session.exec(select(func.max(TelemetryRecord.id))).one() or 0
    last = cursor.last_id if cursor else 0
    return {
        "last_id": last,
        "behind_ids": max(0, int(newest) - last),
        "processed": cursor.processed if cursor else 0,
        "malformed": cursor.malformed if cursor else 0,
        "updated_at": iso(cursor.updated_at) if cursor else None,
    }


__all__ = [
    "alert_view",
    "count_open_alerts",
    "device_counts",
    "device_metrics",
    "drift_list",
    "drift_model",
    "fleet_summary",
    "iso",
    "latest_drift",
    "list_alerts",
    "rollup_status",
]
