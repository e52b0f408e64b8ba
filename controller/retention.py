"""Retention: the job that keeps the database from growing without bound under a steady
fleet (docs/telemetry.md, "Retention").

Each table with a retention (``plan``) loses its rows older than the cutoff, a batch of
``retention.batch_rows`` rows per transaction, so no writer waits long on the deletes. A
batch reads the next ids in primary-key order with their timestamps, and deletes the old
ones among them by id range (the rows of these tables are written in time order, give or
take the rows an hour row gains late); a batch with nothing old ends that table for this
run, so a run over data that has nothing due reads one batch per table.

Raw telemetry goes only once the rollup cursor has passed it (``telemetry_record.id <=
telemetry_rollup_cursor.last_id``): an hour not rolled up yet keeps its records whatever
their age, and if the rollup stops, so does the raw deletion. Its age is ``received_at``,
the controller's clock, never the device's ``at``. Each device's newest record (by epoch
and sequence number) stays whatever its age: ingest's plausibility check measures a
device's next batch against it. Attestation verdicts keep each device's
newest verdict and newest passing one whatever their age (the boot-epoch check reads the
newest passing one). The audit log is kept for ever unless ``retention.audit_days`` is set.

On PostgreSQL an advisory lock per transaction lets one replica delete at a time (the
``lock`` callable, ``controller.services._job_lock``); a replica that finds it taken stops
this run.
"""

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, literal, text
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col

from controller.attestation.service import AttestationResult
from controller.audit import AuditEntry
from controller.db import session_scope
from controller.devices.liveness import as_utc
from controller.devices.tables import DeviceStatusEvent
from controller.ingest.tables import RejectedMessage
from controller.settings import Settings
from controller.telemetry.rollup import CURSOR
from controller.telemetry.tables import (
    DeviceHealthHour,
    DeviceRequestHour,
    DriftHour,
    DriftScore,
    FleetRequestHour,
    RollupCursor,
    TelemetryRecord,
)

log = logging.getLogger(__name__)

JOB = "retention"
JobLock = Callable[[Session, str], bool]
_IN_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True, slots=True)
class Sweep:
    """One table's retention: its rows whose ``time`` column is older than ``keep`` go."""

    name: str
    table: type[SQLModel]
    time: str
    keep: timedelta
    # Only rows the telemetry rollup has passed (raw telemetry).
    rolled_up_only: bool = False
    # Keep each device's newest row and newest passing one (attestation verdicts).
    keep_newest_per_device: bool = False


@dataclass
class RetentionReport:
    """What one run deleted, per table (for logs, metrics and tests)."""

    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    locked_out: bool = False
    # Tables whose run ended at the batch limit with old rows left (the next run goes on).
    unfinished: list[str] = field(default_factory=list)


def plan(settings: Settings) -> list[Sweep]:
    """The tables with a retention under ``settings``, raw telemetry first (the largest)."""
    t = settings.telemetry
    r = settings.retention
    hourly = timedelta(days=t.hourly_retention_days)
    fleet = timedelta(days=t.fleet_retention_days)
    sweeps = [
        Sweep(
            "telemetry_record",
            TelemetryRecord,
            "received_at",
            timedelta(hours=t.raw_retention_h),
            rolled_up_only=True,
        ),
        Sweep("telemetry_device_hour", DeviceRequestHour, "hour", hourly),
        Sweep("telemetry_health_hour", DeviceHealthHour, "hour", hourly),
        Sweep("telemetry_fleet_hour", FleetRequestHour, "hour", fleet),
        Sweep("drift_hour", DriftHour, "hour", fleet),
        Sweep("drift_score", DriftScore, "hour", fleet),
    ]
    optional: list[tuple[str, type[SQLModel], str, float | None, bool]] = [
        ("device_status_event", DeviceStatusEvent, "at", r.status_events_days, False),
        ("attestation_result", AttestationResult, "at", r.attestation_results_days, True),
        ("rejected_message", RejectedMessage, "received_at", r.dead_letters_days, False),
        ("audit_entry", AuditEntry, "at", r.audit_days, False),
    ]
    for name, table, time, days, newest in optional:
        if days is not None:
            sweeps.append(
                Sweep(name, table, time, timedelta(days=days), keep_newest_per_device=newest)
            )
    return sweeps


def _column(table: type[SQLModel], name: str) -> Any:
    return col(getattr(table, name))


