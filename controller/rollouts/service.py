"""Rollouts in the database: create (with the one-active-rollout rule), tick, and operator
commands, each one transaction around one pure engine step.

Everything a rollout knows lives in its rows (spec, engine state, each member's wave and
outcome), so a controller that restarts simply ticks again and carries on where the last
committed step left it. Desired documents are published after the commit that stored them
(an unpublished one is picked up by the controller's republish job).
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import bindparam, case, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controller.audit import audit
from controller.devices.shadows import DeviceShadow, mark_published, set_desired
from controller.devices.tables import Device
from controller.rollouts import observe
from controller.rollouts.cohort import (
    CohortSelector,
    DeviceFacts,
    Wave,
    assign_waves,
    compatible,
    selects,
    validate_waves,
    wave_sizes,
)
from controller.rollouts.engine import (
    ACTIVE_STATUSES,
    SYSTEM_ACTOR,
    TERMINAL_STATUSES,
    Action,
    Assign,
    AuditRecord,
    Command,
    MaintenanceWindow,
    Outcome,
    Revert,
    RolloutError,
    RolloutSpec,
    RolloutState,
    SetOutcome,
    Status,
    StepResult,
    TelemetryAggregate,
    step,
)
from controller.rollouts.gates import GatePolicy
from controller.rollouts.tables import Rollout, RolloutDevice
from controller.settings import RolloutSettings
from controller.telemetry.drift import request_reference
from controller.updates.registry import get_model_version

log = logging.getLogger(__name__)

Publish = Callable[[DeviceShadow], bool]
JobLock = Callable[[Session, str], bool]
_CHUNK = 500  # ids per IN (...) list: far below every database's bound-parameter limit


class RolloutNotFound(LookupError):
    """No rollout with that id."""


class RolloutConflict(RolloutError):
    """Devices of the requested cohort are already in another active rollout."""

    def __init__(self, conflicts: dict[str, int]) -> None:
        self.conflicts = conflicts
        shown = ", ".join(f"{d} (rollout {r})" for d, r in sorted(conflicts.items())[:10])
        more = len(conflicts) - min(len(conflicts), 10)
        super().__init__(
            f"{len(conflicts)} device(s) are already in an active rollout: {shown}"
            + (f" and {more} more" if more else "")
            + "; finish, abort or roll back that rollout first"
        )


class ModelNotPublished(RolloutError):
    """The requested model version is not in the registry."""


class StaleRollout(RuntimeError):
    """The rollout changed under this step (another writer won); the step is discarded."""


class RolloutRequest(BaseModel):
    """What an operator asks for; defaults come from the controller's settings."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    waves: list[Wave] = Field(min_length=1, max_length=20)
    cohort: CohortSelector = Field(default_factory=CohortSelector)
    # Overrides of the gate policy (see GatePolicy); unset fields take the defaults.
    gates: dict[str, Any] = Field(default_factory=dict)
    device_timeout_s: float | None = Field(default=None, gt=0)
    install_timeout_s: float | None = Field(default=None, gt=0)
    timeout_policy: Literal["fail", "exclude"] = "fail"
    windows: list[MaintenanceWindow] = Field(default_factory=list)
    start_at: datetime | None = None
    rollout_key: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("waves", mode="before")
    @classmethod
    def _wave_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Wave.parse(str(v)) if isinstance(v, str | int) else v for v in value]
        return value

    @field_validator("waves")
    @classmethod
    def _wave_plan(cls, value: list[Wave]) -> list[Wave]:
        validate_waves(value)
        return value


def _spec(
    request: RolloutRequest, target: str, latency_ms: float | None, cfg: RolloutSettings
) -> RolloutSpec:
    gates: dict[str, Any] = {
        "min_soak_s": cfg.default_soak_s,
        "min_samples": cfg.default_min_samples,
    }
    if latency_ms:
        gates["max_latency_p95_ms"] = latency_ms * cfg.latency_budget_factor
    gates.update(request.gates)
    try:
        return RolloutSpec(
            model=request.model,
            version=request.version,
            target=target,
            rollout_key=request.rollout_key or f"{request.model}/{request.version}",
            waves=tuple(request.waves),
            cohort=request.cohort,
            gates=GatePolicy.model_validate(gates),
            device_timeout_s=request.device_timeout_s or cfg.default_device_timeout_s,
            install_timeout_s=request.install_timeout_s or cfg.default_install_timeout_s,
            timeout_policy=request.timeout_policy,
            windows=tuple(request.windows),
            start_at=request.start_at,
        )
    except ValidationError as e:
        raise RolloutError(f"invalid rollout: {e}") from e


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _labels(shadow: DeviceShadow | None) -> dict[str, str]:
    """The operator's labels (desired), never the device's own report: a device must not
    be able to tag itself into or out of a cohort (or a canary wave)."""
    if shadow is None:
        return {}
    labels = shadow.desired.get("labels")
    if not isinstance(labels, dict):
        return {}
    return {str(k): str(v) for k, v in labels.items()}


