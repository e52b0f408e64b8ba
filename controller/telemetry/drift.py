"""Drift in the database: reference windows, hourly scores and drift alerts.

References are per (model, feature). A rollout asks for one when it is created
(``request_reference``): the next rollup run takes the model's sketches over the
reference window before the rollout started, leaving out the version being rolled out;
if the model had no data then, the reference is taken from the first full reference
window of data after the start instead (until then the request waits as a pending row and
any older reference stays in use). A model with data that never had a reference (served
before any rollout) gets a request from its first data (``request_missing_references``).
An operator can set one from any window (``set_reference``). Scores are computed per hour
as sketches are rolled up, and again for the recent past whenever a reference changes.
"""

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, tuple_
from sqlmodel import Session, col, select

from controller.audit import audit
from controller.telemetry.fold import Counts, as_counts, hour_of, merge_counts, samples_of, utc
from controller.telemetry.scoring import FeatureScore, Thresholds, alert_action, crossed
from controller.telemetry.scoring import feature_score as score_feature
from controller.telemetry.settings import TelemetrySettings
from controller.telemetry.tables import DriftHour, DriftReference, DriftScore, TelemetryAlert

PENDING = "*"  # the feature of a pending reference request
FIRST_DATA = "first data of the model"  # the reason of a request made without a rollout
SYSTEM_ACTOR = "system:telemetry"
RESCORE_HOURS = 168  # a new reference rescores this much of the recent past
_CHUNK = 400


class NoDriftData(LookupError):
    """The window holds no drift sketches of the model."""


def thresholds(cfg: TelemetrySettings) -> Thresholds:
    return Thresholds(
        cfg.drift_psi_threshold,
        cfg.drift_ks_threshold,
        cfg.drift_min_samples,
        cfg.drift_close_ratio,
    )


def load_reference(session: Session, model: str) -> dict[str, Counts]:
    """The model's reference sketches by feature (empty without a reference)."""
    rows = session.exec(
        select(DriftReference).where(
            col(DriftReference.model) == model, col(DriftReference.pending).is_(False)
        )
    ).all()
    return {r.feature: as_counts(r.counts) for r in rows if samples_of(as_counts(r.counts))}


def window_sketches(
    session: Session,
    model: str,
    start: datetime,
    end: datetime,
    *,
    version: str | None = None,
    exclude_version: str | None = None,
) -> tuple[dict[str, Counts], str]:
    """The model's hourly sketches summed over the hours overlapping [start, end), by
    feature, and the version with the most samples among them."""
    query = select(DriftHour).where(
        col(DriftHour.model) == model,
        col(DriftHour.hour) >= hour_of(start),
        col(DriftHour.hour) < utc(end),
    )
    if version is not None:
        query = query.where(col(DriftHour.version) == version)
    if exclude_version is not None:
        query = query.where(col(DriftHour.version) != exclude_version)
    out: dict[str, Counts] = {}
    by_version: dict[str, int] = defaultdict(int)
    for row in session.exec(query):
        counts = as_counts(row.counts)
        if not samples_of(counts):
            continue
        try:
            out[row.feature] = (
                merge_counts(out[row.feature], counts) if row.feature in out else counts
            )
        except ValueError:
            continue
        by_version[row.version] += samples_of(counts)
    top = max(by_version.items(), key=lambda kv: kv[1])[0] if by_version else ""
    return out, top


def store_reference(
    session: Session,
    model: str,
    sketches_: dict[str, Counts],
    *,
    version: str,
    start: datetime,
    end: datetime,
    actor: str,
    reason: str,
    now: datetime,
) -> list[DriftReference]:
    """Replace the model's reference (and any pending request) with ``sketches_``."""
    session.execute(delete(DriftReference).where(col(DriftReference.model) == model))
    rows = [
        DriftReference(
            model=model,
            feature=feature,
            version=version,
            window_start=utc(start),
            window_end=utc(end),
            samples=samples_of(counts),
            counts=counts,
            set_at=utc(now),
            set_by=actor[:64],
            reason=reason[:256],
        )
        for feature, counts in sorted(sketches_.items())
    ]
    session.add_all(rows)
    session.flush()
    audit(
        session,
        actor=actor,
        action="drift.reference",
        target=f"model:{model}",
        reason=reason,
        detail={
            "version": version or None,
            "window_start": utc(start).isoformat(),
            "window_end": utc(end).isoformat(),
            "features": {f: samples_of(c) for f, c in sorted(sketches_.items())},
        },
        at=now,
    )
    return rows


def set_reference(
    session: Session,
    cfg: TelemetrySettings,
    model: str,
    *,
    now: datetime,
    actor: str,
    start: datetime | None = None,
    end: datetime | None = None,
    version: str | None = None,
) -> list[DriftReference]:
    """An operator's reference: the model's sketches over [start, end) (default: the
    reference window up to now), optionally of one version; rescored right away.
    Raises ``NoDriftData`` when the window holds none, ``ValueError`` for an empty window."""
    end = end or now
    start = start or end - timedelta(hours=cfg.reference_window_h)
    if utc(start) >= utc(end):
        raise ValueError("window_start must be before window_end")
    found, top = window_sketches(session, model, start, end, version=version)
    if not found:
        raise NoDriftData(f"no drift sketches of model {model!r} in that window")
    rows = store_reference(
        session,
        model,
        found,
        version=version if version is not None else top,
        start=start,
        end=end,
        actor=actor,
        reason="set by an operator",
        now=now,
    )
    rescore_model(session, cfg, model, since=now - timedelta(hours=RESCORE_HOURS), now=now)
    return rows


