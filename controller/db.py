"""Database engine and sessions: SQLite (WAL) by default, PostgreSQL by URL."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

# Imported for their side effect: registering the tables on SQLModel.metadata.
from controller import audit, models, shadows, telemetry_store  # noqa: F401
from controller.attestation import service as attestation_tables  # noqa: F401
from controller.auth import tables as auth_tables  # noqa: F401
from controller.drills import tables as drill_tables  # noqa: F401
from controller.images import registry as image_tables  # noqa: F401
from controller.migrations import migrate
from controller.rollouts import tables as rollout_tables  # noqa: F401
from controller.telemetry import tables as telemetry_tables  # noqa: F401
from controller.updates import registry  # noqa: F401


def make_engine(url: str) -> Engine:
    """Create the engine for ``url``; for SQLite, make the file's folder and turn on WAL."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the console read while ingest writes; NORMAL sync is safe with WAL.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def init_db(engine: Engine) -> None:
    """Create missing tables, then bring older ones up to date (``controller/migrations.py``)."""
    SQLModel.metadata.create_all(engine)
    migrate(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
