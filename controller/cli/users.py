"""``edgefleet users`` and ``edgefleet tokens``: accounts and API tokens, through the API.

These go through the controller's HTTP API with your token, so the controller checks the
role and audits the change under your name. (``edgefleet admin create`` and ``edgefleet
token create`` write to the database directly, for the first admin on the controller host.)
"""

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, Target, get_json, request_json, resolve_target
from controller.cli.common import TokenOpt, UrlOpt, err, fail

users_app = typer.Typer(no_args_is_help=True, help="Manage users (admin).")
tokens_app = typer.Typer(no_args_is_help=True, help="Manage API tokens.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ROLE_HELP = "admin, operator or viewer."


def _target(url: str | None, token: str | None) -> Target:
    try:
        return resolve_target(url, token)
    except ApiError as e:
        raise fail(str(e)) from e


def _call(target: Target, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return request_json(target, method, path, **kwargs)
    except ApiError as e:
        raise fail(str(e)) from e


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _user_id(target: Target, username: str) -> int:
    try:
        page = get_json(target, "/api/users", {"username": username})
    except ApiError as e:
        raise fail(str(e)) from e
    if not page["data"]:
        raise fail(f"no user {username!r}", 2)
    return int(page["data"][0]["id"])


def _when(value: str | None) -> str:
    return (value or "-")[:19].replace("T", " ")


@users_app.command("list")
def users_list(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List users with their role and whether they are disabled."""
    page = _call(_target(url, token), "GET", "/api/users", params={"limit": 1000})
    if as_json:
        _echo_json(page)
        return
    table = Table(title=f"{page['count']} users")
    for column in ("id", "user", "role", "state", "created"):
        table.add_column(column)
    for u in page["data"]:
        state = "[red]disabled[/red]" if u["disabled"] else "enabled"
        table.add_row(str(u["id"]), u["username"], u["role"], state, _when(u["created_at"]))
    Console().print(table)


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option(help=ROLE_HELP)] = "viewer",
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password from standard input (else one is generated).")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a user; without --password-stdin a strong password is generated and shown once."""
    body: dict[str, Any] = {"username": username, "role": role}
    if password_stdin:
        body["password"] = sys.stdin.readline().rstrip("\n")
    created = _call(_target(url, token), "POST", "/api/users", body=body)
    if as_json:
        _echo_json(created)
        return
    typer.echo(f"user {created['username']} created ({created['role']})")
    if created.get("password"):
        err.print(f"password for {created['username']} (shown once):", highlight=False)
        typer.echo(created["password"])


@users_app.command("set-role")
def users_set_role(
    username: Annotated[str, typer.Argument(help="Whose role to change.")],
    role: Annotated[str, typer.Argument(help=ROLE_HELP)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a user's role; it applies to their next request."""
    target = _target(url, token)
    changed = _call(
        target, "PATCH", f"/api/users/{_user_id(target, username)}", body={"role": role}
    )
    if as_json:
        _echo_json(changed)
        return
    typer.echo(f"user {changed['username']} is now {changed['role']}")


@users_app.command("disable")
def users_disable(
    username: Annotated[str, typer.Argument(help="Who to disable (or enable).")],
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again.")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Disable a user: their sessions end and their tokens stop at once (--enable undoes)."""
    target = _target(url, token)
    changed = _call(
        target,
        "PATCH",
        f"/api/users/{_user_id(target, username)}",
        body={"disabled": not enable},
    )
    if as_json:
        _echo_json(changed)
        return
    state = "disabled" if changed["disabled"] else "enabled"
    typer.echo(f"user {changed['username']} {state}")


@tokens_app.command("list")
def tokens_list(
    all_users: Annotated[bool, typer.Option("--all", help="Every user's tokens (admin).")] = False,
    include_inactive: Annotated[
        bool, typer.Option("--inactive", help="Also revoked and expired tokens.")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your API tokens (never their values)."""
    params = {"all": all_users, "include_inactive": include_inactive, "limit": 1000}
    page = _call(_target(url, token), "GET", "/api/tokens", params=params)
    if as_json:
        _echo_json(page)
        return
    table = Table(title=f"{page['count']} tokens")
    for column in ("id", "user", "name", "created", "last used", "expires", "state"):
        table.add_column(column)
    for t in page["data"]:
        state = "active" if t["active"] else ("revoked" if t["revoked_at"] else "expired")
        table.add_row(
            str(t["id"]),
            t["username"],
            t["name"],
            _when(t["created_at"]),
            _when(t["last_used_at"]),
            _when(t["expires_at"]),
            state,
        )
    Console().print(table)


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="What the token is for.")],
    expires_in_days: Annotated[
        float | None, typer.Option(min=0.001, help="Expire after this many days.")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Mint it for this user (admin).")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; its value is printed once (stdout) and never shown again."""
    body: dict[str, Any] = {"name": name, "expires_in_days": expires_in_days, "username": user}
    created = _call(_target(url, token), "POST", "/api/tokens", body=body)
    if as_json:
        _echo_json(created)
        return
    err.print(f"token {created['id']} for {created['username']} (shown once):", highlight=False)
    typer.echo(created["token"])


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (see 'tokens list').")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token; it stops working at once."""
    revoked = _call(_target(url, token), "DELETE", f"/api/tokens/{token_id}")
    if as_json:
        _echo_json(revoked)
        return
    typer.echo(f"token {revoked['id']} ({revoked['name']}) revoked")


__all__ = ["tokens_app", "users_app"]