def request_reference(session: Session, model: str, version: str, *, now: datetime) -> None:
    """A rollout of ``model`` ``version`` starts now: ask the rollup job for a reference
    (see the module docstring). In the caller's transaction; an earlier request for the
    model is replaced."""
    session.execute(
        delete(DriftReference).where(
            col(DriftReference.model) == model, col(DriftReference.feature) == PENDING
        )
    )
    session.add(
        DriftReference(
            model=model,
            feature=PENDING,
            version=version,
            window_start=utc(now),
            window_end=utc(now),
            pending=True,
            set_at=utc(now),
            set_by=SYSTEM_ACTOR,
            reason=f"rollout of version {version}",
        )
    )


def request_missing_references(session: Session, *, now: datetime) -> list[str]:
    """Models with drift data but no reference, set or requested (served before any
    rollout, e.g. a fleet's factory model): request one from their first data, so a fleet
    is watched for drift without an operator having to start a rollout first. Returns the
    models."""
    known = select(DriftReference.model).distinct()
    missing = session.exec(
        select(DriftHour.model, func.min(DriftHour.hour))
        .where(col(DriftHour.model).not_in(known))
        .group_by(col(DriftHour.model))
    ).all()
    for model, first in missing:
        session.add(
            DriftReference(
                model=model,
                feature=PENDING,
                version="",
                window_start=utc(first),
                window_end=utc(first),
                pending=True,
                set_at=utc(now),
                set_by=SYSTEM_ACTOR,
                reason=FIRST_DATA,
            )
        )
    return [model for model, _ in missing]


def resolve_pending(session: Session, cfg: TelemetrySettings, now: datetime) -> list[str]:
    """Take the references rollouts asked for, where the data allows; returns the models."""
    window = timedelta(hours=cfg.reference_window_h)
    done: list[str] = []
    for request in session.exec(
        select(DriftReference).where(col(DriftReference.pending).is_(True))
    ).all():
        start = request.window_start
        found, top = window_sketches(
            session, request.model, start - window, start, exclude_version=request.version
        )
        reason = f"before the rollout of version {request.version}"
        if found:
            begin, end = start - window, start
        else:
            first = session.exec(
                select(func.min(DriftHour.hour)).where(
                    col(DriftHour.model) == request.model, col(DriftHour.hour) >= hour_of(start)
                )
            ).one()
            if first is None:
                continue
            begin, end = first, first + window
            horizon = utc(now) - timedelta(seconds=cfg.commit_lag_s)
            if end > horizon:
                continue  # the first full window of data is not over yet
            found, top = window_sketches(session, request.model, begin, end)
            reason = (
                f"first {cfg.reference_window_h} h of data"
                if request.reason == FIRST_DATA
                else f"first {cfg.reference_window_h} h of data after the rollout of version "
                f"{request.version}"
            )
            if not found:
                continue
        store_reference(
            session,
            request.model,
            found,
            version=top,
            start=begin,
            end=end,
            actor=SYSTEM_ACTOR,
            reason=reason,
            now=now,
        )
        rescore_model(
            session, cfg, request.model, since=now - timedelta(hours=RESCORE_HOURS), now=now
        )
        done.append(request.model)
    return done


def _upsert_scores(
    session: Session, scores: list[tuple[str, str, datetime, FeatureScore]], now: datetime
) -> None:
    if not scores:
        return
    keys = [(m, v, s.feature, h) for m, v, h, s in scores]
    existing: dict[tuple[str, str, str, datetime], DriftScore] = {}
    for i in range(0, len(keys), _CHUNK):
        part = keys[i : i + _CHUNK]
        for row in session.exec(
            select(DriftScore).where(
                tuple_(
                    col(DriftScore.model),
                    col(DriftScore.version),
                    col(DriftScore.feature),
                    col(DriftScore.hour),
                ).in_(part)
            )
        ):
            existing[(row.model, row.version, row.feature, row.hour)] = row
    stamp = utc(now)
    for (model, version, hour, score), key in zip(scores, keys, strict=True):
        found = existing.get(key)
        row = found or DriftScore(
            model=model, version=version, feature=score.feature, hour=hour, psi=0, ks=0
        )
        existing[key] = row
        row.psi, row.ks, row.samples, row.computed_at = score.psi, score.ks, score.samples, stamp
        session.add(row)


