"""Device shadows on the controller: desired (ours, versioned) and reported (the device's).

The merge and delta rules are the pure ones in ``shared.shadow``; this module stores them.

Desired keys a controller service decides (``SYSTEM_KEYS``: ``quarantine`` by attestation,
``model`` by rollouts, ...) are set only by that service: ``set_desired`` refuses any other
actor (``OwnedKeyError``), so an operator's PATCH cannot lift a quarantine on the device
while the controller still holds it. Every change of desired, by a user or a service, is
audited in the caller's transaction with the actor, the keys and their values before and
after (each value capped at ``AUDIT_VALUE_MAX`` bytes of JSON).
"""

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Integer, bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from controller.audit import audit
from controller.db import utcnow
from shared.canonical import canonical_json
from shared.messages import Desired, Reported
from shared.shadow import delta, is_newer, merge_patch

# Desired keys owned by a controller service, and the only actor that may set each.
SYSTEM_KEYS: dict[str, str] = {
    "quarantine": "system:attestation",
    "model": "system:rollouts",
    "policy": "system:policy",
    "drill": "system:drills",
}
# Longest JSON of one value kept in an audit entry; a longer one is kept as its size,
# SHA-256 and first characters.
AUDIT_VALUE_MAX = 1024
_AUDIT_HEAD = 256


class OwnedKeyError(PermissionError):
    """A desired change touching keys another actor owns; nothing was changed."""

    def __init__(self, keys: Mapping[str, str], actor: str) -> None:
        self.keys = dict(keys)
        self.actor = actor
        owned = ", ".join(f"{key!r} (set by {owner})" for key, owner in sorted(self.keys.items()))
        super().__init__(
            f"desired {'key' if len(self.keys) == 1 else 'keys'} {owned} "
            f"cannot be set by {actor}; each is set only by the controller service that "
            "owns it (docs/access.md)"
        )


def owned_keys(patch: Mapping[str, Any], actor: str) -> dict[str, str]:
    """The keys of ``patch`` that ``actor`` may not set, each with its owner."""
    return {
        key: owner
        for key in patch
        if (owner := SYSTEM_KEYS.get(key)) is not None and owner != actor
    }


def capped(value: Any) -> Any:
    """``value`` as an audit entry keeps it: itself while its JSON is short, else a summary."""
    text = canonical_json(value)
    if len(text) <= AUDIT_VALUE_MAX:
        return value
    return {
        "truncated": True,
        "bytes": len(text),
        "sha256": hashlib.sha256(text).hexdigest(),
        "head": text[:_AUDIT_HEAD].decode("utf-8", errors="ignore"),
    }


def _changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return {
        "keys": keys,
        "before": {k: capped(before.get(k)) for k in keys},
        "after": {k: capped(after.get(k)) for k in keys},
    }


_DESIRED_VERSION = Column("desired_version", Integer, nullable=False, default=0)


class DeviceShadow(SQLModel, table=True):
    """One device's desired and reported documents."""

    __tablename__ = "device_shadow"
    # Optimistic locking on desired_version: every UPDATE of a row says which version it
    # read (WHERE desired_version = :read), so two writers that read the same version (the
    # rollout tick and attestation in ingest, say) cannot both win; the loser's transaction
    # fails with StaleDataError and is retried by its caller (next tick, the batch again).
    __mapper_args__ = {"version_id_col": _DESIRED_VERSION, "version_id_generator": False}
    device_id: str = Field(primary_key=True, max_length=63)
    desired: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    desired_version: int = Field(default=0, sa_column=_DESIRED_VERSION)
    desired_updated_at: datetime | None = None
    desired_published_at: datetime | None = None
    reported: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reported_version: int = 0
    applied_desired_version: int = 0
    rejected: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reported_updated_at: datetime | None = None


def get_or_create(session: Session, device_id: str) -> DeviceShadow:
    """The device's shadow row, inserted now if there is none. Two writers may both find
    none (an operator's PATCH and ingest of the device's first report, say): the insert runs
    in a savepoint, and the one that loses the race reads the winner's row instead of
    failing its whole transaction."""
    row = session.get(DeviceShadow, device_id)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = DeviceShadow(device_id=device_id)
            session.add(row)
    except IntegrityError:
        row = session.get(DeviceShadow, device_id)
        if row is None:
            raise
    return row


