"""What the API, the fleet summary and ``/metrics`` read of rollouts: views with per-wave
progress, pages of rollouts and members, and counts by status (SQL aggregates, never a
load of the rollout table)."""

from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from controller.rollouts.cohort import wave_sizes
from controller.rollouts.engine import ACTIVE_STATUSES, RolloutSpec, RolloutState, Status
from controller.rollouts.tables import Rollout, RolloutDevice


def count_active_rollouts(session: Session) -> int:
    """Rollouts not in a terminal status (pending, running, paused, halted, rolling back)."""
    active = [s.value for s in ACTIVE_STATUSES]
    return int(
        session.exec(
            select(func.count()).select_from(Rollout).where(col(Rollout.status).in_(active))
        ).one()
    )


def rollouts_by_status(session: Session) -> list[tuple[str, int]]:
    """How many rollouts are in each status (statuses without one left out)."""
    rows = session.exec(select(Rollout.status, func.count()).group_by(col(Rollout.status)))
    return [(status, int(n)) for status, n in rows]


def wave_progress(session: Session, rollout: Rollout) -> list[dict[str, Any]]:
    """Per wave: its size and how many members are at each outcome."""
    spec = RolloutSpec.model_validate(rollout.spec)
    counts: dict[int, dict[str, int]] = {}
    for wave, outcome, n in session.exec(
        select(RolloutDevice.wave, RolloutDevice.outcome, func.count())
        .where(col(RolloutDevice.rollout_id) == rollout.id)
        .group_by(col(RolloutDevice.wave), col(RolloutDevice.outcome))
    ):
        counts.setdefault(wave, {})[outcome] = n
    state = RolloutState.model_validate(rollout.state)
    total = sum(sum(c.values()) for c in counts.values())
    sizes = wave_sizes(spec.waves, total)
    out = []
    for i, wave_spec in enumerate(spec.waves):
        c = counts.get(i, {})
        members = sum(c.values())
        if state.status == Status.COMPLETED or i < state.wave:
            phase = "done"
        elif i == state.wave:
            phase = "soaking" if state.soaking_since is not None else "installing"
            if state.status != Status.RUNNING:
                phase = state.status.value
        else:
            phase = "waiting"
        out.append(
            {
                "index": i,
                "wave": str(wave_spec),
                "cumulative_size": sizes[i] if i < len(sizes) else 0,
                "members": members,
                "phase": phase,
                "outcomes": c,
            }
        )
    return out


def rollout_view(session: Session, rollout: Rollout, *, detail: bool = True) -> dict[str, Any]:
    """A rollout as the API shows it; ``detail`` adds waves, gates and the spec."""
    state = RolloutState.model_validate(rollout.state)
    view: dict[str, Any] = {
        "id": rollout.id,
        "model": rollout.model,
        "version": rollout.version,
        "target": rollout.target_path,
        "status": rollout.status,
        "wave": state.wave,
        "reason": state.reason,
        "created_by": rollout.created_by,
        "created_at": rollout.created_at,
        "updated_at": rollout.updated_at,
        "finished_at": rollout.finished_at,
    }
    if detail:
        view["waves"] = wave_progress(session, rollout)
        view["soaking_since"] = state.soaking_since
        view["gates"] = state.last_gate.model_dump(mode="json") if state.last_gate else None
        view["spec"] = rollout.spec
    return view


def list_rollouts(
    session: Session, *, status: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Rollout], int]:
    query = select(Rollout)
    counter = select(func.count()).select_from(Rollout)
    if status is not None:
        query = query.where(col(Rollout.status) == status)
        counter = counter.where(col(Rollout.status) == status)
    rows = session.exec(query.order_by(col(Rollout.id).desc()).offset(offset).limit(limit)).all()
    return list(rows), int(session.exec(counter).one())


def list_members(
    session: Session,
    rollout_id: int,
    *,
    wave: int | None = None,
    outcome: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[RolloutDevice], int]:
    query = select(RolloutDevice).where(col(RolloutDevice.rollout_id) == rollout_id)
    counter = (
        select(func.count())
        .select_from(RolloutDevice)
        .where(col(RolloutDevice.rollout_id) == rollout_id)
    )
    if wave is not None:
        query = query.where(col(RolloutDevice.wave) == wave)
        counter = counter.where(col(RolloutDevice.wave) == wave)
    if outcome is not None:
        query = query.where(col(RolloutDevice.outcome) == outcome)
        counter = counter.where(col(RolloutDevice.outcome) == outcome)
    rows = session.exec(
        query.order_by(col(RolloutDevice.wave), col(RolloutDevice.device_id))
        .offset(offset)
        .limit(limit)
    ).all()
    return list(rows), int(session.exec(counter).one())


__all__ = [
    "count_active_rollouts",
    "list_members",
    "list_rollouts",
    "rollout_view",
    "rollouts_by_status",
    "wave_progress",
]
