"""The rollup job: raw ``telemetry_record`` rows into the hourly tables, then drift scores
and alerts for the hours it touched.

Each chunk is one transaction: read the rows after the cursor, fold them (``fold.py``),
merge the sums into the stored hourly rows (read-modify-write) and move the cursor, so a
crash or a re-run never counts a row twice (re-delivered records never become new raw
rows: ingest stores each record once). On PostgreSQL an advisory lock lets one replica
run it at a time.

The cursor only moves past rows stored at least ``commit_lag_s`` ago (``received_at``,
which ingest stamps when it writes the batch, not when the message arrived: see
``controller/ingest/telemetry_store.py``), and stops at the first younger one: an ingest
transaction still open may hold lower ids than rows already visible, and the cursor must
not pass them. Bodies that do not conform are counted
(``telemetry_rollup_cursor.malformed``) and skipped; they never stop the rows after them.

A record that conforms but still cannot be applied (merging or scoring it fails for any
reason but the database being unavailable) must not stop the rollup either: when a
chunk's transaction fails so, the chunk is redone one record per transaction, each moving
the cursor past its record; a record that fails alone is counted as malformed and the
cursor moves past it. Good records of the chunk are kept.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Text, cast, null, tuple_
from sqlalchemy import case as sa_case
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlmodel import Session, SQLModel, col, select

from controller.db import session_scope
from controller.telemetry.drift import (
    request_missing_references,
    resolve_pending,
    score_hours,
)
from controller.telemetry.fold import (
    ROLLED_UP,
    DriftAgg,
    Fold,
    HealthAgg,
    RawRecord,
    RequestAgg,
    WindowBounds,
    as_counts,
    fold,
    merge_counts,
    utc,
)
from controller.telemetry.settings import TelemetrySettings
from controller.telemetry.tables import (
    DeviceHealthHour,
    DeviceRequestHour,
    DriftHour,
    FleetRequestHour,
    RollupCursor,
    TelemetryRecord,
)
from shared.json_guard import JsonShapeError, loads_bounded

log = logging.getLogger(__name__)

CURSOR = "rollup"
JOB = "telemetry-rollup"
JobLock = Callable[[Session, str], bool]
_KEYS = 300  # keys per tuple IN (...) list
Row = TypeVar("Row", bound=SQLModel)


@dataclass
class RollupReport:
    """What one run did (for logs, metrics and tests)."""

    chunks: int = 0
    folded: int = 0
    malformed: int = 0
    references: list[str] = field(default_factory=list)
    locked_out: bool = False


# A stored body came through ingest's decoder (64 KiB messages); rows older than its depth
# limits may still be deeper, so the decode here is bounded too.
MAX_BODY_BYTES = 1024 * 1024


def _decode(body: Any) -> Any:
    if isinstance(body, str):
        try:
            return loads_bounded(body, max_bytes=MAX_BODY_BYTES)
        except JsonShapeError:
            return None
    return body


def read_chunk(
    session: Session, after: int, limit: int, horizon: datetime
) -> tuple[list[RawRecord], int | None, bool]:
    """The rolled-up records among the next ``limit`` rows after id ``after`` received
    before ``horizon``; the id the cursor may move to (None: not at all) and whether more
    rows may be due (the chunk was full and all of it old enough). Bodies come as text and
    are decoded here: one that does not parse is a malformed record, never an error."""
    t = TelemetryRecord
    wanted = (col(t.kind) == "metric") & col(t.name).in_(ROLLED_UP)
    rows = session.execute(
        sa_select(
            col(t.id),
            col(t.device_id),
            col(t.name),
            col(t.at),
            col(t.received_at),
            sa_case((wanted, cast(col(t.body), Text)), else_=null()),
        )
        .where(col(t.id) > after)
        .order_by(col(t.id))
        .limit(limit)
    ).all()
    records: list[RawRecord] = []
    last: int | None = None
    for row_id, device_id, name, at, received_at, body in rows:
        received = utc(received_at)
        if received >= horizon:
            return records, last, False  # this row and the ones after it wait
        last = row_id
        if body is not None:
            records.append(RawRecord(row_id, device_id, name, utc(at), _decode(body), received))
    return records, last, len(rows) == limit


def _existing(
    session: Session, table: type[Row], columns: Sequence[str], keys: list[Any]
) -> dict[Any, Row]:
    found: dict[Any, Row] = {}
    for i in range(0, len(keys), _KEYS):
        part = keys[i : i + _KEYS]
        target = tuple_(*(getattr(table, c) for c in columns))
        for row in session.exec(select(table).where(target.in_(part))):
            found[tuple(getattr(row, c) for c in columns)] = row
    return found


def _merge_requests(row: DeviceRequestHour | FleetRequestHour, agg: RequestAgg) -> None:
    for name in RequestAgg.COUNTERS:
        setattr(row, name, getattr(row, name) + getattr(agg, name))
    current = as_counts(row.latency)
    row.latency = merge_counts(current, agg.latency) if current else list(agg.latency)  # type: ignore[assignment]


def _merge_health(row: DeviceHealthHour, agg: HealthAgg) -> None:
    stored = HealthAgg(
        samples=row.samples,
        cpu_samples=row.cpu_samples,
        cpu_sum=row.cpu_sum,
        cpu_max=row.cpu_max,
        memory_samples=row.memory_samples,
        memory_sum=row.memory_sum,
        memory_max=row.memory_max,
        disk_max=row.disk_max,
        temperature_max=row.temperature_max,
        last_at=row.last_at,
        last=dict(row.last),
    )
    stored.merge(agg)
    for name in (
        "samples", "cpu_samples", "cpu_sum", "cpu_max", "memory_samples", "memory_sum",
        "memory_max", "disk_max", "temperature_max", "last_at", "last",
    ):  # fmt: skip
        setattr(row, name, getattr(stored, name))


def _merge_drift(row: DriftHour, agg: DriftAgg) -> None:
    current = as_counts(row.counts)
    try:
        row.counts = merge_counts(current, agg.counts) if current else agg.counts
        row.samples = row.samples + agg.samples
    except ValueError:  # a feature stored in another form: the newer data wins, whole
        row.counts = agg.counts
        row.samples = agg.samples


def apply_fold(session: Session, folded: Fold) -> list[DriftHour]:
    """Merge ``folded`` into the hourly tables (in the caller's transaction); returns the
    drift rows it touched."""
    keys = list(folded.requests)
    rows = _existing(session, DeviceRequestHour, ("device_id", "hour", "tier", "task_class"), keys)
    for key, agg in folded.requests.items():
        device_id, hour, tier, task_class = key
        row = rows.get(key) or DeviceRequestHour(
            device_id=device_id, hour=hour, tier=tier, task_class=task_class
        )
        _merge_requests(row, agg)
        session.add(row)
    fleet = _existing(session, FleetRequestHour, ("hour", "tier", "task_class"), list(folded.fleet))
    for fkey, agg in folded.fleet.items():
        hour, tier, task_class = fkey
        frow = fleet.get(fkey) or FleetRequestHour(hour=hour, tier=tier, task_class=task_class)
        _merge_requests(frow, agg)
        session.add(frow)
    health = _existing(session, DeviceHealthHour, ("device_id", "hour"), list(folded.health))
    for hkey, hagg in folded.health.items():
        hrow = health.get(hkey) or DeviceHealthHour(device_id=hkey[0], hour=hkey[1])
        _merge_health(hrow, hagg)
        session.add(hrow)
    drift = _existing(
        session, DriftHour, ("model", "version", "feature", "hour"), list(folded.drift)
    )
    touched: list[DriftHour] = []
    for dkey, dagg in folded.drift.items():
        model, version, feature, hour = dkey
        drow = drift.get(dkey) or DriftHour(
            model=model, version=version, feature=feature, hour=hour
        )
        _merge_drift(drow, dagg)
        session.add(drow)
        touched.append(drow)
    session.flush()
    return touched


def _cursor(session: Session, now: datetime) -> RollupCursor:
    cursor = session.get(RollupCursor, CURSOR)
    if cursor is None:
        cursor = RollupCursor(name=CURSOR, updated_at=utc(now))
        session.add(cursor)
        session.flush()
    return cursor


def _bounds(cfg: TelemetrySettings) -> WindowBounds:
    return WindowBounds(
        ahead=timedelta(seconds=cfg.window_ahead_s),
        max_age=timedelta(hours=cfg.window_max_age_h),
    )


def _apply(session: Session, cfg: TelemetrySettings, folded: Fold, now: datetime) -> None:
    """Merge ``folded`` into the hourly tables and score the drift hours it touched."""
    touched = apply_fold(session, folded)
    by_model: dict[str, list[DriftHour]] = {}
    for row in touched:
        by_model.setdefault(row.model, []).append(row)
    for model, rows in sorted(by_model.items()):
        score_hours(session, cfg, model, rows, now)


def _advance(cursor: RollupCursor, last: int, folded: Fold) -> None:
    cursor.last_id = last
    cursor.processed += folded.folded
    cursor.malformed += sum(folded.malformed.values())
    if folded.malformed:
        log.warning("telemetry rollup: malformed records skipped: %s", dict(folded.malformed))


def rollup_chunk(session: Session, cfg: TelemetrySettings, now: datetime) -> tuple[bool, Fold]:
    """Fold the next chunk into the hourly tables and move the cursor, in the caller's
    transaction; whether more rows may be due now, and the fold."""
    cursor = _cursor(session, now)
    horizon = utc(now) - timedelta(seconds=cfg.commit_lag_s)
    records, last, more = read_chunk(session, cursor.last_id, cfg.rollup_chunk, horizon)
    folded = fold(records, _bounds(cfg))
    cursor.updated_at = utc(now)  # the job ran (and, here, committed): the lag metric's clock
    session.add(cursor)
    if last is None:
        return False, folded
    _apply(session, cfg, folded, now)
    _advance(cursor, last, folded)
    return more, folded


def _database_down(error: Exception) -> bool:
    """An error of the database itself (the chunk is retried as it is next run), not of
    the data being applied."""
    return isinstance(error, OperationalError | InterfaceError | DisconnectionError)


def rollup_one_by_one(
    engine: Engine, cfg: TelemetrySettings, now: datetime, lock: JobLock | None
) -> tuple[bool, Fold] | None:
    """Redo the next chunk one record per transaction (after its transaction failed on
    its data): each record that applies is kept, each that does not is counted as
    malformed; the cursor moves past every record either way. None when locked out."""
    total = Fold()
    with session_scope(engine) as session:
        if lock is not None and not lock(session, JOB):
            return None
        cursor = _cursor(session, now)
        horizon = utc(now) - timedelta(seconds=cfg.commit_lag_s)
        records, last, more = read_chunk(session, cursor.last_id, cfg.rollup_chunk, horizon)
    if last is None:
        return False, total
    bounds = _bounds(cfg)
    for record in records:
        folded = fold([record], bounds)
        try:
            with session_scope(engine) as session:
                if lock is not None and not lock(session, JOB):
                    return None
                cursor = _cursor(session, now)
                if cursor.last_id >= record.id:
                    continue  # another replica got here first
                _apply(session, cfg, folded, now)
                _advance(cursor, record.id, folded)
                cursor.updated_at = utc(now)
        except Exception as e:
            if _database_down(e):
                raise
            log.warning(
                "telemetry rollup: record %d (%s) could not be applied, skipped: %s",
                record.id,
                record.name,
                type(e).__name__,
            )
            folded = Fold()
            folded.malformed[record.name] += 1
            with session_scope(engine) as session:
                if lock is not None and not lock(session, JOB):
                    return None
                cursor = _cursor(session, now)
                if cursor.last_id < record.id:
                    _advance(cursor, record.id, folded)
        total.folded += folded.folded
        total.malformed.update(folded.malformed)
    with session_scope(engine) as session:
        if lock is not None and not lock(session, JOB):
            return None
        cursor = _cursor(session, now)
        cursor.last_id = max(cursor.last_id, last)  # past the rows not rolled up, too
        cursor.updated_at = utc(now)
    return more, total


def run_rollup(
    engine: Engine, cfg: TelemetrySettings, now: datetime, *, lock: JobLock | None = None
) -> RollupReport:
    """Roll up everything due, chunk by chunk (each committed), then take pending
    references. ``lock(session, name)`` is the controller's advisory job lock."""
    report = RollupReport()
    for _ in range(cfg.rollup_max_chunks):
        try:
            with session_scope(engine) as session:
                if lock is not None and not lock(session, JOB):
                    report.locked_out = True
                    return report
                more, folded = rollup_chunk(session, cfg, now)
        except Exception as e:
            if _database_down(e):
                raise
            log.warning(
                "telemetry rollup: a chunk failed to apply (%s); redoing it record by record",
                type(e).__name__,
            )
            redone = rollup_one_by_one(engine, cfg, now, lock)
            if redone is None:
                report.locked_out = True
                return report
            more, folded = redone
        report.chunks += 1
        report.folded += folded.folded
        report.malformed += sum(folded.malformed.values())
        if not more:
            break
    with session_scope(engine) as session:
        if lock is not None and not lock(session, JOB):
            report.locked_out = True
            return report
        request_missing_references(session, now=now)
        report.references = resolve_pending(session, cfg, now)
    return report


__all__ = [
    "CURSOR",
    "RollupReport",
    "apply_fold",
    "read_chunk",
    "rollup_chunk",
    "rollup_one_by_one",
    "run_rollup",
]