def _protected(session: Session, ids: list[int]) -> set[int]:
    """Among the attestation verdicts ``ids``, each of their devices' newest verdict and
    newest passing one (read over all of the device's verdicts)."""
    a = AttestationResult
    devices = sorted(
        set(session.execute(sa_select(col(a.device_id)).where(col(a.id).in_(ids))).scalars())
    )
    keep: set[int] = set()
    for i in range(0, len(devices), _IN_CHUNK):
        part = devices[i : i + _IN_CHUNK]
        for only_ok in (False, True):
            query = sa_select(func.max(col(a.id))).where(col(a.device_id).in_(part))
            if only_ok:
                query = query.where(col(a.ok))
            keep.update(session.execute(query.group_by(col(a.device_id))).scalars())
    return keep


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _IN_CHUNK):
        yield ids[i : i + _IN_CHUNK]


# The newest record of each listed device by (epoch, seq): the unique index read backwards
# once per device (the same probe ingest's plausibility check makes).
_NEWEST_RECORDS = (
    "SELECT (SELECT u.id FROM telemetry_record AS u WHERE u.device_id = d.value "
    "ORDER BY u.epoch DESC, u.seq DESC LIMIT 1) FROM {ids}"
)
_DEVICE_LIST = {
    "sqlite": "json_each(:ids) AS d",
    "postgresql": "unnest(CAST(:ids AS varchar[])) AS d(value)",
}


def _newest_records(session: Session, device_ids: set[str]) -> set[int]:
    """The id of each device's newest raw record (by epoch and sequence number)."""
    dialect = session.get_bind().dialect.name
    ids = sorted(device_ids)
    param: str | list[str] = json.dumps(ids) if dialect == "sqlite" else ids
    statement = text(_NEWEST_RECORDS.format(ids=_DEVICE_LIST[dialect]))
    return {i for i in session.execute(statement, {"ids": param}).scalars() if i is not None}


def delete_batch(
    session: Session, sweep: Sweep, now: datetime, after: int, limit: int
) -> tuple[int, int, bool]:
    """Delete the rows of ``sweep`` due at ``now`` among the next ``limit`` ids after
    ``after`` (in the caller's transaction); returns how many went, the id the next batch
    starts after, and whether one may be due (this one was full and held old rows)."""
    table = sweep.table
    ident = _column(table, "id")
    stamp = _column(table, sweep.time)
    cutoff = (now - sweep.keep).astimezone(UTC)
    device = _column(table, "device_id") if sweep.rolled_up_only else literal(None)
    query = sa_select(ident, stamp, device).where(ident > after)
    if sweep.rolled_up_only:
        cursor = session.get(RollupCursor, CURSOR)
        upto = cursor.last_id if cursor is not None else 0
        query = query.where(ident <= upto)
    rows = session.execute(query.order_by(ident).limit(limit)).all()
    if not rows:
        return 0, after, False
    old = [(row_id, dev) for row_id, at, dev in rows if at is not None and as_utc(at) < cutoff]
    last = rows[-1][0]
    if not old:
        return 0, last, False
    if sweep.keep_newest_per_device:
        keep = _protected(session, [row_id for row_id, _ in old])
        deleted = 0
        for part in _chunks([i for i, _ in old if i not in keep]):
            deleted += _rowcount(session.execute(delete(table).where(ident.in_(part))))
        return deleted, last, len(rows) == limit
    # By range, the time tested again in SQL: one statement, no list of ids.
    statement = delete(table).where(ident > after, ident <= last, stamp < cutoff)
    if sweep.rolled_up_only:
        # Each device's newest record stays: ingest's plausibility check measures the next
        # batch's numbering against it (with none stored, any numbering would pass).
        newest = _newest_records(session, {dev for _, dev in old})
        kept = sorted(newest.intersection(i for i, _ in old))
        if kept:
            statement = statement.where(ident.not_in(kept))
    deleted = _rowcount(session.execute(statement))
    return deleted, last, len(rows) == limit


def run_retention(
    engine: Engine, settings: Settings, now: datetime, *, lock: JobLock | None = None
) -> RetentionReport:
    """Delete what is due at ``now`` in every table of ``plan(settings)``, one committed
    transaction per batch, at most ``retention.max_batches`` of them per table and run."""
    cfg = settings.retention
    report = RetentionReport()
    for sweep in plan(settings):
        after, more = 0, True
        total = 0
        budget = cfg.max_batches
        while more:
            if budget == 0:
                report.unfinished.append(sweep.name)
                break
            with session_scope(engine) as session:
                if lock is not None and not lock(session, JOB):
                    report.locked_out = True
                    return report
                deleted, after, more = delete_batch(session, sweep, now, after, cfg.batch_rows)
            budget -= 1
            report.batches += 1
            total += deleted
        if total:
            report.deleted[sweep.name] = total
    if report.deleted:
        log.info("retention deleted %s", report.deleted)
    return report


__all__ = ["JOB", "RetentionReport", "Sweep", "delete_batch", "plan", "run_retention"]
