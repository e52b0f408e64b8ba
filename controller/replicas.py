"""Controller replicas on one database and one broker: which are alive, and since when the
replicas together have heard every device message.

Replicas split the device stream through an MQTT 5 shared subscription, each with its own
broker session. A replica that dies without a clean stop leaves its session behind, and
the broker keeps handing it its share of every device's messages (heartbeats and quotes
too) until the session expires, ``broker.session_expiry_s`` after the broker noticed the
connection is gone. Those messages are lost: records come again (a device drops a record
only once the controller acknowledged it), heartbeats and quotes do not. So silence may
only be judged from the moment every message was being heard again: ``Hearing.since``.

Each replica beats its row in ``controller_replica`` every second (``beat``) and, on
PostgreSQL, holds a session advisory lock on its client id for as long as its process
lives, so a SIGKILLed replica is seen dead at once (its connection, and lock, go with it);
a stale beat catches one whose host vanished. ``hearing`` is the pure rule.
"""

import logging
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, Session, SQLModel, col, select

from controller.devices.liveness import as_utc

log = logging.getLogger(__name__)

# How often each replica beats, and how long a silent one is still counted alive.
BEAT_S = 1.0
STALE_S = 5.0
# Rows of replicas gone for good are deleted this long after their session expired.
FORGET_AFTER = timedelta(days=1)
# The first key of the two-key advisory locks a replica holds on its client id (the job
# locks use one-key locks, so the two never collide).
LOCK_SPACE = 0x45460001


class ControllerReplica(SQLModel, table=True):
    """One replica's last word: when it beat, and what its broker session was doing."""

    __tablename__ = "controller_replica"
    client_id: str = Field(primary_key=True, max_length=128)
    beat_at: datetime
    # Since when its ingest session has held the shared subscription (None: not yet).
    connected_at: datetime | None = None
    # Since when it has been cut off from the broker (None: connected, or never was).
    disconnected_at: datetime | None = None
    session_expiry_s: int
    keepalive_s: int
    # Messages it had received and not yet written, at its last beat.
    backlog: int = 0


@dataclass(frozen=True, slots=True)
class Hearing:
    """What the replicas together hear of the fleet now."""

    # Messages sent before this may have gone to a session nobody reads: a device's
    # silence counts from here at the earliest. In the future while a dead replica's
    # session may still be taking messages; None when nothing was ever lost.
    since: datetime | None
    # Messages received by live replicas and not yet written.
    backlog: int


def utcnow() -> datetime:
    return datetime.now(UTC)


def session_gone_at(row: ControllerReplica, beat_s: float = BEAT_S) -> datetime:
    """The latest moment the broker still keeps the session of a replica that is dead or
    cut off: the broker notices a vanished connection within 1.5 keepalives, then keeps the
    session ``session_expiry_s``."""
    if row.disconnected_at is not None:
        lost = as_utc(row.disconnected_at)
    else:
        lost = as_utc(row.beat_at) + timedelta(seconds=beat_s)
    return lost + timedelta(seconds=1.5 * row.keepalive_s + row.session_expiry_s)


def is_alive(
    row: ControllerReplica, now: datetime, *, locked: set[str] | None, stale_s: float = STALE_S
) -> bool:
    """Alive: it beat within ``stale_s`` and, where locks are known (PostgreSQL), its
    process still holds its lock."""
    if locked is not None and row.client_id not in locked:
        return False
    return as_utc(row.beat_at) + timedelta(seconds=stale_s) >= now


def hearing(
    rows: Iterable[ControllerReplica],
    now: datetime,
    *,
    locked: set[str] | None,
    beat_s: float = BEAT_S,
    stale_s: float = STALE_S,
) -> Hearing:
    """Since when every device message has been heard: the latest of each live, connected
    replica's connection (a new session, or one back after an outage: conservative) and
    each dead or cut-off replica's session end."""
    since: datetime | None = None
    backlog = 0
    for row in rows:
        alive = is_alive(row, now, locked=locked, stale_s=stale_s)
        if alive and row.disconnected_at is None:
            backlog += row.backlog
            moment = as_utc(row.connected_at) if row.connected_at is not None else None
        elif row.connected_at is None and row.disconnected_at is None:
            moment = None  # never held the subscription: nothing went to it
        else:
            moment = session_gone_at(row, beat_s)
        if moment is not None and (since is None or moment > since):
            since = moment
    return Hearing(since, backlog)


def lock_key(client_id: str) -> int:
    """The second key of a replica's advisory lock (signed 32 bits, as PostgreSQL takes it)."""
    key = zlib.crc32(client_id.encode())
    return key - (1 << 32) if key >= 1 << 31 else key


