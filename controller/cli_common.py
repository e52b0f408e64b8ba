"""What every ``edgefleet`` sub-command shares: option types, the error console, ``fail``."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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


__all__ = ["ConfigOpt", "TokenOpt", "UrlOpt", "err", "fail", "settings_or_exit"]
