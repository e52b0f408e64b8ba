"""What a rollout's devices are doing, read from the database for the engine.

Two queries per step whatever the fleet size: one for the members (their rollout record,
quarantine flag, last contact and reported ``model`` key, contract 2), and the telemetry
aggregate of the current wave (contract 3), computed in SQL (counts, sums, the p95 by
``ORDER BY ... OFFSET``) so no inference row is loaded into Python.

Devices write both the reported documents and the telemetry: a malformed value is ignored
(a report treated as none, a record left out of the aggregate), never an error that would
stop the rollout's every step.
"""

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Float, Numeric, Text, and_, case, cast, func, literal, null, type_coerce
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from controller.devices.liveness import as_utc
from controller.devices.shadows import DeviceShadow
from controller.devices.tables import Device
from controller.rollouts.engine import (
    DeviceView,
    ModelReport,
    Outcome,
    RolloutError,
    TelemetryAggregate,
    parse_model_report,
)
from controller.rollouts.tables import RolloutDevice
from controller.telemetry.drift import load_reference
from controller.telemetry.fold import CLASSES, Counts, merge_all
from controller.telemetry.scoring import model_score
from controller.telemetry.tables import TelemetryRecord
from shared.telemetry_windows import DRIFT_WINDOW, DriftWindow

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


# A JSON document's escape for NUL. PostgreSQL's json type stores it, but none of its
# operators (``->`` included) reads a document holding one: they raise.
_NUL_ESCAPE = "\\u0000"


def _readable(doc: Any, dialect: str) -> ColumnElement[bool]:
    """True where the database's JSON functions read ``doc`` without an error.

    PostgreSQL: no ``\\u0000`` in its text (a string holding an escaped backslash before
    ``u0000`` is taken for one too: rare, and treated the same way). SQLite: valid JSON to
    its parser (it refuses ``Infinity``, stored for a number too large for a float).
    """
    if dialect == "postgresql":
        return func.strpos(cast(doc, Text), _NUL_ESCAPE) == 0
    return func.json_valid(doc) == 1


