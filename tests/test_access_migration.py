"""Migration 0002: user and api_token tables made before access control gain disabled,
expires_at and revoked_at, keep their rows, and the old token keeps working."""

from datetime import UTC, datetime

from sqlalchemy import inspect, text
from sqlmodel import Session

from controller.auth.credentials import _digest, user_for_token
from controller.db import make_engine
from controller.migrations import init_db

OLD_TABLES = (
    """CREATE TABLE "user" (
        id INTEGER PRIMARY KEY, username VARCHAR(64) NOT NULL UNIQUE,
        password_hash VARCHAR NOT NULL, role VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE api_token (
        id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES "user" (id),
        name VARCHAR(64) NOT NULL, token_hash VARCHAR(64) NOT NULL UNIQUE,
        created_at TIMESTAMP NOT NULL, last_used_at TIMESTAMP
    )""",
)


def test_old_user_and_token_tables_gain_the_new_columns(database_url: str) -> None:
    """On SQLite and PostgreSQL, an existing user is enabled and an existing token is
    neither expired nor revoked after init_db, so upgrading locks nobody out."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        for statement in OLD_TABLES:
            conn.execute(text(statement))
        conn.execute(
            text(
                'INSERT INTO "user" (id, username, password_hash, role, created_at) '
                "VALUES (1, 'old', 'x', 'admin', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO api_token (id, user_id, name, token_hash, created_at) "
                "VALUES (1, 1, 'cli', :hash, CURRENT_TIMESTAMP)"
            ),
            {"hash": _digest("eft_old")},
        )
    init_db(engine)
    assert {"disabled"} <= {c["name"] for c in inspect(engine).get_columns("user")}
    token_columns = {c["name"] for c in inspect(engine).get_columns("api_token")}
    assert {"expires_at", "revoked_at"} <= token_columns
    with Session(engine) as session:
        user = user_for_token(session, "eft_old", now=datetime.now(UTC))
        assert user is not None and user.username == "old" and user.disabled is False
    engine.dispose()
