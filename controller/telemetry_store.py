"""Outbox records from devices, stored exactly once: unique on (device, epoch, seq).

Each ingest transaction inserts its records with one ``INSERT … ON CONFLICT DO NOTHING``
executed for many rows, so a re-delivered batch (after a reconnect, a broker restart or a
controller crash) is harmless. Rows are turned into their stored form when they are added
(``PendingRecords.add``), so a record that cannot be stored is refused with its message
instead of failing the whole transaction.
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pydantic_core
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
    """Rows for SQLAlchemy's ``TelemetryRecord`` insert (datetimes already in UTC)."""
    received = received_at.astimezone(UTC)
    return [
        {
            "device_id": device_id,
            "epoch": r.epoch,
            "seq": r.seq,
            "kind": r.kind,
            "name": r.name,
            "at": r.at.astimezone(UTC),
            "body": r.body,
            "received_at": received,
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


# --- SQLite: rows in their stored form, one DB-API executemany -------------------------
# SQLAlchemy's per-row bind processing (UTCDateTime, SQLite DATETIME, JSON) and its
# insertmanyvalues bookkeeping were most of the ingest's CPU; on SQLite the rows are built
# in exactly the form those types store, and executed as plain SQL on the session's
# connection, in its transaction.
_SQLITE_INSERT = (
    "INSERT INTO telemetry_record (device_id, epoch, seq, kind, name, at, body, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, epoch, seq) DO NOTHING"
)
SqliteRow = tuple[str, int, int, str, str, str, str, str]


# SQLAlchemy's SQLite DATETIME storage format, which its result processor parses back.
_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def sqlite_datetime(value: datetime) -> str:
    """What ``UTCDateTime`` stores on SQLite: the UTC wall clock, ``YYYY-MM-DD HH:MM:SS.ffffff``.

    Raises ``OverflowError`` for an aware time whose UTC value is outside years 1-9999.
    """
    u = value.astimezone(UTC)
    return _SQLITE_DATETIME % (u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond)


def json_text(body: dict[str, Any]) -> str:
    """``body`` as JSON text that ``json.loads`` (SQLAlchemy's JSON type) reads back equal.

    pydantic-core's encoder is ~5x faster than ``json.dumps``. What it refuses (a lone
    surrogate, which a JSON ``\\u`` escape can carry; nesting deeper than its limit) goes
    to ``json.dumps``, which is what SQLAlchemy itself would have used.
    """
    try:
        return pydantic_core.to_json(body, inf_nan_mode="constants").decode()
    except ValueError:  # PydanticSerializationError
        return json.dumps(body)


def sqlite_rows(
    device_id: str, records: Sequence[Record], received_at: datetime
) -> list[SqliteRow]:
    """The stored form of ``records`` on SQLite; ``OverflowError`` if one cannot be stored."""
    received = sqlite_datetime(received_at)
    return [
        (
            device_id,
            r.epoch,
            r.seq,
            r.kind,
            r.name,
            sqlite_datetime(r.at),
            json_text(r.body),
            received,
        )
        for r in records
    ]


def insert_sqlite_rows(session: Session, rows: list[SqliteRow]) -> int:
    """Insert stored-form rows, skipping ones already stored; returns how many were new."""
    if not rows:
        return 0
    result = session.connection().exec_driver_sql(_SQLITE_INSERT, rows)
    return int(result.rowcount)


class PendingRecords:
    """The telemetry rows of one ingest transaction, in the form its database stores."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._sqlite = session.get_bind().dialect.name == "sqlite"
        self._sqlite_rows: list[SqliteRow] = []
        self._rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._sqlite_rows) + len(self._rows)

    def add(self, device_id: str, records: Sequence[Record], received_at: datetime) -> None:
        """Queue one message's records, all or none; ``OverflowError`` if a time cannot be
        stored (an aware time whose UTC value falls outside years 1-9999)."""
        if received_at.utcoffset() is None:  # record times are aware: the protocol says so
            raise ValueError("received_at must be timezone-aware")
        if self._sqlite:
            self._sqlite_rows.extend(sqlite_rows(device_id, records, received_at))
        else:
            self._rows.extend(record_rows(device_id, records, received_at))

    def insert(self) -> int:
        """Insert everything queued, skipping records already stored; returns how many
        were new."""
        if self._sqlite:
            return insert_sqlite_rows(self._session, self._sqlite_rows)
        return insert_records(self._session, self._rows)