def _without_nul(value: Any) -> Any:
    """``value`` with every NUL in its strings replaced (PostgreSQL text refuses NUL)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


# Reported ``model`` documents and previous models are read as JSON text and parsed here,
# each distinct text once: a tick then parses only what changed since the last (at 10,000
# members, decoding every document on every tick was a third of the tick). The parsed
# values are shared between ticks and never modified. Bounded: cleared when full.
_PARSED_MAX = 100_000
_parsed: dict[str, tuple[Any, ModelReport | None, str | None]] = {}


def _parse(text: str | None) -> tuple[Any, ModelReport | None, str | None]:
    """The document ``text`` holds, its model report, and why it is none (if so)."""
    if text is None:
        return None, None, None
    hit = _parsed.get(text)
    if hit is None:
        doc: Any
        report: ModelReport | None
        why: str | None
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            doc, report, why = None, None, f"unreadable: {type(e).__name__}"
        else:
            try:
                report, why = parse_model_report(doc), None
            except RolloutError as e:
                report, why = None, str(e)
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        hit = _parsed[text] = (doc, report, why)
    return hit


def _as_text(doc: Any) -> ColumnElement[Any]:
    """A JSON value as its text (parsed by ``_parse``, not by the driver)."""
    return cast(doc, Text)


def load_members(session: Session, rollout_id: int) -> list[Member]:
    """Every member of the rollout with its live facts, in one query (plain rows: ORM
    objects for a thousand members cost more than the query)."""
    rd = RolloutDevice
    member_id = col(rd.device_id)
    dialect = session.get_bind().dialect.name
    reported = col(DeviceShadow.reported)
    readable = _readable(reported, dialect)
    # The model key, read in SQL where the database can; on PostgreSQL, a document holding
    # a NUL comes whole and the key is taken here. A document SQLite cannot read is no
    # report.
    whole: Any = case((~readable, reported)) if dialect == "postgresql" else null()
    rows = session.execute(
        sa_select(
            col(rd.id),
            member_id,
            col(rd.wave),
            col(rd.outcome),
            col(rd.assigned_at),
            col(rd.outcome_at),
            _as_text(col(rd.previous_model)),
            col(Device.quarantined),
            col(Device.last_seen),
            case((readable, _as_text(reported["model"]))),
            whole,
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
        whole_doc,
        reported_at,
    ) in rows:
        if isinstance(whole_doc, dict):
            model_doc = _without_nul(whole_doc.get("model"))
            report = _report(device_id, model_doc)
        else:
            model_doc, report, why = _parse(model_doc)
            if why is not None:
                # A device's bad report must not stop its rollout: treat it as no report.
                log.warning("ignoring %s's reported model: %s", device_id, why)
        view = DeviceView(
            device_id=device_id,
            wave=wave,
            outcome=Outcome(outcome),
            assigned_at=_utc(assigned_at),
            outcome_at=_utc(outcome_at),
            # A member whose device row vanished is treated as quarantined: never assigned.
            quarantined=bool(quarantined) if quarantined is not None else True,
            last_seen=_utc(last_seen),
            report=report,
            reported_at=_utc(reported_at),
            previous=_parse(previous)[0],
        )
        doc = model_doc if isinstance(model_doc, dict) else None
        members.append(Member(row_id=row_id, view=view, reported_model=doc))
    return members


def _db_time(moment: datetime) -> datetime:
    """Times are stored as UTC; SQLite compares them as text in that form."""
    return moment.astimezone(UTC)


# The largest finite double: a JSON number beyond it is no latency or score.
_DOUBLE_MAX = 1.7976931348623157e308
# Telemetry records the gates count as requests to the model (contract 3).
REQUEST_RECORDS = ("inference", "perception")


def _document(dialect: str) -> ColumnElement[Any]:
    """A telemetry record's body in the form ``_Body`` reads; NULL for one either database
    could not read (see ``_readable``), and for one holding a NUL on both (SQLite reads
    it, PostgreSQL cannot): such a record is left out, the same way on both.

    On PostgreSQL it is parsed once into ``jsonb`` (each ``->`` on ``json`` parses the whole
    text again); the NUL test before it is what makes that cast safe.
    """
    body = col(TelemetryRecord.body)
    readable = _readable(body, dialect)
    if dialect == "postgresql":
        return case((readable, cast(body, JSONB)))
    # LIKE: no wildcard in the pattern, and far cheaper than instr() here.
    return case((and_(readable, type_coerce(body, Text).not_like(f"%{_NUL_ESCAPE}%")), body))


class _Body:
    """Typed reads of the top-level keys of ``doc`` (from ``_document``), the same on both
    databases.

    A value of another type reads as NULL, never an error: every cast sits behind a type
    test in a CASE, the one construct whose evaluation order either database guarantees.
    """

    def __init__(self, doc: Any, dialect: str) -> None:
        self.pg = dialect == "postgresql"
        self._doc = doc

    def _type(self, key: str) -> ColumnElement[Any]:
        if self.pg:
            return func.jsonb_typeof(self._doc[key])
        return func.json_type(self._doc, f'$."{key}"')

    def _raw(self, key: str) -> ColumnElement[Any]:
        if self.pg:
            text: ColumnElement[Any] = self._doc[key].as_string()
            return text
        return func.json_extract(self._doc, f'$."{key}"')

    def string(self, key: str) -> ColumnElement[Any]:
        """The value if it is a string, else NULL."""
        return case((self._type(key) == ("string" if self.pg else "text"), self._raw(key)))

    def number(self, key: str) -> ColumnElement[Any]:
        """The value if it is a JSON number, else NULL: a double, except that on SQLite a
        number too large for one reads as an infinity (test with ``finite``)."""
        if self.pg:
            # Compared as numeric (which holds any JSON number): casting a number too
            # large for a double to one is an error.
            raw = self._raw(key)
            limit = literal(Decimal(repr(_DOUBLE_MAX)), Numeric)
            in_range = case((cast(raw, Numeric).between(-limit, limit), cast(raw, Float)))
            return case((self._type(key) == "number", in_range))
        return case((self._type(key).in_(("integer", "real")), self._raw(key)))

    def boolean(self, key: str) -> ColumnElement[Any]:
        """``'true'`` or ``'false'`` for a boolean, NULL if the key is missing, else the
        value's JSON type (test with ``is_boolean_or_absent``)."""
        if self.pg:
            kind = self._type(key)
            return case((kind == "boolean", self._raw(key)), else_=kind)
        return self._type(key)