class ReplicaRegistry:
    """This replica's row and lock, and the view of all replicas; one per process."""

    def __init__(
        self, engine: Engine, client_id: str, *, session_expiry_s: int, keepalive_s: int
    ) -> None:
        self.engine = engine
        self.client_id = client_id
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self._postgres = engine.dialect.name == "postgresql"
        self._lock = threading.Lock()
        self._holder: Connection | None = None  # the connection holding our advisory lock
        self._warned_duplicate = False
        self._left = False  # stopped: a beat still in flight must not bring the row back

    def _hold_lock(self) -> None:
        """Take (or keep) our advisory lock on a connection of its own; a second process
        with our client id holds it already: say so (the broker would make the two take
        each other's session over and over)."""
        if not self._postgres:
            return
        if self._holder is not None:
            try:
                self._holder.execute(text("SELECT 1"))
                self._holder.commit()  # never idle in a transaction (a server timeout ends those)
                return
            except Exception:
                self._release()
        holder = self.engine.connect()
        got = holder.execute(
            text("SELECT pg_try_advisory_lock(:space, :key)"),
            {"space": LOCK_SPACE, "key": lock_key(self.client_id)},
        ).scalar()
        holder.commit()
        if got:
            self._holder = holder
            return
        holder.close()
        if not self._warned_duplicate:
            self._warned_duplicate = True
            log.error(
                "another controller process holds broker.client_id %r: every replica needs "
                'its own (docs/production.md, "Several replicas")',
                self.client_id,
            )

    def _release(self) -> None:
        if self._holder is not None:
            try:
                self._holder.close()
            except Exception:
                log.debug("closing the replica lock's connection failed", exc_info=True)
            self._holder = None

    def beat(self, now: datetime, *, connected_since: datetime | None, backlog: int) -> None:
        """Record that this replica lives, since when its ingest holds the subscription
        (None: not now), and its backlog; forget replicas gone for long."""
        with self._lock:
            if self._left:
                return
            self._hold_lock()
            with Session(self.engine) as session:
                row = session.get(ControllerReplica, self.client_id)
                if row is None:
                    row = ControllerReplica(
                        client_id=self.client_id,
                        beat_at=now,
                        session_expiry_s=self.session_expiry_s,
                        keepalive_s=self.keepalive_s,
                    )
                if connected_since is not None:
                    row.connected_at, row.disconnected_at = connected_since, None
                elif row.connected_at is not None and row.disconnected_at is None:
                    row.disconnected_at = now
                row.beat_at = now
                row.backlog = backlog
                row.session_expiry_s = self.session_expiry_s
                row.keepalive_s = self.keepalive_s
                session.add(row)
                self._forget_gone(session, now)
                session.commit()

    def _forget_gone(self, session: Session, now: datetime) -> None:
        for row in session.exec(
            select(ControllerReplica).where(
                col(ControllerReplica.beat_at) < now - FORGET_AFTER,
                col(ControllerReplica.client_id) != self.client_id,
            )
        ):
            if session_gone_at(row) < now - FORGET_AFTER:
                session.delete(row)

    def locked(self, session: Session) -> set[str] | None:
        """Client ids whose process holds its lock now (None on SQLite: one controller)."""
        if not self._postgres:
            return None
        held = {
            int(k)
            for k in session.execute(
                text(
                    "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND classid = :space AND objsubid = 2"
                ),
                {"space": LOCK_SPACE},
            ).scalars()
        }
        ids = session.exec(select(ControllerReplica.client_id)).all()
        return {c for c in ids if lock_key(c) % (1 << 32) in held}

    def hearing(self, session: Session, now: datetime) -> Hearing:
        rows = list(session.exec(select(ControllerReplica)))
        return hearing(rows, now, locked=self.locked(session))

    def leave(self, *, session_ended: bool) -> None:
        """A stop. Clean (the ingest session ended with it): nothing of ours can be lost,
        so the row goes. Otherwise the session outlives us: the row says since when it has
        been cut off, and the other replicas wait for it to expire."""
        with self._lock:
            self._left = True
            try:
                with Session(self.engine) as session:
                    row = session.get(ControllerReplica, self.client_id)
                    if row is not None and session_ended:
                        session.delete(row)
                    elif row is not None and row.connected_at is not None:
                        row.disconnected_at = row.disconnected_at or utcnow()
                        session.add(row)
                    session.commit()
            except Exception:
                log.exception("could not record this replica's stop")
            self._release()


__all__ = [
    "BEAT_S",
    "STALE_S",
    "ControllerReplica",
    "Hearing",
    "ReplicaRegistry",
    "hearing",
    "is_alive",
    "lock_key",
    "session_gone_at",
]
