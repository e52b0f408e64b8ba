"""``edgefleet admin create`` and ``edgefleet token create``: bootstrap accounts and API
tokens straight in the database, on the controller host (the first admin is made this way).

The rules are the account service's (``controller/auth/users.py``), the same the API
applies; ``edgefleet users`` and ``edgefleet tokens`` (``controller/cli/users.py``) do the
same through the API with a token.
"""

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from controller.cli.common import ConfigOpt, err, settings_or_exit
from controller.cli.common import fail as _fail

if TYPE_CHECKING:
    from sqlmodel import Session

admin_app = typer.Typer(
    no_args_is_help=True, help="Bootstrap users on the controller host (the first admin)."
)
token_app = typer.Typer(
    no_args_is_help=True, help="Bootstrap API tokens on the controller host ('tokens' for more)."
)


@contextmanager
def _database(url: str) -> Iterator["Session"]:
    """A session on the controller's database (tables created or migrated first) that
    commits when the block ends without an error."""
    from controller.db import make_engine, session_scope
    from controller.migrations import init_db

    engine = make_engine(url)
    init_db(engine)
    with session_scope(engine) as session:
        yield session


def _read_password(password_stdin: bool, prompt: bool) -> str | None:
    """The password to set: from standard input, typed twice, or None (generate one)."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not prompt:
        return None
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise _fail("passwords differ", 2)
    return first


@admin_app.command("create")
def admin_create(
    username: Annotated[str, typer.Option(help="Login name.")],
    role: Annotated[str, typer.Option(help="admin, operator or viewer.")] = "admin",
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password from standard input.")
    ] = False,
    prompt: Annotated[bool, typer.Option(help="Type the password (twice).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a console user directly in the database (the first admin is made this way;
    there is no default). Weak passwords are refused; without --password-stdin or --prompt
    a strong one is generated and printed once."""
    from controller.auth.users import AccountError, add_user

    settings = settings_or_exit(config)
    given = _read_password(password_stdin, prompt)
    with _database(settings.database_url) as session:
        try:
            _user, generated = add_user(
                session, username=username, role=role, password=given, actor="cli:admin-create"
            )
        except AccountError as e:
            raise _fail(str(e), 2) from e
    typer.echo(f"user {username} created ({role})")
    if generated is not None:
        err.print(f"password for {username} (shown once):", highlight=False)
        typer.echo(generated)


@token_app.command("create")
def token_create(
    username: Annotated[str, typer.Option(help="The user the token acts as.")],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
    expires_in_days: Annotated[
        float | None, typer.Option(min=0.001, help="Expire after this many days.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Issue an API token directly in the database; it is printed once and only its hash
    is stored (with a token, 'edgefleet tokens create' does the same through the API)."""
    from controller.auth.users import AccountError, create_token, enabled_user

    settings = settings_or_exit(config)
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    with _database(settings.database_url) as session:
        try:
            user = enabled_user(session, username)
        except AccountError as e:
            raise _fail(str(e), 2) from e
        _row, token = create_token(
            session, user, name=name, expires_at=expires, actor="cli:token-create"
        )
    typer.echo(token)


__all__ = ["admin_app", "token_app"]
