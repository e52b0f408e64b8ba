"""Pure rules for a device's online/offline state (no I/O; the ingest shell applies them).

Sparkplug B's session rule: a birth always starts the current session; a death counts only
if it carries the current session's ``bd_seq`` (a Last Will from a replaced session arrives
late and must not mark a live device offline); heartbeats of an older session are stale.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

State = Literal["online", "offline", "unknown"]


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the registry knows about a device's session."""

    state: State
    bd_seq: int | None
    last_heartbeat_seq: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one message: apply its fields, change state, record an event."""

    apply: bool
    state: State | None = None
    reason: str | None = None
    event: str | None = None
    duplicate: bool = False


def on_birth(current: Liveness | None, bd_seq: int) -> Decision:
    """A birth always wins: the device says what it is now (also after a reflash)."""
    return Decision(apply=True, state="online", reason="birth", event="birth")


def on_death(current: Liveness | None, bd_seq: int, reason: str) -> Decision:
    """A death ends the session it names, and only that one."""
    if current is not None and current.bd_seq is not None and bd_seq != current.bd_seq:
        return Decision(apply=False, event="stale_death_ignored")
    return Decision(apply=True, state="offline", reason=reason, event="death")


def on_heartbeat(current: Liveness | None, bd_seq: int, seq: int) -> Decision:
    """Heartbeats refresh liveness; older sessions' and repeated ones change nothing."""
    if current is None or current.bd_seq is None or bd_seq > current.bd_seq:
        # The birth was missed (or cleared): the heartbeat alone proves the device is up.
        return Decision(apply=True, state="online", reason="heartbeat", event="online_by_heartbeat")
    if bd_seq < current.bd_seq:
        return Decision(apply=False)
    if current.last_heartbeat_seq is not None and seq <= current.last_heartbeat_seq:
        return Decision(apply=False, duplicate=True)
    if current.state != "online":
        # Same session, back after a heartbeat timeout (the link blipped, the session held).
        return Decision(apply=True, state="online", reason="heartbeat", event="online_by_heartbeat")
    return Decision(apply=True)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; everything here is stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def is_overdue(
    last_seen: datetime | None,
    interval_s: float | None,
    missed: int,
    now: datetime,
    heard_since: datetime | None = None,
) -> bool:
    """True once ``missed`` heartbeat intervals have passed since the device was last seen,
    or since ``heard_since`` when that is later: before it, messages may have been lost on
    the controller's side (a dead replica's broker session), so silence counts from there."""
    if last_seen is None or interval_s is None:
        return False
    seen = as_utc(last_seen)
    if heard_since is not None and heard_since > seen:
        seen = heard_since
    return seen + timedelta(seconds=interval_s * missed) < now