def _finite(number: Any) -> ColumnElement[bool]:
    """A ``_Body.number`` a double holds (not NULL, not an infinity)."""
    return number.between(-_DOUBLE_MAX, _DOUBLE_MAX)  # type: ignore[no-any-return]


def _boolean_or_absent(flag: Any) -> ColumnElement[bool]:
    """A ``_Body.boolean`` of a missing key or a boolean."""
    return func.coalesce(flag, "false").in_(("true", "false"))


# The newest drift windows a wave's drift score reads: at one a minute, a 500-device
# canary's first 30 minutes; plenty for a histogram, and bounded whatever the wave's size.
DRIFT_WINDOWS_MAX = 15_000


def _wave_drift(
    session: Session, conditions: list[Any], dialect: str, model: str, min_samples: int
) -> tuple[float | None, int]:
    """PSI of the wave's ``drift.window`` sketches of ``model`` (its devices since
    install, ``conditions``) against the model's reference: the largest over the features
    with at least ``min_samples`` samples, and that feature's samples (when none has
    enough, the largest PSI and its feature's samples, for the gate to wait on).

    A window whose body does not conform is left out; without a reference, or without
    data, the score is None (the gate then skips or waits, see gates.py).
    """
    t = TelemetryRecord
    rd = RolloutDevice
    docs = (
        select(
            col(t.id).label("id"),
            cast(col(t.body), Text).label("text"),
            _document(dialect).label("doc"),
        )
        .select_from(t)
        .join(rd, col(t.device_id) == col(rd.device_id))
        .where(*conditions, col(t.kind) == "metric", col(t.name) == DRIFT_WINDOW)
        .offset(0)
        .subquery()
    )
    body = _Body(docs.c.doc, dialect)
    texts = session.exec(
        select(docs.c.text)
        .where(body.string("model") == model)
        .order_by(docs.c.id.desc())
        .limit(DRIFT_WINDOWS_MAX)
    ).all()
    parts: list[dict[str, Counts]] = []
    for text in texts:
        try:
            window = DriftWindow.model_validate_json(text)
        except ValueError:
            continue
        part: dict[str, Counts] = {f: list(c) for f, c in window.features.items()}
        if window.classes:
            part[CLASSES] = dict(window.classes)
        parts.append(part)
    if not parts:
        return None, 0
    current = merge_all(parts)
    reference = load_reference(session, model)
    score, samples, _ = model_score(reference, current, min_samples=min_samples)
    return score, samples


def _latency_p95(
    session: Session,
    dialect: str,
    counts: Any,
    inferences: int,
    latency: ColumnElement[Any],
    requests: list[Any],
) -> float | None:
    """The nearest-rank p95 latency of the counted requests: from the counts' own pass on
    PostgreSQL (``percentile_disc``), by an ``ORDER BY … OFFSET`` query on SQLite."""
    if not inferences:
        return None
    if dialect == "postgresql":
        return float(counts[3]) if counts[3] is not None else None
    rank = math.ceil(0.95 * inferences) - 1
    value = session.exec(
        select(latency).where(*requests).order_by(latency).offset(rank).limit(1)
    ).first()
    return float(value) if value is not None else None