def _select_cohort(
    session: Session, selector: CohortSelector, model_classes: Sequence[str]
) -> tuple[list[str], int]:
    """Member ids (sorted) and how many selected devices the model cannot run on."""
    query = select(Device, DeviceShadow).join(
        DeviceShadow, col(DeviceShadow.device_id) == col(Device.id), isouter=True
    )
    if selector.device_ids:
        query = query.where(col(Device.id).in_(selector.device_ids))
    if selector.device_classes:
        query = query.where(col(Device.device_class).in_(selector.device_classes))
    members: list[str] = []
    incompatible: list[str] = []
    for device, shadow in session.exec(query):
        facts = DeviceFacts(device.id, device.device_class, _labels(shadow))
        if not selects(selector, facts):
            continue
        if compatible(device.device_class, model_classes):
            members.append(device.id)
        else:
            incompatible.append(device.id)
    if selector.device_ids:
        found = set(members) | set(incompatible)
        unknown = sorted(set(selector.device_ids) - found)
        if unknown and not selector.tags and not selector.device_classes:
            raise RolloutError(f"unknown device(s): {', '.join(unknown[:10])}")
        if incompatible:
            raise RolloutError(
                f"device(s) {', '.join(sorted(incompatible)[:10])} are of a class the model "
                f"does not support ({', '.join(model_classes)})"
            )
    return sorted(members), len(incompatible)


