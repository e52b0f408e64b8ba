"""Dead letters in the database, on SQLite and PostgreSQL: aggregated rows, caps per device
and in total, and the migration of a dead-letter table made by an earlier version."""

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from sqlmodel import Session, col, select

from controller.db import make_engine, session_scope
from controller.ingest.dead_letters import _storable, prune_dead_letters, write_dead_letters
from controller.ingest.limits import DeadLetterBook, Rejection
from controller.ingest.tables import RejectedMessage
from controller.migrations import init_db, migrate

AT = datetime(2026, 12, 7, 1, 0)

# The table as controllers before the aggregation created it.
OLD_REJECTED_TABLE = """
CREATE TABLE rejected_message (
    id INTEGER NOT NULL PRIMARY KEY, received_at TIMESTAMP NOT NULL, topic VARCHAR(256) NOT NULL,
    reason VARCHAR(64) NOT NULL, detail VARCHAR(1024) NOT NULL, size INTEGER NOT NULL
)
"""


def reject(book: DeadLetterBook, device: str | None, reason: str, now: float) -> None:
    topic = f"ef/v1/{device}/heartbeat" if device else "not/a/topic"
    book.record(Rejection(device, reason, topic, "detail", 7, AT.replace(tzinfo=UTC)), now)


def rows(engine: object) -> list[RejectedMessage]:
    with Session(engine) as session:  # type: ignore[arg-type]
        return list(session.exec(select(RejectedMessage).order_by(col(RejectedMessage.id))))


def test_drains_add_to_their_row_and_a_pruned_row_is_written_again(database_url: str) -> None:
    """The first drain inserts a row per (device, reason), later drains add to its count;
    a row deleted meanwhile (by a cap) is inserted again rather than lost."""
    engine = make_engine(database_url)
    init_db(engine)
    book = DeadLetterBook(window_s=3600)
    for i in range(5):
        reject(book, "dev-1", "bad_json", i)
    reject(book, None, "bad_topic", 5)
    with session_scope(engine) as session:
        touched = write_dead_letters(session, book.drain())
    assert touched == {"dev-1", None}
    for i in range(3):
        reject(book, "dev-1", "bad_json", 10 + i)
    with session_scope(engine) as session:
        write_dead_letters(session, book.drain())
    stored = rows(engine)
    assert [(r.device_id, r.reason, r.count) for r in stored] == [
        ("dev-1", "bad_json", 8),
        (None, "bad_topic", 1),
    ]
    with session_scope(engine) as session:
        session.execute(text("DELETE FROM rejected_message"))
    reject(book, "dev-1", "bad_json", 20)
    with session_scope(engine) as session:
        write_dead_letters(session, book.drain())
    assert [(r.device_id, r.count) for r in rows(engine)] == [("dev-1", 1)]
    engine.dispose()


def test_caps_keep_the_newest_rows_per_device_and_in_total(database_url: str) -> None:
    """Past the caps the oldest rows go, per device (topics naming none share one
    allowance) and in total; the counts they stood for are returned as lost."""
    engine = make_engine(database_url)
    init_db(engine)
    book = DeadLetterBook(window_s=3600, device_burst=100, total_burst=100)
    for i in range(6):
        reject(book, "noisy", f"reason-{i}", 0)
        reject(book, "noisy", f"reason-{i}", 0)  # each row counts 2
    for i in range(4):
        reject(book, None, f"bad-{i}", 0)
    reject(book, "quiet", "schema", 0)
    with session_scope(engine) as session:
        touched = write_dead_letters(session, book.drain())
        lost = prune_dead_letters(session, touched, per_device=2, total=100)
    assert lost == 4 * 2 + 2 * 1
    kept = [(r.device_id, r.reason) for r in rows(engine)]
    assert kept == [
        ("noisy", "reason-4"),
        ("noisy", "reason-5"),
        (None, "bad-2"),
        (None, "bad-3"),
        ("quiet", "schema"),
    ]
    with session_scope(engine) as session:
        lost = prune_dead_letters(session, set(), per_device=2, total=2)
    assert lost == 2 + 2 + 1
    assert [(r.device_id, r.reason) for r in rows(engine)] == [(None, "bad-3"), ("quiet", "schema")]
    engine.dispose()


def test_an_old_dead_letter_table_gains_device_count_and_last_seen(database_url: str) -> None:
    """On SQLite and PostgreSQL, init_db over a dead-letter table of an earlier version adds
    device_id (with its index), count (1 for existing rows) and last_at, and keeps the rows."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(OLD_REJECTED_TABLE))
        conn.execute(
            text(
                "INSERT INTO rejected_message (id, received_at, topic, reason, detail, size) "
                "VALUES (1, CURRENT_TIMESTAMP, 'ef/v1/x/heartbeat', 'schema', 'old', 3)"
            )
        )
    init_db(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("rejected_message")}
    assert {"device_id", "count", "last_at"} <= columns
    indexes = {i["name"] for i in inspect(engine).get_indexes("rejected_message")}
    assert "ix_rejected_message_device_id" in indexes
    (old,) = rows(engine)
    assert (old.reason, old.count, old.device_id, old.last_at) == ("schema", 1, None, None)
    assert migrate(engine) == []
    engine.dispose()


def test_a_topic_or_detail_holding_nul_or_a_lone_surrogate_is_stored(database_url: str) -> None:
    """Text PostgreSQL or UTF-8 cannot hold (NUL, a lone surrogate) is escaped, so the
    dead-letter insert never fails and never blocks the dead letters queued behind it."""
    engine = make_engine(database_url)
    init_db(engine)
    book = DeadLetterBook()
    book.record(
        Rejection(
            "dev-1", "schema", "ef/v1/dev-1/x\x00", "bad \udcff\x00", 3, AT.replace(tzinfo=UTC)
        ),
        0.0,
    )
    with session_scope(engine) as session:
        write_dead_letters(session, book.drain())
    (row,) = rows(engine)
    assert (row.topic, row.detail) == ("ef/v1/dev-1/x\\x00", "bad \\udcff\\x00")
    engine.dispose()


@given(st.text())
def test_storable_text_has_no_nul_and_encodes(text_in: str) -> None:
    """Whatever text a rejection carries, what is stored has no NUL and is valid UTF-8."""
    out = _storable(text_in)
    assert "\x00" not in out
    out.encode("utf-8")