def wave_telemetry(
    session: Session,
    rollout_id: int,
    wave: int,
    model: str,
    *,
    since: datetime | None = None,
    min_samples: int = 0,
) -> TelemetryAggregate:
    """Request (``inference`` and ``perception``) and drift telemetry of ``wave``'s
    installed devices for ``model``, each device counted from its install time (and from
    ``since``, when set).

    A request record counts only if it conforms: a string ``status``, a number
    ``latency_ms`` and ``cascaded`` absent or a boolean. Others are left out, whatever they
    hold. The drift score is the PSI (largest over features) of the devices' ``drift.window``
    sketches of ``model`` against the model's reference (``_wave_drift``), over features
    with ``min_samples`` samples each (the gate policy's).
    """
    t = TelemetryRecord
    rd = RolloutDevice
    dialect = session.get_bind().dialect.name
    # The wave's first install: no record before it counts. Bound as a value, it lets the
    # database find the wave's records by time (the index on ``at``) instead of reading
    # every record its devices ever sent (a week of them at 10,000 devices: seconds).
    first_install = session.exec(
        select(func.min(col(rd.installed_at))).where(
            col(rd.rollout_id) == rollout_id, col(rd.wave) == wave
        )
    ).one()
    if first_install is None:
        return TelemetryAggregate()  # nobody installed: no record can count
    conditions = [
        col(rd.rollout_id) == rollout_id,
        col(rd.wave) == wave,
        col(rd.installed_at).is_not(None),
        col(t.at) >= col(rd.installed_at),
        col(t.at) >= _db_time(as_utc(first_install)),
    ]
    if since is not None:
        conditions.append(col(t.at) >= _db_time(since))

    def fields(where: list[Any], **read: Callable[[_Body], ColumnElement[Any]]) -> Any:
        """The matching records' fields, read from their documents: each document made
        once, each field read once (OFFSET 0 keeps either database from merging a subquery
        into the query around it, which would repeat its expressions for every use)."""
        docs = (
            select(_document(dialect).label("doc"))
            .select_from(t)
            .join(rd, col(t.device_id) == col(rd.device_id))
            .where(*conditions, *where)
            .offset(0)
            .subquery()
        )
        body = _Body(docs.c.doc, dialect)
        columns = [reader(body).label(name) for name, reader in read.items()]
        return select(*columns).offset(0).subquery().c

    r = fields(
        [col(t.kind) == "metric", col(t.name).in_(REQUEST_RECORDS)],
        model=lambda b: b.string("model"),
        status=lambda b: b.string("status"),
        latency=lambda b: b.number("latency_ms"),
        cascaded=lambda b: b.boolean("cascaded"),
    )
    requests = [
        r.model == model,
        r.status.is_not(None),
        _finite(r.latency),
        _boolean_or_absent(r.cascaded),
    ]
    aggregates: list[Any] = [
        func.count(),
        func.coalesce(func.sum(case((r.status != "ok", 1), else_=0)), 0),
        func.coalesce(func.sum(case((r.cascaded == "true", 1), else_=0)), 0),
    ]
    if dialect == "postgresql":
        # The same nearest-rank p95 in the same pass: PostgreSQL's percentile_disc takes
        # the row at ceil(0.95 * n), as the OFFSET query below does (a second read of
        # every record of the wave, half the tick at 10,000 devices).
        aggregates.append(func.percentile_disc(0.95).within_group(r.latency))
    counts = session.exec(select(*aggregates).where(*requests)).one()
    inferences, errors, n_cascaded = (int(v or 0) for v in counts[:3])

    p95 = _latency_p95(session, dialect, counts, inferences, r.latency, requests)
    drift_score, drift_samples = _wave_drift(session, conditions, dialect, model, min_samples)
    return TelemetryAggregate(
        inferences=inferences,
        errors=errors,
        cascaded=n_cascaded,
        latency_p95_ms=p95,
        drift_score=drift_score,
        drift_samples=drift_samples,
    )


__all__ = ["REQUEST_RECORDS", "Member", "load_members", "wave_telemetry"]
