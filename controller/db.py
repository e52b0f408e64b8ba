"""Database engine and sessions: SQLite (WAL) by default, PostgreSQL by URL.

This module knows no table, so every package can use it; creating the tables and migrating
older databases is ``controller.migrations.init_db`` (it imports every table module).
"""

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    """The current time in UTC: the default of the tables' timestamp columns."""
    return datetime.now(UTC)


def private_sqlite_file(path: Path) -> None:
    """Make the SQLite database ``path`` readable by its owner only (it holds password and
    token hashes, device credentials and the audit log): created 0600 if missing, before
    SQLite opens it (SQLite gives its -wal and -shm files the database's mode), and an
    existing file, -wal or -shm readable by others tightened to 0600 with a warning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077:
                file.chmod(mode & 0o700)
                log.warning(
                    "database file %s was readable by others (mode %o); now %o",
                    file,
                    mode,
                    mode & 0o700,
                )
        except FileNotFoundError:
            continue
        except PermissionError:
            log.warning("database file %s is readable by others and not ours to change", file)


def make_engine(url: str) -> Engine:
    """Create the engine for ``url``; for SQLite, make the file's folder, create the file
    owner-only (``private_sqlite_file``) and turn on WAL."""
    if url.startswith("sqlite"):
        name = make_url(url).database
        if name and name != ":memory:" and not name.startswith("file:"):
            private_sqlite_file(Path(name))
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