def set_desired(
    session: Session,
    device_id: str,
    patch: dict[str, Any],
    *,
    now: datetime,
    actor: str,
    reason: str = "",
) -> DeviceShadow:
    """Merge ``patch`` into desired (RFC 7396) and bump its version; no-op patches do not bump.

    ``actor`` (``user:<name>``, ``system:<service>``) must own every ``SYSTEM_KEYS`` key the
    patch touches, else ``OwnedKeyError`` and nothing changes. A change is audited
    (``shadow.desired``) in the caller's transaction, so both commit or neither does."""
    refused = owned_keys(patch, actor)
    if refused:
        raise OwnedKeyError(refused, actor)
    row = get_or_create(session, device_id)
    merged = merge_patch(row.desired, patch)
    if merged != row.desired or row.desired_version == 0:
        changes = _changes(row.desired, merged)
        row.desired = merged
        row.desired_version += 1
        row.desired_updated_at = now
        row.desired_published_at = None
        if changes["keys"]:
            audit(
                session,
                actor=actor,
                action="shadow.desired",
                target=f"device:{device_id}",
                reason=reason,
                detail={**changes, "version": row.desired_version},
                at=now,
            )
    session.add(row)
    return row


def apply_reported(session: Session, message: Reported, *, now: datetime) -> bool:
    """Store a reported document if newer than the stored one; False for stale re-deliveries."""
    row = get_or_create(session, message.device_id)
    if not is_newer(message.version, row.reported_version or None):
        return False
    row.reported = dict(message.state)
    row.reported_version = message.version
    row.applied_desired_version = message.applied_desired_version
    row.rejected = dict(message.rejected)
    row.reported_updated_at = now
    session.add(row)
    return True


def mark_published(session: Session, sent: Sequence[tuple[str, int]], now: datetime) -> None:
    """Record that each ``(device id, desired version)`` went out at ``now``, unless a newer
    version was stored meanwhile (that one still has to go out). One UPDATE conditioned on
    the version, not the ORM's flush: that checks the version too, but fails the caller's
    whole transaction with StaleDataError when ingest's writer changed a row in between
    (measured in a 1,000-device storm, where quarantines rewrite desired documents)."""
    if not sent:
        return
    table = DeviceShadow.__table__  # type: ignore[attr-defined]
    session.connection().execute(
        update(table)
        .where(table.c.device_id == bindparam("d"), table.c.desired_version == bindparam("v"))
        .values(desired_published_at=now),
        [{"d": device_id, "v": version} for device_id, version in sent],
    )


def desired_message(row: DeviceShadow) -> Desired:
    return Desired(device_id=row.device_id, version=row.desired_version, state=row.desired)


def unapplied(session: Session) -> list[DeviceShadow]:
    """Shadows whose desired version the device has not reported as applied."""
    return list(
        session.exec(
            select(DeviceShadow).where(
                col(DeviceShadow.desired_version) > col(DeviceShadow.applied_desired_version)
            )
        )
    )


def view(row: DeviceShadow) -> dict[str, Any]:
    """The shadow as the API shows it, with the delta still to apply."""
    return {
        "device_id": row.device_id,
        "desired": row.desired,
        "desired_version": row.desired_version,
        "reported": row.reported,
        "reported_version": row.reported_version,
        "applied_desired_version": row.applied_desired_version,
        "rejected": row.rejected,
        "delta": delta(row.desired, row.reported),
        "in_sync": row.applied_desired_version >= row.desired_version,
        "desired_updated_at": row.desired_updated_at,
        "reported_updated_at": row.reported_updated_at,
    }


__all__ = [
    "AUDIT_VALUE_MAX",
    "SYSTEM_KEYS",
    "DeviceShadow",
    "OwnedKeyError",
    "apply_reported",
    "capped",
    "desired_message",
    "owned_keys",
    "set_desired",
    "unapplied",
    "utcnow",
    "view",
]
