"""Outbox records from devices, stored exactly once: unique on (device, epoch, seq).

Inserts are one multi-row statement per ingest batch with ON CONFLICT DO NOTHING, so a
re-delivered batch (after a reconnect, a broker restart or a controller crash) is harmless.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Integer, UniqueConstraint
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel

from controller.models import utcnow
from shared.messages import Record


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
    received_at: datetime = Field(default_factory=utcnow)


def record_rows(
    device_id: str, records: Sequence[Record], received_at: datetime
) -> list[dict[str, Any]]:
    return [
        {
            "device_id": device_id,
            "epoch": r.epoch,
            "seq": r.seq,
            "kind": r.kind,
            "name": r.name,
            "at": r.at,
            "body": r.body,
            "received_at": received_at,
        }
        for r in records
    ]


# Rows per INSERT statement: 8 parameters each stays far below SQLite's 32,766 and
# PostgreSQL's 65,535 bound parameters per statement.
CHUNK_ROWS = 1000


def insert_records(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert rows, skipping ones already stored; returns how many were new.

    Multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING id``: the returned ids count the
    new rows on both databases (an executemany's rowcount is -1 on PostgreSQL).
    """
    if not rows:
        return 0
    table = TelemetryRecord.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    inserted = 0
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        if dialect == "postgresql":
            statement: Any = (
                postgresql.insert(table)
                .values(chunk)
                .on_conflict_do_nothing(constraint="uq_record_identity")
            )
        elif dialect == "sqlite":
            statement = (
                sqlite.insert(table)
                .values(chunk)
                .on_conflict_do_nothing(index_elements=["device_id", "epoch", "seq"])
            )
        else:
            raise RuntimeError(f"unsupported database dialect {dialect!r}")
        result = session.connection().execute(statement.returning(table.c.id))
        inserted += len(result.fetchall())
    return inserted
