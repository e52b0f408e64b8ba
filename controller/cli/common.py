"""What every ``edgefleet`` sub-command shares: option types, the error console, ``fail``,
settings, logging, and the operator's name in the audit log."""

import getpass
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from pydantic import ValidationError

    from controller.settings import Settings

# Every command that reads the controller's settings (and so its database) takes the same
# option; tests/test_cli_convention.py checks it on every command.
CONFIG_ENV = "EDGEFLEET_CONFIG"
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar=CONFIG_ENV, help="Controller YAML config file."),
]
# Every command that calls the API takes these; controller/api_client.py resolves them, then
# EDGEFLEET_URL / EDGEFLEET_TOKEN, then the CLI credentials file (EDGEFLEET_CLI_CONFIG).
UrlOpt = Annotated[str | None, typer.Option(help="Controller URL (or EDGEFLEET_URL).")]
TokenOpt = Annotated[str | None, typer.Option(help="API token (or EDGEFLEET_TOKEN).")]
# What a command does with the database: opens one that must exist already, may create it
# (serve, db init), or never opens it.
DatabaseUse = Literal["existing", "create", "unused"]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
err = Console(stderr=True, soft_wrap=True)  # no hard wraps: errors end up in logs


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line (markup in ``message`` is shown literally) and return the exit
    to raise: every CLI failure is a sentence and a status, never a traceback."""
    err.print(f"[red]edgefleet:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def settings_or_exit(
    config: Path | None, *, database: DatabaseUse = "existing", **overrides: object
) -> "Settings":
    """The controller's settings from ``config`` (and the environment), or exit 2 saying
    what is wrong with them; with ``database="existing"`` also exit 2 when they name a
    SQLite file that does not exist (``refuse_new_database``)."""
    from pydantic import ValidationError

    from controller.settings import load_settings

    try:
        settings = load_settings(config, **overrides)
    except ValidationError as e:
        raise fail(describe_settings_error(e, config), 2) from e
    except ValueError as e:
        raise fail(f"invalid controller configuration: {e}", 2) from e
    if database == "existing":
        refuse_new_database(settings, config)
    return settings


def refuse_new_database(settings: "Settings", config: Path | None) -> None:
    """Exit 2 when ``settings`` name a SQLite file that does not exist: opening it would
    create an empty database, and the next command would miss what this one wrote (the
    usual cause is a forgotten ``-c``). ``edgefleet db init`` and ``serve`` create it."""
    from controller.settings import sqlite_file

    file = sqlite_file(settings.database_url)
    if file is None or file.exists():
        return
    if os.environ.get("EDGEFLEET_DATABASE_URL"):
        source = "EDGEFLEET_DATABASE_URL"
    elif config is not None:
        source = f"database_url in {config}"
    else:
        source = f"the default database_url: no -c/--config given and {CONFIG_ENV} is unset"
    with_config = f"-c {config}" if config is not None else "-c CONFIG"
    raise fail(
        f"no database at {file.absolute()} ({source}); refusing to create an empty one."
        f" Pass the controller's config with -c/--config (or set {CONFIG_ENV}), or create"
        f" the database on purpose: 'edgefleet db init {with_config}'",
        2,
    )


def describe_settings_error(error: "ValidationError", config: Path | None) -> str:
    """``error`` as lines naming the file (or ``EDGEFLEET_*`` variable) and the key, as the
    agent's config errors do: never pydantic's class names or links."""
    from controller.cli._settings_errors import settings_error_lines
    from controller.settings import read_config_file

    try:
        values = None if config is None else read_config_file(config)
    except ValueError:
        values = None
    lines = settings_error_lines(error, config, values)
    if len(lines) == 1:
        return f"invalid controller configuration: {lines[0]}"
    return f"invalid controller configuration ({len(lines)} problems):\n  " + "\n  ".join(lines)


def setup_logging(level: str) -> None:
    """Log lines with time, level and logger at ``level`` (debug, info, warning, error)."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per job run at INFO would drown everything else.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.root.level))


def operator_actor() -> str:
    """Who runs a host-side command, as the audit log names them (``cli:<login>``)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def audit_locally(
    settings: "Settings", action: str, target: str, reason: str, **detail: Any
) -> None:
    """Record an operator's host-side action (keys, models, images) in the controller's
    audit log, straight in its database."""
    from controller.audit import audit
    from controller.db import make_engine, session_scope
    from controller.migrations import init_db

    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
        with session_scope(engine) as session:
            audit(session, actor=operator_actor(), action=action, target=target, reason=reason,
                  detail=detail)  # fmt: skip
    finally:
        engine.dispose()


__all__ = [
    "CONFIG_ENV",
    "ConfigOpt",
    "DatabaseUse",
    "JsonOpt",
    "TokenOpt",
    "UrlOpt",
    "audit_locally",
    "describe_settings_error",
    "err",
    "fail",
    "operator_actor",
    "refuse_new_database",
    "settings_or_exit",
    "setup_logging",
]
