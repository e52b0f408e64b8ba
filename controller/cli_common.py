"""What every ``edgefleet`` sub-command shares: option types, the error console, ``fail``."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

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


__all__ = ["ConfigOpt", "TokenOpt", "UrlOpt", "err", "fail"]
