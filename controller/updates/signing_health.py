"""Whether the controller keeps its TUF timestamp valid: the pure decision behind
``/healthz``'s ``tuf_signing``. The timestamp lives a day by default and is re-signed by
the ``tuf-refresh`` job once less than ``refresh_fraction`` of that is left; a controller
that cannot sign (no passphrase, or the last re-signing failed) shows it from that moment
on, hours before devices start refusing every update."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

SigningStatus = Literal["off", "ok", "degraded", "expired", "unreadable"]


@dataclass(frozen=True, slots=True)
class SigningHealth:
    """``off``: no TUF repository yet; ``ok``: the timestamp is valid and not due, or the
    controller can re-sign it; ``degraded``: due for re-signing and this controller cannot;
    ``expired``: devices refuse updates until it is re-signed; ``unreadable``: the
    repository's timestamp cannot be read (``problem`` says why)."""

    status: SigningStatus
    timestamp_expires: datetime | None = None
    # Why this controller cannot re-sign, None when it can.
    problem: str | None = None

    def as_json(self) -> dict[str, str | bool | None]:
        expires = self.timestamp_expires
        return {
            "status": self.status,
            "timestamp_expires": None if expires is None else expires.isoformat(),
            "can_sign": self.problem is None,
            "problem": self.problem,
        }


def signing_health(
    *,
    timestamp_expires: datetime | None,
    lifetime: timedelta,
    refresh_fraction: float,
    problem: str | None,
    now: datetime,
) -> SigningHealth:
    """The signing health at ``now`` of a timestamp expiring at ``timestamp_expires`` (None:
    no repository), signed for ``lifetime`` and due once less than ``refresh_fraction`` of
    it is left; ``problem`` says why this controller cannot sign (None: it can)."""
    if timestamp_expires is None:
        return SigningHealth("off", None, problem)
    if now >= timestamp_expires:
        return SigningHealth("expired", timestamp_expires, problem)
    due = timestamp_expires - now <= lifetime * refresh_fraction
    if due and problem is not None:
        return SigningHealth("degraded", timestamp_expires, problem)
    return SigningHealth("ok", timestamp_expires, problem)


__all__ = ["SigningHealth", "SigningStatus", "signing_health"]
