"""Outbox records from devices, stored exactly once in ``telemetry_record``
(``controller.telemetry.tables.TelemetryRecord``): unique on (device, epoch, seq).

Each ingest transaction inserts its records with one ``INSERT … ON CONFLICT DO NOTHING``
executed for many rows, so a re-delivered batch (after a reconnect, a broker restart or a
controller crash) is harmless. Rows are turned into their stored form when they are added
(``PendingRecords.add``), so a record that cannot be stored is refused with its message
instead of failing the whole transaction.

``received_at`` is stamped when the rows are written (``PendingRecords.insert``), not when
their message came off the broker: the rollup's commit-lag rule (docs/telemetry.md) needs a
time no earlier than the row's insert, and with an ingest backlog a message may wait in
the queue long after it arrived. The stamp is one value per batch, bound once (no
per-row work).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from controller.telemetry.tables import TelemetryRecord


class RecordFields(Protocol):
    """What is stored of an outbox record: ``shared.messages.Record``, or the fast
    decoder's ``RecordFrame`` (controller/ingest/telemetry_decode.py)."""

    @property
    def epoch(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def body(self) -> dict[str, Any]: ...


def record_rows(device_id: str, records: Sequence[RecordFields]) -> list[dict[str, Any]]:
    """Rows for SQLAlchemy's ``TelemetryRecord`` insert (datetimes already in UTC;
    ``received_at`` is bound by ``insert_records``)."""
    return [
        {
            "device_id": device_id,
            "epoch": r.epoch,
            "seq": r.seq,
            "kind": r.kind,
            "name": r.name,
            "at": r.at.astimezone(UTC),
            "body": r.body,
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


# --- SQLite: rows in their stored form, one DB-API executemany -------------------------
# SQLAlchemy's per-row bind processing (UTCDateTime, SQLite DATETIME, JSON) and its
# insertmanyvalues bookkeeping were most of the ingest's CPU; on SQLite the rows are built
# in exactly the form those types store, and executed as plain SQL on the session's
# connection, in its transaction.
# The batch's stamp is written into the statement as a literal (``sqlite_datetime``'s fixed
# digits-and-separators form, nothing else): one prepare per batch, no per-row value.
_SQLITE_INSERT = (
    "INSERT INTO telemetry_record (device_id, epoch, seq, kind, name, at, body, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, '{stored_at}') ON CONFLICT (device_id, epoch, seq) DO NOTHING"
)
SqliteRow = tuple[str, int, int, str, str, str, str]


# SQLAlchemy's SQLite DATETIME storage format, which its result processor parses back.
_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def sqlite_datetime(value: datetime) -> str:
    """What ``UTCDateTime`` stores on SQLite: the UTC wall clock, ``YYYY-MM-DD HH:MM:SS.ffffff``.

    Raises ``OverflowError`` for an aware time whose UTC value is outside years 1-9999.
    """
    u = value.astimezone(UTC)
    return _SQLITE_DATETIME % (u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond)


_ENCODE = msgspec.json.Encoder().encode


def json_text(body: dict[str, Any]) -> str:
    """``body`` as JSON text that ``json.loads`` (SQLAlchemy's JSON type) reads back equal.

    msgspec's encoder is ~10x faster than ``json.dumps`` (and 2x pydantic-core's). What it
    refuses (a lone surrogate, which a JSON ``\\u`` escape can carry) goes to
    ``json.dumps``, which is what SQLAlchemy itself would have used. Bodies hold no
    infinity or NaN (both decoders refuse them), which msgspec would write as ``null``.
    """
    try:
        return _ENCODE(body).decode()
    except (TypeError, ValueError, OverflowError, UnicodeError):  # msgspec.EncodeError too
        return json.dumps(body)


def sqlite_rows(device_id: str, records: Sequence[RecordFields]) -> list[SqliteRow]:
    """The stored form of ``records`` on SQLite (``received_at`` is added by
    ``insert_sqlite_rows``); ``OverflowError`` if one cannot be stored."""
    return [
        (
            device_id,
            r.epoch,
            r.seq,
            r.kind,
            r.name,
            sqlite_datetime(r.at),
            json_text(r.body),
        )
        for r in records
    ]


def insert_sqlite_rows(session: Session, rows: list[SqliteRow], stored_at: datetime) -> int:
    """Insert stored-form rows stamped ``stored_at``, skipping ones already stored; returns
    how many were new."""
    if not rows:
        return 0
    sql = _SQLITE_INSERT.format(stored_at=sqlite_datetime(stored_at))
    result = session.connection().exec_driver_sql(sql, rows)
    return int(result.rowcount)


# --- PostgreSQL: rows as one JSON document, one INSERT … SELECT FROM json_to_recordset ---
# One statement and one text parameter per batch, whatever its size: msgspec encodes the
# rows (in C, ~1 µs a row) and the server unpacks them. SQLAlchemy's insertmanyvalues bound
# and processed every row's eight values in Python and returned an id per new row; psycopg's
# text array dumper (an ``unnest`` of seven arrays, tried first) escapes each element with a
# regular expression in Python: ~50 µs a row, most of the writer (py-spy). COPY would be as
# fast to send but cannot skip rows already stored (ON CONFLICT) without a temporary table.
# Bodies go as JSON text inside a string, cast to json per row: ``json_to_recordset`` would
# refuse a ``\\u0000`` escape (valid in a body, see shared.messages) in a nested object.
_PG_INSERT = (
    "INSERT INTO telemetry_record (device_id, epoch, seq, kind, name, at, body, received_at) "
    "SELECT d, e, s, k, n, a, b::json, %s FROM json_to_recordset(%s::json) "
    "AS r(d varchar, e bigint, s bigint, k varchar, n varchar, a timestamptz, b text) "
    "ON CONFLICT ON CONSTRAINT uq_record_identity DO NOTHING"
)


def pg_rows(device_id: str, records: Sequence[RecordFields]) -> list[dict[str, Any]]:
    """``_PG_INSERT``'s form of ``records``; ``OverflowError`` if a time cannot be stored."""
    return [
        {
            "d": device_id,
            "e": r.epoch,
            "s": r.seq,
            "k": r.kind,
            "n": r.name,
            "a": r.at.astimezone(UTC),
            "b": json_text(r.body),
        }
        for r in records
    ]


class PgRows:
    """Rows for ``_PG_INSERT`` (``received_at`` is added at insert)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, device_id: str, records: Sequence[RecordFields]) -> None:
        """Queue one message's records, all or none; ``OverflowError`` if a time cannot be
        stored."""
        self.rows += pg_rows(device_id, records)

    def insert(self, session: Session, stored_at: datetime) -> int:
        """Insert the queued rows stamped ``stored_at``, skipping ones already stored;
        returns how many were new."""
        if not self.rows:
            return 0
        document = _ENCODE(self.rows).decode()
        params = (stored_at.astimezone(UTC), document)
        result = session.connection().exec_driver_sql(_PG_INSERT, params)
        return int(result.rowcount)


def insert_records(session: Session, rows: list[dict[str, Any]], stored_at: datetime) -> int:
    """Insert rows (``record_rows``' form) stamped ``stored_at``, skipping ones already
    stored; returns how many were new. PostgreSQL: ``PgRows``' single statement; other
    databases: SQLAlchemy's compiled-once statement."""
    if not rows:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        pending = PgRows()
        pending.rows = [
            {
                "d": row["device_id"],
                "e": row["epoch"],
                "s": row["seq"],
                "k": row["kind"],
                "n": row["name"],
                "a": row["at"].astimezone(UTC),
                "b": json_text(row["body"]),
            }
            for row in rows
        ]
        return pending.insert(session, stored_at)
    statement = _insert_statement(session.get_bind().dialect.name)
    # One stamp for every row of the batch, which the rows do not carry: a bound value of
    # the statement (its compiled form is cached on its shape, not on the value).
    stamped = statement.values(received_at=stored_at.astimezone(UTC))
    result = session.connection().execute(stamped, rows)
    return len(result.all())


@dataclass(frozen=True, slots=True)
class PreparedRows:
    """One message's rows in the stored form of one database (``prepare_rows``)."""

    dialect: str
    rows: list[Any]


def prepare_rows(dialect: str, device_id: str, records: Sequence[RecordFields]) -> PreparedRows:
    """``records`` in the form ``PendingRecords`` inserts them into a ``dialect`` database,
    built ahead (where CPU is to spare); ``OverflowError`` if a time cannot be stored."""
    if dialect == "sqlite":
        return PreparedRows(dialect, sqlite_rows(device_id, records))
    return PreparedRows(dialect, pg_rows(device_id, records))


class PendingRecords:
    """The telemetry rows of one ingest transaction, in the form its database stores."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._dialect = session.get_bind().dialect.name
        self._sqlite = self._dialect == "sqlite"
        self._sqlite_rows: list[SqliteRow] = []
        self._pg = PgRows()

    def __len__(self) -> int:
        return len(self._sqlite_rows) + len(self._pg)

    def add(
        self,
        device_id: str,
        records: Sequence[RecordFields],
        prepared: PreparedRows | None = None,
    ) -> None:
        """Queue one message's records, all or none (``prepared``: the same records already
        in this database's stored form); ``OverflowError`` if a time cannot be stored (an
        aware time whose UTC value falls outside years 1-9999)."""
        if prepared is not None and prepared.dialect == self._dialect:
            if self._sqlite:
                self._sqlite_rows += prepared.rows
            else:
                self._pg.rows += prepared.rows
        elif self._sqlite:
            self._sqlite_rows.extend(sqlite_rows(device_id, records))
        else:
            self._pg.add(device_id, records)

    def insert(self, stored_at: datetime) -> int:
        """Insert everything queued, stamped ``stored_at`` (the time of this write: see the
        module docstring), skipping records already stored; returns how many were new."""
        if stored_at.utcoffset() is None:
            raise ValueError("stored_at must be timezone-aware")
        if self._sqlite:
            return insert_sqlite_rows(self._session, self._sqlite_rows, stored_at)
        return self._pg.insert(self._session, stored_at)
