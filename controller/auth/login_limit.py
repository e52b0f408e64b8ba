"""Login throttling: failed console logins per username and per client address.

Failures are rows in the database, not counters in memory, so every controller replica
behind a load balancer sees the same count. The limit is a sliding window: a client is
refused while ``max`` or more failures lie within the last ``window``, and may try again
when enough of them have aged out. Passwords are never stored or logged here; a row holds
the (lower-cased) username tried, the client address and the time.

An attempt is counted *before* its password is checked: ``begin`` checks the limits and
adds the attempt's row in one transaction that holds a lock on the username and the address
(PostgreSQL advisory locks; SQLite's single writer), and commits it before the slow hash
runs. The row stays as the failure unless the password is right. So parallel guesses cannot
all pass the check while the hashes run: exactly ``max`` of them get a verdict.

``retry_after`` is the pure decision; ``LoginLimiter`` is the thin database shell around it.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil
from typing import Literal

from sqlalchemy import text
from sqlmodel import Session, col, delete, select

from controller.auth.tables import LoginFailure
from controller.settings import LoginLimitSettings

Scope = Literal["username", "ip"]


@dataclass(frozen=True, slots=True)
class Throttled:
    """Why a login is refused, and for how many whole seconds (at least 1)."""

    scope: Scope
    retry_after_s: int
    failures: int

    @property
    def message(self) -> str:
        what = "this username" if self.scope == "username" else "your address"
        return f"Too many failed logins for {what}; try again in {self.retry_after_s} seconds."


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def retry_after(
    failures: Sequence[datetime], *, limit: int, window: timedelta, now: datetime
) -> float | None:
    """Seconds until fewer than ``limit`` of ``failures`` lie within ``window`` before a
    moment, or None when that is already so at ``now``. Older entries are ignored."""
    recent = sorted(t for t in map(_aware, failures) if t > now - window)
    if len(recent) < limit:
        return None
    # The count drops below the limit once every failure up to this one has aged out.
    pivot = recent[len(recent) - limit]
    return max((pivot + window - now).total_seconds(), 0.0)


def _lock_key(scope: str, value: str) -> int:
    digest = hashlib.sha256(f"edgefleet.login:{scope}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _serialise(session: Session, username: str, client_ip: str) -> None:
    """Hold, until the transaction ends, the lock of this username and of this address.
    PostgreSQL: transaction-scoped advisory locks, always the username's first (so two
    attempts never wait for each other in a cycle). SQLite: the database's one write lock,
    which the first write of the transaction (``begin``'s prune) takes anyway."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for scope, value in (("username", username), ("ip", client_ip)):
        session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(scope, value)}
        )


def normalise_username(username: str) -> str:
    return username.strip().lower()[:64]


class LoginLimiter:
    """Counts, checks and clears failed logins in the caller's database session."""

    def __init__(self, limits: LoginLimitSettings) -> None:
        self.limits = limits
        self.window = timedelta(seconds=limits.window_s)

    def _times(self, session: Session, column: str, value: str, now: datetime) -> list[datetime]:
        field = col(LoginFailure.username) if column == "username" else col(LoginFailure.client_ip)
        query = select(LoginFailure.at).where(
            field == value, col(LoginFailure.at) > now - self.window
        )
        return list(session.exec(query).all())

    def check(
        self, session: Session, *, username: str, client_ip: str, now: datetime
    ) -> Throttled | None:
        """The refusal in force for this username or address at ``now``, if any (the
        longer wait wins when both apply)."""
        found: list[Throttled] = []
        for scope, value, limit in (
            ("username", normalise_username(username), self.limits.max_failures_per_user),
            ("ip", client_ip[:64], self.limits.max_failures_per_ip),
        ):
            times = self._times(session, scope, value, now)
            wait = retry_after(times, limit=limit, window=self.window, now=now)
            if wait is not None:
                found.append(Throttled(scope, max(1, ceil(wait)), len(times)))  # type: ignore[arg-type]
        return max(found, key=lambda t: t.retry_after_s, default=None)

    def begin(
        self, session: Session, *, username: str, client_ip: str, now: datetime
    ) -> int | Throttled:
        """Count an attempt before its password is checked: the id of its committed row (a
        failure until ``forgive`` says otherwise), or the refusal in force (nothing counted:
        hammering a locked account does not extend the lockout).

        The check and the insert are one transaction holding the username's and the
        address's lock, so concurrent attempts are counted one after another."""
        _serialise(session, normalise_username(username), client_ip[:64])
        session.exec(delete(LoginFailure).where(col(LoginFailure.at) <= now - self.window))
        refused = self.check(session, username=username, client_ip=client_ip, now=now)
        if refused is not None:
            session.commit()
            return refused
        row = LoginFailure(at=now, username=normalise_username(username), client_ip=client_ip[:64])
        session.add(row)
        session.commit()  # visible to every other attempt before the slow password check
        assert row.id is not None
        return row.id

    def failed(
        self, session: Session, *, username: str, client_ip: str, now: datetime
    ) -> Throttled | None:
        """After a wrong password (its row from ``begin`` stays): the refusal now in force,
        if any (the moment worth an audit entry when its count is the limit)."""
        return self.check(session, username=username, client_ip=client_ip, now=now)

    def forgive(self, session: Session, *, attempt: int, username: str) -> None:
        """A right password: its attempt was no failure, and the username's failures are
        cleared (see ``clear``)."""
        session.exec(delete(LoginFailure).where(col(LoginFailure.id) == attempt))
        self.clear(session, username=username)

    def clear(self, session: Session, *, username: str) -> None:
        """A successful login forgives the username's failures (not the address's: one
        right password must not reset a spray across many accounts)."""
        session.exec(
            delete(LoginFailure).where(col(LoginFailure.username) == normalise_username(username))
        )


__all__ = ["LoginFailure", "LoginLimiter", "Throttled", "normalise_username", "retry_after"]
