"""Pure rules for how far a device's counters may advance (no I/O; ingest applies them).

Every counter a device sends (heartbeat ``seq``, ``bd_seq``, the reported shadow
``version``, a telemetry record's ``epoch`` and ``seq``) becomes a high-water mark the
controller compares later messages against. A message that moved a mark by 10^12 would make
every genuine message after it look old (a duplicate heartbeat, a stale report), so a jump
that a genuine agent cannot make is refused (``implausible_seq``) and never adopted.

What a genuine agent can do, per counter (``edge_agent/sync``):

- heartbeat ``seq``: one per heartbeat interval, plus up to ``HEARTBEAT_SEQ_RESERVE``
  numbers skipped per restart (the counter file reserves blocks), and a restart is a new
  ``bd_seq``;
- ``bd_seq``: one per connection attempt or restart (reconnects back off, at least
  ``reconnect_min_s`` apart in the mean);
- reported ``version``: one per report (every (re)connect and every applied desired);
- telemetry ``seq`` within an epoch: one per record the agent made; holes come from quota
  drops, so the number of records made (not the outbox's size) bounds a jump;
- telemetry ``epoch``: one per agent start.

So each bound is ``slack + per_s * seconds since the mark was set``: it grows while a
device is away, so a genuine device that was refused once (offline long, busy) is accepted
when it tries again later, and its records are never acknowledged as stored meanwhile.
A counter without a mark yet (first contact) accepts any valid value.
"""

import math
from dataclasses import dataclass
from datetime import datetime

from controller.devices.liveness import as_utc

REASON = "implausible_seq"

# edge_agent/sync/link.py HEARTBEAT_SEQ_RESERVE (the controller does not import the agent;
# tests/test_plausibility.py checks the two agree): a restart skips at most this many.
HEARTBEAT_SEQ_RESERVE = 100


@dataclass(frozen=True, slots=True)
class Bound:
    """A counter may advance by ``slack + per_s * elapsed seconds`` past its mark."""

    slack: int
    per_s: float


@dataclass(frozen=True, slots=True)
class Bounds:
    """The bounds of every counter (``plausibility.*`` settings)."""

    heartbeat_seq: Bound = Bound(1_000, 10.0)
    bd_seq: Bound = Bound(1_000, 1.0)
    reported_version: Bound = Bound(1_000, 1.0)
    telemetry_seq: Bound = Bound(100_000, 1_000.0)
    telemetry_epoch: Bound = Bound(1_000, 1.0)


def allowed_advance(bound: Bound, since: datetime | None, now: datetime, extra: int = 0) -> int:
    """How far past its mark a counter set at ``since`` may be at ``now``."""
    elapsed = 0.0 if since is None else max(0.0, (now - as_utc(since)).total_seconds())
    return bound.slack + extra + math.ceil(bound.per_s * elapsed)


def check_advance(
    what: str,
    value: int,
    mark: int | None,
    since: datetime | None,
    now: datetime,
    bound: Bound,
    *,
    extra: int = 0,
) -> str | None:
    """None if ``value`` is a plausible successor of ``mark`` (set at ``since``), else the
    refusal's detail. Values at or below the mark are not jumps (duplicates and stale
    messages have their own rules); no mark accepts anything."""
    if mark is None or value <= mark:
        return None
    allowed = allowed_advance(bound, since, now, extra)
    if value - mark <= allowed:
        return None
    elapsed = 0.0 if since is None else max(0.0, (now - as_utc(since)).total_seconds())
    return (
        f"{what} {value} is {value - mark} past the last accepted {mark}; "
        f"at most {allowed} is plausible {elapsed:.0f} s later"
    )


def check_heartbeat(
    *,
    seq: int,
    bd_seq: int,
    mark_seq: int | None,
    mark_bd_seq: int | None,
    since: datetime | None,
    now: datetime,
    bounds: Bounds,
) -> str | None:
    """A heartbeat's ``seq`` against the device's last accepted one: each restart (a new
    ``bd_seq``) may skip a reserved block on top of one per heartbeat."""
    restarts = max(0, bd_seq - mark_bd_seq) if mark_bd_seq is not None else 0
    extra = HEARTBEAT_SEQ_RESERVE * (1 + restarts)
    return check_advance(
        "heartbeat seq", seq, mark_seq, since, now, bounds.heartbeat_seq, extra=extra
    )


def check_telemetry(
    *,
    epoch: int,
    last_seq: int,
    newest: tuple[int, int, datetime] | None,
    epoch_mark: tuple[int, datetime] | None,
    now: datetime,
    bounds: Bounds,
) -> str | None:
    """A telemetry batch of ``epoch`` ending at ``last_seq`` against what is stored.

    ``newest``: the device's stored record of the highest ``(epoch, seq)`` and when it was
    stored (None: nothing stored, first contact). ``epoch_mark``: the highest stored seq of
    the batch's epoch and when (None: nothing stored in it). A new epoch numbers from 0.
    An older epoch with nothing stored is accepted: no genuine mark is at stake there."""
    if newest is None:
        return None
    newest_epoch, _, newest_at = newest
    if epoch > newest_epoch:
        refusal = check_advance(
            "telemetry epoch", epoch, newest_epoch, newest_at, now, bounds.telemetry_epoch
        )
        if refusal is not None:
            return refusal
        return check_advance(
            f"telemetry seq (new epoch {epoch})", last_seq, 0, newest_at, now, bounds.telemetry_seq
        )
    if epoch_mark is None:
        return None
    mark, since = epoch_mark
    return check_advance(
        f"telemetry seq (epoch {epoch})", last_seq, mark, since, now, bounds.telemetry_seq
    )