def _conflicts(session: Session, device_ids: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in _chunks(device_ids):
        for device_id, rollout_id in session.exec(
            select(RolloutDevice.device_id, RolloutDevice.rollout_id).where(
                col(RolloutDevice.active).is_(True), col(RolloutDevice.device_id).in_(chunk)
            )
        ):
            found[device_id] = rollout_id
    return found


def create_rollout(
    session: Session,
    request: RolloutRequest,
    *,
    actor: str,
    now: datetime,
    settings: RolloutSettings | None = None,
) -> Rollout:
    """Validate, select the cohort, claim its devices and store the rollout (pending).

    Raises ``RolloutError`` (unknown model version, empty cohort, a bad spec) or
    ``RolloutConflict`` (devices already in an active rollout). Not committed.
    """
    cfg = settings or RolloutSettings()
    version = get_model_version(session, request.model, request.version)
    if version is None:
        raise ModelNotPublished(f"model {request.model} version {request.version} is not published")
    spec = _spec(request, version.target_path, version.expected_latency_ms, cfg)
    members, incompatible = _select_cohort(session, spec.cohort, version.device_classes)
    if not members:
        raise RolloutError(
            "the cohort is empty: no registered device matches it"
            + (f" ({incompatible} matched but cannot run the model)" if incompatible else "")
        )
    conflicts = _conflicts(session, members)
    if conflicts:
        raise RolloutConflict(conflicts)
    waves = assign_waves(spec.rollout_key, members, spec.waves)
    state = RolloutState(updated_at=now)
    rollout = Rollout(
        model=spec.model,
        version=spec.version,
        target_path=spec.target,
        status=state.status.value,
        spec=spec.model_dump(mode="json"),
        state=state.model_dump(mode="json"),
        created_by=actor[:64],
        created_at=now,
        updated_at=now,
    )
    session.add(rollout)
    session.flush()
    assert rollout.id is not None
    session.add_all(
        RolloutDevice(rollout_id=rollout.id, device_id=d, wave=waves[d], active=True)
        for d in members
    )
    try:
        session.flush()
    except IntegrityError as e:  # a concurrent creation claimed some of them first
        session.rollback()
        raise RolloutConflict(_conflicts(session, members) or {"?": -1}) from e
    # The drift reference the new version is measured against (docs/drift.md).
    request_reference(session, spec.model, spec.version, now=now)
    sizes = wave_sizes(spec.waves, len(members))
    audit(
        session,
        actor=actor,
        action="rollout.create",
        target=f"rollout:{rollout.id}",
        reason=f"{spec.model} {spec.version} to {len(members)} devices",
        detail={
            "model": spec.model,
            "version": spec.version,
            "waves": [str(w) for w in spec.waves],
            "wave_sizes": sizes,
            "cohort": spec.cohort.model_dump(mode="json"),
            "incompatible_excluded": incompatible,
        },
        at=now,
    )
    return rollout


def get_rollout(session: Session, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise RolloutNotFound(f"rollout {rollout_id} does not exist")
    return rollout


@dataclass
class StepOutcome:
    """What one applied step changed: the shadows to publish once committed."""

    rollout_id: int
    status: str
    changed: list[DeviceShadow] = field(default_factory=list)


def _desired_model(spec: RolloutSpec, rollout_id: int) -> dict[str, Any]:
    return {
        "name": spec.model,
        "target": spec.target,
        "version": spec.version,
        "rollout": rollout_id,
        "factory": None,  # merged over a factory marker (an earlier rollback): drop it
    }


def factory_model(name: str) -> dict[str, Any]:
    """The previous model of a device that ran the configured (factory) model ``name``."""
    return {"name": name, "factory": True}


TARGET_MAX = 255  # rollout_device.previous_target, model_version.target_path


def _previous(reported_model: dict[str, Any] | None, model: str) -> dict[str, Any]:
    """The revert target: the target the device reported running for the rollout's model
    ``model``, else (no target: its configured model; or a report about another of its
    models) the factory marker for ``model``."""
    target = (reported_model or {}).get("target")
    version = (reported_model or {}).get("version")
    if (
        reported_model
        and reported_model.get("name") == model
        and isinstance(target, str)
        and 0 < len(target) <= TARGET_MAX  # device-written: it must fit where it is kept
    ):
        return {
            "name": model,
            "target": target,
            "version": version if isinstance(version, str) and len(version) <= 64 else None,
        }
    return factory_model(model)


def revert_model(model: str, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The desired ``model`` patch that rolls a device back to ``previous`` (a member's
    recorded previous model; None or the factory marker: the configured model ``model``).

    Desired documents change by JSON merge patch (RFC 7396), where a null deletes a key:
    so the factory model is a marker, never ``"model": null`` (the device would see no
    ``model`` key and keep serving the rollout's target), and every key of the other
    form is nulled so nothing of the rollout's desired model survives the merge.
    """
    if (
        previous is not None
        and previous.get("name") == model
        and isinstance(previous.get("target"), str)
        and not previous.get("factory")
    ):
        return {
            "name": model,
            "target": previous["target"],
            "version": previous.get("version"),
            "rollout": None,
            "factory": None,
        }
    return {**factory_model(model), "target": None, "version": None, "rollout": None}


_FAILURES = (Outcome.FAILED.value, Outcome.TIMED_OUT.value)


def _write_members(
    session: Session, assigned: list[dict[str, Any]], outcomes: list[dict[str, Any]]
) -> None:
    """Two executemany UPDATEs (assignments, then outcome changes in step order)."""
    table = RolloutDevice.__table__  # type: ignore[attr-defined]
    row = table.c.id == bindparam("row")
    connection = session.connection()
    if assigned:
        connection.execute(
            update(table)
            .where(row)
            .values(
                previous_model=bindparam("previous_model"),
                previous_target=bindparam("previous_target"),
                assigned_at=bindparam("at"),
                outcome=Outcome.ASSIGNED.value,
                outcome_at=bindparam("at"),
                reason=bindparam("reason"),
            ),
            assigned,
        )
    if outcomes:
        connection.execute(
            update(table)
            .where(row)
            .values(
                outcome=bindparam("outcome"),
                outcome_at=bindparam("at"),
                reason=bindparam("reason"),
                # Why it failed outlives the outcomes after it (reverting, reverted).
                failure=case(
                    (
                        or_(*(bindparam("outcome") == failed for failed in _FAILURES)),
                        bindparam("reason"),
                    ),
                    else_=table.c.failure,
                ),
                installed_at=func.coalesce(bindparam("installed"), table.c.installed_at),
            ),
            outcomes,
        )


def advance(
    session: Session,
    rollout: Rollout,
    now: datetime,
    command: Command | None = None,
) -> StepOutcome:
    """Run one engine step for ``rollout`` and apply it in the session (not committed).

    Raises ``CommandRefused`` for a command that does not apply, ``StaleRollout`` if the
    rollout changed since it was loaded.
    """
    assert rollout.id is not None
    rollout_id = rollout.id
    spec = RolloutSpec.model_validate(rollout.spec)
    members = {m.view.device_id: m for m in observe.load_members(session, rollout_id)}
    result = _step(session, rollout_id, spec, rollout.state, members, now, command)
    out = StepOutcome(rollout_id, result.state.status.value)
    out.changed = _apply_actions(session, rollout_id, spec, members, result.actions, now)
    _audit_step(session, rollout_id, result.audits, now)
    _save_state(session, rollout, result.state, now)
    # Written now and detached, so they can be published after the commit without being
    # expired by it (reading them back would cost a query per device).
    session.flush()
    out.changed = list({shadow.device_id: shadow for shadow in out.changed}.values())
    for shadow in out.changed:
        session.expunge(shadow)
    return out


def _step(
    session: Session,
    rollout_id: int,
    spec: RolloutSpec,
    stored_state: dict[str, Any],
    members: dict[str, observe.Member],
    now: datetime,
    command: Command | None,
) -> StepResult:
    """The pure engine step over the members and the current wave's telemetry."""
    state = RolloutState.model_validate(stored_state)
    telemetry = TelemetryAggregate()
    if state.wave >= 0 and state.status in (Status.RUNNING, Status.PAUSED, Status.HALTED):
        telemetry = observe.wave_telemetry(
            session,
            rollout_id,
            state.wave,
            spec.model,
            since=state.observe_since,
            min_samples=spec.gates.min_samples,
        )
    return step(
        rollout_id,
        spec,
        state,
        [m.view for m in members.values()],
        telemetry,
        now,
        command,
    )


def _apply_actions(
    session: Session,
    rollout_id: int,
    spec: RolloutSpec,
    members: dict[str, observe.Member],
    actions: Sequence[Action],
    now: datetime,
) -> list[DeviceShadow]:
    """Set the desired model of assigned and reverted members and write the members'
    rows; returns the shadows changed (a device may appear more than once)."""
    touched = [a.device_id for a in actions if isinstance(a, Assign | Revert)]
    # Loaded (and held) so set_desired finds each row in the session without a query.
    shadows: dict[str, DeviceShadow] = {}
    for chunk in _chunks(touched):
        for shadow in session.exec(
            select(DeviceShadow).where(col(DeviceShadow.device_id).in_(chunk))
        ):
            shadows[shadow.device_id] = shadow
    changed: list[DeviceShadow] = []
    at = now.astimezone(UTC)
    assigned: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for action in actions:
        member = members[action.device_id]
        if isinstance(action, Assign):
            previous = _previous(member.reported_model, spec.model)
            assigned.append(
                {
                    "row": member.row_id,
                    "previous_model": previous,
                    "previous_target": previous.get("target"),
                    "at": at,
                    "reason": f"wave {action.wave + 1}",
                }
            )
            changed.append(
                set_desired(
                    session,
                    action.device_id,
                    {"model": _desired_model(spec, rollout_id)},
                    now=now,
                    actor=SYSTEM_ACTOR,
                    reason=f"rollout {rollout_id}: wave {action.wave + 1}",
                )
            )
        elif isinstance(action, Revert):
            patch = {"model": revert_model(spec.model, action.previous)}
            changed.append(
                set_desired(
                    session,
                    action.device_id,
                    patch,
                    now=now,
                    actor=SYSTEM_ACTOR,
                    reason=f"rollout {rollout_id}: revert",
                )
            )
        elif isinstance(action, SetOutcome):
            when = action.at.astimezone(UTC)
            outcomes.append(
                {
                    "row": member.row_id,
                    "outcome": action.outcome.value,
                    "at": when,
                    "reason": action.reason[:512],
                    "installed": when if action.outcome == Outcome.INSTALLED else None,
                }
            )
    _write_members(session, assigned, outcomes)
    return changed


def _audit_step(
    session: Session, rollout_id: int, audits: Sequence[AuditRecord], now: datetime
) -> None:
    for record in audits:
        log.info("rollout %d: %s (%s): %s", rollout_id, record.action, record.actor, record.reason)
        audit(
            session,
            actor=record.actor,
            action=record.action,
            target=f"rollout:{rollout_id}",
            reason=record.reason,
            detail=record.detail,
            at=now,
        )


def _save_state(session: Session, rollout: Rollout, state: RolloutState, now: datetime) -> None:
    """Store the new engine state if the rollout's revision is still the one loaded (else
    ``StaleRollout``); a finished rollout releases its members."""
    rollout_id = rollout.id
    written = session.connection().execute(
        update(Rollout)
        .where(col(Rollout.id) == rollout_id, col(Rollout.revision) == rollout.revision)
        .values(
            state=state.model_dump(mode="json"),
            status=state.status.value,
            revision=rollout.revision + 1,
            updated_at=now,
            finished_at=state.finished_at,
        )
        .execution_options(synchronize_session=False)
    )
    if written.rowcount != 1:
        raise StaleRollout(f"rollout {rollout_id} changed while it was being stepped")
    if state.status in TERMINAL_STATUSES:
        session.execute(
            update(RolloutDevice)
            .where(col(RolloutDevice.rollout_id) == rollout_id)
            .values(active=None)
            .execution_options(synchronize_session=False)
        )
    session.expire(rollout)


def publish_changed(
    session: Session, changed: Sequence[DeviceShadow], publish: Publish, now: datetime
) -> int:
    """Publish committed desired documents (detached copies from ``advance``) and mark
    the ones that went out, unless a newer version was stored meanwhile; returns how many
    went out. Ones not sent are left to the controller's republish job."""
    sent = [(shadow.device_id, shadow.desired_version) for shadow in changed if publish(shadow)]
    mark_published(session, sent, now)
    return len(sent)


def active_rollout_ids(session: Session) -> list[int]:
    ids = session.exec(
        select(Rollout.id)
        .where(col(Rollout.status).in_([s.value for s in ACTIVE_STATUSES]))
        .order_by(col(Rollout.id))
    ).all()
    return [i for i in ids if i is not None]


@dataclass
class TickReport:
    """What a tick did, for logs and benchmarks."""

    stepped: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    published: int = 0


def tick(
    session: Session, now: datetime, publish: Publish, *, lock: JobLock | None = None
) -> TickReport:
    """Step every active rollout once, each in its own committed transaction.

    ``lock(session, name)`` (the controller's advisory job lock) lets one replica step a
    rollout at a time; without it, the revision check still discards a losing writer.
    One rollout's failure is logged and never stops the others.
    """
    report = TickReport()
    for rollout_id in active_rollout_ids(session):
        sent = step_one(session, rollout_id, now, publish, lock=lock)
        if sent is None:
            report.skipped.append(rollout_id)
        else:
            report.stepped.append(rollout_id)
            report.published += sent
    return report


def step_one(
    session: Session,
    rollout_id: int,
    now: datetime,
    publish: Publish,
    *,
    lock: JobLock | None = None,
) -> int | None:
    """Step one rollout in its own transaction, commit, publish; the number of desired
    documents sent, or None if it was skipped (locked elsewhere, raced, or failed)."""
    try:
        if lock is not None and not lock(session, f"rollout:{rollout_id}"):
            session.rollback()
            return None
        outcome = advance(session, get_rollout(session, rollout_id), now)
        session.commit()
    except StaleRollout:
        session.rollback()
        return None
    except Exception:
        session.rollback()
        log.exception("rollout %s: step failed; retrying next tick", rollout_id)
        return None
    sent = publish_changed(session, outcome.changed, publish, now)
    session.commit()
    return sent


def command(
    session: Session,
    rollout_id: int,
    kind: Literal["pause", "resume", "abort", "rollback"],
    *,
    actor: str,
    reason: str,
    now: datetime,
    publish: Publish,
) -> Rollout:
    """Apply an operator command right away (committed, published, audited).

    Raises ``RolloutNotFound`` or ``CommandRefused``; retries if a tick wins the race.
    """
    for attempt in range(5):
        rollout = get_rollout(session, rollout_id)
        try:
            outcome = advance(session, rollout, now, Command(kind, actor, reason))
            session.commit()
        except StaleRollout:
            session.rollback()
            if attempt == 4:
                raise
            continue
        except Exception:
            session.rollback()
            raise
        publish_changed(session, outcome.changed, publish, now)
        session.commit()
        break
    return get_rollout(session, rollout_id)


# --- reading ------------------------------------------------------------------------------
__all__ = [
    "ModelNotPublished",
    "Publish",
    "Rollout",
    "RolloutConflict",
    "RolloutDevice",
    "RolloutNotFound",
    "RolloutRequest",
    "StaleRollout",
    "StepOutcome",
    "TickReport",
    "active_rollout_ids",
    "advance",
    "command",
    "create_rollout",
    "factory_model",
    "get_rollout",
    "publish_changed",
    "revert_model",
    "step_one",
    "tick",
]
