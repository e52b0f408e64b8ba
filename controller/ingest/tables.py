"""The ingest path's own table: dead letters. (The raw telemetry records ingest writes are
telemetry's table, ``controller.telemetry.tables.TelemetryRecord``.)"""

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.db import utcnow


class RejectedMessage(SQLModel, table=True):
    """Dead letters: messages refused by ingest, with the reason (payloads are not kept).

    One row stands for ``count`` rejections of one device and reason within a window
    (``controller/ingest/limits.py``); topic, detail and size are the first one's.
    """

    __tablename__ = "rejected_message"
    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow, index=True)  # the first one
    topic: str = Field(max_length=256)
    reason: str = Field(max_length=64, index=True)
    detail: str = Field(max_length=1024)
    size: int
    # The device the topic names (None when the topic names none); caps count per device.
    device_id: str | None = Field(default=None, max_length=63, index=True)
    count: int = 1
    last_at: datetime | None = None  # the latest one counted in this row


__all__ = ["RejectedMessage"]
