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


_STATEMENTS: dict[str, Any] = {}


def _insert_statement(dialect: str) -> Any:
    """One compiled-once INSERT … ON CONFLICT DO NOTHING RETURNING id per dialect.

    Executed with a list of rows, SQLAlchemy's "insertmanyvalues" batches it into multi-row
    statements itself and returns one id per new row, on both databases (an executemany's
    rowcount would be -1 on PostgreSQL). Building ``.values(rows)`` per batch instead made
    SQLAlchemy compile a new statement every time: most of the ingest's CPU.
    """
    statement = _STATEMENTS.get(dialect)
    if statement is None:
        table = TelemetryRecord.__table__  # type: ignore[attr-defined]
        if dialect == "postgresql":
            statement = postgresql.insert(table).on_conflict_do_nothing(
                constraint="uq_record_identity"
            )
        elif dialect == "sqlite":
            statement = sqlite.insert(table).on_conflict_do_nothing(
                index_elements=["device_id", "epoch", "seq"]
            )
        else:
            raise RuntimeError(f"unsupported database dialect {dialect!r}")
        statement = statement.returning(table.c.id)
        _STATEMENTS[dialect] = statement
    return statement


def insert_records(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert rows, skipping ones already stored; returns how many were new."""
    if not rows:
        return 0
    statement = _insert_statement(session.get_bind().dialect.name)
    result = session.connection().execute(statement, rows)
    return len(result.all())
