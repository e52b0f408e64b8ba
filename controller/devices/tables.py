"""The device registry's tables and the public shapes the API returns: one row per device
with its latest known state, and the status history (births, deaths, timeouts)."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.db import utcnow


class DeviceBase(SQLModel):
    """Fields shared by the device table and its public shape."""

    device_class: str | None = None
    arch: str | None = None
    accelerator: str | None = None
    agent_version: str | None = None
    runtimes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    models: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    api_url: str | None = None
    state: str = "unknown"  # online | offline | unknown
    state_reason: str | None = None  # birth | will | shutdown | heartbeat_timeout
    bd_seq: int | None = None
    heartbeat_interval_s: float | None = None
    last_heartbeat_seq: int | None = None
    # When last_heartbeat_seq was accepted: how far the next seq may plausibly be
    # (controller/ingest/plausibility.py).
    last_heartbeat_at: datetime | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    requests_total: int | None = None
    local_tier_healthy: bool | None = None
    # Set by attestation (a failed or missing quote): excluded from rollouts, refused the
    # cloud tier, flagged in the console, until a good quote clears it.
    quarantined: bool = False
    quarantine_reason: str | None = None
    # Set by revocation (edgefleet devices revoke, or attestation with on_fail: revoke): its
    # certificates are in the CRL, its broker login is gone and ingest refuses its messages
    # (``revoked``). Final: a decommissioned device id is never trusted again.
    decommissioned: bool = False
    decommissioned_at: datetime | None = None
    decommission_reason: str | None = None


class Device(DeviceBase, table=True):
    """The fleet registry: one row per device, its latest known state."""

    id: str = Field(primary_key=True, max_length=63)
    first_seen: datetime = Field(default_factory=utcnow)
    last_seen: datetime | None = None
    state_changed_at: datetime | None = None
    # The device's recent MQTT sessions, oldest first: [X25519 session key (base64), the
    # controller message key whose exchange key it was agreed with] from each verified birth
    # (at most MAX_SESSIONS): MACs are checked under the session they name, so a late
    # message (or a late birth) of an earlier session does not lock the current one out.
    sessions: list[list[str]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )


# How many of a device's sessions ingest keeps for checking MACs.
MAX_SESSIONS = 8


class DevicePublic(DeviceBase):
    """A device as the API and console show it."""

    id: str
    first_seen: datetime
    last_seen: datetime | None
    state_changed_at: datetime | None


class DeviceList(SQLModel):
    """A page of devices with fleet counts."""

    data: list[DevicePublic]
    count: int
    online: int
    offline: int
    quarantined: int = 0  # fleet-wide, whatever the filter


class DeviceStatusEvent(SQLModel, table=True):
    """Status history: every birth, death and timeout, in arrival order."""

    __tablename__ = "device_status_event"
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=63)
    at: datetime = Field(default_factory=utcnow, index=True)
    # birth | death | heartbeat_timeout | stale_death_ignored | implausible_seq
    event: str
    bd_seq: int | None = None
    detail: str | None = None


class DeviceStatusEventPublic(SQLModel):
    """One status history entry as the API returns it."""

    at: datetime
    event: str
    bd_seq: int | None
    detail: str | None


__all__ = [
    "Device",
    "DeviceBase",
    "DeviceList",
    "DevicePublic",
    "DeviceStatusEvent",
    "DeviceStatusEventPublic",
]
