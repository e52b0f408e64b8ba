"""``edgefleet audit list``: the audit log through the API, filtered, as a table or JSON."""

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, get_json, resolve_target
from controller.cli.common import TokenOpt, UrlOpt, fail

audit_app = typer.Typer(no_args_is_help=True, help="Read the audit log.")


@audit_app.command("list")
def audit_list(
    actor: Annotated[str | None, typer.Option(help="e.g. user:alice, system:rollouts.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Exact, or a prefix ending in '.' (rollout.).")
    ] = None,
    target: Annotated[str | None, typer.Option(help="e.g. rollout:12, device:dev-1.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="Text in the reason.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Before this time (ISO 8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (paging).")] = 0,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Audit entries, newest first: who did what to which object, when and why."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    for key, value in (
        ("actor", actor),
        ("action", action),
        ("target", target),
        ("q", text),
        ("since", since.isoformat() if since else None),
        ("until", until.isoformat() if until else None),
    ):
        if value is not None:
            params[key] = value
    try:
        page = get_json(resolve_target(url, token), "/api/audit", params)
    except ApiError as e:
        raise fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(page, indent=2, default=str))
        return
    table = Table(title=f"{len(page['data'])} of {page['count']} entries")
    for column in ("at", "actor", "action", "target", "reason"):
        table.add_column(column)
    for entry in page["data"]:
        table.add_row(
            entry["at"][:19].replace("T", " "),
            entry["actor"],
            entry["action"],
            entry["target"],
            entry["reason"],
        )
    Console().print(table)


__all__ = ["audit_app"]
