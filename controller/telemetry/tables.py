"""The telemetry tables: the raw records devices sent (written by ingest,
``controller/ingest/telemetry_store.py``), hourly rollups of the agents' windowed records,
drift sketches, scores and references, alerts, and the rollup cursor.

Hours are the start of a UTC hour (SQLModel stores aware datetimes as UTC on both
databases). Absent labels (a request group without a task class, a drift window without
a version) are stored as ``""`` so the unique keys hold; the API shows them as null.
Sketches are JSON lists of counts (``shared.sketches``); the categorical feature
``classes`` is a JSON map of label to count.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.db import utcnow


class TelemetryRecord(SQLModel, table=True):
    """One metric or event a device recorded."""

    __tablename__ = "telemetry_record"
    __table_args__ = (UniqueConstraint("device_id", "epoch", "seq", name="uq_record_identity"),)
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    )
    device_id: str = Field(max_length=63, index=True)
    epoch: int = Field(sa_column=Column(BigInteger, nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str = Field(max_length=16)
    name: str = Field(max_length=64, index=True)
    at: datetime = Field(index=True)
    body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # When the row was written (the ingest transaction's insert, see
    # controller/ingest/telemetry_store.py).
    received_at: datetime = Field(default_factory=utcnow)


class _RequestCounts(SQLModel):
    """Counts of one (tier, task class) bucket of requests."""

    tier: str = Field(max_length=64)
    task_class: str = Field(default="", max_length=64)
    count: int = Field(default=0, sa_type=BigInteger)
    errors: int = Field(default=0, sa_type=BigInteger)
    escalations: int = Field(default=0, sa_type=BigInteger)
    cascades: int = Field(default=0, sa_type=BigInteger)
    fallbacks: int = Field(default=0, sa_type=BigInteger)
    prompt_tokens: int = Field(default=0, sa_type=BigInteger)
    completion_tokens: int = Field(default=0, sa_type=BigInteger)
    # A base class shares no Column object between tables: sa_type, not sa_column.
    latency: list[int] = Field(default_factory=list, sa_type=JSON, nullable=False)


class DeviceRequestHour(_RequestCounts, table=True):
    """One device's requests of one hour, tier and task class."""

    __tablename__ = "telemetry_device_hour"
    __table_args__ = (
        UniqueConstraint("device_id", "hour", "tier", "task_class", name="uq_device_hour"),
    )
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=63)
    hour: datetime


class FleetRequestHour(_RequestCounts, table=True):
    """The whole fleet's requests of one hour, tier and task class."""

    __tablename__ = "telemetry_fleet_hour"
    __table_args__ = (UniqueConstraint("hour", "tier", "task_class", name="uq_fleet_hour"),)
    id: int | None = Field(default=None, primary_key=True)
    hour: datetime


class DeviceHealthHour(SQLModel, table=True):
    """One device's ``system`` samples of one hour, and the newest of them."""

    __tablename__ = "telemetry_health_hour"
    __table_args__ = (UniqueConstraint("device_id", "hour", name="uq_health_hour"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=63)
    hour: datetime
    samples: int = 0
    cpu_samples: int = 0
    cpu_sum: float = 0.0
    cpu_max: float | None = None
    memory_samples: int = 0
    memory_sum: float = 0.0
    memory_max: float | None = None
    disk_max: float | None = None
    temperature_max: float | None = None
    # The newest sample of the hour (its numeric fields only): the device page's "now".
    last_at: datetime | None = None
    last: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class DriftHour(SQLModel, table=True):
    """A model version's sketch of one feature over one hour, summed over its devices."""

    __tablename__ = "drift_hour"
    __table_args__ = (
        UniqueConstraint("model", "version", "feature", "hour", name="uq_drift_hour"),
        Index("ix_drift_hour_model_hour", "model", "hour"),
    )
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=64)
    version: str = Field(default="", max_length=64)
    feature: str = Field(max_length=64)
    hour: datetime
    samples: int = Field(default=0, sa_type=BigInteger)
    counts: Any = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class DriftScore(SQLModel, table=True):
    """PSI and KS of one model version's feature over one hour against its reference
    (PSI only for ``classes``: its labels have no order for KS)."""

    __tablename__ = "drift_score"
    __table_args__ = (
        UniqueConstraint("model", "version", "feature", "hour", name="uq_drift_score"),
        Index("ix_drift_score_model_feature_hour", "model", "feature", "hour"),
    )
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=64)
    version: str = Field(default="", max_length=64)
    feature: str = Field(max_length=64)
    hour: datetime
    psi: float
    ks: float | None = None  # None for the categorical "classes" feature (PSI only)
    samples: int = Field(default=0, sa_type=BigInteger)
    computed_at: datetime = Field(default_factory=utcnow)


class DriftReference(SQLModel, table=True):
    """The reference sketch of one model's feature that drift is measured against.

    A row with ``pending`` set (feature ``*``) stands for a reference still to be taken:
    a rollout started without data before it, so the first full window of data after
    ``window_start`` becomes the reference (docs/drift.md).
    """

    __tablename__ = "drift_reference"
    __table_args__ = (UniqueConstraint("model", "feature", name="uq_drift_reference"),)
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=64)
    feature: str = Field(max_length=64)
    version: str = Field(default="", max_length=64)
    window_start: datetime
    window_end: datetime
    samples: int = Field(default=0, sa_type=BigInteger)
    counts: Any = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    pending: bool = False
    set_at: datetime = Field(default_factory=utcnow)
    set_by: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=256)


class TelemetryAlert(SQLModel, table=True):
    """An alert: open while its condition holds, closed (kept) once it no longer does."""

    __tablename__ = "telemetry_alert"
    __table_args__ = (
        Index("ix_telemetry_alert_subject", "kind", "subject", "feature", "state"),
        Index("ix_telemetry_alert_state_id", "state", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)  # drift
    subject: str = Field(max_length=128)  # the model, for drift
    feature: str = Field(default="", max_length=64)
    value: float
    threshold: float
    state: str = Field(default="open", max_length=8)  # open | closed
    opened_at: datetime = Field(default_factory=utcnow)
    closed_at: datetime | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class RollupCursor(SQLModel, table=True):
    """How far the rollup got through ``telemetry_record`` and what it met on the way."""

    __tablename__ = "telemetry_rollup_cursor"
    name: str = Field(primary_key=True, max_length=32)
    last_id: int = Field(
        default=0, sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), nullable=False)
    )
    processed: int = Field(default=0, sa_type=BigInteger)
    malformed: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = Field(default_factory=utcnow)


__all__ = [
    "DeviceHealthHour",
    "DeviceRequestHour",
    "DriftHour",
    "DriftReference",
    "DriftScore",
    "FleetRequestHour",
    "RollupCursor",
    "TelemetryAlert",
    "TelemetryRecord",
]