def score_hours(
    session: Session,
    cfg: TelemetrySettings,
    model: str,
    rows: Iterable[DriftHour],
    now: datetime,
) -> set[str]:
    """Score the given hourly sketches of ``model`` against its reference and update its
    alerts; returns the features scored."""
    reference = load_reference(session, model)
    if not reference:
        return set()
    scores: list[tuple[str, str, datetime, FeatureScore]] = []
    for row in rows:
        if row.feature not in reference:
            continue
        score = score_feature(row.feature, reference[row.feature], as_counts(row.counts))
        if score is not None:
            scores.append((row.model, row.version, row.hour, score))
    _upsert_scores(session, scores, now)
    session.flush()
    features = {s.feature for _, _, _, s in scores}
    update_alerts(session, cfg, model, features, now)
    return features


def rescore_model(
    session: Session, cfg: TelemetrySettings, model: str, *, since: datetime, now: datetime
) -> set[str]:
    """Score every hour of ``model`` since ``since`` (after its reference changed)."""
    rows = session.exec(
        select(DriftHour).where(
            col(DriftHour.model) == model,
            col(DriftHour.hour) >= hour_of(since),
            col(DriftHour.hour) <= hour_of(now),
        )
    ).all()
    return score_hours(session, cfg, model, rows, now)


def _judged_hour(
    session: Session, model: str, feature: str, min_samples: int, now: datetime
) -> list[DriftScore]:
    """The scores of the newest hour (not after ``now``'s hour) in which some version of
    ``model`` has at least ``min_samples`` samples of ``feature``: those versions' scores.
    An hour still filling with a handful of samples is not judged; the last one with
    enough is."""
    latest = session.exec(
        select(func.max(DriftScore.hour)).where(
            col(DriftScore.model) == model,
            col(DriftScore.feature) == feature,
            col(DriftScore.hour) <= hour_of(now),
            col(DriftScore.samples) >= min_samples,
        )
    ).one()
    if latest is None:
        return []
    return list(
        session.exec(
            select(DriftScore).where(
                col(DriftScore.model) == model,
                col(DriftScore.feature) == feature,
                col(DriftScore.hour) == latest,
                col(DriftScore.samples) >= min_samples,
            )
        )
    )


def update_alerts(
    session: Session, cfg: TelemetrySettings, model: str, features: Iterable[str], now: datetime
) -> None:
    """Open, update or close each feature's drift alert from its newest judged hour (the
    newest with enough samples, never one after ``now``; the version with the largest PSI
    there). Hysteresis: an alert closes only below ``drift_close_ratio`` of the thresholds
    (``scoring.alert_action``)."""
    limits = thresholds(cfg)
    for feature in sorted(set(features)):
        candidates = _judged_hour(session, model, feature, limits.min_samples, now)
        if not candidates:
            continue
        worst = max(candidates, key=lambda r: (r.psi, r.ks or 0.0))
        score = FeatureScore(feature, worst.psi, worst.ks, worst.samples)
        alert = session.exec(
            select(TelemetryAlert).where(
                col(TelemetryAlert.kind) == "drift",
                col(TelemetryAlert.subject) == model,
                col(TelemetryAlert.feature) == feature,
                col(TelemetryAlert.state) == "open",
            )
        ).first()
        action = alert_action(score, limits, is_open=alert is not None)
        detail: dict[str, Any] = {
            "version": worst.version or None,
            "hour": utc(worst.hour).isoformat(),
            "psi": worst.psi,
            "ks": worst.ks,
            "samples": worst.samples,
        }
        stamp = utc(now)
        if action == "open":
            metric = crossed(score, limits)
            assert metric is not None
            name, value, threshold = metric
            detail["statistic"] = name
            alert = TelemetryAlert(
                kind="drift", subject=model, feature=feature, value=value,
                threshold=threshold, opened_at=stamp, detail=detail,
            )  # fmt: skip
            session.add(alert)
            session.flush()
            audit(
                session,
                actor=SYSTEM_ACTOR,
                action="alert.open",
                target=f"alert:{alert.id}",
                reason=f"drift of {model} {feature}: {name} {value:.3f} above {threshold:.3f}",
                detail={"kind": "drift", "model": model, "feature": feature, **detail},
                at=now,
            )
        elif action == "update" and alert is not None:
            # Above the close level: the statistic still highest relative to its
            # threshold, or the one the alert opened on.
            metric = crossed(score, limits) or crossed(score, limits, limits.close_ratio)
            assert metric is not None
            name, value, threshold = metric
            detail["statistic"] = name
            alert.value, alert.threshold, alert.detail = value, threshold, detail
            session.add(alert)
        elif action == "close" and alert is not None:
            alert.state, alert.closed_at = "closed", stamp
            alert.detail = {**alert.detail, "closed_with": detail}
            session.add(alert)
            audit(
                session,
                actor=SYSTEM_ACTOR,
                action="alert.close",
                target=f"alert:{alert.id}",
                reason=(
                    f"drift of {model} {feature} back below {cfg.drift_close_ratio:.0%} "
                    "of its thresholds"
                ),
                detail={"kind": "drift", "model": model, "feature": feature, **detail},
                at=now,
            )


__all__ = [
    "PENDING",
    "NoDriftData",
    "load_reference",
    "request_missing_references",
    "request_reference",
    "rescore_model",
    "resolve_pending",
    "score_hours",
    "set_reference",
    "store_reference",
    "thresholds",
    "update_alerts",
    "window_sketches",
]
