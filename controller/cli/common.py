"""What every ``edgefleet`` sub-command shares: option types, the error console, ``fail``,
settings, logging, and the operator's name in the audit log."""

import getpass
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from controller.settings import Settings

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Controller YAML config file.")
]
UrlOpt = Annotated[str | None, typer.Option(help="Controller URL (or EDGEFLEET_URL).")]
TokenOpt = Annotated[str | None, typer.Option(help="API token (or EDGEFLEET_TOKEN).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
err = Console(stderr=True, soft_wrap=True)  # no hard wraps: errors end up in logs


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line (markup in ``message`` is shown literally) and return the exit
    to raise: every CLI failure is a sentence and a status, never a traceback."""
    err.print(f"[red]edgefleet:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def settings_or_exit(config: Path | None, **overrides: object) -> "Settings":
    """The controller's settings from ``config`` (and the environment), or exit 2 saying
    what is wrong with them."""
    from pydantic import ValidationError

    from controller.settings import load_settings

    try:
        return load_settings(config, **overrides)
    except (ValidationError, ValueError) as e:
        raise fail(f"invalid controller configuration: {e}", 2) from e


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
    "ConfigOpt",
    "JsonOpt",
    "TokenOpt",
    "UrlOpt",
    "audit_locally",
    "err",
    "fail",
    "operator_actor",
    "settings_or_exit",
    "setup_logging",
]
